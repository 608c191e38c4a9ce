"""The downloading half of a mesh peer: ``skill.fetch``, from several seeders at once.

A fetch goes: find the manifest (this peer's catalogue and what it heard on
``skills.announced``, manifests handed in by the caller in-process, then the
tracker's ``skill.manifest``), verify it (signature, hash == the id asked
for) and its base model; plan the parents the store lacks (each found by
its adapter hash the same ways, root first); refuse the lot if together
over ``max_bytes``; then download each, parents first, and install it.

Seeders: any given in-process, the tracker's ``skill.seeders``, and the
mesh peers on the bus (``bus.clients``, so a mesh works without a tracker),
each confirmed with ``skill.have``. Every seeder
gets ``window`` workers pulling piece indexes off one shared queue. Each
piece's sha256 is checked on arrival: a bad one bans its seeder for this
download (the ban is kept with the partial download) and goes back on the
queue; a failed request (error, disconnect, timeout) goes back too and its
seeder backs off, and is dropped after ``max_failures`` failures in a row;
OVERLOADED is waited out for ``data.retry_after_ms``. When every seeder is
gone with pieces missing: TARGET_OFFLINE, ``data.missing`` = how many.

Resume: pieces are written with pwrite at their offset into
``<state>/mesh/partial/<skill_id>/data``, preallocated to the adapter's
size. No bitfield is kept: on the next fetch of the same skill every piece
of that file is re-hashed and those matching the manifest count as held
(``resumed_pieces``). Re-hashing costs one read of the file, which the final
whole-file check costs anyway, and it cannot disagree with the data the way
a separately written record could after a crash. ``state.json`` beside it
keeps only the banned seeders.

Install: the finished file (whole-file sha256 == adapter_sha256) is renamed
into a PEFT folder with the manifest's adapter_config.json and imported
into the store, which copies it once (the store builds objects in its own
temporary folder and renames them; it does not take files from outside).
The manifest is then saved in the catalogue (this installation seeds it
too), a HaveEvent and an AcquiredEvent are published, and the partial
folder is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import RpcError
from protocol.commands import skills as m

from ..client import BusClient
from ..inference.adapters import CONFIG_FILE, WEIGHTS_FILE, sha256_file
from ..inference.errors import InferenceError
from .manifest import ManifestError, parse_manifest, skill_id, verify_manifest
from .peer import Catalogue, Seeder, invalid
from .pieces import Partial, Progress, SwarmLimits, Totals, Transfer, progress_event, sweep_partials

__all__ = ["Progress", "Swarm", "SwarmLimits"]

log = logging.getLogger("personad.mesh.swarm")


@dataclass
class _Job:
    task: asyncio.Task[m.FetchResult]
    listeners: list[Progress] = field(default_factory=list)
    waiters: int = 0


class Swarm:
    def __init__(
        self,
        *,
        client: BusClient,
        seeder: Seeder,
        state_root: Path,
        limits: SwarmLimits | None = None,
    ) -> None:
        self.client = client
        self.seeder = seeder
        self.catalogue: Catalogue = seeder.catalogue
        self.store = seeder.store
        self.partial_root = state_root / "mesh" / "partial"
        self.limits = limits or SwarmLimits()
        self._jobs: dict[str, _Job] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def base_model_id(self) -> str:
        return self.seeder.base_model_id

    def sweep_partials(self) -> list[str]:
        """Remove partial downloads untouched for a week (blocking; the peer calls it at start)."""
        return sweep_partials(self.partial_root, busy=set(self._jobs))

    # -- the entry point: one job per skill ------------------------------------------------

    async def fetch(
        self,
        p: m.FetchParams,
        *,
        caller: str | None,
        progress: Progress | None = None,
        seeders: Sequence[str] = (),
        manifests: Sequence[m.SkillManifest] = (),
    ) -> m.FetchResult:
        """Download and install ``p.skill_id``; a second fetch of it meanwhile waits for this one.

        ``seeders`` and ``manifests`` add to what the tracker knows (in-process
        callers only: they are not protocol fields). A cancelled caller stops
        the download only if nobody else waits for it; verified pieces stay on disk.
        """
        job = self._jobs.get(p.skill_id)
        if job is None:
            listeners: list[Progress] = []

            async def emit(event: m.ProgressEvent) -> None:
                for listener in list(listeners):
                    try:
                        await listener(event)
                    except Exception as exc:  # a listener's failure is not the download's
                        log.debug("progress listener failed: %s", exc)

            task = asyncio.create_task(
                self._run(p, caller or self.seeder.node, emit, list(seeders), list(manifests)),
                name=f"skill-fetch-{p.skill_id[:12]}",
            )
            job = self._jobs[p.skill_id] = _Job(task=task, listeners=listeners)
            task.add_done_callback(functools.partial(self._forget, p.skill_id, job))
        if progress is not None:
            job.listeners.append(progress)
        job.waiters += 1
        try:
            return await asyncio.shield(job.task)
        except asyncio.CancelledError:
            if job.waiters == 1:
                job.task.cancel()
            raise
        finally:
            job.waiters -= 1
            if progress is not None and progress in job.listeners:
                job.listeners.remove(progress)

    def _forget(self, sid: str, job: _Job, _task: object = None) -> None:
        if self._jobs.get(sid) is job:
            del self._jobs[sid]
        if job.task.done() and not job.task.cancelled():
            job.task.exception()  # retrieved: a failed job nobody awaited is not "never retrieved"

    async def cancel_all(self) -> None:
        """Stop every download (the peer is stopping); their verified pieces stay on disk."""
        tasks = [job.task for job in self._jobs.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one fetch -------------------------------------------------------------------------

    async def _run(
        self,
        p: m.FetchParams,
        caller: str,
        emit: Progress,
        extra_seeders: list[str],
        extra_manifests: list[m.SkillManifest],
    ) -> m.FetchResult:
        started = time.monotonic()
        sid = p.skill_id
        await emit(progress_event(sid, "", "manifest", 0, 0, 0, 0, []))
        manifest = await self._manifest_by_id(sid, extra_manifests)
        if self._installed(manifest):
            self.catalogue.save(manifest)
            with contextlib.suppress(RpcError):
                await self.seeder.publish_have()
                if caller != self.seeder.node:
                    # Another of this installation's personas taking a skill the store
                    # already holds is demand too (the tracker counts each acquirer once).
                    acquired = m.AcquiredEvent(skill_id=sid, by=caller)
                    await self.seeder.publish(m.ACQUIRED_TOPIC, acquired.model_dump(mode="json"))
            return _result(sid, manifest, installed=False, parents=[], totals=Totals(), started=started)
        self._check_replacement(manifest)
        await emit(progress_event(sid, manifest.skill, "parents", 0, 0, 0, 0, []))
        plan = await self._plan_parents(manifest, extra_manifests)
        total = manifest.size + sum(pm.size for _, pm in plan)
        if p.max_bytes is not None and total > p.max_bytes:
            what = f"{manifest.skill!r}" + (f" with {len(plan)} parent level(s)" if plan else "")
            raise invalid("max_bytes", f"{what} is {total} bytes, over max_bytes {p.max_bytes}")
        totals = Totals()
        for psid, pm in plan:
            await self._get(psid, pm, p.window, caller, emit, extra_seeders, totals, phase="parents")
        await self._get(sid, manifest, p.window, caller, emit, extra_seeders, totals, phase="pieces")
        await emit(
            progress_event(
                sid,
                manifest.skill,
                "done",
                len(manifest.piece_hashes),
                len(manifest.piece_hashes),
                manifest.size,
                0,
                totals.banned,
            )
        )
        return _result(
            sid,
            manifest,
            installed=True,
            parents=[pm.skill for _, pm in plan],
            totals=totals,
            started=started,
        )

    def _check_replacement(self, manifest: m.SkillManifest) -> None:
        """Refuse to put a stranger's weights under a name this store already uses.

        Personas name their stacks, so replacing ``legal`` changes every persona
        that uses it. A new version from the publisher of the held one is an
        update and goes through; anything else (an adapter trained or imported
        here, or another publisher's) must be deleted or renamed first.
        """
        try:
            held = self.store.get(manifest.skill)
        except InferenceError:
            return
        if held.sha256 == manifest.adapter_sha256 or held.meta.get("publisher") == manifest.publisher:
            return
        origin = f"published by {held.meta['publisher'][:16]}…" if held.meta.get("publisher") else "made here"
        raise invalid(
            "skill_id",
            f"this store already holds another {manifest.skill!r} ({held.sha256[:12]}…, {origin}); "
            f"{manifest.publisher[:16]}…'s would replace it for every persona that uses it: "
            "delete or rename the held one first",
        )

    def _installed(self, manifest: m.SkillManifest) -> bool:
        try:
            return self.store.get(manifest.skill).sha256 == manifest.adapter_sha256
        except InferenceError:
            return False

    # -- manifests -------------------------------------------------------------------------

    async def _ask_tracker(self, params: dict[str, Any]) -> list[m.SkillManifest]:
        try:
            result = await self.client.call(
                "skill.manifest", params, to="cap:skills", deadline_ms=self.limits.lookup_ms
            )
        except RpcError as exc:
            log.debug("tracker: skill.manifest %s: %s", params, exc.message)
            return []
        found = []
        for data in result.get("manifests", []):
            try:
                found.append(parse_manifest(data))
            except ManifestError as exc:
                log.info("tracker sent a malformed manifest: %s", exc)
        return found

    async def _manifest_by_id(self, sid: str, extra: list[m.SkillManifest]) -> m.SkillManifest:
        manifest = self.catalogue.known(sid)
        if manifest is None:
            manifest = next((mf for mf in extra if skill_id(mf) == sid), None)
        if manifest is None:
            manifest = next(
                (mf for mf in await self._ask_tracker({"skill_id": sid}) if skill_id(mf) == sid), None
            )
        if manifest is None:
            raise invalid(
                "skill_id",
                f"no manifest for skill {sid[:16]}… is known: this peer did not hear it announced "
                "and the tracker (cap:skills) does not have it or is offline",
            )
        try:
            verify_manifest(manifest, expected_id=sid)
        except ManifestError as exc:
            raise invalid("skill_id", str(exc)) from None
        self._check_base(manifest)
        return manifest

    def _check_base(self, manifest: m.SkillManifest) -> None:
        if manifest.base_model_id != self.base_model_id:
            raise invalid(
                "skill_id",
                f"{manifest.skill!r} was trained on base model {manifest.base_model_id!r}; "
                f"this installation runs {self.base_model_id!r}",
            )

    async def _plan_parents(
        self, manifest: m.SkillManifest, extra: list[m.SkillManifest]
    ) -> list[tuple[str, m.SkillManifest]]:
        """The parent levels to download first, root first (each with a verified manifest)."""
        plan = []
        for ref in manifest.parents:
            try:
                held = self.store.get(ref.name)
            except InferenceError:
                held = None
            if held is not None:
                if held.sha256 == ref.sha256:
                    continue
                # Replacing a parent would leave this store's own levels above it stale.
                raise invalid(
                    "skill_id",
                    f"{manifest.skill!r} needs parent {ref.name!r} at {ref.sha256[:12]}…; this store "
                    f"holds another version ({held.sha256[:12]}…)",
                )
            found = await self._manifest_for_parent(ref, extra)
            if found is None:
                raise invalid(
                    "skill_id",
                    f"missing parent {ref.name!r} ({ref.sha256[:12]}…) of {manifest.skill!r}: "
                    "no manifest for it is known here or on the tracker",
                )
            plan.append(found)
        return plan

    async def _manifest_for_parent(
        self, ref: m.ParentRef, extra: list[m.SkillManifest]
    ) -> tuple[str, m.SkillManifest] | None:
        candidates = [mf for _, mf in self.catalogue.known_for_hash(ref.sha256)]
        candidates += [mf for mf in extra if mf.adapter_sha256 == ref.sha256]
        candidates += await self._ask_tracker({"adapter_sha256": ref.sha256})
        candidates.sort(key=lambda mf: mf.published_at, reverse=True)
        for mf in candidates:
            if mf.skill != ref.name or mf.base_model_id != self.base_model_id:
                continue
            try:
                return verify_manifest(mf), mf
            except ManifestError as exc:
                log.info("skipping a manifest of parent %s: %s", ref.name, exc)
        return None

    # -- seeders ---------------------------------------------------------------------------

    async def _seeders(self, sid: str, extra: Iterable[str]) -> list[str]:
        """Candidates (given, the tracker's, every peer on the bus), kept if skill.have says yes."""
        names = list(dict.fromkeys(extra))
        try:
            result = await self.client.call(
                "skill.seeders", {"skill_id": sid}, to="cap:skills", deadline_ms=self.limits.lookup_ms
            )
            names += [s["node"] for s in result.get("seeders", [])]
        except RpcError as exc:
            log.debug("tracker: skill.seeders: %s", exc.message)
        # Without a tracker (or beside one that lost its state) the bus itself
        # knows every peer; asking each is one small call, bounded.
        try:
            peers = await self.client.call("bus.clients", {"kind": "mesh"}, deadline_ms=self.limits.lookup_ms)
            names += [c["id"] for c in peers.get("clients", [])][: self.limits.max_candidates]
        except RpcError as exc:
            log.debug("bus.clients: %s", exc.message)
        names = [n for n in dict.fromkeys(names) if n != self.client.client_id]

        async def confirm(node: str) -> bool:
            try:
                answer = await self.client.call(
                    "skill.have", {"skill_id": sid}, to=node, deadline_ms=self.limits.lookup_ms
                )
            except RpcError as exc:
                log.info("seeder %s: skill.have: %s", node, exc.message)
                return False
            return bool(answer.get("have"))

        held = await asyncio.gather(*(confirm(n) for n in names))
        return [n for n, ok in zip(names, held, strict=True) if ok]

    # -- one skill: download and install -----------------------------------------------------

    async def _get(
        self,
        sid: str,
        manifest: m.SkillManifest,
        window: int,
        caller: str,
        emit: Progress,
        extra_seeders: list[str],
        totals: Totals,
        *,
        phase: str,
    ) -> None:
        lock = self._locks.setdefault(sid, asyncio.Lock())
        async with lock:  # a parent shared by two fetches is downloaded once
            if self._installed(manifest):
                return
            partial = Partial(self.partial_root / sid, manifest)
            await asyncio.to_thread(partial.open)
            try:
                totals.resumed += len(partial.done)
                seeders = [s for s in await self._seeders(sid, extra_seeders) if s not in partial.banned]
                transfer = Transfer(
                    self.client, self.limits, sid, manifest, partial, seeders, window, emit, phase, totals
                )
                await transfer.run()
            finally:
                partial.close()
            await emit(
                progress_event(
                    sid,
                    manifest.skill,
                    "verify",
                    partial.count,
                    partial.count,
                    manifest.size,
                    0,
                    totals.banned,
                )
            )
            await self._install(sid, manifest, partial, caller, emit)

    async def _install(
        self, sid: str, manifest: m.SkillManifest, partial: Partial, caller: str, emit: Progress
    ) -> None:
        actual = await asyncio.to_thread(sha256_file, partial.data)
        if actual != manifest.adapter_sha256:
            # Every piece matched its hash, so the manifest itself is inconsistent.
            shutil.rmtree(partial.dir, ignore_errors=True)
            raise invalid(
                "skill_id",
                f"the pieces of {manifest.skill!r} hash to {actual[:12]}… as a whole, not the manifest's "
                f"adapter_sha256 {manifest.adapter_sha256[:12]}… (a bad manifest)",
            )
        await emit(
            progress_event(sid, manifest.skill, "install", partial.count, partial.count, manifest.size, 0, [])
        )
        folder = partial.dir / "adapter"
        folder.mkdir(mode=0o700, exist_ok=True)
        os.replace(partial.data, folder / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(manifest.adapter_config, indent=2), "utf-8")
        meta = {
            "base_model": manifest.base_model_id,
            "skill_id": sid,
            "publisher": manifest.publisher,
            "source": "mesh",
        }
        try:
            await asyncio.to_thread(self.store.import_folder, folder, manifest.skill, meta=meta)
        except InferenceError as exc:
            raise invalid("skill_id", f"{manifest.skill!r} cannot be installed: {exc}") from None
        finally:
            shutil.rmtree(partial.dir, ignore_errors=True)
        self.catalogue.save(manifest)
        log.info("installed %s (%s) from the mesh for %s", manifest.skill, sid[:12], caller)
        acquired = m.AcquiredEvent(skill_id=sid, by=caller)
        try:
            await self.seeder.publish_have()
            await self.seeder.publish(m.ACQUIRED_TOPIC, acquired.model_dump(mode="json"))
        except RpcError as exc:  # installed all the same; the next connect re-announces what it seeds
            log.warning("could not publish %s's acquisition: %s", manifest.skill, exc.message)


def _result(
    sid: str,
    manifest: m.SkillManifest,
    *,
    installed: bool,
    parents: list[str],
    totals: Totals,
    started: float,
) -> m.FetchResult:
    return m.FetchResult(
        skill_id=sid,
        skill=manifest.skill,
        adapter_sha256=manifest.adapter_sha256,
        installed=installed,
        parents_fetched=parents,
        bytes=totals.bytes,
        resumed_pieces=totals.resumed,
        seconds=round(time.monotonic() - started, 3),
        seeders=dict(totals.seeders),
        banned=list(totals.banned),
        publisher=manifest.publisher,
    )

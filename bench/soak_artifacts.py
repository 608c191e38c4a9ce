"""Writes that are not rows: bundle imports (a persona with its adapter) and PersonaHub jobs.

**Imports.** ``persona.import`` of a bundle the load generator seals for each
call: a profile tagged ``soak-<run>-import`` whose stack pins one adapter made
for that import alone (a small PEFT LoRA of random weights, so every import
adds a new object to the shared adapter store), and an empty brain. The
ledger's kind ``import``: read back with ``persona.list`` by the tag (name,
role, status and the pinned adapter); an acknowledged import's adapter must be
in the store, whole (its sha256 read from disk, as an operator would check
it); an import that was not acknowledged and is not in the registry must have
left no brain, key or folder behind (the registry takes back an import it was
killed in when it starts again).

**Hub jobs.** One small ``hub.run`` (two personas, the structured path) every
``every_s`` seconds, its job id the ledger's nonce; the seed is one of three,
so jobs with the same requirements recur. The ledger's kind ``hub``: an
acknowledged job is never lost (``hub.status`` lists it, with what was asked);
a refused one (``OVERLOADED``: two already generate) never appears; at the end
every acknowledged job must finish by itself (the service resumes a job it was
killed in), and its output must be whole: ``kept`` personas, no id twice, the
same personas as every other finished job with the same requirements (a run
follows from its requirements alone, resumed or not). The first persona of
each finished job is registered (``hub.register``, kind ``hub profile``) and
must then be in the registry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from soak_ledger import Entry, Ledger, Violation, retry

from daemon.brain.keys import brain_path, key_path
from daemon.client import BusClient
from daemon.inference.adapters import WEIGHTS_FILE, AdapterStore, sha256_file
from daemon.registry.bundle import write_bundle
from daemon.registry.bundle_keys import RecipientPrivateKey, SigningKey
from protocol import ErrorCode, RpcError
from protocol.profile import Profile

#: The hub jobs' requirements but the seed: two personas from sampled attributes.
HUB_REQUIREMENTS: dict[str, Any] = {"count": 2, "paths": {"structured": 1.0}, "quality": "fast"}
HUB_SEEDS = (1, 2, 3)
#: Seconds after it settled before a failed import is held to "left nothing behind": its
#: handler may still be taking it back (the bus cancels it at its deadline).
SETTLE_S = 15.0


def _make_adapter(folder: Path, seed: int) -> Path:
    """A PEFT LoRA folder (config and safetensors) of random weights, one of its own per seed."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for proj in ("q_proj", "v_proj"):
        stem = f"base_model.model.model.layers.0.self_attn.{proj}"
        tensors[f"{stem}.lora_A.weight"] = rng.standard_normal((2, 64), dtype=np.float32)
        tensors[f"{stem}.lora_B.weight"] = rng.standard_normal((64, 2), dtype=np.float32)
    save_file(tensors, str(folder / WEIGHTS_FILE))
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@dataclass
class Bundles:
    """Seals one bundle per import, for the registry's installation (its recipient key)."""

    recipient: RecipientPrivateKey = field(default_factory=RecipientPrivateKey.generate)
    signer: SigningKey = field(default_factory=SigningKey.generate)

    def make(self, persona_id: str, name: str, role: str, tag: str, seed: int) -> tuple[str, str]:
        """The bundle, base64, and its adapter's sha256."""
        with tempfile.TemporaryDirectory(prefix="soak-bundle-") as tmp:
            folder = _make_adapter(Path(tmp) / "lora", seed)
            sha = sha256_file(folder / WEIGHTS_FILE)
            brain = Path(tmp) / "brain.json"
            doc = {"format": "personad.brain", "format_version": 1, "tables": {"memories": []}}
            brain.write_text(json.dumps(doc))
            profile = Profile(
                id=persona_id,
                name=name,
                role=role,
                tags=[tag],
                stack=[{"name": f"soak-import.{persona_id}", "sha256": sha}],
            )
            path = Path(tmp) / "persona.pdbundle"
            write_bundle(
                path,
                profile=profile,
                brain_export=brain,
                adapters=[folder],
                key=self.recipient.public_key(),
                signer=self.signer,
            )
            return base64.b64encode(path.read_bytes()).decode(), sha


def import_params(bundles: Bundles, data_b64: str) -> dict[str, Any]:
    return {
        "data_b64": data_b64,
        "format": "bundle",
        "recipient_private_key": bundles.recipient.private.hex(),
        "signer": bundles.signer.public_hex,
    }


@dataclass
class ImportCheck:
    """What the registry's rows cannot show of an import: the stack it pins (``persona.get``:
    ``persona.list`` gives summaries), its adapter in the store, and nothing half-made."""

    ledger: Ledger
    client: Any
    state_root: Path
    #: Imports whose profile and adapter were found whole (a stored import does not change).
    verified: set[str] = field(default_factory=set)

    async def __call__(
        self, stored: dict[tuple[str, str], list[dict[str, Any]]], started: float, full: bool
    ) -> list[Violation]:
        violations: list[Violation] = []
        store = AdapterStore.for_state(self.state_root, create=False)
        for nonce, entry in list(self.ledger.entries.items()):
            if entry.kind != "import" or entry.settled_at > started or (nonce in self.verified and not full):
                continue
            pid, sha = entry.extra["persona_id"], entry.extra["adapter"]
            if stored.get(("import", nonce)):
                answer = await retry(self.client, "persona.get", {"persona_id": pid}, to="cap:registry")
                pinned = [level["sha256"] for level in answer["profile"]["stack"]]
                if pinned != [sha]:
                    violations.append(
                        Violation("torn", "import", entry.target, nonce, f"stack pins {pinned}")
                    )
                weights = store.object_path(sha) / WEIGHTS_FILE
                if not await asyncio.to_thread(weights.is_file):
                    violations.append(
                        Violation("lost", "import", entry.target, nonce, f"adapter {sha} not stored")
                    )
                elif await asyncio.to_thread(sha256_file, weights) != sha:
                    violations.append(
                        Violation("torn", "import", entry.target, nonce, f"adapter {sha} differs")
                    )
                else:
                    self.verified.add(nonce)
            elif entry.state == "failed" and started - entry.settled_at > SETTLE_S:
                # Not imported (a missing acked one is the ledger's "lost"): nothing of it may be left.
                places = (brain_path(self.state_root, pid).parent, key_path(self.state_root, pid))
                left = [str(p) for p in places if p.exists()]
                if left:
                    violations.append(
                        Violation("torn", "import", entry.target, nonce, f"not imported, yet left {left}")
                    )
        return violations


@dataclass
class HubJobs:
    """Starts the soak's hub jobs, registers their first persona, and holds them to the ledger."""

    ledger: Ledger
    client: BusClient
    every_s: float = 45.0
    #: The job id of each job it asked for -> its ledger entry (the requirements are in it).
    jobs: dict[str, Entry] = field(default_factory=dict)
    registered: set[str] = field(default_factory=set)
    resumed: dict[str, int] = field(default_factory=dict)
    #: Why each job that stopped before its end stopped, every time it was seen stopped.
    failures: dict[str, list[str]] = field(default_factory=dict)
    #: Each finished job's kept personas, by job id, as last read.
    outputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    running: bool = True
    #: Exceptions that were not an answer (a defect of the soak or of the hub's answers).
    problems: list[str] = field(default_factory=list)

    def job_id(self, nonce: str) -> str:
        return nonce.replace(":", "-")

    async def start_one(self, timed: Any) -> str:
        """One ``hub.run`` through the ledger; "ok" or the error's name."""
        nonce = self.ledger.nonce()
        job = self.job_id(nonce)
        seed = HUB_SEEDS[len(self.jobs) % len(HUB_SEEDS)]
        requirements = {**HUB_REQUIREMENTS, "seed": seed}
        entry = self.ledger.begin("hub", "cap:hub", nonce, {"requirements": requirements, "job_id": job})
        self.jobs[job] = entry
        exc = await self._send(timed, "hub.run", {"requirements": requirements, "job_id": job})
        if exc is None:
            Ledger.settle(entry, row_id=job)
            return "ok"
        if exc.code == ErrorCode.OVERLOADED:
            Ledger.settle(entry, refused=True)  # two generate already: it must never start
        else:
            Ledger.settle(entry, error=exc)
        return str(exc.code)

    async def _send(self, timed: Any, method: str, params: dict[str, Any]) -> RpcError | None:
        """One timed call to cap:hub; the error it was answered, or None."""
        try:
            await timed(method, lambda: self.client.call(method, params, to="cap:hub", deadline_ms=10_000))
        except RpcError as exc:
            return exc
        return None

    async def run(self, timed: Any, go: asyncio.Event) -> None:
        """Every ``every_s``: start a job, and register the first persona of jobs now done."""
        while self.running:
            await go.wait()
            for step in (self.start_one, self.follow_up):
                try:
                    await step(timed)
                except RpcError:
                    pass  # an error answer: the ledger has it, or the next round asks again
                except Exception as exc:  # not an answer at all: the soak's finding, not a lost task
                    self.problems.append(f"{step.__name__}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(self.every_s)

    async def follow_up(self, timed: Any) -> dict[str, Any]:
        """Resume failed jobs (as their owner would: the same hub.run again), register the first
        persona of each newly finished one; returns the jobs by id."""
        jobs = await self.listed()
        for job_id, job in jobs.items():
            entry = self.jobs.get(job_id)
            if entry is None or entry.state != "acked":
                continue
            if job["state"] in ("failed", "cancelled"):
                self.failures.setdefault(job_id, []).append(str(job.get("error")))
                try:
                    await self.client.call(
                        "hub.run",
                        {"requirements": entry.expect["requirements"], "job_id": job_id},
                        to="cap:hub",
                        deadline_ms=10_000,
                    )
                except RpcError as exc:  # two others generate (OVERLOADED): the next round
                    if exc.code != ErrorCode.OVERLOADED:
                        raise
                else:
                    self.resumed[job_id] = self.resumed.get(job_id, 0) + 1
            elif job["state"] == "done" and job_id not in self.registered and job.get("kept"):
                await self._register(timed, job_id)
        return jobs

    async def _register(self, timed: Any, job_id: str) -> None:
        page = await self.client.call(
            "hub.personas", {"job_id": job_id, "limit": 1}, to="cap:hub", deadline_ms=10_000
        )
        persona = page["personas"][0]
        nonce = self.ledger.nonce()
        pid = nonce.replace(":", "-").replace(".", "-")
        expect = {"persona_id": pid, "text": persona["persona"]}
        entry = self.ledger.begin("hub profile", "cap:registry", nonce, expect)
        self.registered.add(job_id)
        exc = await self._send(timed, "hub.register", {"persona": persona, "persona_id": pid})
        if exc is None:
            Ledger.settle(entry, row_id=pid)
        else:
            Ledger.settle(entry, error=exc)

    async def listed(self) -> dict[str, Any]:
        """Every job the service lists (a page at a time) that this run asked for."""
        prefix = f"soak-{self.ledger.run}-"
        jobs: dict[str, Any] = {}
        offset: int | None = 0
        while offset is not None:
            answer = await retry(self.client, "hub.status", {"offset": offset, "limit": 500}, to="cap:hub")
            jobs |= {j["job_id"]: j for j in answer["jobs"] if j["job_id"].startswith(prefix)}
            offset = answer["next_offset"]
        return jobs

    async def finish(self, timeout: float, timed: Any) -> float:
        """Wait (resuming failed jobs) until every acknowledged job is done; seconds waited."""
        started = time.monotonic()
        acked = {
            e.row_id for e in list(self.ledger.entries.values()) if e.kind == "hub" and e.state == "acked"
        }
        while time.monotonic() - started < timeout:
            try:
                jobs = await self.follow_up(timed)
            except RpcError:  # the service is busy or away for a moment: ask again
                jobs = {}
            if jobs and all(jobs.get(job, {}).get("state") == "done" for job in acked):
                break
            await asyncio.sleep(2.0)
        with contextlib.suppress(RpcError):
            await self.follow_up(timed)  # the last ones' first persona, registered
        return time.monotonic() - started

    async def check(self, started: float, *, final: bool = False) -> list[Violation]:
        """Hold the service's jobs, their outputs and the registered personas to the ledger."""
        violations: list[Violation] = []
        jobs = await self.listed()
        for nonce, entry in list(self.ledger.entries.items()):
            if entry.kind == "hub profile":
                if entry.settled_at <= started:
                    violations += await self._check_registered(nonce, entry)
                continue
            if entry.kind != "hub":
                continue
            job_id = entry.expect["job_id"]
            # Taken off the list whatever its state: a job whose hub.run is still unanswered (or
            # was answered after this check began) is the load's, not a phantom.
            job = jobs.pop(job_id, None)
            if entry.state == "pending" or entry.settled_at > started:
                continue
            if job is None:
                if entry.state == "acked":
                    violations.append(
                        Violation("lost", "hub", "cap:hub", nonce, f"job {job_id} acked, not listed")
                    )
                continue
            if entry.state == "refused":
                violations.append(
                    Violation("phantom", "hub", "cap:hub", nonce, f"refused, yet job {job_id} exists")
                )
            asked = entry.expect["requirements"]
            got = {k: job["requirements"].get(k) for k in asked}
            if got != asked:
                violations.append(Violation("torn", "hub", "cap:hub", nonce, f"asked {asked}, listed {got}"))
            if job["state"] == "done":
                violations += await self._check_output(nonce, job)
            elif final and entry.state == "acked":
                violations.append(
                    Violation("lost", "hub", "cap:hub", nonce, f"job {job_id} never finished: {job['state']}")
                )
        for job_id in jobs:  # listed, but this run never asked for it
            violations.append(Violation("phantom", "hub", "cap:hub", job_id, "a job the load never started"))
        return violations

    async def _check_output(self, nonce: str, job: dict[str, Any]) -> list[Violation]:
        job_id = job["job_id"]
        personas: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            page = await retry(
                self.client, "hub.personas", {"job_id": job_id, "offset": offset, "limit": 500}, to="cap:hub"
            )
            personas += page["personas"]
            offset = page["next_offset"]
        self.outputs[job_id] = personas
        out: list[Violation] = []
        ids = [p["id"] for p in personas]
        if len(ids) != len(set(ids)):
            out.append(Violation("duplicated", "hub", "cap:hub", nonce, f"{job_id}: an id twice in {ids}"))
        if len(personas) != job["kept"]:
            out.append(
                Violation("torn", "hub", "cap:hub", nonce, f"{job_id}: kept {job['kept']}, read {len(ids)}")
            )
        asked = self.ledger.entries[nonce].expect["requirements"]
        same = [
            other
            for other, entry in self.jobs.items()
            if other != job_id and entry.expect["requirements"] == asked and other in self.outputs
        ]
        for other in same[:1]:
            if self.outputs[other] != personas:
                out.append(
                    Violation(
                        "torn",
                        "hub",
                        "cap:hub",
                        nonce,
                        f"{job_id}: not the personas of {other} (same requirements)",
                    )
                )
        return out

    async def _check_registered(self, nonce: str, entry: Any) -> list[Violation]:
        pid = entry.expect["persona_id"]
        try:
            answer = await retry(
                self.client, "persona.get", {"persona_id": pid}, to="cap:registry", attempts=3
            )
        except RpcError as exc:
            if exc.reason != "unknown_persona":
                raise
            if entry.state != "acked":
                return []  # not acknowledged, and not there: either way is right
            return [Violation("lost", "hub profile", "cap:registry", nonce, f"{pid} acked, not there")]
        if not answer["profile"]["description"].startswith(entry.expect["text"]):
            got = answer["profile"]["description"][:80]
            return [Violation("torn", "hub profile", "cap:registry", nonce, f"description {got!r}…")]
        return []

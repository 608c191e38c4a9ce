"""The pieces of one skill: the partial file they are written into, and the workers that fetch them.

See daemon/mesh/swarm.py for the whole download; this is its inner loop.
Every seeder gets ``window`` workers pulling piece indexes off one shared
queue; each piece's sha256 is checked on arrival: a bad one bans its seeder
for this download (kept in ``state.json`` beside the partial file) and goes
back on the queue; a failed request (error, disconnect, timeout) goes back
too and its seeder backs off, dropped after ``max_failures`` failures in a
row; OVERLOADED is waited out for ``data.retry_after_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import ErrorCode, RpcError
from protocol.commands import skills as m

from ..client import BusClient
from ..files import atomic_write
from ..state import ensure_private_dir
from .manifest import piece_bounds

__all__ = [
    "PARTIAL_MAX_AGE_S",
    "Partial",
    "Progress",
    "SwarmLimits",
    "Totals",
    "Transfer",
    "progress_event",
    "sweep_partials",
]

log = logging.getLogger("personad.mesh.swarm")

Progress = Callable[[m.ProgressEvent], Awaitable[None]]


@dataclass(frozen=True)
class SwarmLimits:
    #: How long one piece request may take before it counts as a failure.
    piece_timeout_ms: int = 30_000
    #: Failures in a row after which a seeder is dropped from this download.
    max_failures: int = 4
    #: First backoff after a failure; doubles with each failure in a row.
    backoff_s: float = 0.1
    #: Longest OVERLOADED retry_after honoured in one wait (then it asks again).
    max_wait_s: float = 30.0
    #: Deadline of tracker and skill.have look-ups.
    lookup_ms: int = 5_000
    #: Peers on the bus asked whether they seed a skill (beside those the tracker names).
    max_candidates: int = 64
    #: Piece requests of one download in flight at once, all seeders together (the bus
    #: refuses a client more than 256 in flight).
    max_inflight: int = 128


@dataclass
class Totals:
    """What one fetch did, across the parents and the skill."""

    bytes: int = 0
    resumed: int = 0
    seeders: dict[str, int] = field(default_factory=dict)
    banned: list[str] = field(default_factory=list)


@dataclass
class _Source:
    node: str
    failures: int = 0
    out: bool = False


class Partial:
    """``<state>/mesh/partial/<skill_id>/``: the file being filled, and who was banned."""

    def __init__(self, folder: Path, manifest: m.SkillManifest) -> None:
        self.dir = folder
        self.manifest = manifest
        self.data = folder / "data"
        self.state = folder / "state.json"
        self.fd = -1
        self.done: set[int] = set()
        self.banned: list[str] = []

    @property
    def count(self) -> int:
        return len(self.manifest.piece_hashes)

    def open(self) -> None:
        """Create or reopen the file; re-hash what it holds (daemon/mesh/swarm.py: resuming)."""
        ensure_private_dir(self.dir.parent.parent)
        ensure_private_dir(self.dir.parent)
        ensure_private_dir(self.dir)
        self.fd = os.open(self.data, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        size = os.fstat(self.fd).st_size
        if size != self.manifest.size:
            os.ftruncate(self.fd, self.manifest.size)
            if size == 0 and hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(self.fd, 0, self.manifest.size)  # fail now if the disk is full
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:  # a filesystem without fallocate: sparse is fine
                        log.debug("posix_fallocate: %s", exc)
                    else:
                        self.close()
                        self.data.unlink(missing_ok=True)
                        raise RpcError(
                            ErrorCode.INTERNAL_ERROR,
                            f"no room for {self.manifest.size} bytes of {self.manifest.skill!r} in "
                            f"{self.dir}: the disk is full (nothing was downloaded)",
                            {"reason": "disk_full", "bytes": self.manifest.size},
                        ) from None
        else:
            for index, expected in enumerate(self.manifest.piece_hashes):
                offset, length = piece_bounds(self.manifest, index)
                if hashlib.sha256(os.pread(self.fd, length, offset)).hexdigest() == expected:
                    self.done.add(index)
        try:
            self.banned = list(json.loads(self.state.read_text("utf-8")).get("banned", []))
        except (OSError, ValueError, AttributeError):
            self.banned = []

    def write(self, index: int, data: bytes) -> None:
        offset, _ = piece_bounds(self.manifest, index)
        os.pwrite(self.fd, data, offset)
        self.done.add(index)

    def ban(self, node: str) -> None:
        if node not in self.banned:
            self.banned.append(node)
            atomic_write(self.state, json.dumps({"banned": self.banned}).encode("utf-8"), mode=0o600)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Transfer:
    """The pieces still missing of one skill, pulled from its seeders by ``window`` workers each."""

    def __init__(
        self,
        client: BusClient,
        limits: SwarmLimits,
        sid: str,
        manifest: m.SkillManifest,
        partial: Partial,
        seeders: list[str],
        window: int,
        emit: Progress,
        phase: str,
        totals: Totals,
    ) -> None:
        self.client = client
        self.limits = limits
        self.sid = sid
        self.manifest = manifest
        self.partial = partial
        self.sources = [_Source(node) for node in seeders]
        self.window = window
        self.emit = emit
        self.phase = phase
        self.totals = totals
        self.total = len(manifest.piece_hashes)
        self.pending = deque(i for i in range(self.total) if i not in partial.done)
        self.cond = asyncio.Condition()
        #: Set when every piece is in: workers waiting out a backoff stop waiting.
        self.finished = asyncio.Event()
        self.slots = asyncio.Semaphore(limits.max_inflight)
        self.step = max(1, self.total // 64)

    @property
    def complete(self) -> bool:
        return len(self.partial.done) == self.total

    async def run(self) -> None:
        if not self.complete:
            await self._progress()
            try:
                async with asyncio.TaskGroup() as tg:
                    for source in self.sources:
                        for _ in range(self.window):
                            tg.create_task(self._worker(source))
            except* OSError as group:  # writing the partial file (a full disk): the pieces so far stay
                raise RpcError(
                    ErrorCode.INTERNAL_ERROR,
                    f"cannot write {self.partial.data}: {group.exceptions[0]}",
                ) from None
        if not self.complete:
            missing = self.total - len(self.partial.done)
            banned = ", ".join(self.totals.banned) or "none"
            raise RpcError(
                ErrorCode.TARGET_OFFLINE,
                f"{missing} of {self.total} pieces of {self.manifest.skill!r} could not be had: "
                f"no seeder is left ({len(self.sources)} tried, banned: {banned})",
                {"missing": missing},
            )

    async def _progress(self) -> None:
        done = len(self.partial.done)
        size = self.manifest.size
        bytes_done = min(size, done * self.manifest.piece_size)
        in_use = sum(1 for s in self.sources if not s.out)
        await self.emit(
            progress_event(
                self.sid,
                self.manifest.skill,
                self.phase,
                done,
                self.total,
                bytes_done,
                in_use,
                self.totals.banned,
            )
        )

    async def _take(self, source: _Source) -> int | None:
        async with self.cond:
            while not self.pending and not self.complete and not source.out:
                await self.cond.wait()
            if self.complete or source.out:
                return None
            return self.pending.popleft()

    async def _give_back(self, index: int) -> None:
        async with self.cond:
            self.pending.appendleft(index)
            self.cond.notify_all()

    async def _drop(self, source: _Source, why: str) -> None:
        source.out = True
        log.info("%s: dropping seeder %s: %s", self.manifest.skill, source.node, why)
        async with self.cond:
            self.cond.notify_all()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` (a backoff, a retry_after), or less if the last piece arrives meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), seconds)

    async def _worker(self, source: _Source) -> None:
        limits = self.limits
        while (index := await self._take(source)) is not None:
            try:
                async with self.slots:
                    answer = await self.client.call(
                        "skill.piece",
                        {"skill_id": self.sid, "index": index},
                        to=source.node,
                        deadline_ms=limits.piece_timeout_ms,
                    )
            except RpcError as exc:
                await self._give_back(index)
                retry = exc.retry_after_ms
                if exc.code == ErrorCode.OVERLOADED and retry is not None:
                    await self._pause(min(retry / 1000, limits.max_wait_s))
                    continue
                source.failures += 1
                if source.failures >= limits.max_failures:
                    await self._drop(source, f"{source.failures} failures in a row, the last: {exc.message}")
                    return
                await self._pause(limits.backoff_s * 2 ** (source.failures - 1))
                continue
            data = answer.get("data") if isinstance(answer, dict) else None
            if (
                not isinstance(data, bytes)
                or hashlib.sha256(data).hexdigest() != self.manifest.piece_hashes[index]
            ):
                self.partial.ban(source.node)
                if source.node not in self.totals.banned:
                    self.totals.banned.append(source.node)
                await self._give_back(index)
                await self._drop(source, f"piece {index} does not match its hash: banned")
                return
            if index in self.partial.done:
                continue  # another seeder's copy landed first (a re-queued piece)
            self.partial.write(index, data)
            source.failures = 0
            self.totals.bytes += len(data)
            self.totals.seeders[source.node] = self.totals.seeders.get(source.node, 0) + 1
            done = len(self.partial.done)
            if done % self.step == 0 or done == self.total:
                await self._progress()
            if self.complete:
                self.finished.set()
                async with self.cond:
                    self.cond.notify_all()


#: A partial download untouched this long is removed when the peer starts (a week).
PARTIAL_MAX_AGE_S = 7 * 86400


def sweep_partials(
    partial_root: Path, *, busy: set[str], max_age_s: float = PARTIAL_MAX_AGE_S, now: float | None = None
) -> list[str]:
    """Remove the partial downloads under ``partial_root`` untouched for ``max_age_s``, but ``busy`` ones.

    A fetch that was stopped and never asked for again would otherwise keep
    its pieces on disk for ever. Returns the skill ids removed.
    """
    now = time.time() if now is None else now
    removed: list[str] = []
    try:
        folders = list(partial_root.iterdir())
    except FileNotFoundError:
        return removed
    for folder in folders:
        try:
            newest = max((f.stat().st_mtime for f in folder.iterdir()), default=folder.stat().st_mtime)
        except OSError:
            continue
        if now - newest > max_age_s and folder.name not in busy:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        days = max_age_s / 86400
        log.info("removed %d partial download(s) untouched for %.0f days", len(removed), days)
    return removed


def progress_event(
    sid: str,
    skill: str,
    phase: Any,
    done: int,
    total: int,
    bytes_done: int,
    seeders: int,
    banned: list[str],
) -> m.ProgressEvent:
    return m.ProgressEvent(
        skill_id=sid,
        skill=skill,
        phase=phase,
        pieces_done=done,
        pieces_total=total,
        bytes_done=bytes_done,
        seeders=seeders,
        banned=list(banned),
    )

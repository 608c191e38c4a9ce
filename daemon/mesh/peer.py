"""The seeding half of a mesh peer: its catalogue of manifests, and the pieces it serves.

An installation seeds a skill iff three things hold: its signed manifest is
saved in ``<state>/mesh/manifests/<skill_id>.json`` (0600 files in a 0700
folder, written atomically), it verifies (signature, and its hash is the
file's name), and the adapter store holds the object with that sha256 at the
manifest's size. The store is the only copy of the bytes: a piece is one
pread of the store's weights file (manifest.read_piece), never a copy. The
size check is a stat per request; the hash is not re-checked here (that
would read the whole file per piece) -- the downloader checks each piece
against the manifest, so a damaged object only gets its seeder banned.

Manifests heard on ``skills.announced`` from other peers are kept too
(``<state>/mesh/heard/``, bounded), unverified until used: a download
verifies whatever manifest it uses, wherever it came from, so the error a
fetcher sees for a forged one is the signature's, and the peer can find a
manifest without the tracker.

Pieces are rate-limited per requester (the bus-stamped caller id): a token
bucket in bytes per second with a burst of a few pieces, and a cap on the
requests one requester has in flight. Over either: OVERLOADED with
``data.retry_after_ms``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import ErrorCode, RpcError
from protocol.commands import skills as m
from protocol.commands.skills import SkillManifest

from ..client import CallContext
from ..files import atomic_write
from ..inference.adapters import WEIGHTS_FILE, AdapterRecord, AdapterStore
from ..inference.errors import AdapterCorrupt, AdapterNotFound, InvalidAdapterName
from ..registry.bundle_keys import SigningKey
from ..state import ensure_private_dir
from .manifest import (
    ManifestError,
    build_manifest,
    canonical,
    parse_manifest,
    piece_bounds,
    read_piece,
    skill_id,
    verify_manifest,
)

__all__ = ["Catalogue", "PieceLimits", "RateLimiter", "Seeder", "invalid"]

log = logging.getLogger("personad.mesh")

#: Manifests heard from other peers kept on disk (the oldest go first).
MAX_HEARD = 2000


def invalid(field_name: str, message: str) -> RpcError:
    """INVALID_PARAMS naming the field, in the dispatcher's message style."""
    return RpcError(
        ErrorCode.INVALID_PARAMS, f"invalid params: {field_name}: {message}", {"field": field_name}
    )


class Catalogue:
    """The manifests this installation seeds (verified) and those it heard of (not yet)."""

    def __init__(self, state_root: Path, store: AdapterStore) -> None:
        self.store = store
        self.dir = state_root / "mesh" / "manifests"
        self.heard_dir = state_root / "mesh" / "heard"
        self._own: dict[str, SkillManifest] = {}
        self._heard: dict[str, SkillManifest] = {}
        #: Pieces served per skill since this process started (skill.held).
        self.served: dict[str, int] = {}

    def load(self) -> None:
        """Read both folders; a manifest that does not verify as its file name says is skipped."""
        for folder in (self.dir, self.heard_dir):
            ensure_private_dir(folder.parent)
            ensure_private_dir(folder)
        self._own = dict(self._read(self.dir, verify=True))
        self._heard = dict(self._read(self.heard_dir, verify=False))

    def _read(self, folder: Path, *, verify: bool) -> Iterator[tuple[str, SkillManifest]]:
        for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                manifest = parse_manifest(json.loads(path.read_bytes()))
                if verify:
                    verify_manifest(manifest, expected_id=path.stem)
                elif skill_id(manifest) != path.stem:
                    raise ManifestError("its hash is not its file name")
            except (OSError, ValueError) as exc:
                log.warning("skipping %s: %s", path, exc)
                continue
            yield path.stem, manifest

    # -- seeding -------------------------------------------------------------------------

    def save(self, manifest: SkillManifest) -> str:
        """Verify and keep a manifest this installation seeds; returns its skill id."""
        sid = verify_manifest(manifest)
        ensure_private_dir(self.dir)
        atomic_write(self.dir / f"{sid}.json", canonical(manifest.model_dump(mode="json")), mode=0o600)
        self._own[sid] = manifest
        return sid

    def holds(self, manifest: SkillManifest) -> bool:
        """Whether the store has the object at the manifest's size (a stat, not a hash)."""
        try:
            path = self.store.object_path(manifest.adapter_sha256) / WEIGHTS_FILE
            return path.stat().st_size == manifest.size
        except (OSError, ValueError):
            return False

    def seeded(self, sid: str) -> SkillManifest | None:
        manifest = self._own.get(sid)
        return manifest if manifest is not None and self.holds(manifest) else None

    def seeded_ids(self) -> list[str]:
        return [sid for sid, manifest in self._own.items() if self.holds(manifest)]

    def seeded_items(self) -> list[tuple[str, SkillManifest]]:
        return [(sid, m) for sid, m in self._own.items() if self.holds(m)]

    def own_for_hash(self, adapter_sha256: str, name: str) -> SkillManifest | None:
        """A saved manifest of this installation for that adapter under that name (the newest)."""
        mine = [m for m in self._own.values() if m.adapter_sha256 == adapter_sha256 and m.skill == name]
        return max(mine, key=lambda m: m.published_at, default=None)

    # -- what others announced -----------------------------------------------------------

    def hear(self, manifest: SkillManifest) -> Callable[[], None] | None:
        """Keep a manifest another peer announced (bounded; checked when it is used).

        The catalogue changes at once; the files follow in the returned step,
        which the caller runs off the event loop (an fsync per announcement
        must not stall the peer's serving). None: nothing to write.
        """
        sid = skill_id(manifest)
        if sid in self._heard or sid in self._own:
            return None
        self._heard[sid] = manifest
        evicted = []
        while len(self._heard) > MAX_HEARD:
            oldest = next(iter(self._heard))
            del self._heard[oldest]
            evicted.append(oldest)
        data = canonical(manifest.model_dump(mode="json"))

        def persist() -> None:
            ensure_private_dir(self.heard_dir)
            atomic_write(self.heard_dir / f"{sid}.json", data, mode=0o600)
            for old in evicted:
                (self.heard_dir / f"{old}.json").unlink(missing_ok=True)

        return persist

    def known(self, sid: str) -> SkillManifest | None:
        """Any manifest by id: seeded here, or heard of (unverified)."""
        return self._own.get(sid) or self._heard.get(sid)

    def known_for_hash(self, adapter_sha256: str) -> list[tuple[str, SkillManifest]]:
        """Every manifest known for an adapter hash, newest first."""
        found = {
            sid: m
            for sid, m in [*self._heard.items(), *self._own.items()]
            if m.adapter_sha256 == adapter_sha256
        }
        return sorted(found.items(), key=lambda item: item[1].published_at, reverse=True)


@dataclass(frozen=True)
class PieceLimits:
    """How much one requester may take from this peer."""

    #: Sustained rate, bytes per second, per requester.
    rate_bytes_s: float = 64 * 1024 * 1024
    #: The bucket holds this many pieces (of the skill asked for): a burst.
    burst_pieces: int = 4
    #: Piece requests one requester may have in flight here.
    max_concurrent: int = 8


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    inflight: int = 0
    last_used: float = field(default_factory=time.monotonic)


class RateLimiter:
    """Per-requester token bucket plus an in-flight cap; :meth:`admit` raises OVERLOADED."""

    def __init__(self, limits: PieceLimits) -> None:
        self.limits = limits
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, requester: str, length: int, piece_size: int) -> None:
        """Take ``length`` bytes of ``requester``'s allowance and one in-flight slot, or refuse."""
        now = time.monotonic()
        capacity = max(self.limits.burst_pieces * piece_size, length)
        bucket = self._buckets.get(requester)
        if bucket is None:
            self._forget_idle(now)
            bucket = self._buckets[requester] = _Bucket(tokens=capacity, stamp=now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.stamp) * self.limits.rate_bytes_s)
        bucket.stamp = bucket.last_used = now
        if bucket.inflight >= self.limits.max_concurrent:
            # About one piece's time at the allowed rate: when a slot is likely free.
            wait_ms = max(10, math.ceil(length / self.limits.rate_bytes_s * 1000))
            raise _overloaded(f"{bucket.inflight} piece requests already in flight from {requester}", wait_ms)
        if bucket.tokens < length:
            wait_ms = max(1, math.ceil((length - bucket.tokens) / self.limits.rate_bytes_s * 1000))
            raise _overloaded(f"{requester} is over {self.limits.rate_bytes_s:.0f} bytes/s", wait_ms)
        bucket.tokens -= length
        bucket.inflight += 1

    def release(self, requester: str) -> None:
        bucket = self._buckets.get(requester)
        if bucket is not None and bucket.inflight > 0:
            bucket.inflight -= 1

    def _forget_idle(self, now: float) -> None:
        # A bucket idle long enough to be full again is the same as no bucket.
        if len(self._buckets) < 256:
            return
        for requester, bucket in list(self._buckets.items()):
            if bucket.inflight == 0 and now - bucket.last_used > 60:
                del self._buckets[requester]


def _overloaded(message: str, retry_after_ms: int) -> RpcError:
    return RpcError(
        ErrorCode.OVERLOADED, f"{message}; retry in {retry_after_ms} ms", {"retry_after_ms": retry_after_ms}
    )


class Seeder:
    """skill.announce, skill.held, skill.have and skill.piece, over a :class:`Catalogue`.

    ``publish`` sends an event on the bus (the peer's client); ``node`` is the
    peer's client id, ``base_model_id`` what this installation runs.
    """

    def __init__(
        self,
        *,
        catalogue: Catalogue,
        key: SigningKey,
        publish: Callable[[str, Any], Awaitable[int]],
        node: str,
        base_model_id: str,
        limits: PieceLimits | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.store = catalogue.store
        self.key = key
        self.publish = publish
        self.node = node
        self.base_model_id = base_model_id
        self.limiter = RateLimiter(limits or PieceLimits())

    async def publish_have(self) -> int:
        """Tell the bus everything seeded here (each time all of it: HaveEvent replaces the last)."""
        event = m.HaveEvent(skill_ids=self.catalogue.seeded_ids())
        return await self.publish(m.HAVE_TOPIC, event.model_dump(mode="json"))

    # -- skill.announce ------------------------------------------------------------------

    async def announce(self, p: m.AnnounceParams, ctx: CallContext | None) -> m.AnnounceResult:
        try:
            levels = self.store.resolve(p.skill)
        except (AdapterNotFound, InvalidAdapterName) as exc:
            raise invalid("skill", str(exc)) from None
        except AdapterCorrupt as exc:
            raise invalid("skill", f"the store cannot read it: {exc}") from None
        # Parents first, each signed once: a fetcher finds them (by hash, on the
        # tracker or in what it heard) before it can install the level above.
        for parent in levels[:-1]:
            if self.catalogue.own_for_hash(parent.sha256, parent.name) is None:
                manifest = await self._sign(parent, p.piece_size, None, [])
                await self._publish_manifest(manifest)
        manifest = await self._sign(levels[-1], p.piece_size, p.effectiveness, p.usage_scenarios)
        delivered = await self._publish_manifest(manifest)
        await self.publish_have()
        sid = skill_id(manifest)
        log.info("announced %s as %s (%d bytes)", manifest.skill, sid[:12], manifest.size)
        return m.AnnounceResult(skill_id=sid, manifest=manifest, delivered=delivered)

    async def _sign(
        self, record: AdapterRecord, piece_size: int, effectiveness: float | None, scenarios: list[str]
    ) -> m.SkillManifest:
        base = record.meta.get("base_model")
        manifest = await asyncio.to_thread(  # hashes the weights: off the event loop
            build_manifest,
            self.store,
            record,
            self.key,
            base_model_id=base if isinstance(base, str) and base else self.base_model_id,
            piece_size=piece_size,
            effectiveness=effectiveness,
            usage_scenarios=scenarios,
        )
        self.catalogue.save(manifest)
        return manifest

    async def _publish_manifest(self, manifest: m.SkillManifest) -> int:
        return await self.publish(m.ANNOUNCED_TOPIC, manifest.model_dump(mode="json"))

    # -- skill.held / skill.have ---------------------------------------------------------

    async def held(self, p: m.HeldParams, ctx: CallContext | None) -> m.HeldResult:
        return m.HeldResult(
            node=self.node,
            publisher=self.key.public_hex,
            base_model_id=self.base_model_id,
            skills=[
                m.HeldEntry(
                    skill_id=sid,
                    skill=manifest.skill,
                    adapter_sha256=manifest.adapter_sha256,
                    size=manifest.size,
                    publisher=manifest.publisher,
                    pieces_served=self.catalogue.served.get(sid, 0),
                )
                for sid, manifest in self.catalogue.seeded_items()
            ],
        )

    async def have(self, p: m.HaveParams, ctx: CallContext | None) -> m.HaveResult:
        manifest = self.catalogue.seeded(p.skill_id)
        pieces = len(manifest.piece_hashes) if manifest is not None else 0
        return m.HaveResult(skill_id=p.skill_id, have=manifest is not None, pieces=pieces)

    # -- skill.piece ---------------------------------------------------------------------

    async def piece(self, p: m.PieceParams, ctx: CallContext | None) -> m.PieceResult:
        manifest = self.catalogue.seeded(p.skill_id)
        if manifest is None:
            raise invalid("skill_id", f"{self.node} does not seed {p.skill_id[:16]}…")
        if p.index >= len(manifest.piece_hashes):
            raise invalid("index", f"piece {p.index} is out of range (0..{len(manifest.piece_hashes) - 1})")
        _, length = piece_bounds(manifest, p.index)
        requester = (ctx.caller if ctx is not None else None) or "anonymous"
        self.limiter.admit(requester, length, manifest.piece_size)
        try:
            path = self.store.object_path(manifest.adapter_sha256) / WEIGHTS_FILE
            data = await asyncio.to_thread(read_piece, path, manifest, p.index)
        finally:
            self.limiter.release(requester)
        self.catalogue.served[p.skill_id] = self.catalogue.served.get(p.skill_id, 0) + 1
        return m.PieceResult(skill_id=p.skill_id, index=p.index, data=data)

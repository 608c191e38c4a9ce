"""Tokens, grants and revocations shared by the nodes of a cluster (JetStream key-value).

Each machine keeps its own token file (``personad token add`` and ``revoke``
work there as they do without a cluster). A federated node publishes its
file's tokens to the JetStream key-value bucket ``personad_tokens``, keyed
by the token's SHA-256 (the secret itself never leaves the machine, as it is
never stored anywhere), and watches the bucket: a token made on any machine
is accepted on every node.

A revocation is a tombstone, not a deletion: when a token leaves the file of
the node that has it, that node writes ``{"revoked": ...}`` under its key.
Every node then refuses the token even if its own file still lists it (a file
copied to every machine), and each node's sweeper closes its connections
with 4003 within about a second. A token is published on the node's next
sweep (once a second), or at once when that node accepts it first: a client
that moves to another node when its own dies is known there. Tokens are published with ``create``
(which fails on an existing key), so a node starting with an old copy of a
file cannot bring a revoked token back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from ..tokens import TokenEntry, TokenStore, hash_token
from .federation_link import open_watched_bucket

log = logging.getLogger("personad.bus.federation")

BUCKET = "personad_tokens"

Queue = Callable[[Callable[[], Awaitable[Any]]], None]


class SharedTokens(TokenStore):
    """This machine's token file, plus every other node's tokens, minus every revocation."""

    def __init__(self, local: TokenStore, *, node: str, queue: Queue) -> None:
        super().__init__(local.path)
        self.local = local
        self.node = node
        self._queue = queue
        self._shared: dict[str, TokenEntry] = {}
        self._revoked: set[str] = set()
        #: This file's tokens as last published, by digest; None until the first sync.
        self._published: dict[str, TokenEntry] | None = None
        self._kv: KeyValue | None = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self, js: JetStreamContext) -> None:
        # Everything already stored (tombstones included) is read before this
        # node accepts a hello, and before it publishes its own file.
        self._kv, self._watch = await open_watched_bucket(js, BUCKET, self._apply, "federation-tokens")
        self.entries()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()

    def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in ("DEL", "PURGE") or not value:
            self._shared.pop(key, None)
            return
        try:
            doc = json.loads(value)
            if "revoked" in doc:
                if key not in self._revoked:
                    log.info("token %s revoked (by node %s)", doc.get("name", key[:12]), doc.get("node"))
                self._revoked.add(key)
                self._shared.pop(key, None)
            elif key not in self._revoked:
                raw = doc["entry"]
                self._shared[key] = TokenEntry(**{**raw, "grants": tuple(raw["grants"])})
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a bad entry %s in %s: %s", key[:12], BUCKET, exc)

    # -- what the bus asks -------------------------------------------------------------

    def verify(self, token: str) -> TokenEntry | None:
        digest = hash_token(token)
        if digest in self._revoked:
            return None
        entry = self.local.verify(token)
        if entry is not None:
            if self._kv is not None and self._published is not None and digest not in self._published:
                # Made since the last sweep (a persona's own token, a moment old): publish it
                # now, not up to a second later, so that if this node dies before its next
                # sweep, the client it just accepted is known on the node it moves to. Only
                # this one: the sweep publishes the rest of the file.
                self._published[digest] = entry
                self._queue(_create(self._kv, digest, self._entry_value(entry)))
            return entry
        shared = self._shared.get(digest)
        if shared is not None and hmac.compare_digest(shared.sha256, digest):
            return shared
        return None

    def by_digest(self, digest: str) -> TokenEntry | None:
        """A valid token by its SHA-256 (how another node names its caller's token)."""
        if digest in self._revoked:
            return None
        for entry in self.local.entries():
            if entry.sha256 == digest:
                return entry
        return self._shared.get(digest)

    def entries(self) -> list[TokenEntry]:
        """Every valid token; also publishes what changed in this machine's file
        (the bus's sweeper calls this once a second)."""
        local = {e.sha256: e for e in self.local.entries()}
        self._sync(local)
        merged = {**self._shared, **local}
        valid = (e for digest, e in merged.items() if digest not in self._revoked)
        return sorted(valid, key=lambda e: e.created_at)

    def _sync(self, local: dict[str, TokenEntry]) -> None:
        kv = self._kv
        if kv is None or (self._published is not None and local.keys() == self._published.keys()):
            return
        before = self._published or {}
        for digest, entry in local.items():
            if digest not in before and digest not in self._revoked:
                self._queue(_create(kv, digest, self._entry_value(entry)))
        for digest in before.keys() - local.keys():
            # Refused here at once; everywhere else when the tombstone arrives.
            self._revoked.add(digest)
            self._shared.pop(digest, None)
            gone = before[digest]
            value = json.dumps({"revoked": time.time(), "name": gone.name, "node": self.node}).encode()
            self._queue(_put(kv, digest, value))
        self._published = local

    def _entry_value(self, entry: TokenEntry) -> bytes:
        return json.dumps({"entry": asdict(entry), "node": self.node}).encode()


def _create(kv: KeyValue, key: str, value: bytes) -> Callable[[], Awaitable[None]]:
    async def create() -> None:
        # Already there: the same token from another node, or its tombstone.
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.create(key, value)

    return create


def _put(kv: KeyValue, key: str, value: bytes) -> Callable[[], Awaitable[None]]:
    async def put() -> None:
        await kv.put(key, value)

    return put

"""Idempotency keys for ``remember``: a retry gets the first call's answer, not a second memory.

A caller that sent ``memory.remember`` and lost the answer (the bus was
killed, its connection dropped, its deadline passed) cannot tell whether the
memory was stored. Sent again with the same ``idempotency_key``, the call is
answered with the id the first one stored (``replayed: true``) instead of
storing it twice. The key is the caller's (a client id, ``caller``): two
callers' equal keys are two keys. Used again for a different memory (other
content, kind, source, subject, context, relevance or pin), it is refused
rather than answered with a memory that is not the one asked for.

The key is written in the same transaction as its memory, so a memory that
is durable has its key, and a key never names a memory that was rolled back:
a persona killed at any point answers the retry as it should. Keys are kept
:data:`KEY_TTL_S` (24 hours, as Stripe's API keeps them), then removed by the
next keyed write; the memory itself is untouched by that. A memory forgotten
since keeps its key until then, and a retry is answered with its id (the
first call's answer) without storing it again. ``brain.erase`` removes the
keys of the memories it erases (ops.erase): a key holds a hash of its
memory's fields, and erased means gone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

from .ops import insert_memories
from .validation import Row

__all__ = ["KEY_TTL_S", "KeyReused", "Keyed", "insert_batch", "keyed"]

#: How long a key is remembered.
KEY_TTL_S: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class Keyed:
    """A caller's key and what it was given for (the memory's fields, hashed)."""

    caller: str
    key: str
    digest: str


@dataclass(frozen=True, slots=True)
class KeyReused:
    """The key was given before, for a different memory (its id)."""

    memory_id: int


def keyed(caller: str, key: str, row: Row) -> Keyed:
    """The key of ``row`` (a checked memory row): the memory's fields, not when it was made."""
    fields = json.dumps(list(row[:-1]), ensure_ascii=False, separators=(",", ":"))
    return Keyed(caller, key, hashlib.sha256(fields.encode("utf-8")).hexdigest())


#: What one submit gets back: its ids and whether they are a replay, or the key's misuse.
Outcome = tuple[list[int], bool] | KeyReused


def insert_batch(db: Any, batch: list[tuple[list[Row], Keyed | None]], now: float) -> list[Outcome]:
    """Insert each submit's rows, in one transaction (the caller's): a keyed submit whose
    key is known is answered from it instead. Expired keys go first, so they are not known."""
    if any(key is not None for _, key in batch):
        db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (now - KEY_TTL_S,))
    outcomes: list[Outcome] = []
    for rows, key in batch:
        if key is None:
            outcomes.append((insert_memories(db, rows), False))
            continue
        known = db.execute(
            "SELECT memory_id, digest FROM idempotency_keys WHERE caller = ? AND key = ?",
            (key.caller, key.key),
        ).fetchone()
        if known is not None:
            outcomes.append(([known[0]], True) if known[1] == key.digest else KeyReused(known[0]))
            continue
        (memory_id,) = insert_memories(db, rows)
        db.execute(
            "INSERT INTO idempotency_keys (caller, key, digest, memory_id, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key.caller, key.key, key.digest, memory_id, now),
        )
        outcomes.append(([memory_id], False))
    return outcomes

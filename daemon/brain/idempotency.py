"""Idempotency keys for writes: a retry gets the first call's answer, not a second row.

A caller that sent ``memory.remember`` or ``persona.performance.record`` and
lost the answer (the bus was killed, its connection dropped, its deadline
passed) cannot tell whether the write was stored. Sent again with the same
``idempotency_key``, the call is answered with the id the first one stored
(``replayed: true``) instead of storing it twice. The key is the caller's (a
client id, ``caller``): two callers' equal keys are two keys. Used again for
a different write (another method, or any field different), it is refused
rather than answered with a row that is not the one asked for.

The key is written in the same transaction as its row, so a row that is
durable has its key, and a key never names a row that was rolled back: a
persona killed at any point answers the retry as it should. Keys are kept
:data:`KEY_TTL_S` (24 hours, as Stripe's API keeps them), then removed by the
next keyed write; the row itself is untouched by that. A row forgotten since
keeps its key until then, and a retry is answered with its id (the first
call's answer) without storing it again. ``brain.erase`` removes the keys of
the memories it erases (ops.erase): a key holds a hash of its row's fields,
and erased means gone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from .errors import InvalidInput
from .ops import insert_memories
from .validation import Row

__all__ = ["KEY_TTL_S", "KeyReused", "Keyed", "expire", "insert_batch", "keyed", "look_up", "remember_key"]

#: How long a key is remembered.
KEY_TTL_S: Final = 86_400.0
REMEMBER: Final = "memory.remember"


@dataclass(frozen=True, slots=True)
class Keyed:
    """A caller's key and what it was given for (the method and the row's fields, hashed)."""

    caller: str
    key: str
    method: str
    digest: str


@dataclass(frozen=True, slots=True)
class KeyReused:
    """The key was given before, for a different write (the row it made)."""

    row_id: int

    def error(self) -> InvalidInput:
        """What the caller is told: the refusal names the field."""
        return InvalidInput(
            "idempotency_key",
            f"was given before for another write (id {self.row_id}); "
            "a retry must send the same call, and a new call a new key",
        )


def keyed(caller: str, key: str, method: str, fields: Sequence[Any]) -> Keyed:
    """The key of a write of ``fields`` (checked values, without the time it is made)."""
    text = json.dumps([method, *fields], ensure_ascii=False, separators=(",", ":"))
    return Keyed(caller, key, method, hashlib.sha256(text.encode("utf-8")).hexdigest())


def expire(db: Any, now: float) -> None:
    """Remove the keys older than KEY_TTL_S (in the caller's transaction)."""
    db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (now - KEY_TTL_S,))


def look_up(db: Any, key: Keyed) -> int | KeyReused | None:
    """The row ``key`` made, KeyReused if it was given for another write, None if unknown."""
    known = db.execute(
        "SELECT row_id, digest FROM idempotency_keys WHERE caller = ? AND key = ?", (key.caller, key.key)
    ).fetchone()
    if known is None:
        return None
    return int(known[0]) if known[1] == key.digest else KeyReused(int(known[0]))


def remember_key(db: Any, key: Keyed, row_id: int, now: float) -> None:
    """Keep ``key`` as the one that made ``row_id`` (in the row's transaction)."""
    db.execute(
        "INSERT INTO idempotency_keys (caller, key, method, digest, row_id, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (key.caller, key.key, key.method, key.digest, row_id, now),
    )


#: What one submit gets back: its ids and whether they are a replay, or the key's misuse.
Outcome = tuple[list[int], bool] | KeyReused


def insert_batch(db: Any, batch: list[tuple[list[Row], Keyed | None]], now: float) -> list[Outcome]:
    """Insert each submit's memories, in one transaction (the caller's): a keyed submit whose
    key is known is answered from it instead. Expired keys go first, so they are not known."""
    if any(key is not None for _, key in batch):
        expire(db, now)
    outcomes: list[Outcome] = []
    for rows, key in batch:
        if key is None:
            outcomes.append((insert_memories(db, rows), False))
            continue
        known = look_up(db, key)
        if known is not None:
            outcomes.append(known if isinstance(known, KeyReused) else ([known], True))
            continue
        (memory_id,) = insert_memories(db, rows)
        remember_key(db, key, memory_id, now)
        outcomes.append(([memory_id], False))
    return outcomes

"""Retention: keeping a brain within its policy's bounds (writer thread).

:func:`enforce` removes unpinned memories, lowest ``0.3 * recency + 0.2 *
relevance`` first (recall's score without the text part: the oldest and
least relevant), until the policy's bounds hold, then hands freed pages back
to the file system (``auto_vacuum = INCREMENTAL``). It deletes in slices of
:data:`SLICE` rows, each its own transaction, so one enforcement never holds
the write lock long. The Brain runs it every ``interval_s``
(:meth:`~daemon.brain.store.Brain.run_retention`).
"""

from __future__ import annotations

import math
from typing import Any

from .ops import in_transaction, live_bytes
from .records import RetentionPolicy, ScoreWeights

__all__ = ["ROUNDS", "SLICE", "enforce"]

#: Rows deleted per transaction.
SLICE = 5_000
#: Rounds of the byte bound (each re-measures, since bytes per row is an estimate). The
#: estimate counts every table's pages against the memories, so a round removes too few,
#: never too many, and the excess shrinks by about two thirds a round: 8 rounds leave
#: under 0.1% of it (4 were too few once a schema added pages no deletion frees).
ROUNDS = 8


def _delete_least_kept(db: Any, count: int, now: float, weights: ScoreWeights) -> int:
    cursor = db.execute(
        "DELETE FROM memories WHERE id IN (SELECT id FROM memories WHERE pinned = 0 "
        "ORDER BY ? * brain_recency(? - created_at) + ? * relevance ASC, id ASC LIMIT ?)",
        (weights.recency, now, weights.relevance, count),
    )
    return int(cursor.rowcount)


def enforce(db: Any, policy: RetentionPolicy, now: float, weights: ScoreWeights) -> int:
    """Delete until ``policy`` holds (writer thread); return how many memories went."""
    removed = 0
    if policy.max_memories is not None:
        while True:
            total: int = db.execute("SELECT count(*) FROM memories").fetchone()[0]
            excess = min(total - policy.max_memories, SLICE)
            if excess <= 0:
                break
            gone = in_transaction(db, _delete_least_kept, excess, now, weights)
            removed += gone
            if gone == 0:  # only pinned memories left
                break
    if policy.max_bytes is not None:
        for _ in range(ROUNDS):
            live = live_bytes(db)
            total = db.execute("SELECT count(*) FROM memories").fetchone()[0]
            if live <= policy.max_bytes or total == 0:
                break
            # Bytes per memory, over-estimated (other tables count too), so a
            # round removes too few rather than too many; the next rounds take the rest.
            per_row = live / total
            want = min(math.ceil((live - policy.max_bytes) / per_row), SLICE)
            gone = in_transaction(db, _delete_least_kept, max(want, 1), now, weights)
            removed += gone
            if gone == 0:
                break
            # Fold FTS5's delete markers into its segments (bounded work), or
            # the index grows while rows are removed (FTS5 'merge' command).
            db.execute("INSERT INTO memories_fts (memories_fts, rank) VALUES ('merge', 500)")
    if removed:
        db.execute("PRAGMA incremental_vacuum")
    return removed

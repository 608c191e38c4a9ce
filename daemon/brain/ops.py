"""Work done on the brain's connections' threads: one function per operation.

Each takes the raw SQLCipher connection first and runs on its aiosqlite
worker thread (``_db.run_on``); writes go through :func:`in_transaction` on
the writer, so a whole operation is one transaction and one thread hop.
Nothing here validates: the Brain has checked every argument already.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import NotFound
from .migrations import migrate
from .records import Goal, Skill, from_epoch
from .validation import Row

__all__ = [
    "GOAL_COLUMNS",
    "SKILL_COLUMNS",
    "TABLES",
    "erase",
    "forget_ids",
    "get_skill",
    "goal_from_row",
    "goal_set",
    "goals_list",
    "in_transaction",
    "insert_emotion",
    "insert_interaction",
    "insert_memories",
    "live_bytes",
    "prepare",
    "skill_from_row",
    "skill_upsert",
    "skill_use",
    "skills_all",
    "stats",
]

TABLES = (
    "memories",
    "skills",
    "interactions",
    "goals",
    "emotions",
    "evolution_history",
    "performance_records",
    "knowledge",
)

_INSERT_MEMORY = (
    "INSERT INTO memories (content, kind, source, subject, context, relevance, pinned, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def in_transaction(db: Any, work: Any, *args: Any) -> Any:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db, *args)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def insert_memories(db: Any, rows: list[Row]) -> list[int]:
    return [db.execute(_INSERT_MEMORY, row).lastrowid for row in rows]


def prepare(db: Any, path: Path) -> tuple[int, int]:
    found, now = migrate(db, path)
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        # A database from before we set auto_vacuum (the seed's): the mode
        # only changes with a VACUUM, once.
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("VACUUM")
    return found, now


def forget_ids(db: Any, ids: list[int]) -> int:
    removed = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        cursor = db.execute(f"DELETE FROM memories WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        removed += cursor.rowcount
    return int(removed)


SKILL_COLUMNS = (
    "skill_id, lora_hash, description, effectiveness, rated_uses, usage_count, acquired_at, last_used_at, "
    "source"
)


def skill_from_row(row: Sequence[Any]) -> Skill:
    return Skill(
        skill_id=row[0],
        lora_hash=row[1],
        description=row[2],
        effectiveness=row[3],
        rated_uses=row[4],
        usage_count=row[5],
        acquired_at=from_epoch(row[6]),
        last_used_at=None if row[7] is None else from_epoch(row[7]),
        source=None if row[8] is None else json.loads(row[8]),
    )


def get_skill(db: Any, skill_id: str) -> Skill:
    row = db.execute(f"SELECT {SKILL_COLUMNS} FROM skills WHERE skill_id = ?", (skill_id,))
    found = row.fetchone()
    if found is None:
        raise NotFound("skill", skill_id)
    return skill_from_row(found)


def skill_upsert(
    db: Any,
    skill_id: str,
    lora_hash: str | None,
    description: str | None,
    now: float,
    source: str | None = None,
) -> Skill:
    """``source`` is JSON text (or None, which keeps the old one, as for the other columns)."""
    db.execute(
        "INSERT INTO skills (skill_id, lora_hash, description, acquired_at, source) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (skill_id) DO UPDATE SET "
        "lora_hash = coalesce(excluded.lora_hash, lora_hash), "
        "description = coalesce(excluded.description, description), "
        "source = coalesce(excluded.source, source)",
        (skill_id, lora_hash, description, now, source),
    )
    return get_skill(db, skill_id)


def skill_use(db: Any, skill_id: str, effectiveness: float | None, now: float) -> Skill:
    # Every right-hand side sees the row before the update, so effectiveness
    # becomes the exact running mean over the rated uses.
    cursor = db.execute(
        "UPDATE skills SET usage_count = usage_count + 1, last_used_at = :now, "
        "effectiveness = CASE WHEN :e IS NULL THEN effectiveness "
        "  ELSE (coalesce(effectiveness, 0.0) * rated_uses + :e) / (rated_uses + 1) END, "
        "rated_uses = rated_uses + (:e IS NOT NULL) "
        "WHERE skill_id = :id",
        {"now": now, "e": effectiveness, "id": skill_id},
    )
    if cursor.rowcount == 0:
        raise NotFound("skill", skill_id)
    return get_skill(db, skill_id)


GOAL_COLUMNS = "id, title, description, status, priority, progress, due_at, created_at, updated_at"


def skills_all(db: Any) -> list[Skill]:
    rows = db.execute(f"SELECT {SKILL_COLUMNS} FROM skills ORDER BY usage_count DESC, skill_id").fetchall()
    return [skill_from_row(row) for row in rows]


def insert_interaction(db: Any, row: tuple[Any, ...]) -> int:
    return int(
        db.execute(
            "INSERT INTO interactions (with_persona, room_id, outcome, learned, subject, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            row,
        ).lastrowid
    )


def insert_emotion(db: Any, row: tuple[Any, ...]) -> int:
    return int(
        db.execute(
            "INSERT INTO emotions (emotion, intensity, valence, trigger, subject, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            row,
        ).lastrowid
    )


def goal_from_row(row: Sequence[Any]) -> Goal:
    return Goal(
        id=row[0],
        title=row[1],
        description=row[2],
        status=row[3],
        priority=row[4],
        progress=row[5],
        due_at=None if row[6] is None else from_epoch(row[6]),
        created_at=from_epoch(row[7]),
        updated_at=from_epoch(row[8]),
    )


def goal_set(db: Any, goal_id: int | None, values: dict[str, Any], now: float) -> Goal:
    if goal_id is None:
        goal_id = db.execute(
            "INSERT INTO goals (title, description, status, priority, progress, due_at, "
            "created_at, updated_at) VALUES (:title, :description, :status, :priority, "
            ":progress, :due_at, :now, :now)",
            {**values, "now": now},
        ).lastrowid
    else:
        cursor = db.execute(
            "UPDATE goals SET title = :title, description = :description, status = :status, "
            "priority = :priority, progress = :progress, due_at = :due_at, updated_at = :now "
            "WHERE id = :id",
            {**values, "now": now, "id": goal_id},
        )
        if cursor.rowcount == 0:
            raise NotFound("goal", goal_id)
    row = db.execute(f"SELECT {GOAL_COLUMNS} FROM goals WHERE id = ?", (goal_id,)).fetchone()
    return goal_from_row(row)


def goals_list(db: Any, status: str | None, limit: int) -> list[Goal]:
    rows = db.execute(
        f"SELECT {GOAL_COLUMNS} FROM goals WHERE ?1 IS NULL OR status = ?1 "
        "ORDER BY priority DESC, id LIMIT ?2",
        (status, limit),
    ).fetchall()
    return [goal_from_row(row) for row in rows]


def live_bytes(db: Any) -> int:
    # int(): SQLCipher answers PRAGMA page_size itself, as text.
    page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
    pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    return (pages - free) * page_size


def erase(db: Any, subject: str | None) -> dict[str, int]:
    def delete(db: Any) -> dict[str, int]:
        removed: dict[str, int] = {}
        # Idempotency keys hold a hash of their memory's fields: they go with it (not counted;
        # a retry of such a write stores it again, as the caller asks).
        if subject is None:
            db.execute("DELETE FROM idempotency_keys")
            for table in TABLES:
                removed[table] = db.execute(f"DELETE FROM {table}").rowcount
        else:
            db.execute(
                "DELETE FROM idempotency_keys WHERE method = 'memory.remember' "
                "AND row_id IN (SELECT id FROM memories WHERE subject = ?)",
                (subject,),
            )
            for table in ("memories", "interactions", "emotions"):
                removed[table] = db.execute(f"DELETE FROM {table} WHERE subject = ?", (subject,)).rowcount
        # The external-content indexes still hold the erased words (delete
        # markers only hide them); 'rebuild' writes each anew from its table.
        db.execute("INSERT INTO memories_fts (memories_fts) VALUES ('rebuild')")
        if subject is None:
            db.execute("INSERT INTO knowledge_fts (knowledge_fts) VALUES ('rebuild')")
        return removed

    removed: dict[str, int] = in_transaction(db, delete)
    # VACUUM rewrites every page, so no free page keeps erased text; the
    # TRUNCATE checkpoint copies it into the file and empties the WAL, which
    # held the old pages too (https://sqlite.org/pragma.html#pragma_wal_checkpoint).
    db.execute("VACUUM")
    busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        raise RuntimeError("WAL checkpoint after erase stayed busy; erase again")
    return removed


def stats(db: Any) -> tuple[dict[str, int], int, int]:
    db.execute("BEGIN")
    try:
        counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        pinned = db.execute("SELECT count(*) FROM memories WHERE pinned = 1").fetchone()[0]
        live = live_bytes(db)
    finally:
        db.execute("COMMIT")
    return counts, pinned, live

"""The brain's schema, as a numbered chain of migrations on ``PRAGMA user_version``.

``MIGRATIONS[i]`` takes a database at version ``i`` to version ``i + 1``. Each
step runs in one ``BEGIN IMMEDIATE`` transaction together with the
``PRAGMA user_version`` bump (the version lives in the database header, page 1,
so it commits or rolls back with the step's DDL: SQLite DDL is transactional).
A crash mid-step leaves the previous version intact, and the next start runs
the step again.

Versions:

1. The seed project's original schema, kept verbatim as the chain's root:
   ISO-8601 text timestamps, free-form ``context``/``learned`` text, no
   ``kind``/``subject``/``pinned``. Seed databases never set ``user_version``;
   a version-0 file that already has a ``memories`` table is taken to be v1.
2. Tables reshaped for what we serve: times as REAL unix seconds (UTC) so
   recency is arithmetic; ``kind``, ``subject``, ``pinned`` on memories;
   ``subject`` on interactions and emotions (so ``erase`` by subject reaches
   them); range CHECKs; new ``goals`` and ``emotions`` tables. Tables are
   rebuilt (create new, copy, drop, rename: SQLite's documented procedure for
   changes ALTER TABLE cannot make) and AUTOINCREMENT counters carried over,
   so ids are never reused.
3. Recall and the queries we serve: the FTS5 external-content index over
   ``memories.content`` with the triggers that keep it in step, and the
   indexes behind recall filters, retention, erase by subject and listings.
4. ``performance_records``: the persona's recorded work (score, success,
   duration per task and session), what ``persona.analytics`` computes from.
5. ``knowledge``: the persona's knowledge base, with its FTS5
   external-content index (content and context) and a stored embedding per
   item with the name of the model that made it.
6. ``evolution_history.detail``: the Academy's round, as one JSON object.
7. ``skills.source``: where an acquired skill came from (JSON; NULL for a
   skill made or recorded here).

A database whose version is newer than :data:`LATEST` is refused with
:class:`~daemon.brain.errors.SchemaTooNew` before anything is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import MigrationFailed, SchemaTooNew

__all__ = ["LATEST", "MIGRATIONS", "Step", "apply_step", "current_version", "migrate", "run_step"]

# sqlcipher3 ships no type information; its Connection mirrors sqlite3's.
RawConnection = Any
Step = Callable[[RawConnection], None]


def _v1_seed_schema(db: RawConnection) -> None:
    db.execute(
        """CREATE TABLE memories (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            content TEXT NOT NULL,
            context TEXT,
            relevance REAL DEFAULT 1.0,
            timestamp TEXT DEFAULT CURRENT_TIMESTAMP,
            source TEXT
        )"""
    )
    db.execute(
        """CREATE TABLE skills (
            skill_id TEXT PRIMARY KEY,
            lora_hash TEXT,
            effectiveness REAL DEFAULT 0.0,
            acquired_at TEXT DEFAULT CURRENT_TIMESTAMP,
            usage_count INTEGER DEFAULT 0
        )"""
    )
    db.execute(
        """CREATE TABLE interactions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            with_persona TEXT,
            room_id TEXT,
            outcome TEXT,
            learned TEXT,
            timestamp TEXT DEFAULT CURRENT_TIMESTAMP
        )"""
    )
    db.execute(
        """CREATE TABLE evolution_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            trigger_pattern TEXT,
            lora_generated TEXT,
            success_rate REAL,
            timestamp TEXT DEFAULT CURRENT_TIMESTAMP
        )"""
    )


# ISO-8601 text (the seed's CURRENT_TIMESTAMP, UTC) to unix seconds; julianday()
# returns NULL on garbage, and such rows get the migration's own time instead.
def _epoch(column: str) -> str:
    return f"coalesce((julianday({column}) - 2440587.5) * 86400.0, :now)"


# Free-form seed text becomes a JSON object: kept as is when it already is one,
# wrapped as {"legacy": text} otherwise, so nothing is lost.
def _json_object(column: str) -> str:
    return (
        f"CASE WHEN {column} IS NULL THEN NULL "
        f"WHEN json_valid({column}) AND json_type({column}) = 'object' THEN json({column}) "
        f"ELSE json_object('legacy', {column}) END"
    )


def _clamp01(expr: str, default: str) -> str:
    return f"min(max(coalesce({expr}, {default}), 0.0), 1.0)"


def _rebuild(db: RawConnection, table: str, create: str, copy: str, now: float) -> None:
    """Replace ``table`` by the one ``create`` makes, filled by ``copy``, keeping its sequence."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    db.execute(create.format(name=f"{table}__new"))
    db.execute(copy.format(name=f"{table}__new"), {"now": now})
    db.execute(f"DROP TABLE {table}")
    db.execute(f"ALTER TABLE {table}__new RENAME TO {table}")
    if row is not None:
        # Deleted rows above max(id) leave a counter the copy cannot see.
        db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (row[0], table))
        db.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT ?, ? "
            "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?)",
            (table, row[0], table),
        )


def _v2_reshape(db: RawConnection) -> None:
    now = time.time()
    _rebuild(
        db,
        "memories",
        """CREATE TABLE {name} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            content TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'note',
            source TEXT NOT NULL DEFAULT '',
            subject TEXT,
            context TEXT CHECK (context IS NULL OR json_valid(context)),
            relevance REAL NOT NULL DEFAULT 0.5 CHECK (relevance BETWEEN 0.0 AND 1.0),
            pinned INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1)),
            created_at REAL NOT NULL
        )""",
        f"""INSERT INTO {{name}} (id, content, kind, source, subject, context, relevance,
                                 pinned, created_at)
            SELECT id, content, 'note', coalesce(source, ''), NULL, {_json_object("context")},
                   {_clamp01("relevance", "0.5")}, 0, {_epoch("timestamp")}
            FROM memories""",
        now,
    )
    _rebuild(
        db,
        "skills",
        """CREATE TABLE {name} (
            skill_id TEXT PRIMARY KEY,
            lora_hash TEXT,
            description TEXT,
            effectiveness REAL CHECK (effectiveness IS NULL OR effectiveness BETWEEN 0.0 AND 1.0),
            rated_uses INTEGER NOT NULL DEFAULT 0,
            usage_count INTEGER NOT NULL DEFAULT 0,
            acquired_at REAL NOT NULL,
            last_used_at REAL
        ) WITHOUT ROWID""",
        f"""INSERT INTO {{name}} (skill_id, lora_hash, description, effectiveness, rated_uses,
                                 usage_count, acquired_at, last_used_at)
            SELECT skill_id, lora_hash, NULL,
                   CASE WHEN effectiveness IS NULL THEN NULL
                        ELSE {_clamp01("effectiveness", "0.0")} END,
                   effectiveness IS NOT NULL, max(coalesce(usage_count, 0), 0),
                   {_epoch("acquired_at")}, NULL
            FROM skills""",
        now,
    )
    _rebuild(
        db,
        "interactions",
        """CREATE TABLE {name} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            with_persona TEXT NOT NULL DEFAULT '',
            room_id TEXT,
            outcome TEXT,
            learned TEXT CHECK (learned IS NULL OR json_valid(learned)),
            subject TEXT,
            created_at REAL NOT NULL
        )""",
        f"""INSERT INTO {{name}} (id, with_persona, room_id, outcome, learned, subject, created_at)
            SELECT id, coalesce(with_persona, ''), room_id, outcome, {_json_object("learned")},
                   NULL, {_epoch("timestamp")}
            FROM interactions""",
        now,
    )
    _rebuild(
        db,
        "evolution_history",
        """CREATE TABLE {name} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            trigger_pattern TEXT,
            lora_generated TEXT,
            success_rate REAL,
            created_at REAL NOT NULL
        )""",
        f"""INSERT INTO {{name}} (id, trigger_pattern, lora_generated, success_rate, created_at)
            SELECT id, trigger_pattern, lora_generated, success_rate, {_epoch("timestamp")}
            FROM evolution_history""",
        now,
    )
    db.execute(
        """CREATE TABLE goals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL,
            description TEXT,
            status TEXT NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'paused', 'done', 'abandoned')),
            priority REAL NOT NULL DEFAULT 0.5 CHECK (priority BETWEEN 0.0 AND 1.0),
            progress REAL NOT NULL DEFAULT 0.0 CHECK (progress BETWEEN 0.0 AND 1.0),
            due_at REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE emotions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            emotion TEXT NOT NULL,
            intensity REAL NOT NULL CHECK (intensity BETWEEN 0.0 AND 1.0),
            valence REAL CHECK (valence IS NULL OR valence BETWEEN -1.0 AND 1.0),
            trigger TEXT,
            subject TEXT,
            created_at REAL NOT NULL
        )"""
    )


def _v3_recall_indexes(db: RawConnection) -> None:
    # External content (FTS5 §4.4.3): the text is stored once, in memories; the
    # index holds only tokens. porter stems English ("patents" finds "patent").
    db.execute(
        """CREATE VIRTUAL TABLE memories_fts USING fts5(
            content,
            content = 'memories',
            content_rowid = 'id',
            tokenize = 'porter unicode61 remove_diacritics 2'
        )"""
    )
    # The triggers follow FTS5 §4.4.3: an external-content index must be told
    # the old text to delete it, so updates are a delete then an insert.
    db.execute(
        """CREATE TRIGGER memories_fts_ai AFTER INSERT ON memories BEGIN
            INSERT INTO memories_fts (rowid, content) VALUES (new.id, new.content);
        END"""
    )
    db.execute(
        """CREATE TRIGGER memories_fts_ad AFTER DELETE ON memories BEGIN
            INSERT INTO memories_fts (memories_fts, rowid, content)
                VALUES ('delete', old.id, old.content);
        END"""
    )
    db.execute(
        """CREATE TRIGGER memories_fts_au AFTER UPDATE OF content ON memories BEGIN
            INSERT INTO memories_fts (memories_fts, rowid, content)
                VALUES ('delete', old.id, old.content);
            INSERT INTO memories_fts (rowid, content) VALUES (new.id, new.content);
        END"""
    )
    db.execute("INSERT INTO memories_fts (memories_fts) VALUES ('rebuild')")
    for statement in (
        # recall without a query, time filters, retention's oldest-first
        "CREATE INDEX memories_created ON memories (created_at)",
        # recall filters by source / kind, newest first
        "CREATE INDEX memories_source ON memories (source, created_at)",
        "CREATE INDEX memories_kind ON memories (kind, created_at)",
        # erase by subject, recall filtered by subject; most rows have none
        "CREATE INDEX memories_subject ON memories (subject, created_at) WHERE subject IS NOT NULL",
        "CREATE INDEX interactions_subject ON interactions (subject) WHERE subject IS NOT NULL",
        "CREATE INDEX interactions_with ON interactions (with_persona, created_at)",
        "CREATE INDEX emotions_created ON emotions (created_at)",
        "CREATE INDEX emotions_subject ON emotions (subject) WHERE subject IS NOT NULL",
        "CREATE INDEX goals_status ON goals (status, priority)",
    ):
        db.execute(statement)


def _v4_performance(db: RawConnection) -> None:
    # persona.performance.record: one row per piece of work, what analytics is computed from.
    db.execute(
        """CREATE TABLE performance_records (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL,
            task TEXT NOT NULL,
            score REAL NOT NULL CHECK (score >= 0 AND score <= 100),
            success INTEGER NOT NULL CHECK (success IN (0, 1)),
            duration_s REAL NOT NULL CHECK (duration_s >= 0),
            user_feedback TEXT,
            context TEXT CHECK (context IS NULL OR json_valid(context)),
            recorded_at REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX performance_recorded ON performance_records (recorded_at)")
    db.execute("CREATE INDEX performance_task ON performance_records (task, recorded_at)")


def _v5_knowledge(db: RawConnection) -> None:
    # persona.knowledge.*: documents the persona knows, searched by full text
    # then re-ranked by embeddings (kept beside the row, with the model that made them).
    db.execute(
        """CREATE TABLE knowledge (
            id INTEGER PRIMARY KEY,
            content TEXT NOT NULL,
            context TEXT,
            tags TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tags)),
            relevance REAL NOT NULL DEFAULT 0.5 CHECK (relevance >= 0 AND relevance <= 1),
            embedding BLOB,
            embed_model TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE VIRTUAL TABLE knowledge_fts USING fts5(
            content,
            context,
            content = 'knowledge',
            content_rowid = 'id',
            tokenize = 'porter unicode61 remove_diacritics 2'
        )"""
    )
    db.execute(
        """CREATE TRIGGER knowledge_fts_ai AFTER INSERT ON knowledge BEGIN
            INSERT INTO knowledge_fts (rowid, content, context) VALUES (new.id, new.content, new.context);
        END"""
    )
    db.execute(
        """CREATE TRIGGER knowledge_fts_ad AFTER DELETE ON knowledge BEGIN
            INSERT INTO knowledge_fts (knowledge_fts, rowid, content, context)
                VALUES ('delete', old.id, old.content, old.context);
        END"""
    )
    db.execute(
        """CREATE TRIGGER knowledge_fts_au AFTER UPDATE OF content, context ON knowledge BEGIN
            INSERT INTO knowledge_fts (knowledge_fts, rowid, content, context)
                VALUES ('delete', old.id, old.content, old.context);
            INSERT INTO knowledge_fts (rowid, content, context) VALUES (new.id, new.content, new.context);
        END"""
    )
    db.execute("CREATE INDEX knowledge_relevance ON knowledge (relevance, id)")


def _v6_evolution_detail(db: RawConnection) -> None:
    # The Academy's rounds (persona.evolution.record): the seed's columns keep
    # their meaning (trigger_pattern, lora_generated, success_rate = the pass
    # rate after), everything else of a round goes in one JSON object.
    db.execute(
        "ALTER TABLE evolution_history ADD COLUMN detail TEXT CHECK (detail IS NULL OR json_valid(detail))"
    )
    db.execute("CREATE INDEX evolution_created ON evolution_history (created_at, id)")


def _v7_skill_source(db: RawConnection) -> None:
    # Where a skill came from when it was not made here: for a skill acquired
    # over the mesh, {"via": "mesh", "skill_id", "publisher", "node", "seeders",
    # "acquired_at"}. Older rows (trained here, or recorded by use) keep NULL.
    db.execute("ALTER TABLE skills ADD COLUMN source TEXT CHECK (source IS NULL OR json_valid(source))")


def _v8_idempotency_keys(db: RawConnection) -> None:
    # Idempotency keys of writes (idempotency.py: memory.remember, persona.performance.record):
    # a retry is answered from its key. Written with its row, in the same transaction; kept a day.
    db.execute(
        """CREATE TABLE idempotency_keys (
            caller TEXT NOT NULL,
            key TEXT NOT NULL,
            method TEXT NOT NULL,
            digest TEXT NOT NULL,
            row_id INTEGER NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (caller, key)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX idempotency_created ON idempotency_keys (created_at)")


#: MIGRATIONS[i] takes version i to version i + 1.
MIGRATIONS: tuple[Step, ...] = (
    _v1_seed_schema,
    _v2_reshape,
    _v3_recall_indexes,
    _v4_performance,
    _v5_knowledge,
    _v6_evolution_detail,
    _v7_skill_source,
    _v8_idempotency_keys,
)
LATEST = len(MIGRATIONS)


def current_version(db: RawConnection) -> int:
    """The database's schema version, counting a seed database (0, with tables) as 1."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        seeded = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'memories'"
        ).fetchone()
        if seeded is not None:
            return 1
    return version


def apply_step(
    db: RawConnection, target: int, step: Step, *, failed: Callable[[int, str], Exception]
) -> None:
    """Run ``step`` and set ``user_version = target`` in one transaction.

    A crash mid-step leaves the previous version, and the next start runs the
    step again. A failing step is rolled back and raised as ``failed(target,
    reason)``. Shared by every SQLCipher file with a chain (the brain, the
    registry), each with its own error class.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        step(db)
        # PRAGMA takes no parameters; target is our own int.
        db.execute(f"PRAGMA user_version = {int(target)}")
    except BaseException as exc:
        db.execute("ROLLBACK")
        if isinstance(exc, Exception):
            raise failed(target, f"{type(exc).__name__}: {exc}") from exc
        raise
    db.execute("COMMIT")


def run_step(db: RawConnection, target: int) -> None:
    """Run the one brain step that makes version ``target``, in its own transaction."""
    apply_step(db, target, MIGRATIONS[target - 1], failed=MigrationFailed)


def migrate(db: RawConnection, path: Path, *, target: int = LATEST) -> tuple[int, int]:
    """Bring the database up to ``target``; return (version found, version now).

    Raises :class:`SchemaTooNew` without writing when the file is newer than
    this code, and :class:`MigrationFailed` when a step fails (that step is
    rolled back; earlier steps stay committed, each a consistent version).
    """
    found = current_version(db)
    if found > LATEST:
        raise SchemaTooNew(path, found, LATEST)
    for version in range(found + 1, target + 1):
        run_step(db, version)
    return found, max(found, target)

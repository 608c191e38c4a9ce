"""The schema chain: real older files are migrated with their data; newer ones refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlcipher3.dbapi2 as sqlcipher

from daemon.brain import Brain, SchemaTooNew
from daemon.brain.migrations import LATEST, MIGRATIONS, run_step

from .conftest import data_digests


def raw(path: Path, key: bytes) -> Any:
    db = sqlcipher.connect(str(path), isolation_level=None)
    db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    return db


def build(path: Path, key: bytes, version: int) -> Any:
    """A real database file at ``version``, made by running only steps 1..version."""
    db = raw(path, key)
    db.execute("PRAGMA journal_mode = WAL")
    for target in range(1, version + 1):
        run_step(db, target)
    return db


def seed_v1(db: Any) -> None:
    """Rows as the seed project wrote them: text times, free-form context."""
    db.executemany(
        "INSERT INTO memories (content, context, relevance, timestamp, source) VALUES (?, ?, ?, ?, ?)",
        [
            ("the client prefers email", '{"channel": "email"}', 0.8, "2024-01-02 03:04:05", "chat"),
            ("patent filing deadline is in march", "not json at all", 1.0, "2024-02-01 00:00:00", None),
            ("gone soon", None, None, "garbage time", "web"),
        ],
    )
    db.execute("DELETE FROM memories WHERE content = 'gone soon'")
    db.execute(
        "INSERT INTO skills (skill_id, lora_hash, effectiveness, acquired_at, usage_count) "
        "VALUES ('legal.patent', 'abc123', 0.7, '2024-01-01 00:00:00', 3)"
    )
    db.execute(
        "INSERT INTO interactions (with_persona, room_id, outcome, learned, timestamp) "
        "VALUES ('persona:bob', 'room:1', 'agreed', '{\"fact\": 1}', '2024-03-01 12:00:00')"
    )
    db.execute(
        "INSERT INTO evolution_history (trigger_pattern, lora_generated, success_rate, timestamp) "
        "VALUES ('many patent questions', 'legal.patent', 0.9, '2024-04-01 00:00:00')"
    )


def seed_v2(db: Any) -> None:
    """Rows in the v2 shape (before the FTS index existed)."""
    db.execute(
        "INSERT INTO memories (content, kind, source, subject, context, relevance, pinned, created_at) "
        "VALUES ('the client prefers email', 'note', 'chat', 'alice', '{\"channel\": \"email\"}', "
        "0.8, 1, 1704164645.0)"
    )
    db.execute(
        "INSERT INTO memories (content, kind, source, subject, context, relevance, pinned, created_at) "
        "VALUES ('patent filing deadline is in march', 'fact', '', NULL, NULL, 1.0, 0, 1706745600.0)"
    )
    db.execute(
        "INSERT INTO goals (title, status, priority, progress, created_at, updated_at) "
        "VALUES ('file the patent', 'active', 0.9, 0.1, 1706745600.0, 1706745600.0)"
    )


def seed_v3(db: Any) -> None:
    """v3 rows (FTS index and its triggers in place): the v2 ones, inserted through the triggers."""
    seed_v2(db)


def seed_v4(db: Any) -> None:
    """v4 adds performance_records: one row, which v5 must keep."""
    seed_v2(db)
    db.execute(
        "INSERT INTO performance_records (session_id, task, score, success, duration_s, recorded_at) "
        "VALUES ('s1', 'draft a claim', 80, 1, 120.0, 1706745600.0)"
    )


def seed_v5(db: Any) -> None:
    """v5 adds knowledge; v6 adds evolution_history.detail, so a v5 round of the seed's shape must stay."""
    seed_v4(db)
    db.execute(
        "INSERT INTO evolution_history (trigger_pattern, lora_generated, success_rate, created_at) "
        "VALUES ('manual', 'legal.patent', 0.8, 1706745600.0)"
    )


def seed_v6(db: Any) -> None:
    """v7 adds skills.source: a v6 skill (no source) must stay, with a null source
    (tests/daemon/brain/test_skill_source.py checks it)."""
    seed_v5(db)
    db.execute(
        "INSERT INTO skills (skill_id, lora_hash, description, acquired_at) "
        "VALUES ('legal.patent', 'abc123', 'patents', 1706745600.0)"
    )


def seed_v7(db: Any) -> None:
    """v8 adds idempotency_keys: a v7 file's rows stay, and its memories have no keys."""
    seed_v6(db)
    db.execute('UPDATE skills SET source = \'{"via": "mesh"}\'')


SEEDS = {1: seed_v1, 2: seed_v2, 3: seed_v3, 4: seed_v4, 5: seed_v5, 6: seed_v6, 7: seed_v7}


def test_every_step_has_a_seeded_starting_file() -> None:
    """Each version below the latest has a fixture here, so each step is tested from a real file."""
    assert set(range(1, LATEST)) == set(SEEDS)
    assert LATEST == len(MIGRATIONS)


@pytest.mark.parametrize("start", sorted(SEEDS))
async def test_older_file_migrates_to_latest_with_data_intact(db_path: Path, key: bytes, start: int) -> None:
    """A real file at version `start`, with data, opens at the latest version, data intact."""
    db = build(db_path, key, start)
    SEEDS[start](db)
    assert start == db.execute("PRAGMA user_version").fetchone()[0]
    db.close()

    async with await Brain.open(db_path, key) as brain:
        assert LATEST == brain.schema_version
        hits = await brain.recall("patent deadline")
        assert ["patent filing deadline is in march"] == [h.content for h in hits]
        email = (await brain.recall("email"))[0]
        assert {"channel": "email"} == email.context
        assert 0.8 == email.relevance
        assert "chat" == email.source
        assert 2024 == email.created_at.year
        if start == 1:
            legacy = (await brain.recall("patent"))[0]
            assert {"legacy": "not json at all"} == legacy.context
            skills = await brain.skills_list()
            assert [("legal.patent", "abc123", 0.7, 3)] == [
                (s.skill_id, s.lora_hash, s.effectiveness, s.usage_count) for s in skills
            ]
            counts = (await brain.stats()).counts
            assert 1 == counts["interactions"]
            assert 1 == counts["evolution_history"]
            # AUTOINCREMENT's counter survived the rebuild: id 3 was used and deleted.
            assert 4 == await brain.remember("a new one")
        else:
            assert (await brain.recall("email"))[0].pinned
            assert ["file the patent"] == [g.title for g in await brain.goals_list()]

    db = raw(db_path, key)
    assert LATEST == db.execute("PRAGMA user_version").fetchone()[0]
    assert "ok" == db.execute("PRAGMA integrity_check").fetchone()[0]
    if start >= 4:
        rows = db.execute("SELECT task, score FROM performance_records").fetchall()
        assert [("draft a claim", 80.0)] == rows
    if start >= 5:
        kept = db.execute(
            "SELECT trigger_pattern, lora_generated, success_rate, detail FROM evolution_history"
        )
        assert [("manual", "legal.patent", 0.8, None)] == kept.fetchall()
    # v6's detail column takes JSON objects and refuses anything else.
    insert = "INSERT INTO evolution_history (trigger_pattern, detail, created_at) VALUES ('t', ?, 1)"
    db.execute(insert, ('{"round": 1}',))
    with pytest.raises(Exception, match="CHECK"):
        db.execute(insert, ("not json",))
    # v8's idempotency keys: one per (caller, key), none carried over.
    assert [(0,)] == db.execute("SELECT count(*) FROM idempotency_keys").fetchall()
    key_row = (
        "INSERT INTO idempotency_keys (caller, key, method, digest, row_id, created_at) "
        "VALUES ('c', 'k', 'memory.remember', 'd', 1, 1)"
    )
    db.execute(key_row)
    with pytest.raises(Exception, match="UNIQUE"):
        db.execute(key_row)
    # v5's knowledge table and its full-text index work on every migrated file.
    db.execute("INSERT INTO knowledge (content, created_at, updated_at) VALUES ('claims define scope', 1, 1)")
    found = db.execute("SELECT rowid FROM knowledge_fts WHERE knowledge_fts MATCH 'claim'").fetchall()
    assert [(1,)] == found
    db.close()


async def test_seed_file_without_user_version_is_taken_as_v1(db_path: Path, key: bytes) -> None:
    """The seed never set user_version: a version-0 file with its tables migrates from v1."""
    db = raw(db_path, key)
    MIGRATIONS[0](db)
    seed_v1(db)
    assert 0 == db.execute("PRAGMA user_version").fetchone()[0]
    db.close()
    async with await Brain.open(db_path, key) as brain:
        assert 2 == (await brain.stats()).counts["memories"]


async def test_newer_schema_is_refused_untouched(db_path: Path, key: bytes) -> None:
    """A file from a newer personad raises SchemaTooNew and is not modified."""
    db = build(db_path, key, LATEST)
    db.execute(f"PRAGMA user_version = {LATEST + 1}")
    db.close()
    before = data_digests(db_path)
    with pytest.raises(SchemaTooNew) as caught:
        await Brain.open(db_path, key)
    assert (LATEST + 1, LATEST) == (caught.value.found, caught.value.known)
    assert before == data_digests(db_path)


async def test_a_failed_step_rolls_back_to_the_previous_version(db_path: Path, key: bytes) -> None:
    """A step that fails leaves the file at the version before it, with nothing half-done."""
    from daemon.brain import MigrationFailed

    db = build(db_path, key, 1)
    # A v1 table the v2 step must create already exists: the step fails midway.
    db.execute("CREATE TABLE goals (x)")
    with pytest.raises(MigrationFailed):
        run_step(db, 2)
    assert 1 == db.execute("PRAGMA user_version").fetchone()[0]
    columns = [row[1] for row in db.execute("PRAGMA table_info(memories)")]
    assert "timestamp" in columns
    assert "subject" not in columns
    db.close()

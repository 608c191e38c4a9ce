"""Both chains: the database's (from real files of each older version) and the records'."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlcipher3.dbapi2 as sqlcipher

from daemon.registry import store
from daemon.registry.audit import AuditLog
from daemon.registry.errors import BadRecord, MigrationFailed, RegistryTooNew
from daemon.registry.migrations import LATEST, MIGRATIONS, current_version, run_step
from daemon.registry.records import upgrade_record

KEY = bytes(range(1, 33))


def build(path: Path, version: int) -> Any:
    """A real database file at ``version``, made by running only steps 1..version."""
    db = sqlcipher.connect(str(path), isolation_level=None)
    db.execute(f"PRAGMA key = \"x'{KEY.hex()}'\"")
    db.execute("PRAGMA cipher_compatibility = 4")
    db.execute("PRAGMA journal_mode = WAL")
    for target in range(1, version + 1):
        run_step(db, target)
    return db


RECORD = {
    "schema_version": 1,
    "id": "ada",
    "name": "Ada",
    "role": "teacher",
    "tags": ["math"],
    "status": "active",
}


def test_chain_is_numbered_from_one() -> None:
    assert 3 == LATEST == len(MIGRATIONS)


def test_v0_to_latest_on_an_empty_file(tmp_path: Path) -> None:
    db = store.open_raw(tmp_path / "r.sqlite", KEY)
    assert LATEST == current_version(db)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"profiles", "profile_tags", "config_sources", "card_remainders"} <= tables
    db.close()


def test_v1_file_with_rows_migrates_to_v2_keeping_them(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    old = build(path, 1)
    assert 1 == current_version(old)
    old.execute(
        "INSERT INTO profiles (id, schema_version, status, role, name, tags, record, created_at, updated_at) "
        "VALUES ('ada', 1, 'active', 'teacher', 'Ada', '[\"math\"]', ?, 10.0, 20.0)",
        (json.dumps(RECORD),),
    )
    old.execute("INSERT INTO profile_tags (tag, persona_id) VALUES ('math', 'ada')")
    old.close()

    db = store.open_raw(path, KEY)
    assert LATEST == current_version(db)
    ada = store.get(db, "ada")
    assert ("Ada", "teacher", ["math"]) == (ada.name, ada.role, ada.tags)
    assert ["ada"] == [s.id for s in store.list_page(db, tag="math").personas]
    # The v2 table works on the migrated file.
    db.execute(
        "INSERT INTO config_sources (persona_id, sha256, imported_at) VALUES ('ada', ?, 1.0)", ("0" * 64,)
    )
    update = store.update(db, AuditLog(tmp_path / "audit.log"), "ada", {"name": "Ada L."}, actor="t")
    assert "Ada L." == update.name
    db.close()


def test_v2_file_migrates_to_v3_and_a_remainder_goes_with_its_profile(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    old = build(path, 2)
    old.execute(
        "INSERT INTO profiles (id, schema_version, status, role, name, tags, record, created_at, updated_at) "
        "VALUES ('ada', 1, 'active', 'teacher', 'Ada', '[\"math\"]', ?, 10.0, 20.0)",
        (json.dumps(RECORD),),
    )
    old.execute(
        "INSERT INTO config_sources (persona_id, sha256, imported_at) VALUES ('ada', ?, 1.0)", ("0" * 64,)
    )
    old.close()

    db = store.open_raw(path, KEY)
    assert 3 == current_version(db)
    assert "Ada" == store.get(db, "ada").name
    assert ("0" * 64,) == db.execute("SELECT sha256 FROM config_sources WHERE persona_id = 'ada'").fetchone()
    db.execute("INSERT INTO card_remainders (persona_id, record, created_at) VALUES ('ada', '{}', 1.0)")
    db.execute("DELETE FROM profiles WHERE id = 'ada'")
    assert db.execute("SELECT count(*) FROM card_remainders").fetchone() == (0,)
    db.close()


def test_failed_step_rolls_back_to_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    db = build(path, 1)
    db.execute("CREATE TABLE config_sources (x)")  # step 2 will collide with it
    with pytest.raises(MigrationFailed, match="version 2"):
        run_step(db, 2)
    assert 1 == current_version(db)
    assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'profiles_updated'").fetchone() is None
    db.close()


def test_record_chain_runs_each_step_and_refuses_newer() -> None:
    assert RECORD == upgrade_record("ada", RECORD)  # v1 is today's: nothing to do

    def v1_to_v2(record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "pronouns": "she"}

    def v2_to_v3(record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "pronouns": [record["pronouns"]]}

    steps = (v1_to_v2, v2_to_v3)
    assert {**RECORD, "schema_version": 3, "pronouns": ["she"]} == upgrade_record("ada", RECORD, steps=steps)
    from_v2 = {**RECORD, "schema_version": 2, "pronouns": "they"}
    assert ["they"] == upgrade_record("ada", from_v2, steps=steps)["pronouns"]
    with pytest.raises(RegistryTooNew, match="record 'ada' has schema version 4"):
        upgrade_record("ada", {**RECORD, "schema_version": 4}, steps=steps)
    for bad in (None, "1", 0, True, 1.0):
        with pytest.raises(BadRecord, match="schema_version"):
            upgrade_record("ada", {**RECORD, "schema_version": bad})

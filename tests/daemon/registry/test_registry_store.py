"""The registry's store on a real SQLCipher file: CRUD, filters, pages, keys, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from daemon.brain.errors import InsecureKey, MissingKey
from daemon.registry import store
from daemon.registry.audit import AuditLog, verify
from daemon.registry.errors import (
    BadRecord,
    InvalidChange,
    PersonaExists,
    RegistryTooNew,
    RegistryWrongKey,
    UnknownPersona,
)
from daemon.registry.keys import load_or_create_registry_key, registry_path
from protocol.profile import Profile

KEY = bytes(range(32))


def profile(pid: str, **kw: Any) -> Profile:
    return Profile.model_validate_json(
        json.dumps({"id": pid, "name": pid.title(), "role": "assistant", **kw})
    )


@pytest.fixture
def db(tmp_path: Path) -> Any:
    conn = store.open_raw(tmp_path / "registry" / "registry.sqlite", KEY)
    yield conn
    conn.close()


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "registry" / "audit.log")


def digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def test_create_get_update_archive(db: Any, audit: AuditLog) -> None:
    made = store.create(db, audit, profile("ada", status="active", tags=["x"]), actor="cli:t", now=100.0)
    assert (100.0, 100.0) == (made.lineage.created_at, made.lineage.updated_at)
    assert made == store.get(db, "ada")
    changed = store.update(
        db, audit, "ada", {"traits": {"humor": 90}, "tags": ["y", "z"]}, actor="cli:t", now=200.0
    )
    assert (90, 50, ["y", "z"], 200.0, 100.0) == (
        changed.traits.humor,
        changed.traits.focus,
        changed.tags,
        changed.lineage.updated_at,
        changed.lineage.created_at,
    )
    assert changed == store.get(db, "ada")
    archived = store.update(db, audit, "ada", {"status": "archived"}, actor="cli:t")
    assert "archived" == archived.status
    report = verify(audit.path)
    assert (True, 3) == (report.ok, report.entries)


def test_refusals_change_nothing(db: Any, audit: AuditLog) -> None:
    store.create(db, audit, profile("ada"), actor="cli:t")
    before = store.get(db, "ada")
    with pytest.raises(PersonaExists):
        store.create(db, audit, profile("ada", name="Other"), actor="cli:t")
    with pytest.raises(UnknownPersona):
        store.get(db, "ghost")
    with pytest.raises(UnknownPersona):
        store.update(db, audit, "ghost", {"name": "x"}, actor="cli:t")
    for bad in ({"id": "eve"}, {"lineage": {}}, {"schema_version": 2}):
        with pytest.raises(InvalidChange) as exc:
            store.update(db, audit, "ada", bad, actor="cli:t")
        assert f"changes.{next(iter(bad))}" == exc.value.field
    with pytest.raises(InvalidChange) as exc:
        store.update(db, audit, "ada", {"traits": {"humor": 101}}, actor="cli:t")
    assert ("changes.traits.humor", "less than or equal to 100") == (exc.value.field, exc.value.reason[-25:])
    with pytest.raises(InvalidChange):
        store.create(db, audit, profile("bob", status="merged"), actor="cli:t")
    assert before == store.get(db, "ada")
    assert 1 == verify(audit.path).entries  # refused changes are not audited


def test_list_filters_and_pages(db: Any, audit: AuditLog) -> None:
    for i in range(25):
        store.create(
            db,
            audit,
            profile(
                f"p{i:02d}",
                role="lawyer" if i % 2 else "teacher",
                status="active" if i % 3 else "draft",
                tags=["even"] if i % 2 == 0 else ["odd", "x"],
            ),
            actor="cli:t",
        )
    seen, cursor = [], None
    while True:
        page = store.list_page(db, limit=7, cursor=cursor)
        seen += [s.id for s in page.personas]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [f"p{i:02d}" for i in range(25)] == seen
    got = store.list_page(db, status="active", role="lawyer", tag="odd", limit=100)
    assert [f"p{i:02d}" for i in range(25) if i % 2 and i % 3] == [s.id for s in got.personas]
    assert got.next_cursor is None
    assert ["odd", "x"] == got.personas[0].tags
    # Tags follow updates (the side table is rewritten).
    store.update(db, audit, "p01", {"tags": ["new"]}, actor="cli:t")
    assert ["p01"] == [s.id for s in store.list_page(db, tag="new").personas]
    assert "p01" not in [s.id for s in store.list_page(db, tag="odd").personas]
    assert [] == store.list_page(db, tag="nope").personas
    # A hostile filter value is data, not SQL.
    assert [] == store.list_page(db, role="x' OR 1=1 --").personas


def test_wrong_key_is_clear_and_changes_no_byte(tmp_path: Path, audit: AuditLog) -> None:
    path = tmp_path / "registry" / "registry.sqlite"
    db = store.open_raw(path, KEY)
    store.create(db, audit, profile("ada"), actor="cli:t")
    # Leave a WAL behind, as a crashed registry would: a read-write open
    # with a wrong key would checkpoint it into the file.
    db.execute("PRAGMA wal_autocheckpoint = 0")
    store.create(db, audit, profile("bob"), actor="cli:t")
    before = digests(path.parent)
    assert before.get("registry.sqlite-wal")
    with pytest.raises(RegistryWrongKey, match=r"wrong registry key.*not modified"):
        store.open_raw(path, bytes(32))
    after = digests(path.parent)
    after.pop("registry.sqlite-shm", None), before.pop("registry.sqlite-shm", None)
    assert before == after
    db.close()


def test_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    path.write_bytes(b"hello, this is not SQLCipher at all" * 200)
    before = path.read_bytes()
    with pytest.raises(RegistryWrongKey):
        store.open_raw(path, KEY)
    assert before == path.read_bytes()


def test_newer_database_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    db = store.open_raw(path, KEY)
    db.execute("PRAGMA user_version = 99")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    before = path.read_bytes()
    with pytest.raises(RegistryTooNew, match="version 99"):
        store.open_raw(path, KEY)
    assert before == path.read_bytes()


def test_newer_or_corrupt_record_refused(db: Any, audit: AuditLog) -> None:
    store.create(db, audit, profile("ada"), actor="cli:t")
    record = db.execute("SELECT record FROM profiles WHERE id = 'ada'").fetchone()[0]
    db.execute(
        "UPDATE profiles SET record = ? WHERE id = 'ada'",
        (record.replace('"schema_version":1', '"schema_version":2'),),
    )
    with pytest.raises(RegistryTooNew, match="record 'ada' has schema version 2"):
        store.get(db, "ada")
    with pytest.raises(RegistryTooNew):  # and an update does not overwrite it
        store.update(db, audit, "ada", {"name": "New"}, actor="cli:t")
    assert '"schema_version":2' in db.execute("SELECT record FROM profiles WHERE id = 'ada'").fetchone()[0]
    db.execute("UPDATE profiles SET record = '[1]' WHERE id = 'ada'")
    with pytest.raises(BadRecord, match="not a JSON object"):
        store.get(db, "ada")
    db.execute("""UPDATE profiles SET record = '{"schema_version": 1, "id": "ada"}' WHERE id = 'ada'""")
    with pytest.raises(BadRecord, match="name"):
        store.get(db, "ada")


def test_key_file_created_private_and_never_over_data(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = load_or_create_registry_key(state, environ={})
    path = state / "secrets" / "registry.key"
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    assert key == load_or_create_registry_key(state, environ={})
    db = store.open_raw(registry_path(state), key)
    db.close()
    path.unlink()
    with pytest.raises(MissingKey, match="restore its key"):
        load_or_create_registry_key(state, environ={})
    assert not path.exists()
    path.write_text(key.hex())
    os.chmod(path, 0o644)
    with pytest.raises(InsecureKey):
        load_or_create_registry_key(state, environ={})
    creds = tmp_path / "creds"
    creds.mkdir()
    with pytest.raises(MissingKey, match="registry-key"):
        load_or_create_registry_key(state, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    (creds / "registry-key").write_text(key.hex())
    assert key == load_or_create_registry_key(state, environ={"CREDENTIALS_DIRECTORY": str(creds)})


def test_no_plaintext_on_disk(tmp_path: Path, audit: AuditLog) -> None:
    path = tmp_path / "registry" / "registry.sqlite"
    db = store.open_raw(path, KEY)
    # Markers long enough that ciphertext cannot contain them by chance (a 3-byte name
    # like "Ada" turns up in random bytes about once in 16 million offsets, so now and then).
    ada = profile("ada", name="Adalgisa Quillfeather", description="Zyxwvut secret biography")
    store.create(db, audit, ada, actor="cli:t")
    db.close()
    for file in path.parent.iterdir():
        if file.is_file():
            assert b"Zyxwvut secret" not in file.read_bytes(), file.name
            assert b"Quillfeather" not in file.read_bytes() or file.name.startswith("audit"), file.name


def test_truncated_database_is_refused_untouched(tmp_path: Path, audit: AuditLog) -> None:
    path = tmp_path / "registry" / "registry.sqlite"
    db = store.open_raw(path, KEY)
    store.create(db, audit, profile("ada"), actor="cli:t")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    path.write_bytes(path.read_bytes()[:1000])
    before = digests(path.parent)
    with pytest.raises(RegistryWrongKey):
        store.open_raw(path, KEY)
    assert before == digests(path.parent)

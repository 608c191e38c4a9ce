"""Data at rest: no plaintext on disk, and a wrong key is refused without harm."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import sqlcipher3.dbapi2 as sqlcipher

from daemon.brain import Brain, InvalidInput, WrongKey

from .conftest import data_digests, raw_bytes, wal_size

SECRETS = [f"the launch code of project bluebird is {n:04d}-zebra" for n in range(50)]


async def test_raw_files_hold_no_remembered_text(db_path: Path, key: bytes) -> None:
    """Neither the database, nor its WAL, nor -shm contain the text, while open or after close."""
    async with await Brain.open(db_path, key) as brain:
        for text in SECRETS:
            await brain.remember(text, subject="bluebird", context={"note": "zebra-context"})
        await brain.log_interaction(with_persona="persona:x", outcome="zebra-outcome")
        assert wal_size(db_path)
        data = raw_bytes(db_path)
        for needle in (b"bluebird", b"zebra", b"launch code"):
            assert needle not in data
    data = raw_bytes(db_path)
    assert len(data) > 0
    for needle in (b"bluebird", b"zebra", b"launch code"):
        assert needle not in data


async def test_files_are_private(db_path: Path, key: bytes) -> None:
    """The database and its WAL are created 0600."""
    async with await Brain.open(db_path, key) as brain:
        await brain.remember("x")
        for suffix in ("", "-wal"):
            mode = stat.S_IMODE(os.stat(f"{db_path}{suffix}").st_mode)
            assert mode == 0o600, suffix


async def test_wrong_key_is_refused_and_file_unchanged(db_path: Path, key: bytes) -> None:
    """Opening with another key raises WrongKey and leaves the files byte-for-byte as they were."""
    async with await Brain.open(db_path, key) as brain:
        await brain.remember("something to keep")
    before = data_digests(db_path)
    with pytest.raises(WrongKey, match="wrong key"):
        await Brain.open(db_path, os.urandom(32))
    assert before == data_digests(db_path)
    async with await Brain.open(db_path, key) as brain:
        assert (await brain.stats()).counts["memories"] == 1


async def test_wrong_key_under_a_folder_named_like_a_uri(tmp_path: Path, key: bytes) -> None:
    """A '?' or '#' in the path cannot turn the read-only key check into another, writable file."""
    folder = tmp_path / "odd?mode=rwc#x"
    folder.mkdir()
    db_path = folder / "brain.sqlite"
    async with await Brain.open(db_path, key) as brain:
        await brain.remember("something to keep")
    before = data_digests(db_path)
    listing = sorted(os.listdir(folder)), sorted(os.listdir(tmp_path))
    with pytest.raises(WrongKey, match="wrong key"):
        await Brain.open(db_path, os.urandom(32))
    assert before == data_digests(db_path)
    assert listing == (sorted(os.listdir(folder)), sorted(os.listdir(tmp_path)))


async def test_plain_sqlite_file_is_refused_unchanged(db_path: Path, key: bytes) -> None:
    """An unencrypted SQLite file is not opened (nor encrypted over): WrongKey, unchanged."""
    import sqlite3

    plain = sqlite3.connect(db_path)
    plain.execute("CREATE TABLE t (x)")
    plain.commit()
    plain.close()
    before = data_digests(db_path)
    with pytest.raises(WrongKey):
        await Brain.open(db_path, key)
    assert before == data_digests(db_path)


async def test_key_must_be_32_bytes(db_path: Path) -> None:
    """A key of the wrong size is an InvalidInput before anything is opened."""
    with pytest.raises(InvalidInput):
        await Brain.open(db_path, b"short")
    assert {"db": None, "-wal": None} == data_digests(db_path)


async def test_cipher_settings_are_sqlcipher_4(db_path: Path, key: bytes) -> None:
    """The file opens with SQLCipher 4 settings and FTS5 is compiled in."""
    async with await Brain.open(db_path, key) as brain:
        await brain.remember("hello")
    db = sqlcipher.connect(str(db_path))
    try:
        db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        db.execute("PRAGMA cipher_compatibility = 4")
        assert db.execute("SELECT count(*) FROM memories").fetchone()[0] == 1
        assert db.execute("PRAGMA cipher_provider").fetchone()[0] == "openssl"
        options = {row[0] for row in db.execute("PRAGMA compile_options")}
        assert "ENABLE_FTS5" in options
    finally:
        db.close()

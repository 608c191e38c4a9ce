"""Fixtures for the brain: real SQLCipher files under tmp_path, nothing mocked."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.brain import Brain


@pytest.fixture
def key() -> bytes:
    """A fresh raw 32-byte key."""
    return os.urandom(32)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a persona's brain lives, its folder created as the daemon would."""
    folder = tmp_path / "state" / "personas" / "p1"
    folder.mkdir(parents=True, mode=0o700)
    return folder / "brain.sqlite"


@pytest.fixture
async def brain(db_path: Path, key: bytes) -> AsyncIterator[Brain]:
    """An open brain, closed after the test."""
    async with await Brain.open(db_path, key) as opened:
        yield opened


def file_digests(path: Path) -> dict[str, str | None]:
    """sha256 of the database, its WAL and its -shm (None when absent)."""
    out: dict[str, str | None] = {}
    for suffix in ("", "-wal", "-shm"):
        candidate = Path(f"{path}{suffix}")
        out[suffix or "db"] = (
            hashlib.sha256(candidate.read_bytes()).hexdigest() if candidate.exists() else None
        )
    return out


def data_digests(path: Path) -> dict[str, str | None]:
    """sha256 of what holds data: the database and its WAL (an empty WAL counts as none).

    The -shm file is left out: it is SQLite's derived index of the WAL, which
    any reader, even a read-only one, may rebuild.
    """
    digests = file_digests(path)
    wal = Path(f"{path}-wal")
    return {
        "db": digests["db"],
        "-wal": digests["-wal"] if wal.exists() and wal.stat().st_size else None,
    }


def wal_size(path: Path) -> int | None:
    """Size of the database's WAL, None when there is none."""
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return None


def raw_bytes(path: Path) -> bytes:
    """The bytes of the database, WAL and -shm files, concatenated."""
    return b"".join(
        Path(f"{path}{s}").read_bytes() for s in ("", "-wal", "-shm") if Path(f"{path}{s}").exists()
    )

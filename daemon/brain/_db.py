"""Opening SQLCipher connections, and running work on aiosqlite's thread.

Every connection is keyed first (``PRAGMA key`` must be the first statement,
SQLCipher API docs) with the raw 32-byte key in its ``x'…'`` form, which skips
PBKDF2: the key is random, not a passphrase, so derivation would only slow
every open. ``cipher_compatibility = 4`` pins today's format (AES-256-CBC,
HMAC-SHA512, 4 KiB pages) so that a future SQLCipher with other defaults
still opens our files.

Pragmas of the writer, and why:

* ``journal_mode = WAL``: readers (recall, export, query) never block the
  writer nor it them.
* ``synchronous = FULL``: in WAL mode, NORMAL syncs only at checkpoints, so a
  committed transaction survives a process crash (kill -9) but may be lost on
  power failure or a kernel crash. FULL syncs the WAL at every commit, so a
  ``remember`` is acknowledged only once it would survive a power cut too.
  Memory is the persona's identity; group commit (see store.py) amortises the
  fsync over every caller of the same tick, which is what makes FULL cheap.
* ``secure_delete = ON``: deleted rows are overwritten with zeros rather than
  left in free pages until reused.
* ``temp_store = MEMORY``: sorts and VACUUM's temporary copy never touch disk
  (we do not rely on the build's default for that).
* ``foreign_keys = ON``, ``busy_timeout``: the usual hygiene.
* ``journal_size_limit``: a checkpointed WAL is truncated back to this size,
  so one large transaction does not leave a large WAL behind forever.

Readers get ``query_only = ON``: they cannot write even if asked to; and a
larger page cache (see READER_CACHE_KIB).

aiosqlite runs all work on one thread per connection, fed by a queue; it has
no public "run this callable there", so :func:`run_on` uses the ``_execute``
that all its public methods use. We hand it whole transactions as one
callable: nothing interleaves inside one, and a batch costs one thread hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiosqlite
import sqlcipher3.dbapi2 as sqlcipher  # ships no stubs: see pyproject.toml [tool.mypy]

from .errors import WrongKey

__all__ = [
    "Connector",
    "Functions",
    "RawConnection",
    "connect_reader",
    "connect_writer",
    "create_private",
    "file_bytes",
    "open_aio",
    "probe_readonly",
    "run_on",
    "sqlcipher",
]

# sqlcipher3 ships no type information; its Connection mirrors sqlite3's.
RawConnection = Any
Connector = Callable[[], RawConnection]
#: SQL functions to register on a connection: name -> (number of arguments, callable).
Functions = dict[str, tuple[int, Callable[..., Any]]]
T = TypeVar("T")

BUSY_TIMEOUT_MS = 5_000
# Every page SQLCipher reads from the OS is decrypted and its HMAC checked
# (some microseconds a page), so a page-cache miss costs far more than with
# plain SQLite, and recall touches rows spread over the whole table. The
# reader gets room for a large brain (a 100,000-memory brain is ~40 MB); the
# cache grows only as pages are read. The writer keeps SQLite's default.
READER_CACHE_KIB = 64 * 1024
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024
# SQLITE_NOTADB: what SQLCipher reports when the key does not decrypt page 1.
_SQLITE_NOTADB = 26


def _key_pragma(key: bytes) -> str:
    if len(key) != 32:
        raise ValueError("a brain key is 32 bytes")
    # Raw key syntax (SQLCipher API: "PRAGMA key = \"x'…'\""); never logged:
    # no trace callback is ever installed on these connections.
    return f"PRAGMA key = \"x'{key.hex()}'\""


def read_only_uri(path: Path) -> str:
    """A ``file:`` URI opening ``path`` read-only (``mode=ro``).

    Quoted: a ``?`` or ``#`` in a folder name would otherwise end the path
    and turn the rest into URI parameters, opening another file read-write.
    """
    return f"file:{quote(str(path.resolve()))}?mode=ro"


def _keyed(path: Path, key: bytes, *, readonly: bool) -> RawConnection:
    target = read_only_uri(path) if readonly else str(path)
    db = sqlcipher.connect(target, uri=readonly, isolation_level=None, check_same_thread=True)
    try:
        db.execute(_key_pragma(key))
        db.execute("PRAGMA cipher_compatibility = 4")
        # The first read of page 1 is where a wrong key shows.
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher.DatabaseError as exc:
        db.close()
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_NOTADB:
            raise WrongKey(path) from None
        raise
    return db


def create_private(path: Path) -> None:
    """Create an empty database file 0600 before SQLite sees it.

    SQLite would create the file 0644 (less the umask), and its -wal and
    -shm copy the database's mode.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    if path.stat().st_size == 0:
        os.chmod(path, 0o600)


def probe_readonly(path: Path, key: bytes) -> int | None:
    """Check the key on a read-only connection; return ``user_version``, None if no file.

    Read-only matters: a read-write connection that fails on a wrong key
    still checkpoints a left-over WAL into the database when it closes, which
    rewrites the file. A ``mode=ro`` connection never writes the database or
    its WAL (only the -shm index, which is derived data).
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    db = _keyed(path, key, readonly=True)
    try:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        db.close()


def _connector(
    path: Path, key: bytes, functions: Functions, prepare: Callable[[RawConnection], None]
) -> Connector:
    """A connector for aiosqlite: open and key the file, ``prepare`` it, register functions."""

    def connector() -> RawConnection:
        db = _keyed(path, key, readonly=False)
        try:
            prepare(db)
            _register(db, functions)
        except BaseException:
            db.close()
            raise
        return db

    return connector


def connect_writer(path: Path, key: bytes, functions: Functions) -> Connector:
    """The one read-write connection of a brain."""

    def prepare(db: RawConnection) -> None:
        # auto_vacuum only takes effect on a database with no tables yet; it
        # lets retention hand freed pages back (PRAGMA incremental_vacuum).
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlcipher.OperationalError(f"journal_mode stayed {mode}")
        for pragma in (
            "PRAGMA synchronous = FULL",
            "PRAGMA secure_delete = ON",
            "PRAGMA temp_store = MEMORY",
            "PRAGMA foreign_keys = ON",
            f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
            f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}",
        ):
            db.execute(pragma)

    return _connector(path, key, functions, prepare)


def connect_reader(path: Path, key: bytes, functions: Functions) -> Connector:
    """A read-only connection (recall, export, query)."""

    def prepare(db: RawConnection) -> None:
        for pragma in (
            "PRAGMA query_only = ON",
            "PRAGMA temp_store = MEMORY",
            f"PRAGMA cache_size = -{READER_CACHE_KIB}",
            f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
        ):
            db.execute(pragma)

    return _connector(path, key, functions, prepare)


def _register(db: RawConnection, functions: Functions) -> None:
    for name, (nargs, fn) in functions.items():
        db.create_function(name, nargs, fn, deterministic=True)


async def open_aio(connector: Callable[[], RawConnection]) -> aiosqlite.Connection:
    """Start an aiosqlite connection (its worker thread) around ``connector``."""
    # aiosqlite types its connector as returning sqlite3.Connection; sqlcipher3's
    # is the same DB-API object from a different build of the module.
    conn = aiosqlite.core.Connection(connector, iter_chunk_size=64)
    return await conn


class _Abandoned(Exception):
    """Work whose caller stopped waiting before the worker thread reached it."""


async def run_on(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(raw_connection, *args)`` on ``conn``'s worker thread.

    If the caller is cancelled (its deadline passed, its client left) while
    the work still waits in the thread's queue, the work is skipped when its
    turn comes: aiosqlite would run it anyway, and under a backlog (a slow
    disk, a burst) a queue of work nobody waits for keeps every later caller
    waiting too, long after the cause has gone. Work already running finishes.
    """
    abandoned = False

    def call() -> T:
        if abandoned:
            raise _Abandoned()
        return fn(conn._conn, *args)

    try:
        result: T = await conn._execute(call)  # type: ignore[no-untyped-call]
    except asyncio.CancelledError:
        abandoned = True
        raise
    return result


def file_bytes(path: Path) -> dict[str, int]:
    """Sizes on disk of the database, its WAL and its shared-memory index."""
    sizes: dict[str, int] = {}
    for suffix in ("", "-wal", "-shm"):
        try:
            sizes[suffix or "db"] = os.stat(f"{path}{suffix}").st_size
        except FileNotFoundError:
            sizes[suffix or "db"] = 0
    return sizes

"""SQLite's own resource limits, for brain.query's reader connection.

A query's memory cannot be bounded from Python: one ``printf('%.*c', 1e8,
'x')`` is one virtual-machine instruction that allocates 100 MB before any
progress handler runs, and ``s || s`` doubles a string per step with no
function for an authorizer to refuse. SQLite bounds both itself, with

* ``sqlite3_limit(db, SQLITE_LIMIT_LENGTH, n)``: no string, blob or row of
  this connection may exceed ``n`` bytes (checked *before* allocating: the
  statement fails with SQLITE_TOOBIG), plus the other per-connection limits
  of :data:`QUERY_LIMITS`;
* ``sqlite3_hard_heap_limit64(n)``: no allocation by this SQLite library may
  take its heap past ``n`` (it fails with SQLITE_NOMEM, which the statement
  reports as MemoryError); sorters, ``UNION`` queues and in-memory temporary
  tables all allocate from that heap.

The standard library exposes the first as ``sqlite3.Connection.setlimit``
(Python 3.11), but sqlcipher3 (a fork of pysqlite3, 0.6) has no ``setlimit``,
and no Python binding exposes the heap limit. Both are plain C functions
exported by the sqlcipher3 extension module, which links SQLCipher in
statically, so we call them through ctypes on that same library. The
connection's ``sqlite3*`` is the first field after ``PyObject_HEAD`` in every
pysqlite-derived ``Connection`` (connection.h: ``PyObject_HEAD sqlite3 *db;``);
:func:`handle` checks that what it read is that connection before anything
writes through it, and :func:`check` proves the limit takes effect.

The heap limit is process-wide (SQLite has no per-connection heap), so it is
set only while a query runs, to the heap in use then plus
:data:`QUERY_HEAP_BYTES`, under a process-wide lock, and restored after.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Iterator
from typing import Any

import sqlcipher3._sqlite3 as _extension  # the C module; ships no stubs (see pyproject.toml)

from .errors import BrainError

__all__ = [
    "QUERY_HEAP_BYTES",
    "QUERY_LIMITS",
    "QUERY_MAX_LENGTH",
    "QUERY_MAX_PATTERN",
    "QUERY_SOFT_HEAP_BYTES",
    "LimitsUnavailable",
    "check",
    "handle",
    "heap_ceiling",
    "limits",
]

# Limit categories (sqlite3.h, "Run-Time Limit Categories").
SQLITE_LIMIT_LENGTH = 0
SQLITE_LIMIT_SQL_LENGTH = 1
SQLITE_LIMIT_COLUMN = 2
SQLITE_LIMIT_EXPR_DEPTH = 3
SQLITE_LIMIT_COMPOUND_SELECT = 4
SQLITE_LIMIT_VDBE_OP = 5
SQLITE_LIMIT_FUNCTION_ARG = 6
SQLITE_LIMIT_ATTACHED = 7
SQLITE_LIMIT_LIKE_PATTERN_LENGTH = 8
SQLITE_LIMIT_VARIABLE_NUMBER = 9
SQLITE_LIMIT_TRIGGER_DEPTH = 10
SQLITE_LIMIT_WORKER_THREADS = 11

#: Largest string, blob or row a query may build or read: 128 KiB. Every
#: stored row is smaller (a memory is at most 64 KiB of content plus 16 KiB
#: of context and short labels), so this never refuses reading what the
#: brain holds. It is also what bounds the time of one VM instruction: the
#: worst built-ins left (``instr``, ``LIKE``) are quadratic in their inputs.
QUERY_MAX_LENGTH = 128 * 1024
#: Longest LIKE / GLOB pattern: matching costs up to value x pattern length.
QUERY_MAX_PATTERN = 256
#: Growth of SQLite's heap allowed while one query runs: 16 MiB. Sorts,
#: groupings and recursive-CTE queues live in it. It also bounds time: with
#: ``temp_store = MEMORY`` (which SQLCipher needs, or sorts would spill
#: plaintext to temporary files) SQLite's sorter keeps every row in memory
#: and sorts them all inside one VM instruction, where the progress handler
#: cannot interrupt; the rows that fit in 16 MiB sort in well under a second.
#: An ORDER BY without LIMIT over more than that is refused (with LIMIT,
#: SQLite keeps only the top rows).
QUERY_HEAP_BYTES = 16 << 20
#: Growth past which SQLite is "nearly full" (its soft heap limit): the page
#: cache then recycles pages instead of growing into the hard limit.
QUERY_SOFT_HEAP_BYTES = 8 << 20

#: What brain.query runs under (category -> value). SQL and parameter
#: counts match the bus's own limits; depth and compound limits bound the
#: parser's memory for pathological SQL; no worker threads, no attachments.
QUERY_LIMITS: dict[int, int] = {
    SQLITE_LIMIT_LENGTH: QUERY_MAX_LENGTH,
    SQLITE_LIMIT_SQL_LENGTH: 64 * 1024,
    SQLITE_LIMIT_COLUMN: 256,
    SQLITE_LIMIT_EXPR_DEPTH: 200,
    SQLITE_LIMIT_COMPOUND_SELECT: 64,
    SQLITE_LIMIT_VDBE_OP: 100_000,
    SQLITE_LIMIT_FUNCTION_ARG: 64,
    SQLITE_LIMIT_ATTACHED: 0,
    SQLITE_LIMIT_LIKE_PATTERN_LENGTH: QUERY_MAX_PATTERN,
    SQLITE_LIMIT_VARIABLE_NUMBER: 64,
    SQLITE_LIMIT_TRIGGER_DEPTH: 0,
    SQLITE_LIMIT_WORKER_THREADS: 0,
}


class LimitsUnavailable(BrainError):
    """Raised when SQLite's limits cannot be installed on a connection (so brain.query must not run).

    Internal: the Brain catches it when it opens and disables brain.query.
    """


@functools.cache
def _library() -> ctypes.CDLL:
    # dlopen of an already loaded file returns the same handle: these are
    # the very functions the connections use, not a second copy of SQLite.
    lib = ctypes.CDLL(_extension.__file__)
    lib.sqlite3_limit.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.sqlite3_limit.restype = ctypes.c_int
    lib.sqlite3_db_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.sqlite3_db_filename.restype = ctypes.c_char_p
    lib.sqlite3_memory_used.argtypes = []
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    lib.sqlite3_hard_heap_limit64.argtypes = [ctypes.c_int64]
    lib.sqlite3_hard_heap_limit64.restype = ctypes.c_int64
    lib.sqlite3_soft_heap_limit64.argtypes = [ctypes.c_int64]
    lib.sqlite3_soft_heap_limit64.restype = ctypes.c_int64
    return lib


def handle(db: Any, path: str) -> int:
    """The ``sqlite3*`` of sqlcipher3 connection ``db``, opened on file ``path``.

    Checked against the file name SQLite reports for it, so a layout change
    in a future sqlcipher3 is an error here rather than writes through a
    wrong pointer.
    """
    if type(db).__basicsize__ < object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p):
        raise LimitsUnavailable(f"{type(db).__name__} does not look like a pysqlite Connection")
    pointer = ctypes.c_void_p.from_address(id(db) + object.__basicsize__).value
    if not pointer:
        raise LimitsUnavailable("the connection holds no sqlite3 handle (closed?)")
    reported = _library().sqlite3_db_filename(pointer, b"main")
    try:
        same = reported is not None and os.path.samefile(os.fsdecode(reported), path)
    except OSError:
        same = False
    if not same:
        raise LimitsUnavailable(f"the connection's handle names {reported!r}, not {path!r}")
    return pointer


def check(db: Any, pointer: int) -> None:
    """Prove on ``db`` that a length limit set through ``pointer`` is enforced."""
    with limits(pointer, {SQLITE_LIMIT_LENGTH: 1024}):
        try:
            db.execute("SELECT length(zeroblob(2048))").fetchone()
        except Exception as exc:
            if "too big" in str(exc):
                return
            raise LimitsUnavailable(f"unexpected error while checking limits: {exc}") from None
    raise LimitsUnavailable("sqlite3_limit had no effect on the connection")


@contextlib.contextmanager
def limits(pointer: int, values: dict[int, int]) -> Iterator[None]:
    """Set ``values`` (category -> limit) on the connection, restoring the old ones after."""
    lib = _library()
    old: dict[int, int] = {}
    try:
        for category, value in values.items():
            # sqlite3_limit returns the previous value and clamps to the
            # compile-time maximum; it can only be called on the
            # connection's own thread here, since we run on it.
            old[category] = lib.sqlite3_limit(pointer, category, value)
        yield
    finally:
        for category, value in old.items():
            lib.sqlite3_limit(pointer, category, value)


_HEAP_LOCK = threading.Lock()


@contextlib.contextmanager
def heap_ceiling(*, hard_bytes: int, soft_bytes: int) -> Iterator[None]:
    """Cap this process's SQLite heap at its current use plus ``hard_bytes``.

    Holds a process-wide lock: two brains' queries never overlap, so each
    restores exactly what it found. The writer and other readers share the
    headroom while a query runs; a query that wants more gets MemoryError.
    Past ``soft_bytes`` of growth SQLite recycles page-cache pages and
    spills sorts in runs (see QUERY_SOFT_HEAP_BYTES). A lower limit already
    in force is kept.
    """
    lib = _library()
    with _HEAP_LOCK:
        used = lib.sqlite3_memory_used()
        old_soft = lib.sqlite3_soft_heap_limit64(-1)
        old_hard = lib.sqlite3_hard_heap_limit64(-1)
        hard = used + hard_bytes if old_hard <= 0 else min(old_hard, used + hard_bytes)
        lib.sqlite3_hard_heap_limit64(hard)
        lib.sqlite3_soft_heap_limit64(min(hard, used + soft_bytes))
        try:
            yield
        finally:
            lib.sqlite3_hard_heap_limit64(old_hard)
            lib.sqlite3_soft_heap_limit64(old_soft)

"""``brain.query``: one read-only SELECT over the persona's own brain.

Fences against writing, each enough alone, and resource bounds, so that no
query can take the daemon's memory or time:

* the connection is ``PRAGMA query_only = ON`` (set when it opens);
* an authorizer (``sqlite3_set_authorizer``, checked when the statement is
  prepared) allows only reading: ``SQLITE_SELECT``, ``SQLITE_READ``,
  ``SQLITE_FUNCTION`` (minus :data:`DENIED_FUNCTIONS`) and
  ``SQLITE_RECURSIVE`` (``WITH RECURSIVE``). Every other action is denied:
  writes, DDL, ``ATTACH`` (which could create a plaintext file), ``PRAGMA``
  (which could turn ``query_only`` off or rekey; only the ``data_version``
  read FTS5 makes itself is let through), transactions;
* SQLite's own limits (:mod:`._limits`): no string, blob or row over
  ``QUERY_MAX_LENGTH`` (128 KiB), checked before SQLite allocates it, and
  the SQLite heap may grow by at most ``QUERY_HEAP_BYTES`` (16 MiB) while
  the query runs (sorts, groupings, recursive queues);
* rows are fetched one at a time and their encoded size summed: past
  :data:`MAX_RESULT_BYTES` (8 MiB, half the bus's default frame limit) the
  query stops with :class:`QueryTooLarge` rather than building a result that
  cannot be sent; at most ``row_limit`` rows are fetched;
* a progress handler interrupts the statement once its time limit passes
  (checked every :data:`PROGRESS_STEPS` virtual-machine instructions).

The progress handler only runs *between* instructions, so the time limit
holds only if no single instruction runs long. The limits see to that: no
value over 128 KiB, no LIKE/GLOB pattern over 256 characters (matching is
value x pattern), no in-memory sort over 16 MiB; the quadratic built-ins
that remain (``instr``) take a fraction of a second at those sizes, and
those that do not fit are replaced (two-argument ``trim``/``ltrim``/
``rtrim``, see :func:`reader_handle`) or refused (``json_patch``).

Refused functions (:data:`DENIED_FUNCTIONS`) are those that reach outside
the database, that build a large value from a small query (a width or size
argument: ``printf``/``format``, ``zeroblob``, ``randomblob``; a multiplying
substitution: ``replace``), or whose time is quadratic in their arguments.
The length limit bounds the amplifiers anyway; refusing them answers the
attempt at once, by name. Concatenations that grow only with the rows read
(``||``, ``group_concat``, ``json_group_array``) stay allowed: they are
useful, and the limits bound them.

The authorizer, handler and limits are set and cleared inside one job on the
reader's worker thread, so recall and export on the same connection never
run under them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import _limits
from ._db import sqlcipher
from .errors import InvalidInput, QueryRefused, QueryTimeout, QueryTooLarge
from .records import QueryResult

__all__ = ["DENIED_FUNCTIONS", "MAX_RESULT_BYTES", "PROGRESS_STEPS", "query_sync", "reader_handle"]

PROGRESS_STEPS = 1_000
#: Bytes of values a result may hold (strings as UTF-8, plus a few bytes per
#: value for its encoding), so that it fits a bus frame with room to spare.
MAX_RESULT_BYTES = 8 << 20
_VALUE_OVERHEAD = 9  # the largest msgpack header of one value

# Action codes are SQLite's (sqlite3.h).
_ALLOWED = frozenset(
    {
        sqlcipher.SQLITE_SELECT,
        sqlcipher.SQLITE_READ,
        sqlcipher.SQLITE_FUNCTION,
        sqlcipher.SQLITE_RECURSIVE,
    }
)
#: Functions brain.query refuses, and why (see the module's docstring).
DENIED_FUNCTIONS: dict[str, str] = {
    "load_extension": "loads native code",
    "fts3_tokenizer": "can register a tokenizer by pointer",
    "sqlcipher_export": "writes another (attached) database",
    "printf": "builds a value of any width from a small query",
    "format": "builds a value of any width from a small query",
    "zeroblob": "allocates a blob of any size",
    "randomblob": "allocates a blob of any size",
    "replace": "multiplies a value's size with each substitution",
    # Merging two objects compares every key of one with every key of the
    # other inside one VM instruction: minutes for two 128 KiB objects.
    "json_patch": "takes time quadratic in its arguments, beyond the time limit's reach",
    "jsonb_patch": "takes time quadratic in its arguments, beyond the time limit's reach",
}


_OK: int = int(sqlcipher.SQLITE_OK)
_DENY: int = int(sqlcipher.SQLITE_DENY)
_PRAGMA: int = int(sqlcipher.SQLITE_PRAGMA)
_FUNCTION: int = int(sqlcipher.SQLITE_FUNCTION)
# SQLITE_TOOBIG (sqlite3.h): a value or row over the connection's length limit.
_SQLITE_TOOBIG = 18

# FTS5 reads "PRAGMA data_version" itself while answering a MATCH; that one
# reading pragma is allowed, without a value (a value would be an assignment).
_ALLOWED_PRAGMAS = frozenset({"data_version"})


class _Authorizer:
    """The authorizer callback; remembers the first function it refused, to name it."""

    def __init__(self) -> None:
        self.refused_function: str | None = None

    def __call__(self, action: int, arg1: str | None, arg2: str | None, db: str | None, _: Any) -> int:
        if action == _PRAGMA:
            allowed = (arg1 or "").lower() in _ALLOWED_PRAGMAS and arg2 is None
            return _OK if allowed else _DENY
        if action not in _ALLOWED:
            return _DENY
        if action == _FUNCTION and (arg2 or "").lower() in DENIED_FUNCTIONS:
            self.refused_function = self.refused_function or (arg2 or "").lower()
            return _DENY
        # Reads of attached or temp databases cannot happen (ATTACH is denied),
        # but say so rather than rely on it.
        if db not in (None, "main"):
            return _DENY
        return _OK


def reader_handle(db: Any, path: str) -> int:
    """Prepare the reader for queries (worker thread): find and test its ``sqlite3*``.

    Also replaces the two-argument ``trim``/``ltrim``/``rtrim`` on this
    connection (built-ins may be overloaded per connection): SQLite's compare
    every character of the value with every character of the set, inside one
    VM instruction, so a 64 KiB value and set took 42 s past any time limit.
    Ours are linear. Raises LimitsUnavailable.
    """
    pointer = _limits.handle(db, path)
    _limits.check(db, pointer)
    for name in ("trim", "ltrim", "rtrim"):
        db.create_function(name, 2, _trimmer(name), deterministic=True)
    return pointer


def _trimmer(which: str) -> Callable[[Any, Any], str | None]:
    left = which in ("trim", "ltrim")
    right = which in ("trim", "rtrim")

    def trim(value: Any, chars: Any) -> str | None:
        if value is None or chars is None:
            return None
        text, charset = _as_text(value), set(_as_text(chars))
        start, end = 0, len(text)
        while left and start < end and text[start] in charset:
            start += 1
        while right and end > start and text[end - 1] in charset:
            end -= 1
        return text[start:end]

    return trim


def _as_text(value: Any) -> str:
    # SQLite's trim reads its arguments as text; blobs as UTF-8. Numbers are
    # formatted by Python, which differs from SQLite only for some floats.
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _value_bytes(value: Any) -> int:
    if isinstance(value, str):
        # UTF-8 is at most 4 bytes a character: only measure when it matters.
        size = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bytes):
        size = len(value)
    else:
        size = 0  # numbers and NULL: the overhead covers them
    return size + _VALUE_OVERHEAD


def query_sync(
    db: Any,
    handle: int | None,
    sql: str,
    params: tuple[Any, ...],
    row_limit: int,
    time_limit_s: float,
    *,
    max_result_bytes: int = MAX_RESULT_BYTES,
) -> QueryResult:
    """Run ``sql`` on a reader connection under the fences above (worker thread).

    ``handle`` is the connection's ``sqlite3*`` from :func:`reader_handle`;
    None (the limits could not be installed) refuses every query, since
    without them a query could take the daemon's memory.
    """
    if handle is None:
        raise QueryRefused("brain.query is unavailable: SQLite's limits could not be set on the reader")
    ceiling = _limits.heap_ceiling(
        hard_bytes=_limits.QUERY_HEAP_BYTES, soft_bytes=_limits.QUERY_SOFT_HEAP_BYTES
    )
    with ceiling, _limits.limits(handle, _limits.QUERY_LIMITS):
        return _run(db, sql, params, row_limit, time_limit_s, max_result_bytes)



def _run(
    db: Any, sql: str, params: tuple[Any, ...], row_limit: int, time_limit_s: float, max_result_bytes: int
) -> QueryResult:
    started = time.monotonic()
    deadline = started + time_limit_s
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if time.monotonic() > deadline:
            timed_out = True
            return 1  # non-zero interrupts the statement (SQLITE_INTERRUPT)
        return 0

    authorizer = _Authorizer()
    db.set_authorizer(authorizer)
    db.set_progress_handler(progress, PROGRESS_STEPS)
    cursor = None
    rows: list[list[Any]] = []
    try:
        try:
            cursor = db.execute(sql, params)
            columns = [d[0] for d in cursor.description or ()]
            size = 0
            # One row at a time, so a result is stopped at the cap rather
            # than built whole and measured after.
            while len(rows) <= row_limit:
                row = cursor.fetchone()
                if row is None:
                    break
                size += sum(_value_bytes(v) for v in row)
                if size > max_result_bytes:
                    raise QueryTooLarge(
                        f"the result passed {max_result_bytes} bytes after {len(rows)} rows; "
                        "select fewer rows or columns",
                        max_result_bytes,
                    )
                rows.append(list(row))
        except MemoryError:
            # SQLITE_NOMEM: the heap ceiling of _limits.heap_ceiling was hit.
            raise QueryTooLarge(
                "SQLite needed more memory than a query may use", _limits.QUERY_HEAP_BYTES
            ) from None
        except (sqlcipher.Error, sqlcipher.Warning) as exc:
            if timed_out:
                raise QueryTimeout(time_limit_s) from None
            if authorizer.refused_function is not None:
                name = authorizer.refused_function
                raise QueryRefused(
                    f"function {name}() is not allowed in brain.query ({DENIED_FUNCTIONS[name]})"
                ) from None
            if "not authorized" in str(exc) or "authorization denied" in str(exc):  # the authorizer said no
                raise QueryRefused(str(exc)) from None
            if getattr(exc, "sqlite_errorcode", None) == _SQLITE_TOOBIG:
                raise QueryTooLarge(
                    "a string, blob or row grew past the reader's length limit", _limits.QUERY_MAX_LENGTH
                ) from None
            raise InvalidInput("sql", str(exc)) from None
    finally:
        if cursor is not None:
            # Finalise the statement so it holds no read snapshot open.
            cursor.close()
        db.set_authorizer(None)
        db.set_progress_handler(None, 0)
    return QueryResult(
        columns=columns,
        rows=rows[:row_limit],
        truncated=len(rows) > row_limit,
        elapsed_s=time.monotonic() - started,
    )

"""``brain.query``: one read-only SELECT over the persona's own brain.

Three fences, each enough alone for writes, together also for the rest:

* the connection is ``PRAGMA query_only = ON`` (set when it opens);
* an authorizer (``sqlite3_set_authorizer``, checked when the statement is
  prepared) allows only reading: ``SQLITE_SELECT``, ``SQLITE_READ``,
  ``SQLITE_FUNCTION`` (minus a few functions that reach outside the
  database) and ``SQLITE_RECURSIVE`` (``WITH RECURSIVE``). Every other action
  is denied: writes, DDL, ``ATTACH`` (which could create a plaintext file),
  ``PRAGMA`` (which could turn ``query_only`` off or rekey; only the
  ``data_version`` read FTS5 makes itself is let through), transactions;
* a progress handler interrupts the statement once its time limit passes
  (checked every :data:`PROGRESS_STEPS` virtual-machine instructions), and at
  most ``row_limit`` rows are fetched.

The authorizer and handler are set and cleared inside one job on the
reader's worker thread, so recall and export on the same connection never
run under them.
"""

from __future__ import annotations

import time
from typing import Any

from ._db import sqlcipher
from .errors import InvalidInput, QueryRefused, QueryTimeout
from .records import QueryResult

__all__ = ["PROGRESS_STEPS", "query_sync"]

PROGRESS_STEPS = 1_000

# Action codes are SQLite's (sqlite3.h).
_ALLOWED = frozenset(
    {
        sqlcipher.SQLITE_SELECT,
        sqlcipher.SQLITE_READ,
        sqlcipher.SQLITE_FUNCTION,
        sqlcipher.SQLITE_RECURSIVE,
    }
)
_DENIED_FUNCTIONS = frozenset(
    {
        "load_extension",  # loads native code
        "fts3_tokenizer",  # can register a tokenizer by pointer
        "sqlcipher_export",  # writes another (attached) database
        "randomblob",  # unbounded allocation
        "zeroblob",
    }
)


_OK: int = int(sqlcipher.SQLITE_OK)
_DENY: int = int(sqlcipher.SQLITE_DENY)
_PRAGMA: int = int(sqlcipher.SQLITE_PRAGMA)
_FUNCTION: int = int(sqlcipher.SQLITE_FUNCTION)

# FTS5 reads "PRAGMA data_version" itself while answering a MATCH; that one
# reading pragma is allowed, without a value (a value would be an assignment).
_ALLOWED_PRAGMAS = frozenset({"data_version"})


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, _: Any) -> int:
    if action == _PRAGMA:
        allowed = (arg1 or "").lower() in _ALLOWED_PRAGMAS and arg2 is None
        return _OK if allowed else _DENY
    if action not in _ALLOWED:
        return _DENY
    if action == _FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return _DENY
    # Reads of attached or temp databases cannot happen (ATTACH is denied),
    # but say so rather than rely on it.
    if db not in (None, "main"):
        return _DENY
    return _OK


def query_sync(
    db: Any, sql: str, params: tuple[Any, ...], row_limit: int, time_limit_s: float
) -> QueryResult:
    """Run ``sql`` on a reader connection under the fences above (worker thread)."""
    started = time.monotonic()
    deadline = started + time_limit_s
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if time.monotonic() > deadline:
            timed_out = True
            return 1  # non-zero interrupts the statement (SQLITE_INTERRUPT)
        return 0

    db.set_authorizer(_authorize)
    db.set_progress_handler(progress, PROGRESS_STEPS)
    cursor = None
    try:
        try:
            cursor = db.execute(sql, params)
            columns = [d[0] for d in cursor.description or ()]
            rows = cursor.fetchmany(row_limit + 1)
        except (sqlcipher.Error, sqlcipher.Warning) as exc:
            if timed_out:
                raise QueryTimeout(time_limit_s) from None
            if "not authorized" in str(exc) or "authorization denied" in str(exc):  # the authorizer said no
                raise QueryRefused(str(exc)) from None
            raise InvalidInput("sql", str(exc)) from None
    finally:
        if cursor is not None:
            # Finalise the statement so it holds no read snapshot open.
            cursor.close()
        db.set_authorizer(None)
        db.set_progress_handler(None, 0)
    return QueryResult(
        columns=columns,
        rows=[list(row) for row in rows[:row_limit]],
        truncated=len(rows) > row_limit,
        elapsed_s=time.monotonic() - started,
    )

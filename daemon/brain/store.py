"""The Brain: one persona's persistent, encrypted memory, as an async library.

A :class:`Brain` owns two SQLCipher connections, each driven by aiosqlite on
its own worker thread (see ``_db.py`` for keys and pragmas):

* the **writer**, the only connection that writes (SQLite allows one writer;
  funnelling every write through one queue makes that explicit rather than a
  matter of busy-waiting);
* the **reader**, ``query_only``, for recall, listings, stats, export and
  ``query``. WAL lets it read while the writer commits.

**Group commit.** ``remember`` puts its row on a list and waits. The first
caller of an event-loop tick starts a flush task; by the time it runs, every
``remember`` of that tick has joined the list, and the flush commits them all
in one transaction (one fsync with ``synchronous = FULL``). Callers arriving
while a flush is on disk form the next batch. Each caller is answered only
after its transaction commits, so an acknowledged memory is durable; a caller
cancelled before its batch is taken is simply not written. The flush task is
owned by the Brain and awaited by :meth:`close`, like aiosqlite's threads.

**Retention.** :meth:`enforce_retention` removes unpinned memories, lowest
``0.3 * recency + 0.2 * relevance`` first (recall's score without the text
part: the oldest and least relevant), until the policy's bounds hold, then
hands freed pages back to the file system (``auto_vacuum = INCREMENTAL``).
:meth:`run_retention` repeats it every ``interval_s``; the daemon runs it in
its TaskGroup.

**Subjects** are compared case-insensitively: they are stored case-folded
with runs of white space collapsed, so "Alice" and "alice " are one subject
for recall and erase.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosqlite

from protocol.commands.brain import (
    ERASE_EVERYTHING,
    KIND_PATTERN,
    MAX_CONTENT_BYTES,
    MAX_JSON_BYTES,
    MAX_LABEL_CHARS,
    MAX_QUERY_PARAMS,
    MAX_QUERY_ROWS,
    MAX_QUERY_SQL_CHARS,
    MAX_QUERY_TIME_S,
    MAX_RECALL_LIMIT,
    MAX_RECALL_QUERY_CHARS,
    MAX_TEXT_CHARS,
    SKILL_ID_PATTERN,
)

from ._db import Functions, connect_reader, connect_writer, file_bytes, open_aio, probe_readonly
from ._db import run_on as _run_on
from ._limits import LimitsUnavailable
from .errors import BrainClosed, InvalidInput, NotFound, SchemaTooNew
from .export import export_sync
from .migrations import LATEST, migrate
from .readonly import query_sync, reader_handle
from .recall import RecallFilters, recall_sync, recency
from .records import (
    BrainStats,
    EraseSummary,
    ExportSummary,
    Goal,
    MemoryItem,
    QueryResult,
    RecallHit,
    RetentionPolicy,
    RetentionState,
    ScoreWeights,
    Skill,
    from_epoch,
    to_epoch,
)

__all__ = ["TABLES", "Brain"]

LOG = logging.getLogger("personad.brain")

TABLES = ("memories", "skills", "interactions", "goals", "emotions", "evolution_history")
GOAL_STATUSES = ("active", "paused", "done", "abandoned")
_KIND = re.compile(KIND_PATTERN)
_SKILL_ID = re.compile(SKILL_ID_PATTERN)
# Retention deletes in slices so one enforcement never holds the write lock long.
_RETENTION_SLICE = 5_000
_RETENTION_ROUNDS = 4

_INSERT_MEMORY = (
    "INSERT INTO memories (content, kind, source, subject, context, relevance, pinned, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_Row = tuple[str, str, str, str | None, str | None, float, int, float]


# -- validation ---------------------------------------------------------------
# The same limits as the bus's models (protocol.commands.brain), for callers
# inside the daemon that do not come through the bus.


def _text(field: str, value: object, max_chars: int, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    if not empty and not value:
        raise InvalidInput(field, "must not be empty")
    if len(value) > max_chars:
        raise InvalidInput(field, f"longer than {max_chars} characters")
    return value


def _opt_text(field: str, value: object, max_chars: int) -> str | None:
    return None if value is None else _text(field, value, max_chars, empty=True)


def _content(value: object) -> str:
    content = _text("content", value, MAX_CONTENT_BYTES)
    if len(content.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise InvalidInput("content", f"over {MAX_CONTENT_BYTES} bytes in UTF-8")
    return content


def _number(field: str, value: object, lo: float, hi: float) -> float:
    # bool is an int: refuse it, as the bus's strict models do.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(field, "must be a number")
    number = float(value)
    if not math.isfinite(number) or not lo <= number <= hi:
        raise InvalidInput(field, f"must be within [{lo:g}, {hi:g}]")
    return number


def _opt_number(field: str, value: object, lo: float, hi: float) -> float | None:
    return None if value is None else _number(field, value, lo, hi)


def _int(field: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(field, f"must be an integer within [{lo}, {hi}]")
    return value


def _flag(field: str, value: object) -> int:
    if not isinstance(value, bool):
        raise InvalidInput(field, "must be true or false")
    return int(value)


def _json_object(field: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput(field, "must be a JSON object")
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(field, f"not JSON-serialisable: {exc}") from None
    if len(encoded.encode("utf-8")) > MAX_JSON_BYTES:
        raise InvalidInput(field, f"over {MAX_JSON_BYTES} bytes as JSON")
    return encoded


def normalise_subject(value: object, field: str = "subject") -> str | None:
    """How subjects are stored and compared: case-folded, white space collapsed."""
    if value is None:
        return None
    subject = " ".join(_text(field, value, MAX_LABEL_CHARS).split()).casefold()
    if not subject:
        raise InvalidInput(field, "must not be blank")
    return subject


def _kind(value: object) -> str:
    if not isinstance(value, str) or not _KIND.fullmatch(value):
        raise InvalidInput("kind", f"must match {KIND_PATTERN}")
    return value


def _skill_id(value: object) -> str:
    if not isinstance(value, str) or not _SKILL_ID.fullmatch(value):
        raise InvalidInput("skill_id", f"must match {SKILL_ID_PATTERN}")
    return value


def _time(field: str, value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidInput(field, "must be a datetime")
    return to_epoch(value)


def _memory_row(item: MemoryItem, now: float) -> _Row:
    return (
        _content(item.content),
        _kind(item.kind),
        _text("source", item.source, MAX_LABEL_CHARS, empty=True),
        normalise_subject(item.subject),
        _json_object("context", item.context),
        _number("relevance", item.relevance, 0.0, 1.0),
        _flag("pinned", item.pinned),
        now,
    )


# -- work done on the connections' threads ----------------------------------------


def _in_transaction(db: Any, work: Any, *args: Any) -> Any:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db, *args)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def _insert_memories(db: Any, rows: list[_Row]) -> list[int]:
    return [db.execute(_INSERT_MEMORY, row).lastrowid for row in rows]


def _prepare(db: Any, path: Path) -> tuple[int, int]:
    found, now = migrate(db, path)
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        # A database from before we set auto_vacuum (the seed's): the mode
        # only changes with a VACUUM, once.
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("VACUUM")
    return found, now


def _forget(db: Any, ids: list[int]) -> int:
    removed = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        cursor = db.execute(f"DELETE FROM memories WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        removed += cursor.rowcount
    return int(removed)


_SKILL_COLUMNS = (
    "skill_id, lora_hash, description, effectiveness, rated_uses, usage_count, acquired_at, last_used_at"
)


def _skill(row: Sequence[Any]) -> Skill:
    return Skill(
        skill_id=row[0],
        lora_hash=row[1],
        description=row[2],
        effectiveness=row[3],
        rated_uses=row[4],
        usage_count=row[5],
        acquired_at=from_epoch(row[6]),
        last_used_at=None if row[7] is None else from_epoch(row[7]),
    )


def _get_skill(db: Any, skill_id: str) -> Skill:
    row = db.execute(f"SELECT {_SKILL_COLUMNS} FROM skills WHERE skill_id = ?", (skill_id,))
    found = row.fetchone()
    if found is None:
        raise NotFound("skill", skill_id)
    return _skill(found)


def _skill_upsert(
    db: Any, skill_id: str, lora_hash: str | None, description: str | None, now: float
) -> Skill:
    db.execute(
        "INSERT INTO skills (skill_id, lora_hash, description, acquired_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (skill_id) DO UPDATE SET "
        "lora_hash = coalesce(excluded.lora_hash, lora_hash), "
        "description = coalesce(excluded.description, description)",
        (skill_id, lora_hash, description, now),
    )
    return _get_skill(db, skill_id)


def _skill_use(db: Any, skill_id: str, effectiveness: float | None, now: float) -> Skill:
    # Every right-hand side sees the row before the update, so effectiveness
    # becomes the exact running mean over the rated uses.
    cursor = db.execute(
        "UPDATE skills SET usage_count = usage_count + 1, last_used_at = :now, "
        "effectiveness = CASE WHEN :e IS NULL THEN effectiveness "
        "  ELSE (coalesce(effectiveness, 0.0) * rated_uses + :e) / (rated_uses + 1) END, "
        "rated_uses = rated_uses + (:e IS NOT NULL) "
        "WHERE skill_id = :id",
        {"now": now, "e": effectiveness, "id": skill_id},
    )
    if cursor.rowcount == 0:
        raise NotFound("skill", skill_id)
    return _get_skill(db, skill_id)


_GOAL_COLUMNS = "id, title, description, status, priority, progress, due_at, created_at, updated_at"


def _goal(row: Sequence[Any]) -> Goal:
    return Goal(
        id=row[0],
        title=row[1],
        description=row[2],
        status=row[3],
        priority=row[4],
        progress=row[5],
        due_at=None if row[6] is None else from_epoch(row[6]),
        created_at=from_epoch(row[7]),
        updated_at=from_epoch(row[8]),
    )


def _goal_set(db: Any, goal_id: int | None, values: dict[str, Any], now: float) -> Goal:
    if goal_id is None:
        goal_id = db.execute(
            "INSERT INTO goals (title, description, status, priority, progress, due_at, "
            "created_at, updated_at) VALUES (:title, :description, :status, :priority, "
            ":progress, :due_at, :now, :now)",
            {**values, "now": now},
        ).lastrowid
    else:
        cursor = db.execute(
            "UPDATE goals SET title = :title, description = :description, status = :status, "
            "priority = :priority, progress = :progress, due_at = :due_at, updated_at = :now "
            "WHERE id = :id",
            {**values, "now": now, "id": goal_id},
        )
        if cursor.rowcount == 0:
            raise NotFound("goal", goal_id)
    row = db.execute(f"SELECT {_GOAL_COLUMNS} FROM goals WHERE id = ?", (goal_id,)).fetchone()
    return _goal(row)


def _live_bytes(db: Any) -> int:
    # int(): SQLCipher answers PRAGMA page_size itself, as text.
    page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
    pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    return (pages - free) * page_size


def _delete_least_kept(db: Any, count: int, now: float, weights: ScoreWeights) -> int:
    cursor = db.execute(
        "DELETE FROM memories WHERE id IN (SELECT id FROM memories WHERE pinned = 0 "
        "ORDER BY ? * brain_recency(? - created_at) + ? * relevance ASC, id ASC LIMIT ?)",
        (weights.recency, now, weights.relevance, count),
    )
    return int(cursor.rowcount)


def _retention(db: Any, policy: RetentionPolicy, now: float, weights: ScoreWeights) -> int:
    removed = 0
    if policy.max_memories is not None:
        while True:
            total: int = db.execute("SELECT count(*) FROM memories").fetchone()[0]
            excess = min(total - policy.max_memories, _RETENTION_SLICE)
            if excess <= 0:
                break
            gone = _in_transaction(db, _delete_least_kept, excess, now, weights)
            removed += gone
            if gone == 0:  # only pinned memories left
                break
    if policy.max_bytes is not None:
        for _ in range(_RETENTION_ROUNDS):
            live = _live_bytes(db)
            total = db.execute("SELECT count(*) FROM memories").fetchone()[0]
            if live <= policy.max_bytes or total == 0:
                break
            # Bytes per memory, over-estimated (other tables count too), so
            # each round removes at least enough; rounds correct the rest.
            per_row = live / total
            want = min(math.ceil((live - policy.max_bytes) / per_row), _RETENTION_SLICE)
            gone = _in_transaction(db, _delete_least_kept, max(want, 1), now, weights)
            removed += gone
            if gone == 0:
                break
            # Fold FTS5's delete markers into its segments (bounded work), or
            # the index grows while rows are removed (FTS5 'merge' command).
            db.execute("INSERT INTO memories_fts (memories_fts, rank) VALUES ('merge', 500)")
    if removed:
        db.execute("PRAGMA incremental_vacuum")
    return removed


def _erase(db: Any, subject: str | None) -> dict[str, int]:
    def delete(db: Any) -> dict[str, int]:
        removed: dict[str, int] = {}
        if subject is None:
            for table in TABLES:
                removed[table] = db.execute(f"DELETE FROM {table}").rowcount
        else:
            for table in ("memories", "interactions", "emotions"):
                removed[table] = db.execute(f"DELETE FROM {table} WHERE subject = ?", (subject,)).rowcount
        # The external-content index still holds the erased words (delete
        # markers only hide them); 'rebuild' writes it anew from memories.
        db.execute("INSERT INTO memories_fts (memories_fts) VALUES ('rebuild')")
        return removed

    removed: dict[str, int] = _in_transaction(db, delete)
    # VACUUM rewrites every page, so no free page keeps erased text; the
    # TRUNCATE checkpoint copies it into the file and empties the WAL, which
    # held the old pages too (https://sqlite.org/pragma.html#pragma_wal_checkpoint).
    db.execute("VACUUM")
    busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        raise RuntimeError("WAL checkpoint after erase stayed busy; erase again")
    return removed


def _stats(db: Any) -> tuple[dict[str, int], int, int]:
    db.execute("BEGIN")
    try:
        counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        pinned = db.execute("SELECT count(*) FROM memories WHERE pinned = 1").fetchone()[0]
        live = _live_bytes(db)
    finally:
        db.execute("COMMIT")
    return counts, pinned, live


# -- the Brain ----------------------------------------------------------------------


class Brain:
    """One persona's brain. Open with :meth:`open`; use as an async context manager."""

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        *,
        schema_version: int,
        retention: RetentionPolicy | None,
        weights: ScoreWeights,
        reader_handle: int | None = None,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        # The reader's sqlite3*, for brain.query's limits (None: query refused).
        self._reader_handle = reader_handle
        self._schema_version = schema_version
        self._retention = retention
        self._weights = weights
        self._closed = False
        self._pending: list[tuple[list[_Row], asyncio.Future[list[int]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._retention_last: datetime | None = None
        self._retention_last_removed = 0
        self._retention_total = 0
        #: Transactions the group commit made, and the remember calls they carried.
        self.group_commits = 0
        self.group_committed_calls = 0

    # -- lifecycle ---------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: Path,
        key: bytes,
        *,
        retention: RetentionPolicy | None = None,
        weights: ScoreWeights | None = None,
    ) -> Self:
        """Open (creating if absent) and migrate the brain at ``path``.

        The folder must exist (the daemon lays out the session directory).
        Raises WrongKey, SchemaTooNew or MigrationFailed; none of them
        modifies the file.
        """
        if not isinstance(key, bytes) or len(key) != 32:
            raise InvalidInput("key", "must be 32 bytes")
        if not path.parent.is_dir():
            raise InvalidInput("path", f"folder {path.parent} does not exist")
        weights = weights or ScoreWeights()
        if retention is not None:
            _check_policy(retention)
        # Key and version are checked on a read-only connection first: a
        # refused file must stay byte-for-byte as it was (see probe_readonly).
        version = await asyncio.to_thread(probe_readonly, path, key)
        if version is not None and version > LATEST:
            raise SchemaTooNew(path, version, LATEST)
        if version is None:
            _create_private(path)

        half_life_s = weights.half_life_days * 86_400.0
        functions: Functions = {"brain_recency": (1, lambda age: recency(age, half_life_s))}
        writer = await open_aio(connect_writer(path, key, functions))
        try:
            found, now = await _run_on(writer, _prepare, path)
            if found != now:
                LOG.info("brain %s migrated from schema %d to %d", path, found, now)
            reader = await open_aio(connect_reader(path, key, functions))
        except BaseException:
            await writer.close()
            raise
        try:
            handle: int | None = await _run_on(reader, reader_handle, str(path))
        except LimitsUnavailable as exc:
            # Fail closed for brain.query only: memory keeps working.
            LOG.error("brain %s: brain.query disabled: %s", path, exc)
            handle = None
        except BaseException:
            await reader.close()
            await writer.close()
            raise
        return cls(
            path,
            writer,
            reader,
            schema_version=now,
            retention=retention,
            weights=weights,
            reader_handle=handle,
        )

    async def close(self) -> None:
        """Finish pending writes and close; the WAL is checkpointed into the file."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await self._flusher
        # Reader first: the last connection to close checkpoints the WAL and
        # removes it, and that should be the writer.
        await self._reader.close()
        await self._writer.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BrainClosed()

    async def _write(self, fn: Any, *args: Any) -> Any:
        self._check_open()
        return await _run_on(self._writer, fn, *args)

    async def _read(self, fn: Any, *args: Any) -> Any:
        self._check_open()
        return await _run_on(self._reader, fn, *args)

    # -- memories ------------------------------------------------------------------

    async def remember(
        self,
        content: str,
        *,
        context: dict[str, Any] | None = None,
        relevance: float = 0.5,
        source: str = "",
        subject: str | None = None,
        pinned: bool = False,
        kind: str = "note",
    ) -> int:
        """Store one memory; return its id once it is committed durably."""
        item = MemoryItem(content, context, relevance, source, subject, pinned, kind)
        (memory_id,) = await self._submit([_memory_row(item, time.time())])
        return memory_id

    async def remember_many(self, items: Iterable[MemoryItem]) -> list[int]:
        """Store several memories in one transaction; ids in order, once durable."""
        now = time.time()
        rows = []
        for index, item in enumerate(items):
            try:
                rows.append(_memory_row(item, now))
            except InvalidInput as exc:
                raise InvalidInput(f"items[{index}].{exc.field}", exc.reason) from None
        if not rows:
            return []
        return await self._submit(rows)

    async def _submit(self, rows: list[_Row]) -> list[int]:
        self._check_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._pending.append((rows, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name=f"brain-commit:{self.path}")
        return await future

    async def _flush(self) -> None:
        # Started from the first remember() of a tick; runs after the rest of
        # that tick's callers have appended, so they share one transaction.
        while self._pending:
            batch, self._pending = self._pending, []
            # A caller cancelled before its batch is taken was never acknowledged.
            batch = [(rows, fut) for rows, fut in batch if not fut.done()]
            if not batch:
                continue
            rows = [row for row_list, _ in batch for row in row_list]
            try:
                ids = await _run_on(self._writer, _in_transaction, _insert_memories, rows)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            except BaseException:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(BrainClosed())
                raise
            self.group_commits += 1
            self.group_committed_calls += len(batch)
            start = 0
            for row_list, fut in batch:
                if not fut.done():
                    fut.set_result(ids[start : start + len(row_list)])
                start += len(row_list)

    async def recall(
        self,
        query: str,
        *,
        kinds: Sequence[str] | None = None,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        subject: str | None = None,
        limit: int = 10,
    ) -> list[RecallHit]:
        """Memories matching ``query``, best first, by the score in :mod:`.recall`."""
        query = _text("query", query, MAX_RECALL_QUERY_CHARS, empty=True)
        if kinds is not None:
            if isinstance(kinds, str) or not 1 <= len(kinds) <= 16:
                raise InvalidInput("kinds", "must be a list of 1 to 16 kinds")
            kinds = tuple(_kind(k) for k in kinds)
        filters = RecallFilters(
            kinds=kinds,
            source=_opt_text("source", source, MAX_LABEL_CHARS),
            subject=normalise_subject(subject),
            since=_time("since", since),
            until=_time("until", until),
        )
        limit = _int("limit", limit, 1, MAX_RECALL_LIMIT)
        hits: list[RecallHit] = await self._read(
            recall_sync, query, filters, limit, time.time(), self._weights
        )
        return hits

    async def forget(self, ids: Iterable[int]) -> int:
        """Delete memories by id; return how many existed."""
        checked = [_int("ids[]", i, 1, 2**63 - 1) for i in ids]
        if not checked:
            return 0
        removed: int = await self._write(_in_transaction, _forget, checked)
        return removed

    # -- skills, interactions, goals, emotions ----------------------------------

    async def skills_list(self) -> list[Skill]:
        """Every skill, most used first."""

        def fetch(db: Any) -> list[Skill]:
            rows = db.execute(
                f"SELECT {_SKILL_COLUMNS} FROM skills ORDER BY usage_count DESC, skill_id"
            ).fetchall()
            return [_skill(row) for row in rows]

        skills: list[Skill] = await self._read(fetch)
        return skills

    async def skill_upsert(
        self, skill_id: str, *, lora_hash: str | None = None, description: str | None = None
    ) -> Skill:
        """Add a skill, or update its adapter hash / description (None keeps the old)."""
        args = (
            _skill_id(skill_id),
            _opt_text("lora_hash", lora_hash, MAX_LABEL_CHARS),
            _opt_text("description", description, MAX_TEXT_CHARS),
            time.time(),
        )
        skill: Skill = await self._write(_in_transaction, _skill_upsert, *args)
        return skill

    async def skill_record_use(self, skill_id: str, effectiveness: float | None = None) -> Skill:
        """Count one use; a given effectiveness joins the skill's running mean."""
        args = (_skill_id(skill_id), _opt_number("effectiveness", effectiveness, 0, 1))
        skill: Skill = await self._write(_in_transaction, _skill_use, *args, time.time())
        return skill

    async def log_interaction(
        self,
        *,
        with_persona: str,
        room_id: str | None = None,
        outcome: str | None = None,
        learned: dict[str, Any] | None = None,
        subject: str | None = None,
    ) -> int:
        """Record an interaction; return its id once durable."""
        row = (
            _text("with_persona", with_persona, MAX_LABEL_CHARS),
            _opt_text("room_id", room_id, MAX_LABEL_CHARS),
            _opt_text("outcome", outcome, MAX_TEXT_CHARS),
            _json_object("learned", learned),
            normalise_subject(subject),
            time.time(),
        )

        def insert(db: Any) -> int:
            return int(
                db.execute(
                    "INSERT INTO interactions (with_persona, room_id, outcome, learned, subject, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                ).lastrowid
            )

        interaction_id: int = await self._write(_in_transaction, insert)
        return interaction_id

    async def goals_set(
        self,
        title: str,
        *,
        goal_id: int | None = None,
        description: str | None = None,
        status: str = "active",
        priority: float = 0.5,
        progress: float = 0.0,
        due_at: datetime | None = None,
    ) -> Goal:
        """Create a goal (no ``goal_id``) or replace an existing one's fields."""
        if goal_id is not None:
            goal_id = _int("goal_id", goal_id, 1, 2**63 - 1)
        if status not in GOAL_STATUSES:
            raise InvalidInput("status", f"must be one of {', '.join(GOAL_STATUSES)}")
        values = {
            "title": _text("title", title, 256),
            "description": _opt_text("description", description, MAX_TEXT_CHARS),
            "status": status,
            "priority": _number("priority", priority, 0, 1),
            "progress": _number("progress", progress, 0, 1),
            "due_at": _time("due_at", due_at),
        }
        goal: Goal = await self._write(_in_transaction, _goal_set, goal_id, values, time.time())
        return goal

    async def goals_list(self, *, status: str | None = None, limit: int = 100) -> list[Goal]:
        """Goals, highest priority first, optionally of one status."""
        if status is not None and status not in GOAL_STATUSES:
            raise InvalidInput("status", f"must be one of {', '.join(GOAL_STATUSES)}")
        limit = _int("limit", limit, 1, 500)

        def fetch(db: Any) -> list[Goal]:
            rows = db.execute(
                f"SELECT {_GOAL_COLUMNS} FROM goals WHERE ?1 IS NULL OR status = ?1 "
                "ORDER BY priority DESC, id LIMIT ?2",
                (status, limit),
            ).fetchall()
            return [_goal(row) for row in rows]

        goals: list[Goal] = await self._read(fetch)
        return goals

    async def emotions_record(
        self,
        emotion: str,
        *,
        intensity: float,
        valence: float | None = None,
        trigger: str | None = None,
        subject: str | None = None,
    ) -> int:
        """Record an emotional state; return its id once durable."""
        row = (
            _text("emotion", emotion, 64),
            _number("intensity", intensity, 0, 1),
            _opt_number("valence", valence, -1, 1),
            _opt_text("trigger", trigger, 1024),
            normalise_subject(subject),
            time.time(),
        )

        def insert(db: Any) -> int:
            return int(
                db.execute(
                    "INSERT INTO emotions (emotion, intensity, valence, trigger, subject, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                ).lastrowid
            )

        emotion_id: int = await self._write(_in_transaction, insert)
        return emotion_id

    # -- the operator's view and rights --------------------------------------------

    async def stats(self) -> BrainStats:
        """Counts per table, bytes on disk, schema version, retention so far."""
        counts, pinned, live = await self._read(_stats)
        files = file_bytes(self.path)
        return BrainStats(
            schema_version=self._schema_version,
            counts=counts,
            pinned_memories=pinned,
            bytes_on_disk=sum(files.values()),
            files=files,
            bytes_live=live,
            retention=self.retention_state(),
        )

    def retention_state(self) -> RetentionState:
        return RetentionState(
            policy=self._retention,
            last_run_at=self._retention_last,
            last_removed=self._retention_last_removed,
            total_removed=self._retention_total,
        )

    async def export(self, path: Path) -> ExportSummary:
        """Write the whole brain to ``path`` as JSON (format in :mod:`.export`), atomically."""
        if not path.parent.is_dir():
            raise InvalidInput("path", f"folder {path.parent} does not exist")
        summary: ExportSummary = await self._read(export_sync, path, self._schema_version)
        return summary

    async def erase(
        self, *, subject: str | None = None, everything: bool = False, confirm: str
    ) -> EraseSummary:
        """Erase one subject's memories, interactions and emotions, or everything.

        ``confirm`` must repeat the subject, or be ``"erase everything"``.
        Afterwards the file is vacuumed and the WAL emptied, so the erased
        text is in no page of the database, free or used.
        """
        if everything == (subject is not None):
            raise InvalidInput("subject", "give exactly one of subject or everything=True")
        if everything:
            if confirm != ERASE_EVERYTHING:
                raise InvalidInput("confirm", f"must be {ERASE_EVERYTHING!r}")
            target = None
        else:
            if confirm != subject:
                raise InvalidInput("confirm", "must repeat the subject")
            target = normalise_subject(subject)
        before = sum(file_bytes(self.path).values())
        removed: dict[str, int] = await self._write(_erase, target)
        after = sum(file_bytes(self.path).values())
        LOG.info("brain %s erased %s: %s rows", self.path, "a subject" if target else "all", removed)
        return EraseSummary(subject=target, removed=removed, bytes_before=before, bytes_after=after)

    async def query(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        row_limit: int = MAX_QUERY_ROWS,
        time_limit: float = MAX_QUERY_TIME_S,
    ) -> QueryResult:
        """Run one read-only SELECT (see :mod:`.readonly`); at most ``row_limit`` rows."""
        sql = _text("sql", sql, MAX_QUERY_SQL_CHARS)
        if isinstance(params, str | bytes) or len(params) > MAX_QUERY_PARAMS:
            raise InvalidInput("params", f"must be a list of at most {MAX_QUERY_PARAMS} values")
        for value in params:
            if value is not None and not isinstance(value, str | int | float | bytes):
                raise InvalidInput("params", "values must be str, int, float, bytes or None")
        row_limit = _int("row_limit", row_limit, 1, MAX_QUERY_ROWS)
        time_limit = _number("time_limit", time_limit, 0.0, MAX_QUERY_TIME_S)
        if time_limit == 0:
            raise InvalidInput("time_limit", "must be positive")
        result: QueryResult = await self._read(
            query_sync, self._reader_handle, sql, tuple(params), row_limit, time_limit
        )
        return result

    # -- retention ---------------------------------------------------------------

    async def enforce_retention(self) -> int:
        """Apply the retention policy once; return how many memories it removed."""
        self._check_open()
        if self._retention is None:
            return 0
        removed: int = await self._write(_retention, self._retention, time.time(), self._weights)
        self._retention_last = from_epoch(time.time())
        self._retention_last_removed = removed
        self._retention_total += removed
        if removed:
            LOG.info("brain %s retention removed %d memories", self.path, removed)
        return removed

    async def run_retention(self) -> None:
        """Enforce retention every ``interval_s`` until cancelled or closed.

        Meant to be a task of the daemon's TaskGroup. A failed round is logged
        and retried at the next interval rather than taking the daemon down.
        """
        if self._retention is None:
            return
        while not self._closed:
            try:
                await self.enforce_retention()
            except BrainClosed:
                return
            except Exception:
                LOG.exception("brain %s retention failed; retrying later", self.path)
            await asyncio.sleep(self._retention.interval_s)

    # -- for tests and tools ---------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self._schema_version


def _create_private(path: Path) -> None:
    # SQLite would create the file 0644 (less the umask), and its -wal and
    # -shm copy the database's mode: make it 0600 before SQLite sees it.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    if path.stat().st_size == 0:
        os.chmod(path, 0o600)


def _check_policy(policy: RetentionPolicy) -> None:
    if policy.max_memories is not None:
        _int("retention.max_memories", policy.max_memories, 0, 2**62)
    if policy.max_bytes is not None:
        _int("retention.max_bytes", policy.max_bytes, 0, 2**62)
    _number("retention.interval_s", policy.interval_s, 0.001, 365 * 86_400.0)

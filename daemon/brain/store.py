"""The Brain: one persona's persistent, encrypted memory, as an async library.

A :class:`Brain` owns two SQLCipher connections, each driven by aiosqlite on
its own worker thread (see ``_db.py`` for keys and pragmas):

* the **writer**, the only connection that writes (SQLite allows one writer;
  funnelling every write through one queue makes that explicit rather than a
  matter of busy-waiting); ``remember`` calls share its transactions by
  group commit (:mod:`.commit`);
* the **reader**, ``query_only``, for recall, listings, stats, export and
  ``query`` (:mod:`.readonly`). WAL lets it read while the writer commits.

This module is the public face: it checks every argument (:mod:`.validation`)
and hands the work to the connection's thread (:mod:`.ops`,
:mod:`.retention`, :mod:`.recall`, :mod:`.export`). Retention runs every
``interval_s`` in the daemon's TaskGroup (:meth:`Brain.run_retention`).

One file because it is one class's public surface, each method only argument
checks and a hand-off; the work itself already lives in the modules above.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosqlite

from protocol.commands.brain import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_LABEL_CHARS,
    MAX_QUERY_ROWS,
    MAX_QUERY_TIME_S,
    MAX_RECALL_LIMIT,
    MAX_RECALL_QUERY_CHARS,
    MAX_TEXT_CHARS,
)

from ..callers import current_caller
from . import ops, retention
from ._db import (
    Functions,
    connect_reader,
    connect_writer,
    create_private,
    file_bytes,
    open_aio,
    probe_readonly,
)
from ._db import run_on as _run_on
from ._limits import LimitsUnavailable
from .commit import GroupCommit
from .errors import BrainBusy, BrainClosed, InvalidInput, SchemaTooNew
from .export import export_sync
from .idempotency import REMEMBER, keyed
from .migrations import LATEST
from .readonly import query_sync, reader_handle
from .recall import recall_sync, recency
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
)
from .validation import (
    GOAL_STATUSES,
    Row,
    check_int,
    check_json_object,
    check_number,
    check_opt_number,
    check_opt_text,
    check_policy,
    check_skill_id,
    check_text,
    check_time,
    erase_target,
    memory_row,
    normalise_subject,
    query_args,
    recall_filters,
)

__all__ = ["TABLES", "Brain"]

LOG = logging.getLogger("personad.brain")

TABLES = ops.TABLES

#: Reads that may wait for the reader at once; more are refused with BrainBusy.
#: A persona that falls behind (a starved CPU) then answers some readers
#: OVERLOADED at once instead of making every caller wait out its deadline in a
#: queue that only grows. Writes are not refused: a handler that writes more
#: than once (an evolution record and its skill) must not be stopped half-way;
#: their queue is bounded by callers giving up (their work is then skipped).
MAX_WAITING = 64
#: Of those, the most one caller (a client id: :data:`daemon.callers.current_caller`) may
#: hold, so that one client firing reads cannot take every place and starve the others.
MAX_WAITING_PER_CALLER = 16


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
        #: Reads waiting for (or running on) the reader, against MAX_WAITING.
        self._reads_waiting = 0
        #: Reads waiting now, by the caller they serve (only callers with some).
        self._reads_by_caller: dict[str, int] = {}
        self._commit = GroupCommit(writer, name=str(path))
        self._retention_last: datetime | None = None
        self._retention_last_removed = 0
        self._retention_total = 0

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
            check_policy(retention)
        # Key and version are checked on a read-only connection first: a
        # refused file must stay byte-for-byte as it was (see probe_readonly).
        version = await asyncio.to_thread(probe_readonly, path, key)
        if version is not None and version > LATEST:
            raise SchemaTooNew(path, version, LATEST)
        if version is None:
            create_private(path)

        half_life_s = weights.half_life_days * 86_400.0
        functions: Functions = {"brain_recency": (1, lambda age: recency(age, half_life_s))}
        writer = await open_aio(connect_writer(path, key, functions))
        try:
            found, now = await _run_on(writer, ops.prepare, path)
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
        await self._commit.drain()
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
        """Run ``fn`` on the reader if fewer than MAX_WAITING reads wait for it, and fewer than
        MAX_WAITING_PER_CALLER of the request's caller; else BrainBusy.

        A caller that gives up while it waits leaves the count at once (its
        queued work is skipped, see ``_db.run_on``).
        """
        self._check_open()
        if self._reads_waiting >= MAX_WAITING:
            raise BrainBusy(self._reads_waiting)
        caller = current_caller.get()
        if caller is not None:
            mine = self._reads_by_caller.get(caller, 0)
            if mine >= MAX_WAITING_PER_CALLER:
                raise BrainBusy(self._reads_waiting, yours=mine)
            self._reads_by_caller[caller] = mine + 1
        self._reads_waiting += 1
        try:
            return await _run_on(self._reader, fn, *args)
        finally:
            self._reads_waiting -= 1
            if caller is not None:
                left = self._reads_by_caller.pop(caller) - 1
                if left:
                    self._reads_by_caller[caller] = left

    async def write(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(db, *args)`` on the writer connection's thread (one writer; wrap in a transaction).

        For the brain's feature modules (performance records, knowledge),
        which keep their SQL beside their own logic rather than here.
        """
        return await self._write(fn, *args)

    async def read(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(db, *args)`` on the read-only connection's thread."""
        return await self._read(fn, *args)

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
        (memory_id,) = await self._submit([memory_row(item, time.time())])
        return memory_id

    async def remember_once(
        self,
        content: str,
        *,
        caller: str,
        key: str,
        context: dict[str, Any] | None = None,
        relevance: float = 0.5,
        source: str = "",
        subject: str | None = None,
        pinned: bool = False,
        kind: str = "note",
    ) -> tuple[int, bool]:
        """``remember`` with an idempotency key (idempotency.py): the id, and whether it is a
        replay (the key was given before for this memory, which is not stored again).
        A key given before for another memory raises InvalidInput."""
        self._check_open()
        check_text("idempotency_key", key, MAX_IDEMPOTENCY_KEY_CHARS)
        row = memory_row(MemoryItem(content, context, relevance, source, subject, pinned, kind), time.time())
        ids, replayed = await self._commit.submit_keyed([row], keyed(caller, key, REMEMBER, row[:-1]))
        return ids[0], replayed

    async def remember_many(self, items: Iterable[MemoryItem]) -> list[int]:
        """Store several memories in one transaction; ids in order, once durable."""
        now = time.time()
        rows = []
        for index, item in enumerate(items):
            try:
                rows.append(memory_row(item, now))
            except InvalidInput as exc:
                raise InvalidInput(f"items[{index}].{exc.field}", exc.reason) from None
        if not rows:
            return []
        return await self._submit(rows)

    async def _submit(self, rows: list[Row]) -> list[int]:
        self._check_open()
        return await self._commit.submit(rows)

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
        query = check_text("query", query, MAX_RECALL_QUERY_CHARS, empty=True)
        filters = recall_filters(kinds=kinds, source=source, subject=subject, since=since, until=until)
        limit = check_int("limit", limit, 1, MAX_RECALL_LIMIT)
        hits: list[RecallHit] = await self._read(
            recall_sync, query, filters, limit, time.time(), self._weights
        )
        return hits

    async def forget(self, ids: Iterable[int]) -> int:
        """Delete memories by id; return how many existed."""
        checked = [check_int("ids[]", i, 1, 2**63 - 1) for i in ids]
        if not checked:
            return 0
        removed: int = await self._write(ops.in_transaction, ops.forget_ids, checked)
        return removed

    # -- skills, interactions, goals, emotions ----------------------------------

    async def skills_list(self) -> list[Skill]:
        """Every skill, most used first."""
        skills: list[Skill] = await self._read(ops.skills_all)
        return skills

    async def skill_upsert(
        self,
        skill_id: str,
        *,
        lora_hash: str | None = None,
        description: str | None = None,
        source: dict[str, Any] | None = None,
    ) -> Skill:
        """Add a skill, or update its adapter hash / description / source (None keeps the old).

        ``source`` says where a skill acquired from elsewhere came from (a JSON
        object: for the mesh, ``{"via": "mesh", "skill_id", "publisher", "node",
        "seeders", "acquired_at"}``).
        """
        args = (
            check_skill_id(skill_id),
            check_opt_text("lora_hash", lora_hash, MAX_LABEL_CHARS),
            check_opt_text("description", description, MAX_TEXT_CHARS),
            time.time(),
            check_json_object("source", source),
        )
        skill: Skill = await self._write(ops.in_transaction, ops.skill_upsert, *args)
        return skill

    async def skill_record_use(self, skill_id: str, effectiveness: float | None = None) -> Skill:
        """Count one use; a given effectiveness joins the skill's running mean."""
        args = (check_skill_id(skill_id), check_opt_number("effectiveness", effectiveness, 0, 1))
        skill: Skill = await self._write(ops.in_transaction, ops.skill_use, *args, time.time())
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
            check_text("with_persona", with_persona, MAX_LABEL_CHARS),
            check_opt_text("room_id", room_id, MAX_LABEL_CHARS),
            check_opt_text("outcome", outcome, MAX_TEXT_CHARS),
            check_json_object("learned", learned),
            normalise_subject(subject),
            time.time(),
        )
        interaction_id: int = await self._write(ops.in_transaction, ops.insert_interaction, row)
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
            goal_id = check_int("goal_id", goal_id, 1, 2**63 - 1)
        if status not in GOAL_STATUSES:
            raise InvalidInput("status", f"must be one of {', '.join(GOAL_STATUSES)}")
        values = {
            "title": check_text("title", title, 256),
            "description": check_opt_text("description", description, MAX_TEXT_CHARS),
            "status": status,
            "priority": check_number("priority", priority, 0, 1),
            "progress": check_number("progress", progress, 0, 1),
            "due_at": check_time("due_at", due_at),
        }
        goal: Goal = await self._write(ops.in_transaction, ops.goal_set, goal_id, values, time.time())
        return goal

    async def goals_list(self, *, status: str | None = None, limit: int = 100) -> list[Goal]:
        """Goals, highest priority first, optionally of one status."""
        if status is not None and status not in GOAL_STATUSES:
            raise InvalidInput("status", f"must be one of {', '.join(GOAL_STATUSES)}")
        limit = check_int("limit", limit, 1, 500)
        goals: list[Goal] = await self._read(ops.goals_list, status, limit)
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
            check_text("emotion", emotion, 64),
            check_number("intensity", intensity, 0, 1),
            check_opt_number("valence", valence, -1, 1),
            check_opt_text("trigger", trigger, 1024),
            normalise_subject(subject),
            time.time(),
        )
        emotion_id: int = await self._write(ops.in_transaction, ops.insert_emotion, row)
        return emotion_id

    # -- the operator's view and rights --------------------------------------------

    async def stats(self) -> BrainStats:
        """Counts per table, bytes on disk, schema version, retention so far."""
        counts, pinned, live = await self._read(ops.stats)
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
        target = erase_target(subject=subject, everything=everything, confirm=confirm)
        before = sum(file_bytes(self.path).values())
        removed: dict[str, int] = await self._write(ops.erase, target)
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
        args = query_args(sql, params, row_limit=row_limit, time_limit=time_limit)
        result: QueryResult = await self._read(query_sync, self._reader_handle, *args)
        return result

    # -- retention ---------------------------------------------------------------

    async def enforce_retention(self) -> int:
        """Apply the retention policy once; return how many memories it removed."""
        self._check_open()
        if self._retention is None:
            return 0
        removed: int = await self._write(retention.enforce, self._retention, time.time(), self._weights)
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

    @property
    def group_commits(self) -> int:
        """Transactions the group commit made (see :mod:`.commit`)."""
        return self._commit.commits

    @property
    def group_committed_calls(self) -> int:
        """``remember`` calls those transactions carried."""
        return self._commit.committed_calls

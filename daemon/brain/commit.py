"""Group commit: every ``remember`` of one event-loop tick in one transaction.

``remember`` puts its rows on a list and waits. The first caller of a tick
starts a flush task; by the time it runs, every ``remember`` of that tick has
joined the list, and the flush commits them all in one transaction (one
fsync with ``synchronous = FULL``). Callers arriving while a flush is on disk
form the next batch. Each caller is answered only after its transaction
commits, so an acknowledged memory is durable; a caller cancelled before its
batch is taken is simply not written. The flush task is owned here and
awaited by :meth:`GroupCommit.drain` (the Brain's ``close``), like
aiosqlite's threads.
"""

from __future__ import annotations

import asyncio

import aiosqlite

from ._db import run_on
from .errors import BrainClosed
from .ops import in_transaction, insert_memories
from .validation import Row

__all__ = ["GroupCommit"]


class GroupCommit:
    """Batches memory inserts on the writer connection (see the module's docstring)."""

    def __init__(self, writer: aiosqlite.Connection, *, name: str) -> None:
        self._writer = writer
        self._name = name
        self._pending: list[tuple[list[Row], asyncio.Future[list[int]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Transactions made, and the submit calls they carried.
        self.commits = 0
        self.committed_calls = 0

    async def submit(self, rows: list[Row]) -> list[int]:
        """Insert ``rows``; return their ids once their transaction committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._pending.append((rows, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name=f"brain-commit:{self._name}")
        return await future

    async def drain(self) -> None:
        """Wait for the flush in progress (and the batches queued behind it)."""
        if self._flusher is not None:
            await self._flusher

    async def _flush(self) -> None:
        # Started from the first submit() of a tick; runs after the rest of
        # that tick's callers have appended, so they share one transaction.
        while self._pending:
            batch, self._pending = self._pending, []
            # A caller cancelled before its batch is taken was never acknowledged.
            batch = [(rows, fut) for rows, fut in batch if not fut.done()]
            if not batch:
                continue
            rows = [row for row_list, _ in batch for row in row_list]
            try:
                ids = await run_on(self._writer, in_transaction, insert_memories, rows)
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
            self.commits += 1
            self.committed_calls += len(batch)
            start = 0
            for row_list, fut in batch:
                if not fut.done():
                    fut.set_result(ids[start : start + len(row_list)])
                start += len(row_list)

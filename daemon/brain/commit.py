"""Group commit: every ``remember`` of one event-loop tick in one transaction.

``remember`` puts its rows on a list and waits. The first caller of a tick
starts a flush task; by the time it runs, every ``remember`` of that tick has
joined the list, and the flush commits them all in one transaction (one
fsync with ``synchronous = FULL``). Callers arriving while a flush is on disk
form the next batch. Each caller is answered only after its transaction
commits, so an acknowledged memory is durable; a caller cancelled before its
batch is taken is simply not written. A call with an idempotency key
(idempotency.py) is answered from its key inside the same transaction, so
two retries in one batch still make one memory. The flush task is owned here
and awaited by :meth:`GroupCommit.drain` (the Brain's ``close``), like
aiosqlite's threads.
"""

from __future__ import annotations

import asyncio
import time

import aiosqlite

from ._db import run_on
from .errors import BrainClosed
from .idempotency import Keyed, KeyReused, insert_batch
from .ops import in_transaction
from .validation import Row

__all__ = ["GroupCommit"]

_Outcome = tuple[list[int], bool]


class GroupCommit:
    """Batches memory inserts on the writer connection (see the module's docstring)."""

    def __init__(self, writer: aiosqlite.Connection, *, name: str) -> None:
        self._writer = writer
        self._name = name
        self._pending: list[tuple[list[Row], Keyed | None, asyncio.Future[_Outcome]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Transactions made, and the submit calls they carried.
        self.commits = 0
        self.committed_calls = 0

    async def submit(self, rows: list[Row]) -> list[int]:
        """Insert ``rows``; return their ids once their transaction committed."""
        ids, _ = await self.submit_keyed(rows, None)
        return ids

    async def submit_keyed(self, rows: list[Row], key: Keyed | None) -> _Outcome:
        """Insert ``rows`` (with ``key``: one row), or answer from the key when it is known;
        return the ids and whether they are a replay. A key given for another memory
        raises InvalidInput."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Outcome] = loop.create_future()
        self._pending.append((rows, key, future))
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
            batch = [entry for entry in batch if not entry[2].done()]
            if not batch:
                continue
            work = [(rows, key) for rows, key, _ in batch]
            try:
                outcomes = await run_on(self._writer, in_transaction, insert_batch, work, time.time())
            except Exception as exc:
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            except BaseException:
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(BrainClosed())
                raise
            self.commits += 1
            self.committed_calls += len(batch)
            for (_, _, fut), outcome in zip(batch, outcomes, strict=True):
                if fut.done():
                    continue
                if isinstance(outcome, KeyReused):
                    fut.set_exception(outcome.error())
                else:
                    fut.set_result(outcome)

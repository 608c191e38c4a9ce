"""A run's journal: what is done, on disk, so that a run killed at any moment resumes exactly.

A run's folder holds ``plan.json`` (written once, atomically, before any
work) and ``journal.jsonl``: one line per finished slot, appended and
fsynced before the slot counts as done::

    {"slot": 17, "persona": {...}}                    a persona was made
    {"slot": 18, "failed": "why", "attempts": 3}      the slot gave up

Why this is enough for "no duplicate and no gap": every slot's work is a
pure function of the plan (its seed, its passage or attributes, its
parent's persona), so a slot redone after a crash gives what it would have
given; a slot is skipped on resume only if its line is in the journal, and
the line is written whole (fsync) before anything depends on it. A line cut
short by a crash mid-write is the last one; it is cut off on open and its
slot is simply redone. A damaged line anywhere else is refused, not
skipped: that file was not written by us alone.

Appends run on a worker thread (``asyncio.to_thread``), one at a time, so an
fsync never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from protocol.hub_persona import HubPersona

from ..errors import PersonadError
from ..files import atomic_write

__all__ = ["JOURNAL_FILE", "PLAN_FILE", "Journal", "JournalError", "SlotFailure"]

PLAN_FILE: Final = "plan.json"
JOURNAL_FILE: Final = "journal.jsonl"


class JournalError(PersonadError):
    """The run's folder cannot be used: unreadable, damaged, or another run's."""


@dataclass(frozen=True)
class SlotFailure:
    """A slot that gave up: its reason and how many attempts it made."""

    reason: str
    attempts: int


class Journal:
    """The finished slots of one run, as read from and appended to ``journal.jsonl``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / JOURNAL_FILE
        self.personas: dict[int, HubPersona] = {}
        self.failures: dict[int, SlotFailure] = {}
        self._lock = asyncio.Lock()
        self._fd: int | None = None

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def open(cls, folder: Path, plan: dict[str, Any]) -> Journal:
        """Open (or start) the run in ``folder`` for ``plan``; JournalError if it holds another run.

        ``plan`` is the plan's JSON object: a folder whose plan.json differs
        belongs to another run, and resuming it with this plan would mix two
        runs' personas.
        """
        folder.mkdir(parents=True, exist_ok=True)
        plan_path = folder / PLAN_FILE
        if plan_path.exists():
            try:
                existing = json.loads(plan_path.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                raise JournalError(
                    f"{plan_path} cannot be read ({exc}); remove {folder} to start over"
                ) from None
            if existing != plan:
                raise JournalError(
                    f"{folder} holds a run with another plan (seed, count, path or corpus differ); "
                    "use another output file, or remove that folder to start over"
                )
        else:
            atomic_write(plan_path, (json.dumps(plan, sort_keys=True, indent=1) + "\n").encode())
        journal = cls(folder)
        journal._load()
        journal._fd = os.open(journal.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return journal

    @classmethod
    def read(cls, folder: Path) -> Journal:
        """The finished slots in ``folder``, read only (JournalError if the journal is damaged)."""
        journal = cls(folder)
        journal._load()
        return journal

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise JournalError(f"{self.path} cannot be read: {exc}") from None
        good = 0
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, 1):
            last = number == len(lines)
            if last and raw == b"":
                break
            try:
                self._take(json.loads(raw))
            except (ValueError, ValidationError, KeyError, TypeError) as exc:
                if last:  # a line cut short by a crash mid-append: its slot is redone
                    break
                raise JournalError(
                    f"{self.path}:{number} is damaged ({type(exc).__name__}); the journal was changed "
                    "by something else: remove the folder to start the run over"
                ) from None
            good += len(raw) + 1
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())

    def _take(self, record: dict[str, Any]) -> None:
        slot = record["slot"]
        if not isinstance(slot, int) or isinstance(slot, bool) or slot < 0:
            raise TypeError("slot")
        if slot in self.personas or slot in self.failures:
            return  # the first record of a slot counts (a second cannot be written by us)
        if "persona" in record:
            self.personas[slot] = HubPersona.model_validate(record["persona"])
        else:
            self.failures[slot] = SlotFailure(str(record["failed"]), int(record["attempts"]))

    # -- use -------------------------------------------------------------------------

    def done(self, slot: int) -> bool:
        return slot in self.personas or slot in self.failures

    def __len__(self) -> int:
        return len(self.personas) + len(self.failures)

    async def record(self, slot: int, persona: HubPersona) -> None:
        """Append a made persona; returns once it is on disk."""
        await self._append(slot, {"slot": slot, "persona": persona.model_dump(mode="json")})
        self.personas[slot] = persona

    async def fail(self, slot: int, reason: str, attempts: int) -> None:
        """Append a slot that gave up; returns once it is on disk."""
        await self._append(slot, {"slot": slot, "failed": reason, "attempts": attempts})
        self.failures[slot] = SlotFailure(reason, attempts)

    async def _append(self, slot: int, record: dict[str, Any]) -> None:
        if self._fd is None:
            raise JournalError(f"the journal {self.path} is closed")
        if self.done(slot):
            raise JournalError(f"slot {slot} is in the journal already")
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        async with self._lock:
            await asyncio.to_thread(self._write, line)

    def _write(self, line: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise JournalError(f"the journal {self.path} is closed")
        start = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            # A full disk can leave half a line: cut it off, so that the next
            # append (once there is room) does not follow a damaged line.
            try:
                os.ftruncate(fd, start)
            except OSError:
                self.close()  # the half line stays last, and open() cuts it off
            raise JournalError(f"cannot append to {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

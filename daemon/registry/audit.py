"""The registry's audit log: append-only, hash-chained, ids and hashes only.

``<state>/registry/audit.log`` holds one JSON object per line::

    {"seq": 1, "time": 1764626400.5, "actor": "cli:ab12", "action": "persona.create",
     "persona_id": "demo", "details": {"record_sha256": "…"}, "prev": "…"}

* ``prev`` is the sha256 (hex) of the previous line's bytes (without its
  newline); the first line's is :data:`GENESIS`. Editing, removing or
  reordering any line but the last breaks the next line's ``prev``.
* ``audit.head`` beside it holds the count and the sha256 of the last line,
  replaced atomically after each append: removing or editing the last line,
  or truncating the file, no longer matches it.
* ``details`` holds ids, field names and hashes, never personal content
  (names, descriptions, memories): the log outlives erasures and must not
  undo them.

Appends hold ``audit.log.lock`` (files.file_lock), write the line with one
``write`` on an ``O_APPEND`` descriptor and fsync it before the head moves.
A crash between the two (kill -9, the OOM killer, a power cut) leaves
exactly one whole line past the head, chained to it, with the next seq:
the next append takes that line into the head, with a warning, and goes on
(found by the soak, bench/soak.py: before, a registry killed in that window
refused every change until someone edited the head by hand). Refusing would
protect nothing there: whoever can append a line that chains can also
rewrite the head. Any other mismatch (a torn or foreign line, more than one
line, a broken chain) still stops appends until an operator has run
``personad audit verify``.

This does not stop someone who can rewrite the whole file and its head: it
makes a partial edit visible. Keep a copy of ``audit.head`` elsewhere to pin
the log's past.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_write, file_lock
from .errors import AuditError

__all__ = ["GENESIS", "AuditLog", "VerifyReport", "verify"]

log = logging.getLogger("personad.registry.audit")

GENESIS = hashlib.sha256(b"personad registry audit log v1").hexdigest()
_KEYS = ("seq", "time", "actor", "action", "persona_id", "details", "prev")


def _sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def head_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".log") + ".head")


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    entries: int
    #: 1-based line number of the first line that does not verify (None when ok).
    bad_line: int | None = None
    reason: str = ""


def _read_head(path: Path) -> tuple[int, str]:
    try:
        doc = json.loads(head_path(path).read_text("utf-8"))
        return int(doc["entries"]), str(doc["sha256"])
    except FileNotFoundError:
        return 0, GENESIS
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{head_path(path)}: unreadable head ({exc})") from None


def verify(path: Path) -> VerifyReport:
    """Walk the log from the genesis; report the first line that does not chain."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif data:
        return VerifyReport(False, len(lines) - 1, len(lines), "the last line is incomplete (truncated)")
    prev = GENESIS
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            return VerifyReport(False, number - 1, number, "not JSON")
        if not isinstance(entry, dict) or tuple(entry) != _KEYS:
            return VerifyReport(False, number - 1, number, "not an audit entry (members missing or moved)")
        if entry["seq"] != number:
            return VerifyReport(False, number - 1, number, f"seq is {entry['seq']!r}, expected {number}")
        if entry["prev"] != prev:
            return VerifyReport(
                False, number - 1, number, "prev does not match the line before (edited, removed or moved)"
            )
        prev = _sha(line)
    try:
        entries, head = _read_head(path)
    except AuditError as exc:
        return VerifyReport(False, len(lines), len(lines) or 1, str(exc))
    if (entries, head) != (len(lines), prev):
        bad = min(entries, len(lines)) or 1
        return VerifyReport(
            False,
            len(lines),
            bad,
            f"the head records {entries} entries ending in {head[:12]}…, the log has {len(lines)} "
            f"ending in {prev[:12]}… (last lines removed, added or edited)",
        )
    return VerifyReport(True, len(lines))


class AuditLog:
    """Appends to one audit log; safe across processes (file lock) and threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    def append(
        self, *, actor: str, action: str, persona_id: str | None, details: dict[str, Any] | None = None
    ) -> int:
        """Append one entry; return its seq. Raises AuditError when the tail is not the head."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_path):
            entries, prev = _read_head(self.path)
            size = self.path.stat().st_size if self.path.exists() else 0
            if (
                size
                and not self._tail_matches(prev, size)
                and (crashed := self._crash_tail(entries, prev, size))
            ):
                entries, prev = crashed
                atomic_write(
                    head_path(self.path),
                    json.dumps({"entries": entries, "sha256": prev}).encode("ascii"),
                    mode=0o600,
                )
                log.warning(
                    "%s: entry %d was written but the head not moved (a crash between the two); "
                    "the head now includes it",
                    self.path,
                    entries,
                )
            if entries and not self._tail_matches(prev, size):
                raise AuditError(
                    f"{self.path} does not end where {head_path(self.path).name} says; "
                    "run `personad audit verify` (refusing to append)"
                )
            if not entries and size:
                raise AuditError(f"{self.path} has lines but no head; run `personad audit verify`")
            entry = {
                "seq": entries + 1,
                "time": round(time.time(), 3),
                "actor": actor,
                "action": action,
                "persona_id": persona_id,
                "details": details or {},
                "prev": prev,
            }
            line = json.dumps(entry, separators=(",", ":"), ensure_ascii=True).encode("ascii")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            head = {"entries": entries + 1, "sha256": _sha(line)}
            atomic_write(head_path(self.path), json.dumps(head).encode("ascii"), mode=0o600)
            return entries + 1

    def _crash_tail(self, entries: int, prev: str, size: int) -> tuple[int, str] | None:
        """``(entries + 1, its sha)`` when the log ends in exactly one whole entry past the head
        that chains to it (the mark of a crash between a line and its head); else None."""
        with open(self.path, "rb") as f:
            f.seek(max(0, size - 128 * 1024))
            tail = f.read()
        if not tail.endswith(b"\n"):
            return None
        lines = tail[:-1].split(b"\n")
        last = lines[-1]
        before = lines[-2] if len(lines) > 1 else None
        # The line before the last must be the head's own (or, for a first entry, none at all).
        if entries == 0:
            if size != len(last) + 1:
                return None
        elif before is None or _sha(before) != prev:
            return None
        try:
            entry = json.loads(last)
        except ValueError:
            return None
        if not isinstance(entry, dict) or tuple(entry) != _KEYS:
            return None
        if entry["seq"] != entries + 1 or entry["prev"] != prev:
            return None
        return entries + 1, _sha(last)

    def _tail_matches(self, prev: str, size: int) -> bool:
        # Only the last line is read: appends stay O(1) however long the log.
        with open(self.path, "rb") as f:
            f.seek(max(0, size - 64 * 1024))
            tail = f.read()
        if not tail.endswith(b"\n"):
            return False
        last = tail[:-1].rsplit(b"\n", 1)[-1]
        return _sha(last) == prev

"""``brain.export``: the persona's whole memory as one portable JSON document.

Format ``personad.brain``, version 1 (UTF-8 JSON, one object)::

    {
      "format": "personad.brain",
      "format_version": 1,
      "exported_at": "2025-06-01T12:00:00.000000+00:00",
      "schema_version": 3,                  # the database's, for reference
      "tables": {
        "memories":          [{"id", "content", "kind", "source", "subject",
                               "context", "relevance", "pinned", "created_at"}],
        "skills":            [{"skill_id", "lora_hash", "description", "effectiveness",
                               "rated_uses", "usage_count", "acquired_at",
                               "last_used_at", "source"}],
        "interactions":      [{"id", "with_persona", "room_id", "outcome", "learned",
                               "subject", "created_at"}],
        "goals":             [{"id", "title", "description", "status", "priority",
                               "progress", "due_at", "created_at", "updated_at"}],
        "emotions":          [{"id", "emotion", "intensity", "valence", "trigger",
                               "subject", "created_at"}],
        "evolution_history": [{"id", "trigger_pattern", "lora_generated",
                               "success_rate", "detail", "created_at"}]
      },
      "counts": {"memories": 123, ...}       # rows per table, as written above
    }

Times are ISO-8601 strings in UTC; ``context`` and ``learned`` are JSON
objects (or null); ``pinned`` is a boolean; every other value is as stored.
Rows are in id order. A consumer must ignore members it does not know; a
change that breaks that rule bumps ``format_version``. Columns added since
version 1 first shipped (:data:`ADDED_COLUMNS`: evolution_history.detail,
skills.source) may be missing from older documents, and read as null.

The document is read inside one read transaction (a consistent snapshot
while the persona keeps writing) and written atomically with
:func:`daemon.files.atomic_writer`: a temporary file in the target folder,
mode 0600 (it is the plaintext of an encrypted brain), fsync, rename over the
target, fsync of the folder. A crash leaves either the old file or the new
one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from ..files import atomic_writer
from .records import ExportSummary, from_epoch

__all__ = ["ADDED_COLUMNS", "FORMAT", "FORMAT_VERSION", "TABLES", "export_sync"]

FORMAT = "personad.brain"
FORMAT_VERSION = 1


def _time(value: Any) -> Any:
    return None if value is None else from_epoch(value).isoformat()


def _json(value: Any) -> Any:
    return None if value is None else json.loads(value)


def _bool(value: Any) -> bool:
    return bool(value)


#: Columns added to TABLES after format version 1 first shipped: a document
#: written before them lacks them, and an import reads them as null.
ADDED_COLUMNS: dict[str, frozenset[str]] = {
    "evolution_history": frozenset({"detail"}),
    "skills": frozenset({"source"}),
}
# table -> (ORDER BY, [(column, converter or None)])
TABLES: dict[str, tuple[str, list[tuple[str, Callable[[Any], Any] | None]]]] = {
    "memories": (
        "id",
        [
            ("id", None),
            ("content", None),
            ("kind", None),
            ("source", None),
            ("subject", None),
            ("context", _json),
            ("relevance", None),
            ("pinned", _bool),
            ("created_at", _time),
        ],
    ),
    "skills": (
        "skill_id",
        [
            ("skill_id", None),
            ("lora_hash", None),
            ("description", None),
            ("effectiveness", None),
            ("rated_uses", None),
            ("usage_count", None),
            ("acquired_at", _time),
            ("last_used_at", _time),
            ("source", _json),
        ],
    ),
    "interactions": (
        "id",
        [
            ("id", None),
            ("with_persona", None),
            ("room_id", None),
            ("outcome", None),
            ("learned", _json),
            ("subject", None),
            ("created_at", _time),
        ],
    ),
    "goals": (
        "id",
        [
            ("id", None),
            ("title", None),
            ("description", None),
            ("status", None),
            ("priority", None),
            ("progress", None),
            ("due_at", _time),
            ("created_at", _time),
            ("updated_at", _time),
        ],
    ),
    "emotions": (
        "id",
        [
            ("id", None),
            ("emotion", None),
            ("intensity", None),
            ("valence", None),
            ("trigger", None),
            ("subject", None),
            ("created_at", _time),
        ],
    ),
    "evolution_history": (
        "id",
        [
            ("id", None),
            ("trigger_pattern", None),
            ("lora_generated", None),
            ("success_rate", None),
            ("detail", _json),
            ("created_at", _time),
        ],
    ),
    "performance_records": (
        "id",
        [
            ("id", None),
            ("session_id", None),
            ("task", None),
            ("score", None),
            ("success", _bool),
            ("duration_s", None),
            ("user_feedback", None),
            ("context", _json),
            ("recorded_at", _time),
        ],
    ),
    # Without the embeddings: they are the model's, not the persona's, and are
    # made again (by whichever model is current) where the export is read.
    "knowledge": (
        "id",
        [
            ("id", None),
            ("content", None),
            ("context", None),
            ("tags", _json),
            ("relevance", None),
            ("created_at", _time),
            ("updated_at", _time),
        ],
    ),
}


class _HashingWriter:
    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        self.sha.update(data)
        self.bytes += len(data)
        self.raw.write(data)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _write(db: Any, out: _HashingWriter, schema_version: int) -> dict[str, int]:
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": datetime.now(tz=UTC).isoformat(),
        "schema_version": schema_version,
    }
    out.write(_dump(header)[:-1] + ', "tables": {')
    counts: dict[str, int] = {}
    for t, (table, (order, columns)) in enumerate(TABLES.items()):
        out.write(("," if t else "") + f"\n{_dump(table)}: [")
        names = ", ".join(name for name, _ in columns)
        count = 0
        # Table and column names are ours (TABLES), never from the caller.
        for row in db.execute(f"SELECT {names} FROM {table} ORDER BY {order}"):
            record = {
                name: (convert(value) if convert is not None else value)
                for (name, convert), value in zip(columns, row, strict=True)
            }
            out.write(("," if count else "") + "\n  " + _dump(record))
            count += 1
        out.write("\n]")
        counts[table] = count
    out.write("\n}, " + f'"counts": {_dump(counts)}' + "}\n")
    return counts


def export_sync(db: Any, path: Path, schema_version: int) -> ExportSummary:
    """Write the export to ``path`` atomically (on the reader's worker thread)."""
    with atomic_writer(path, mode=0o600) as raw:
        out = _HashingWriter(raw)
        # One read transaction: every table from the same snapshot.
        db.execute("BEGIN")
        try:
            counts = _write(db, out, schema_version)
        finally:
            db.execute("COMMIT")
    return ExportSummary(
        path=path,
        bytes=out.bytes,
        sha256=out.sha.hexdigest(),
        counts=counts,
        format_version=FORMAT_VERSION,
    )

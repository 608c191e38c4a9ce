"""The brain side of persona.export and persona.import: reading a persona's brain
read-only for an export, rebuilding one from a bundle's brain export or a
card's memories under a new key, and taking a half-made brain back.

Apart from serve_transfer.py because this is SQLCipher and brain-schema work
(rows, converters, key files) with no bus in it; serve_transfer.py keeps the
handlers, the params checks and moving the files. Every function here is
synchronous and blocking: callers run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from protocol import ErrorCode, RpcError

from ..brain import export as brain_export
from ..brain._db import read_only_uri, sqlcipher
from ..brain.errors import InvalidInput, WrongKey
from ..brain.keys import brain_path, has_data, key_path, load_or_create_key
from ..brain.lineage import build_brain
from ..brain.migrations import LATEST as BRAIN_SCHEMA
from ..brain.records import MemoryItem
from ..brain.validation import memory_row
from ..files import atomic_write
from ..ids import is_persona_id
from ..state import ensure_private_dir
from .cards import CARD_SOURCE, MemoryDraft
from .errors import BundleFormatError

log = logging.getLogger(__name__)

__all__ = [
    "NewBrain",
    "brain_reader",
    "brain_rows",
    "has_brain",
    "import_notes",
    "memory_rows",
    "read_memories",
    "recover_imports",
    "write_brain",
]


def has_brain(state_root: Path, persona_id: str) -> bool:
    """A brain with data (an empty file, never written, is none)."""
    return has_data(brain_path(state_root, persona_id))


@contextlib.contextmanager
def brain_reader(state_root: Path, persona_id: str) -> Iterator[Any]:
    """A read-only connection to the persona's brain, keyed; the persona may be running.

    ``mode=ro``: SQLite never writes the file or its WAL, so reading cannot
    disturb the persona's own writer. ``environ={}``: in the registry's
    process $CREDENTIALS_DIRECTORY holds the registry's credentials, not the
    persona's brain key.
    """
    path = brain_path(state_root, persona_id)
    key = load_or_create_key(state_root, persona_id, environ={})
    db = sqlcipher.connect(read_only_uri(path), uri=True, isolation_level=None)
    try:
        db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        db.execute("PRAGMA cipher_compatibility = 4")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher.DatabaseError:
            raise WrongKey(path) from None
        if version != BRAIN_SCHEMA:
            # An export names the persona: this is a refusal of persona_id, in
            # serve_transfer.py's INVALID_PARAMS shape.
            raise RpcError(
                ErrorCode.INVALID_PARAMS,
                f"invalid params: persona_id: the brain has schema version {version}, not {BRAIN_SCHEMA}; "
                "start the persona once to migrate it, then export",
                {"field": "persona_id", "reason": "brain_schema"},
            )
        yield db
    finally:
        db.close()


def read_memories(state_root: Path, persona_id: str, which: str) -> list[MemoryDraft]:
    """The memories a card export carries: those made from a card, or all, in id order."""
    where = "" if which == "all" else "WHERE source = ?"
    args: tuple[str, ...] = () if which == "all" else (CARD_SOURCE,)
    with brain_reader(state_root, persona_id) as db:
        rows = db.execute(
            f"SELECT content, context, relevance, source, subject, pinned, kind FROM memories {where} "
            "ORDER BY id",
            args,
        ).fetchall()
    return [
        MemoryDraft(
            content=content,
            context=None if context is None else json.loads(context),
            relevance=float(relevance),
            source=source,
            subject=subject,
            pinned=bool(pinned),
            kind=kind,
        )
        for content, context, relevance, source, subject, pinned, kind in rows
    ]


def _epoch(value: Any) -> Any:
    return None if value is None else datetime.fromisoformat(value).timestamp()


def _json_text(value: Any) -> Any:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _flag(value: Any) -> int:
    if not isinstance(value, bool):
        raise ValueError("pinned is not a boolean")
    return int(value)


#: The inverse of brain/export.py's converters, by the converter it used.
_INVERSE: Final[dict[Callable[[Any], Any], Callable[[Any], Any]]] = {
    brain_export._time: _epoch,
    brain_export._json: _json_text,
    brain_export._bool: _flag,
}


def brain_rows(doc: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of a ``personad.brain`` document, as the brain's columns hold them.

    Every memory goes through the brain's own validation (memory_row), as a
    ``remember`` would; the other tables are held to the schema's CHECKs
    when inserted. Raises BundleFormatError naming what is wrong.
    """
    if (
        not isinstance(doc, dict)
        or doc.get("format") != brain_export.FORMAT
        or doc.get("format_version") != brain_export.FORMAT_VERSION
        or not isinstance(doc.get("tables"), dict)
    ):
        raise BundleFormatError(
            f"the brain export is not a {brain_export.FORMAT} version {brain_export.FORMAT_VERSION} document"
        )
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table, (_order, columns) in brain_export.TABLES.items():
        rows = doc["tables"].get(table, [])
        if not isinstance(rows, list):
            raise BundleFormatError(f"the brain export's {table} is not a list")
        names = [name for name, _ in columns]
        later = brain_export.ADDED_COLUMNS.get(table, frozenset())
        converted: list[tuple[Any, ...]] = []
        for index, given in enumerate(rows):
            if not isinstance(given, dict) or not set(names) - later <= set(given) <= set(names):
                raise BundleFormatError(
                    f"the brain export's {table}[{index}] does not have the columns {names}"
                )
            # A document from before a column was added lacks it: null, as the migration left it.
            row: dict[str, Any] = {**dict.fromkeys(later), **given}
            try:
                values = {
                    name: (_INVERSE[convert](row[name]) if convert is not None else row[name])
                    for name, convert in columns
                }
                if table == "memories":
                    item = MemoryItem(
                        row["content"],
                        row["context"],
                        row["relevance"],
                        row["source"],
                        row["subject"],
                        row["pinned"],
                        row["kind"],
                    )
                    checked = memory_row(item, values["created_at"])
                    values.update(zip(names[1:], checked, strict=True))
            except (ValueError, TypeError, InvalidInput) as exc:
                raise BundleFormatError(f"the brain export's {table}[{index}] is invalid: {exc}") from None
            converted.append(tuple(values[name] for name in names))
        out[table] = converted
    return out


def write_brain(dest: Path, key: bytes, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """A new brain at ``dest`` holding ``rows`` (ids kept), built aside and linked into place."""

    def fill(db: Any) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            for table, (_order, columns) in brain_export.TABLES.items():
                names = ", ".join(name for name, _ in columns)
                marks = ", ".join("?" * len(columns))
                # Table and column names are ours (export.TABLES), never from the file.
                db.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows.get(table, []))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    try:
        build_brain(dest, key, fill)
    except sqlcipher.IntegrityError as exc:
        raise BundleFormatError(f"the brain export does not fit a brain: {exc}") from None


def memory_rows(drafts: list[MemoryDraft], now: float) -> dict[str, list[tuple[Any, ...]]]:
    """A card's memories as brain rows (ids assigned in order)."""
    rows = []
    for index, draft in enumerate(drafts, start=1):
        item = MemoryItem(
            draft.content,
            draft.context,
            draft.relevance,
            draft.source,
            draft.subject,
            draft.pinned,
            draft.kind,
        )
        rows.append((index, *memory_row(item, now)))
    return {"memories": rows}


def _notes(state_root: Path) -> Path:
    """Where imports in progress note what they make: ``<state>/registry/imports/<id>.json``."""
    return state_root / "registry" / "imports"


@dataclass
class NewBrain:
    """A brain an import is writing, and how to take it back if the import fails.

    Before it makes anything it notes what it is about to make (its folder,
    its key) in ``<state>/registry/imports/<id>.json`` (written atomically,
    on disk before anything is made); ``done``
    removes the note once the registry's record is committed, ``undo`` once
    everything is taken back. A registry killed in between (kill -9, power)
    finds the note when it starts again and takes the import back
    (``recover_imports``): an import that was never answered leaves no brain,
    no key and no folder, and the same import can be sent again.
    """

    state_root: Path
    persona_id: str
    made_folder: bool = False
    made_key: bool = False
    written: bool = False
    noted: bool = False

    def write(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        dest = brain_path(self.state_root, self.persona_id)
        folder = dest.parent
        ensure_private_dir(ensure_private_dir(self.state_root) / "personas")
        self.made_folder = not folder.exists()
        self.made_key = not key_path(self.state_root, self.persona_id).exists()
        note = {"persona_id": self.persona_id, "made_folder": self.made_folder, "made_key": self.made_key}
        ensure_private_dir(ensure_private_dir(self.state_root / "registry") / _notes(self.state_root).name)
        atomic_write(_notes(self.state_root) / f"{self.persona_id}.json", json.dumps(note).encode())
        self.noted = True
        ensure_private_dir(folder)
        key = load_or_create_key(self.state_root, self.persona_id, environ={})
        try:
            write_brain(dest, key, rows)
        except InvalidInput:
            # Another writer's brain is at dest (a fork, say), and it may use
            # this key by now: it is not ours to remove.
            self.made_key = False
            raise
        self.written = True

    def done(self) -> None:
        """The registry's record is committed: the brain is the persona's, the note goes."""
        if self.noted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_notes(self.state_root) / f"{self.persona_id}.json")
            self.noted = False

    def undo(self) -> None:
        dest = brain_path(self.state_root, self.persona_id)
        if self.written:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{dest}{suffix}")
            # The temporary brain it was built in (lineage.build_brain), left by a crash only.
            for tmp in dest.parent.glob(f".{dest.name}.*.tmp*") if dest.parent.is_dir() else []:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        if self.made_key:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(key_path(self.state_root, self.persona_id))
        if self.made_folder:
            with contextlib.suppress(OSError):
                dest.parent.rmdir()
        self.done()


def import_notes(state_root: Path) -> list[str]:
    """The persona ids of the imports whose notes are still there (see NewBrain)."""
    notes = _notes(state_root)
    return sorted(p.stem for p in notes.glob("*.json")) if notes.is_dir() else []


def recover_imports(state_root: Path, recorded: Callable[[str], bool]) -> list[str]:
    """Take back the imports a killed registry left half-made; returns their persona ids.

    Each note in ``<state>/registry/imports/`` is an import that began and was
    neither committed nor taken back. If the registry has a record of the
    persona (``recorded``), the import was committed and only the note is
    left; otherwise its brain (and the temporary brain it was being built
    in), its key if it made it, and its folder if it made it, are removed.
    The import's work folders (``<state>/.import-*``, the bundle's decrypted
    contents) are removed too. Call it before the registry serves.
    """
    taken_back: list[str] = []
    for work in state_root.glob(".import-*"):
        shutil.rmtree(work, ignore_errors=True)
    notes = _notes(state_root)
    for path in sorted(notes.glob("*.json")) if notes.is_dir() else []:
        try:
            note = json.loads(path.read_text("utf-8"))
            persona_id = str(note["persona_id"])
        except (ValueError, KeyError, TypeError):
            # Notes are written whole (atomically) before their import makes anything: one
            # that does not parse is damage, not an import, and stands for nothing made.
            log.warning("removing %s: not an import note", path)
            os.unlink(path)
            continue
        if path.stem != persona_id or not is_persona_id(persona_id):
            log.warning("an import note %s that names %r: left for an operator", path, persona_id)
            continue
        made = NewBrain(
            state_root,
            persona_id,
            made_folder=bool(note.get("made_folder")),
            made_key=bool(note.get("made_key")),
            written=True,  # or half-way: undo removes whatever of it is there
            noted=True,
        )
        if recorded(persona_id):
            made.done()
        else:
            made.undo()
            taken_back.append(persona_id)
    for tmp in notes.glob(".*") if notes.is_dir() else []:  # a note's temporary file, from a crash
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return taken_back

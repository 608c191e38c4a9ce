"""Copying a brain for a fork, and merging two brains into a new one.

(Longer than 500 lines on purpose: a fifth of it is this docstring, the rule
book docs/brain.md cites, and copy and merge share the temporary-file,
attach and publish machinery that splitting would scatter as private helpers.)

Brain-level only: no registry knowledge. Both functions are blocking (SQLite
work and, for a merge, the near-duplicate join in Python); callers on an
event loop run them with ``asyncio.to_thread``.

**What a brain carries to a fork or merge** (the persona's knowledge, not its
history with others):

=================== ======== ===========================================
table               carried  why
=================== ======== ===========================================
memories            yes      the knowledge; a fork may filter them
skills              yes      what it can do (its adapters are referenced
                             by hash, never copied)
goals               yes      what it is working towards
knowledge           yes      its documents, with their embeddings
evolution_history   yes      how its adapters came to be
interactions        no       the conversation log with other personas is
                             the source's own relationship history
emotions            no       a transient state, not knowledge
=================== ======== ===========================================

**How.** The destination is written to a temporary file beside ``dest``,
created and migrated through the brain's own path (the writer connection of
``_db.py`` and ``ops.prepare``, so it has the current schema, the FTS5 index
and its triggers), then each source is ``ATTACH``-ed read-only
(``mode=ro``: SQLite never writes a read-only file, its WAL included) with
its own key bound as a parameter, and the rows are copied with ``INSERT …
SELECT`` in one transaction. The FTS5 index is kept by the insert trigger
(``memories_fts_ai``), row by row inside the same transaction, so recall on
the copy is correct the moment it exists. The temporary file is closed
(checkpointing its WAL), fsynced, and linked to ``dest`` (``link`` refuses
to replace a file, so a concurrent writer cannot be overwritten); on any
error it is removed and nothing is left at ``dest``.

**Near-duplicates** (merge): two memories are near-duplicates when the
Jaccard similarity of their sets of word 3-shingles is at least
``near_duplicate`` (default 0.9), and their subjects are equal or one of them
has none (two memories about different people are never folded together, so
erasing one person still finds every memory about them). Text is first
normalised: Unicode NFKC, case-folded, split into ``\\w+`` words (punctuation
and spacing do not count); a text of fewer than three words is one shingle of
all its words. Equal normalised texts are grouped first, then distinct texts
are joined with prefix filtering (Bayardo et al., "Scaling up all pairs
similarity search", 2007): shingles are ordered rarest first, and two sets
with Jaccard >= t must share one of their first ``|x| - ceil(t|x|) + 1``
shingles, so only those are indexed; every candidate is then verified
exactly. The result is the exact Jaccard join, with no quadratic scan.

At 0.9 this catches differences of case, punctuation, spacing, Unicode form,
a repeated or appended word in a text of ten words or more, and one changed
word only in texts of about sixty words or more: it is deliberately
conservative, because folding two memories that differ in one fact loses the
fact ("moved to Tuesday" / "moved to Thursday" stay two memories).

**Which one is kept** (processed in this order, each kept unless it is a
near-duplicate of one already kept): pinned first, then higher relevance,
then newer ``created_at``, then the primary's before the secondary's, then
the lower id. The kept memory takes the union of both ``context.tags`` lists
and, if it had no subject, the dropped one's subject.

**Skills:** a skill id in only one brain is carried as is. In both: the row
with the higher effectiveness wins (an unrated skill, NULL, loses to any
rated one; a tie goes to the primary); ``usage_count`` is the sum of both,
``acquired_at`` the earlier, ``last_used_at`` the later; ``effectiveness``
and ``rated_uses`` stay the winner's (the effectiveness is the mean of those
rated uses, which summing would misstate).

**Knowledge** (``persona.knowledge.*``): a copy keeps every item with its
id, embedding and model name. A merge takes the union with near-duplicates
folded by the same Jaccard rule as memories (no subjects here); the one kept
has the higher relevance, then the newer ``created_at``, then the primary's,
then the lower id, and takes the union of both items' tags. Embeddings are
carried as stored (they depend on the text only), so nothing is re-embedded.

**Goals:** the union; a goal with the same normalised title and description
in both (a fork's copy) is kept once, the one updated last (tie: primary's).
**Evolution history:** the union. New ids are assigned in ``created_at``
order for everything a merge writes; a copy keeps the source's ids and
AUTOINCREMENT counters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import json
import math
import os
import re
import secrets
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from protocol.commands.brain import MAX_LABEL_CHARS

from . import ops
from ._db import RawConnection, connect_writer, create_private, probe_readonly, read_only_uri, sqlcipher
from .errors import InvalidInput, SchemaTooNew, WrongKey
from .migrations import LATEST
from .validation import check_text, check_time, normalise_subject

__all__ = [
    "DEFAULT_NEAR_DUPLICATE",
    "CopyReport",
    "MergeReport",
    "build_brain",
    "copy_brain",
    "find_near_duplicates",
    "merge_brains",
    "shingles",
]

DEFAULT_NEAR_DUPLICATE = 0.9
SqlRow = tuple[Any, ...]
# SQLITE_NOTADB: a wrong key on an attached file shows on its first read.
_SQLITE_NOTADB = 26
# SQLITE_CORRUPT, SQLITE_NOTADB: a page that fails to decrypt or parse past page 1.
_SQLITE_DAMAGED = (11, 26)
_WORD = re.compile(r"\w+")
_MEMORY_COLUMNS = "content, kind, source, subject, context, relevance, pinned, created_at"
_GOAL_COLUMNS = "title, description, status, priority, progress, due_at, created_at, updated_at"
_EVOLUTION_COLUMNS = "trigger_pattern, lora_generated, success_rate, detail, created_at"
_KNOWLEDGE_COLUMNS = "content, context, tags, relevance, embedding, embed_model, created_at, updated_at"
_SKILL_COLUMNS = (
    "skill_id, lora_hash, description, effectiveness, rated_uses, usage_count, acquired_at, last_used_at, "
    "source"
)


@dataclass(frozen=True, slots=True)
class CopyReport:
    """What :func:`copy_brain` wrote: rows per table, and the time it took."""

    dest: Path
    memories: int
    memories_in_source: int
    skills: int
    goals: int
    evolution_history: int
    seconds: float
    knowledge: int = 0


@dataclass(frozen=True, slots=True)
class MergeReport:
    """What :func:`merge_brains` wrote and dropped."""

    dest: Path
    memories: int
    kept_primary: int
    kept_secondary: int
    dropped_duplicates: int
    skills: int
    skills_in_both: int
    goals: int
    evolution_history: int
    seconds: float
    dropped_by_side: dict[str, int] = field(default_factory=dict)
    knowledge: int = 0
    knowledge_dropped_duplicates: int = 0


# -- arguments -----------------------------------------------------------------------


def _check_key(field_name: str, key: object) -> bytes:
    if not isinstance(key, bytes) or len(key) != 32:
        raise InvalidInput(field_name, "must be 32 bytes")
    return key


def _check_source(field_name: str, path: object, key: bytes) -> Path:
    if not isinstance(path, Path):
        raise InvalidInput(field_name, "must be a pathlib.Path")
    if not path.is_file():
        raise InvalidInput(field_name, f"{path} is not a brain file")
    # Read-only probe first: a wrong key is refused before anything is created.
    with _reading(field_name, path):
        # An empty file (None) reads as SQLite would open it: an empty database, version 0.
        version = probe_readonly(path, key) or 0
    if version > LATEST:
        raise SchemaTooNew(path, version, LATEST)
    if version < LATEST:
        # The source is never written, so it cannot be migrated here.
        raise InvalidInput(
            field_name,
            f"{path} has schema version {version}; open it once as a Brain to migrate it to {LATEST}",
        )
    return path


def _check_dest(path: object, sources: Iterable[Path]) -> Path:
    if not isinstance(path, Path):
        raise InvalidInput("dest", "must be a pathlib.Path")
    if not path.parent.is_dir():
        raise InvalidInput("dest", f"folder {path.parent} does not exist")
    if os.path.lexists(path):
        raise InvalidInput("dest", f"{path} exists; a copy never overwrites a brain")
    for source in sources:
        if path.resolve() == source.resolve():
            raise InvalidInput("dest", "must differ from the source")
    return path


def _check_labels(field_name: str, values: object, *, subject: bool) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidInput(field_name, "must be a list of strings")
    if not values:
        raise InvalidInput(field_name, "must not be empty (omit it to copy every memory)")
    out: list[str] = []
    for index, value in enumerate(values):
        name = f"{field_name}[{index}]"
        label = normalise_subject(value, name) if subject else check_text(name, value, MAX_LABEL_CHARS)
        assert label is not None
        out.append(label)
    return out


def _memory_filter(
    subjects: list[str] | None, tags: list[str] | None, since: float | None, until: float | None
) -> tuple[str, list[Any]]:
    """The WHERE clause over ``src.memories m`` and its parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    if subjects is not None:
        clauses.append(f"m.subject IN ({', '.join('?' * len(subjects))})")
        params += subjects
    if tags is not None:
        marks = ", ".join("?" * len(tags))
        # A memory's tags: its kind, and the strings of context.tags.
        clauses.append(
            f"(m.kind IN ({marks}) OR EXISTS (SELECT 1 FROM json_each(m.context, '$.tags') t "
            f"WHERE t.type = 'text' AND t.value IN ({marks})))"
        )
        params += tags + tags
    if since is not None:
        clauses.append("m.created_at >= ?")
        params.append(since)
    if until is not None:
        clauses.append("m.created_at < ?")
        params.append(until)
    return (" AND ".join(clauses) or "1"), params


# -- the destination file --------------------------------------------------------------


def _temp_beside(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.{secrets.token_hex(8)}.tmp"


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def _attach(db: RawConnection, schema: str, path: Path, key: bytes) -> None:
    # mode=ro: SQLite opens the file O_RDONLY and never writes it or its WAL.
    # The key is bound as a parameter, in SQLCipher's raw-key form.
    db.execute(f"ATTACH DATABASE ? AS {schema} KEY ?", (read_only_uri(path), f"x'{key.hex()}'"))
    try:
        db.execute(f"SELECT count(*) FROM {schema}.sqlite_master").fetchone()
    except sqlcipher.DatabaseError as exc:
        db.execute(f"DETACH DATABASE {schema}")
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_NOTADB:
            raise WrongKey(path) from None
        raise


@contextlib.contextmanager
def _reading(field_name: str, path: object) -> Iterator[None]:
    """A damaged source (a page fails its HMAC, a truncated file) as InvalidInput naming it."""
    try:
        yield
    except sqlcipher.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) in _SQLITE_DAMAGED:
            raise InvalidInput(field_name, f"{path} is damaged ({exc}); it was not modified") from None
        raise


def build_brain(dest: Path, key: bytes, fill: Any) -> Any:
    """Create a migrated brain in a temporary file, ``fill(db)`` it, and publish it at ``dest``."""
    tmp = _temp_beside(dest)
    create_private(tmp)
    try:
        db = connect_writer(tmp, key, {})()
        try:
            ops.prepare(db, tmp)
            result = fill(db)
            for schema in [row[1] for row in db.execute("PRAGMA database_list").fetchall()]:
                if schema not in ("main", "temp"):
                    db.execute(f"DETACH DATABASE {schema}")
            # Everything into the main file, so the published file stands alone.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
        if os.path.exists(f"{tmp}-wal") and os.stat(f"{tmp}-wal").st_size:
            raise OSError(f"{tmp}-wal was not checkpointed")
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() never replaces: a dest created meanwhile is not overwritten.
        try:
            os.link(tmp, dest)
        except FileExistsError:
            raise InvalidInput("dest", f"{dest} exists; a copy never overwrites a brain") from None
    finally:
        _remove_db(tmp)
    dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return result


def _transaction(db: RawConnection, work: Any) -> Any:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work()
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


# -- copy ---------------------------------------------------------------------------------


def copy_brain(
    source: Path,
    source_key: bytes,
    dest: Path,
    dest_key: bytes,
    *,
    subjects: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> CopyReport:
    """Write a new brain at ``dest`` (key ``dest_key``) with ``source``'s knowledge.

    Memories are filtered by every filter given (all must hold): ``subjects``
    (normalised like stored subjects), ``tags`` (a memory's ``kind`` or a
    string in its ``context.tags``), ``since`` <= ``created_at`` < ``until``.
    Skills, goals and evolution history are copied whole; ids and
    AUTOINCREMENT counters are kept. ``source`` is never written. Raises
    :class:`WrongKey`, :class:`SchemaTooNew` or :class:`InvalidInput`; on any
    error nothing exists at ``dest``.
    """
    started = time.perf_counter()
    source_key = _check_key("source_key", source_key)
    dest_key = _check_key("dest_key", dest_key)
    wanted_subjects = _check_labels("subjects", subjects, subject=True)
    wanted_tags = _check_labels("tags", tags, subject=False)
    lo = check_time("since", since)
    hi = check_time("until", until)
    if lo is not None and hi is not None and lo >= hi:
        raise InvalidInput("until", "must be after since")
    source = _check_source("source", source, source_key)
    dest = _check_dest(dest, [source])
    where, params = _memory_filter(wanted_subjects, wanted_tags, lo, hi)

    def fill(db: RawConnection) -> tuple[int, int, int, int, int, int]:
        _attach(db, "src", source, source_key)

        def work() -> tuple[int, int, int, int, int, int]:
            memories = db.execute(
                f"INSERT INTO memories (id, {_MEMORY_COLUMNS}) "
                f"SELECT m.id, {', '.join('m.' + c.strip() for c in _MEMORY_COLUMNS.split(','))} "
                f"FROM src.memories m WHERE {where} ORDER BY m.id",
                params,
            ).rowcount
            total = db.execute("SELECT count(*) FROM src.memories").fetchone()[0]
            skills = db.execute(
                f"INSERT INTO skills ({_SKILL_COLUMNS}) SELECT {_SKILL_COLUMNS} FROM src.skills"
            ).rowcount
            goals = db.execute(
                f"INSERT INTO goals (id, {_GOAL_COLUMNS}) SELECT id, {_GOAL_COLUMNS} FROM src.goals"
            ).rowcount
            evolution = db.execute(
                f"INSERT INTO evolution_history (id, {_EVOLUTION_COLUMNS}) "
                f"SELECT id, {_EVOLUTION_COLUMNS} FROM src.evolution_history"
            ).rowcount
            # Carry the counters: an id the source has used (even one deleted
            # since) is never handed out again in its fork either.
            # (sqlite_sequence has no unique name: update, then add the missing.)
            tables = "('memories', 'goals', 'evolution_history')"
            db.execute(
                "UPDATE main.sqlite_sequence AS m SET seq = max(m.seq, s.seq) "
                f"FROM src.sqlite_sequence AS s WHERE s.name = m.name AND m.name IN {tables}"
            )
            db.execute(
                "INSERT INTO main.sqlite_sequence (name, seq) SELECT s.name, s.seq "
                f"FROM src.sqlite_sequence AS s WHERE s.name IN {tables} AND NOT EXISTS "
                "(SELECT 1 FROM main.sqlite_sequence AS m WHERE m.name = s.name)"
            )
            # Its FTS rows follow by the insert trigger, as for memories.
            knowledge = db.execute(
                f"INSERT INTO knowledge (id, {_KNOWLEDGE_COLUMNS}) "
                f"SELECT id, {_KNOWLEDGE_COLUMNS} FROM src.knowledge ORDER BY id"
            ).rowcount
            return memories, total, skills, goals, evolution, knowledge

        with _reading("source", source):
            result: tuple[int, int, int, int, int, int] = _transaction(db, work)
        return result

    memories, total, skills, goals, evolution, knowledge = build_brain(dest, dest_key, fill)
    return CopyReport(
        dest=dest,
        memories=memories,
        memories_in_source=total,
        skills=skills,
        goals=goals,
        evolution_history=evolution,
        seconds=time.perf_counter() - started,
        knowledge=knowledge,
    )


# -- near-duplicates ---------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _shingles_of(words: list[str], text: str) -> frozenset[tuple[str, ...]]:
    if len(words) < 3:
        # No words at all (only punctuation): the stripped text itself.
        return frozenset([tuple(words) if words else (text.strip(),)])
    return frozenset(zip(words, words[1:], words[2:], strict=False))


def shingles(text: str) -> frozenset[tuple[str, ...]]:
    """The word 3-shingles of ``text`` after normalisation (see the module's docstring)."""
    return _shingles_of(_words(text), text)


def _prefix_length(size: int, threshold: float) -> int:
    # The epsilon keeps 0.9 * 10 from rounding up to 10 (9.000000000000002).
    return size - math.ceil(threshold * size - 1e-9) + 1


def find_near_duplicates(texts: Sequence[str], *, threshold: float) -> list[tuple[int, int]]:
    """Every pair ``(i, j)``, ``i < j``, of ``texts`` whose shingle Jaccard is >= ``threshold``.

    Exact (no false positives or negatives against the definition); equal
    normalised texts are grouped before the prefix-filtered join, so many
    copies of one text cost one group, not a quadratic number of checks.
    """
    if not isinstance(threshold, float | int) or isinstance(threshold, bool):
        raise InvalidInput("near_duplicate", "must be a number")
    if not 0.0 < threshold <= 1.0:
        raise InvalidInput("near_duplicate", "must be in (0, 1]")
    groups: dict[tuple[str, ...], list[int]] = {}
    # Shingles as ints: smaller, faster to hash; a 64-bit collision is as
    # likely as not happening in any brain's lifetime.
    int_sets: list[frozenset[int]] = []
    for position, text in enumerate(texts):
        words = _words(text)
        key = tuple(words) if words else ("\0", text.strip())
        group = groups.get(key)
        if group is None:
            groups[key] = group = []
            int_sets.append(frozenset(map(hash, _shingles_of(words, text))))
        group.append(position)
    members = list(groups.values())
    frequency: Counter[int] = Counter()
    for int_set in int_sets:
        frequency.update(int_set)
    # One global order, rarest first (ties in first-seen order, the sort being
    # stable): the prefix filter needs every set ordered the same way.
    rank = {token: n for n, token in enumerate(sorted(frequency, key=frequency.__getitem__))}
    index: dict[int, list[int]] = defaultdict(list)
    linked: set[tuple[int, int]] = set()
    for g, int_set in enumerate(int_sets):
        size = len(int_set)
        candidates: set[int] = set()
        for token in heapq.nsmallest(_prefix_length(size, threshold), int_set, key=rank.__getitem__):
            bucket = index[token]
            candidates.update(bucket)
            bucket.append(g)
        for other in candidates:
            other_set = int_sets[other]
            other_size = len(other_set)
            if min(size, other_size) < threshold * max(size, other_size) - 1e-9:
                continue  # the length filter: Jaccard <= small / large
            common = len(int_set & other_set)
            if common >= threshold * (size + other_size - common) - 1e-9:
                linked.add((other, g))
    pairs: set[tuple[int, int]] = set()
    for group in members:
        pairs.update((a, b) for n, a in enumerate(group) for b in group[n + 1 :])
    for a, b in linked:
        pairs.update((min(i, j), max(i, j)) for i in members[a] for j in members[b])
    return sorted(pairs)


# -- merge --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Memory:
    side: int  # 0 primary, 1 secondary
    id: int
    content: str
    subject: str | None
    context: str | None
    relevance: float
    pinned: int
    created_at: float
    changed: bool = False

    def priority(self) -> tuple[int, float, float, int, int]:
        return (-self.pinned, -self.relevance, -self.created_at, self.side, self.id)


def _tags(context: str | None) -> list[str]:
    if context is None:
        return []
    tags = json.loads(context).get("tags")
    if isinstance(tags, list):
        return [t for t in tags if isinstance(t, str)]
    return [tags] if isinstance(tags, str) else []


def _absorb(kept: _Memory, dropped: _Memory) -> None:
    if kept.subject is None and dropped.subject is not None:
        kept.subject = dropped.subject
        kept.changed = True
    extra = [t for t in _tags(dropped.context) if t not in _tags(kept.context)]
    if extra:
        context = json.loads(kept.context) if kept.context is not None else {}
        context["tags"] = _tags(kept.context) + extra
        kept.context = json.dumps(context, ensure_ascii=False, separators=(",", ":"))
        kept.changed = True


def _dedupe(memories: list[_Memory], threshold: float) -> tuple[list[_Memory], int]:
    """Keep memories in priority order unless a near-duplicate was kept before them."""
    neighbours: dict[int, list[int]] = defaultdict(list)
    for a, b in find_near_duplicates([m.content for m in memories], threshold=threshold):
        neighbours[a].append(b)
        neighbours[b].append(a)
    order = sorted(range(len(memories)), key=lambda i: memories[i].priority())
    kept_at: dict[int, int] = {}  # index -> rank in which it was kept
    kept: list[_Memory] = []
    for i in order:
        mine = memories[i]
        match = None
        near = neighbours.get(i)
        for j in sorted(near, key=lambda j: kept_at.get(j, math.inf)) if near else ():
            if j not in kept_at:
                continue
            other = memories[j]
            if other.subject is None or mine.subject is None or other.subject == mine.subject:
                match = other
                break
        if match is None:
            kept_at[i] = len(kept)
            kept.append(mine)
        else:
            _absorb(match, mine)
    return kept, len(memories) - len(kept)


@dataclass(slots=True)
class _Knowledge:
    side: int  # 0 primary, 1 secondary
    id: int
    content: str
    tags: str  # a JSON array
    relevance: float
    created_at: float

    def priority(self) -> tuple[float, float, int, int]:
        return (-self.relevance, -self.created_at, self.side, self.id)


def _dedupe_knowledge(items: list[_Knowledge], threshold: float) -> tuple[list[_Knowledge], int]:
    """Keep items in priority order unless a near-duplicate was kept before; the kept take the tags."""
    neighbours: dict[int, list[int]] = defaultdict(list)
    for a, b in find_near_duplicates([k.content for k in items], threshold=threshold):
        neighbours[a].append(b)
        neighbours[b].append(a)
    kept_at: dict[int, int] = {}
    kept: list[_Knowledge] = []
    for i in sorted(range(len(items)), key=lambda i: items[i].priority()):
        near = [j for j in neighbours.get(i, ()) if j in kept_at]
        if not near:
            kept_at[i] = len(kept)
            kept.append(items[i])
            continue
        held = kept[min(kept_at[j] for j in near)]
        tags = json.loads(held.tags)
        extra = [t for t in json.loads(items[i].tags) if t not in tags]
        if extra:
            held.tags = json.dumps(tags + extra)
    return kept, len(items) - len(kept)


def _write_knowledge(db: RawConnection, kept: list[_Knowledge]) -> None:
    """Insert the kept items (tags possibly widened) in created_at order, their embeddings as stored."""
    db.execute(
        "CREATE TEMP TABLE keep_knowledge (side INTEGER, src_id INTEGER, tags TEXT, "
        "PRIMARY KEY (side, src_id)) WITHOUT ROWID"
    )
    db.executemany("INSERT INTO temp.keep_knowledge VALUES (?, ?, ?)", ((k.side, k.id, k.tags) for k in kept))
    picked = " UNION ALL ".join(
        f"SELECT k.side AS side, x.id AS src_id, x.content, x.context, k.tags, x.relevance, x.embedding, "
        f"x.embed_model, x.created_at, x.updated_at "
        f"FROM temp.keep_knowledge k JOIN {schema}.knowledge x ON x.id = k.src_id WHERE k.side = {side}"
        for side, schema in enumerate(("p", "s"))
    )
    db.execute(
        f"INSERT INTO knowledge ({_KNOWLEDGE_COLUMNS}) SELECT {_KNOWLEDGE_COLUMNS} FROM ({picked}) "
        "ORDER BY created_at, side, src_id"
    )
    db.execute("DROP TABLE temp.keep_knowledge")


def _merge_skills(primary: list[SqlRow], secondary: list[SqlRow]) -> tuple[list[SqlRow], int]:
    by_id = {row[0]: row for row in primary}
    both = 0
    for row in secondary:
        mine = by_id.get(row[0])
        if mine is None:
            by_id[row[0]] = row
            continue
        both += 1
        # effectiveness is column 3; NULL (unrated) loses; a tie keeps the primary's.
        winner = row if (row[3] is not None and (mine[3] is None or row[3] > mine[3])) else mine
        last_used = [t for t in (mine[7], row[7]) if t is not None]
        by_id[row[0]] = (
            *winner[:5],
            mine[5] + row[5],
            min(mine[6], row[6]),
            max(last_used) if last_used else None,
            # Where it came from goes with the adapter kept (lora_hash is the winner's).
            winner[8],
        )
    return [by_id[k] for k in sorted(by_id)], both


def _merge_goals(primary: list[SqlRow], secondary: list[SqlRow]) -> list[SqlRow]:
    def key(row: SqlRow) -> tuple[str, str]:
        return (" ".join(_words(row[0])), " ".join(_words(row[1] or "")))

    chosen: dict[tuple[str, str], SqlRow] = {}
    for row in [*primary, *secondary]:
        held = chosen.get(key(row))
        if held is None or row[7] > held[7]:  # updated_at; a tie keeps the primary's
            chosen[key(row)] = row
    return sorted(chosen.values(), key=lambda row: row[6])


def merge_brains(
    primary: Path,
    primary_key: bytes,
    secondary: Path,
    secondary_key: bytes,
    dest: Path,
    dest_key: bytes,
    *,
    near_duplicate: float = DEFAULT_NEAR_DUPLICATE,
) -> MergeReport:
    """Write a new brain at ``dest`` with the union of two brains (rules: module docstring).

    Neither source is written. Raises :class:`WrongKey` (naming the file),
    :class:`SchemaTooNew` or :class:`InvalidInput`; on any error nothing
    exists at ``dest``.
    """
    started = time.perf_counter()
    primary_key = _check_key("primary_key", primary_key)
    secondary_key = _check_key("secondary_key", secondary_key)
    dest_key = _check_key("dest_key", dest_key)
    if isinstance(near_duplicate, bool) or not isinstance(near_duplicate, float | int):
        raise InvalidInput("near_duplicate", "must be a number")
    if not 0.0 < near_duplicate <= 1.0:
        raise InvalidInput("near_duplicate", "must be in (0, 1]")
    primary = _check_source("primary", primary, primary_key)
    secondary = _check_source("secondary", secondary, secondary_key)
    if primary.resolve() == secondary.resolve():
        raise InvalidInput("secondary", "must differ from the primary")
    dest = _check_dest(dest, [primary, secondary])

    def fill(db: RawConnection) -> MergeReport:
        _attach(db, "p", primary, primary_key)
        _attach(db, "s", secondary, secondary_key)
        db.execute("BEGIN")  # one read snapshot of both sources
        try:
            memories: list[_Memory] = []
            skills: list[list[SqlRow]] = []
            goals: list[list[SqlRow]] = []
            knowledge: list[_Knowledge] = []
            for side, (schema, name, path) in enumerate(
                (("p", "primary", primary), ("s", "secondary", secondary))
            ):
                with _reading(name, path):
                    memories += [
                        _Memory(side, *row)
                        for row in db.execute(
                            "SELECT id, content, subject, context, relevance, pinned, created_at "
                            f"FROM {schema}.memories"
                        )
                    ]
                    skills.append(db.execute(f"SELECT {_SKILL_COLUMNS} FROM {schema}.skills").fetchall())
                    goals.append(db.execute(f"SELECT {_GOAL_COLUMNS} FROM {schema}.goals").fetchall())
                    knowledge += [
                        _Knowledge(side, *row)
                        for row in db.execute(
                            f"SELECT id, content, tags, relevance, created_at FROM {schema}.knowledge"
                        )
                    ]
        finally:
            db.execute("COMMIT")
        kept, dropped = _dedupe(memories, float(near_duplicate))
        merged_skills, skills_in_both = _merge_skills(skills[0], skills[1])
        merged_goals = _merge_goals(goals[0], goals[1])
        kept_knowledge, knowledge_dropped = _dedupe_knowledge(knowledge, float(near_duplicate))

        def work() -> int:
            db.execute(
                "CREATE TEMP TABLE keep (side INTEGER, src_id INTEGER, subject TEXT, "
                "context TEXT, changed INTEGER, PRIMARY KEY (side, src_id)) WITHOUT ROWID"
            )
            db.executemany(
                "INSERT INTO temp.keep VALUES (?, ?, ?, ?, ?)",
                ((m.side, m.id, m.subject, m.context, int(m.changed)) for m in kept),
            )
            picked = " UNION ALL ".join(
                f"SELECT m.content, m.kind, m.source, "
                f"CASE WHEN k.changed THEN k.subject ELSE m.subject END AS subject, "
                f"CASE WHEN k.changed THEN k.context ELSE m.context END AS context, "
                f"m.relevance, m.pinned, m.created_at, k.side AS side, m.id AS src_id "
                f"FROM temp.keep k JOIN {schema}.memories m ON m.id = k.src_id WHERE k.side = {side}"
                for side, schema in enumerate(("p", "s"))
            )
            written = db.execute(
                f"INSERT INTO memories ({_MEMORY_COLUMNS}) SELECT content, kind, source, "
                f"subject, context, relevance, pinned, created_at FROM ({picked}) "
                "ORDER BY created_at, side, src_id"
            ).rowcount
            db.execute("DROP TABLE temp.keep")
            db.executemany(
                f"INSERT INTO skills ({_SKILL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", merged_skills
            )
            db.executemany(
                f"INSERT INTO goals ({_GOAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", merged_goals
            )
            db.execute(
                f"INSERT INTO evolution_history ({_EVOLUTION_COLUMNS}) SELECT {_EVOLUTION_COLUMNS} "
                f"FROM (SELECT {_EVOLUTION_COLUMNS}, 0 AS side, id FROM p.evolution_history "
                f"UNION ALL SELECT {_EVOLUTION_COLUMNS}, 1, id FROM s.evolution_history) "
                "ORDER BY created_at, side, id"
            )
            _write_knowledge(db, kept_knowledge)
            return int(written)

        with _reading("primary or secondary", f"{primary} or {secondary}"):
            written = _transaction(db, work)
        evolution = db.execute("SELECT count(*) FROM evolution_history").fetchone()[0]
        from_primary = sum(1 for m in kept if m.side == 0)
        primary_total = sum(1 for m in memories if m.side == 0)
        return MergeReport(
            dest=dest,
            memories=written,
            kept_primary=from_primary,
            kept_secondary=len(kept) - from_primary,
            dropped_duplicates=dropped,
            skills=len(merged_skills),
            skills_in_both=skills_in_both,
            goals=len(merged_goals),
            evolution_history=evolution,
            seconds=0.0,
            dropped_by_side={
                "primary": primary_total - from_primary,
                "secondary": len(memories) - primary_total - (len(kept) - from_primary),
            },
            knowledge=len(kept_knowledge),
            knowledge_dropped_duplicates=knowledge_dropped,
        )

    report: MergeReport = build_brain(dest, dest_key, fill)
    return dataclasses.replace(report, seconds=time.perf_counter() - started)

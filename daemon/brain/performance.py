"""Performance records in the brain, and the per-day rollup ``persona.analytics`` reads.

Storing: :func:`insert_records` on the writer thread (``Brain.write``).

Reading: analytics must answer over 10,000 records in a few milliseconds,
and no query over the table does: decrypting and aggregating every row,
and above all expanding each record's ``context.tags`` JSON, costs tens of
milliseconds however it is written in SQL. So the records are read once,
in one pass, into a :class:`Rollup` (per UTC day: counts, sums, sessions,
tasks and topics), and afterwards only the rows added since are read
(:func:`read_changes`, on the reader thread): one ``PRAGMA data_version``
when nothing changed. A window's figures are then a merge of at most one
entry per day with records (:meth:`Rollup.figures`). If rows disappeared
(the count no longer adds up) the rollup is rebuilt from scratch.

Topics: a record's topics are its task and the strings in its
``context.tags``, each lowercased with whitespace runs collapsed, counted
once per record (a task that is also a tag is one topic of that record).
What the figures mean is docs/analytics.md; the rules that turn them into a
tier and recommendations are :mod:`daemon.persona.analytics_rules`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from .idempotency import KeyReused, expire, keyed, look_up, remember_key

__all__ = [
    "DAY_S",
    "MAX_TREND_POINTS",
    "TOP_TOPICS",
    "Changes",
    "Figures",
    "NewRecord",
    "Rollup",
    "TopicFigure",
    "TrendPoint",
    "day_of",
    "insert_record_once",
    "insert_records",
    "knowledge_hits",
    "normalise_task",
    "read_changes",
    "window_figures",
]

DAY_S = 86_400.0
#: The method an idempotency key of a record is given with.
RECORD: Final = "persona.performance.record"
#: How many topics analytics ranks (and checks against the knowledge base).
TOP_TOPICS = 5
#: The trend has one point per day of the window, or per group of days past this many.
MAX_TREND_POINTS = 30

_INSERT = (
    "INSERT INTO performance_records (session_id, task, score, success, duration_s, user_feedback, "
    "context, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# json_extract in C, per row, is cheap; the tags' JSON text is parsed once per
# distinct value in Python (most records of a kind carry the same tags).
_ROWS = (
    "SELECT id, session_id, lower(task), score, success, duration_s, "
    "CASE WHEN json_type(context, '$.tags') = 'array' THEN json_extract(context, '$.tags') END, recorded_at "
    "FROM performance_records WHERE id > ? ORDER BY id"
)
_WORD = re.compile(r"\w+", re.UNICODE)


def normalise_task(task: str) -> str:
    """The task as stored: surrounding whitespace dropped, inner runs collapsed to one space."""
    return " ".join(task.split())


def day_of(t: float) -> int:
    """The UTC day number of an epoch time."""
    return int(t // DAY_S)


@dataclass(frozen=True)
class NewRecord:
    """One performance record to store; ``recorded_at`` is seconds since the epoch."""

    session_id: str
    task: str
    score: float
    success: bool
    duration_s: float
    user_feedback: str | None = None
    context: dict[str, Any] | None = None
    recorded_at: float | None = None


def insert_records(db: Any, records: Sequence[NewRecord]) -> list[tuple[int, float]]:
    """Store ``records`` in one transaction; return ``(id, recorded_at)`` for each.

    The caller has validated them (the protocol models do, on the bus); the
    table's CHECK constraints are the last line. A record without a time gets
    the current one. Tests and the benchmark pass explicit times to build a
    history; the bus method never does.
    """
    now = time.time()
    rows = [_row(r, now) for r in records]
    db.execute("BEGIN IMMEDIATE")
    try:
        out = [(db.execute(_INSERT, row).lastrowid, row[7]) for row in rows]
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return out


def insert_record_once(
    db: Any, record: NewRecord, caller: str, key: str
) -> tuple[int, float, bool] | KeyReused:
    """Store ``record`` under an idempotency key (idempotency.py), in one transaction:
    ``(id, recorded_at, replayed)``; a key known for this record answers from it, one given
    for another write is KeyReused."""
    now = time.time()
    row = _row(record, now)
    keyed_as = keyed(caller, key, RECORD, row[:-1])
    db.execute("BEGIN IMMEDIATE")
    try:
        expire(db, now)
        known = look_up(db, keyed_as)
        if isinstance(known, KeyReused):
            out: tuple[int, float, bool] | KeyReused = known
        elif known is not None:
            at = db.execute("SELECT recorded_at FROM performance_records WHERE id = ?", (known,)).fetchone()
            out = (known, float(at[0]) if at is not None else now, True)
        else:
            record_id = int(db.execute(_INSERT, row).lastrowid)
            remember_key(db, keyed_as, record_id, now)
            out = (record_id, row[7], False)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return out


def _row(r: NewRecord, now: float) -> tuple[Any, ...]:
    return (
        r.session_id,
        normalise_task(r.task),
        float(r.score),
        1 if r.success else 0,
        float(r.duration_s),
        r.user_feedback,
        None if r.context is None else json.dumps(r.context, ensure_ascii=False),
        now if r.recorded_at is None else float(r.recorded_at),
    )


# -- reading changes ------------------------------------------------------------------


@dataclass(frozen=True)
class Changes:
    """What :func:`read_changes` found: new rows (or all, when ``full``) and the table's state."""

    full: bool
    rows: list[tuple[Any, ...]]
    max_id: int
    count: int
    data_version: int


def read_changes(db: Any, data_version: int | None, max_id: int, count: int) -> Changes | None:
    """Rows added since the rollup last read (``max_id``, ``count``); None when nothing changed.

    ``PRAGMA data_version`` moves whenever another connection commits: when
    it has not, nothing is read. Otherwise the rows with a larger id are
    read; if they do not account for the new count (rows were removed), all
    rows are, and ``full`` says the rollup must start again.
    """
    version = db.execute("PRAGMA data_version").fetchone()[0]
    if version == data_version:
        return None
    db.execute("BEGIN")
    try:
        now_max, now_count = db.execute(
            "SELECT coalesce(max(id), 0), count(*) FROM performance_records"
        ).fetchone()
        if (now_max, now_count) == (max_id, count):
            return Changes(False, [], max_id, count, version)
        rows = db.execute(_ROWS, (max_id,)).fetchall() if now_max >= max_id else []
        if now_max < max_id or count + len(rows) != now_count:
            return Changes(True, db.execute(_ROWS, (0,)).fetchall(), now_max, now_count, version)
        return Changes(False, rows, now_max, now_count, version)
    finally:
        db.execute("COMMIT")


def knowledge_hits(db: Any, topics: Sequence[str]) -> list[bool]:
    """For each topic, whether a knowledge item matches every word of it (FTS5, the index's stemming)."""
    out = []
    for topic in topics:
        words = _WORD.findall(topic)
        # Each word quoted: FTS5 syntax in a topic (AND, NEAR, *) is text here.
        query = " ".join('"' + w.replace('"', '""') + '"' for w in words)
        hit = bool(words) and (
            db.execute("SELECT 1 FROM knowledge_fts WHERE knowledge_fts MATCH ? LIMIT 1", (query,)).fetchone()
            is not None
        )
        out.append(hit)
    return out


# -- the rollup -------------------------------------------------------------------------


@dataclass
class _Day:
    records: int = 0
    score: float = 0.0
    successes: int = 0
    duration_s: float = 0.0
    sessions: set[str] = field(default_factory=set)
    ok_sessions: set[str] = field(default_factory=set)
    #: topic -> [records, score sum, failures, records with it as their task]
    #: (tasks are topics too: one merge serves both)
    topics: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicFigure:
    topic: str
    records: int
    average_score: float
    failures: int
    knowledge_hit: bool = False


@dataclass(frozen=True)
class TrendPoint:
    start: float
    end: float
    records: int
    average_score: float | None
    success_rate: float | None


@dataclass(frozen=True)
class Figures:
    """What the records of one window add up to (the inputs of docs/analytics.md's formulas)."""

    window_days: int
    records: int
    total_sessions: int
    sessions_completed: int
    unique_tasks: int
    repeat_tasks: int
    usage_streak: int
    total_usage_s: float
    average_score: float | None
    success_rate: float | None
    early_score: float | None
    late_score: float | None
    trend: list[TrendPoint]
    topics: list[TopicFigure]


class Rollup:
    """Per-UTC-day aggregates of every record, fed by :func:`read_changes`; not thread-safe."""

    def __init__(self) -> None:
        self.days: dict[int, _Day] = {}
        self.max_id = 0
        self.count = 0
        self.data_version: int | None = None
        self._tags: dict[str, tuple[str, ...]] = {}

    def apply(self, changes: Changes) -> None:
        if changes.full:
            self.days.clear()
            self._tags.clear()
        self.add(changes.rows)
        self.max_id, self.count, self.data_version = changes.max_id, changes.count, changes.data_version

    def _tags_of(self, text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        tags = self._tags.get(text)
        if tags is None:
            parsed = json.loads(text)
            tags = tuple(" ".join(t.lower().split()) for t in parsed if isinstance(t, str) and t.strip())
            self._tags[text] = tags
        return tags

    def add(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Fold rows shaped (id, session, lowercased task, score, success, duration, tags JSON, at)."""
        for _, session, task, score, success, duration, tags, at in rows:
            day = self.days.get(d := day_of(at))
            if day is None:
                day = self.days[d] = _Day()
            day.records += 1
            day.score += score
            day.successes += success
            day.duration_s += duration
            day.sessions.add(session)
            if success:
                day.ok_sessions.add(session)
            for topic in {task, *self._tags_of(tags)}:
                agg = day.topics.get(topic)
                if agg is None:
                    agg = day.topics[topic] = [0, 0.0, 0, 0]
                agg[0] += 1
                agg[1] += score
                agg[2] += 1 - success
                agg[3] += topic == task

    def streak(self, now: float) -> int:
        """Consecutive UTC days with a record, back from the latest one; 0 if that is before yesterday."""
        today = day_of(now)
        latest = max((d for d in self.days if d <= today), default=None)
        if latest is None or latest < today - 1:
            return 0
        streak = 0
        while latest - streak in self.days:
            streak += 1
        return streak

    def figures(self, window_days: int, now: float) -> Figures:
        """The figures of the last ``window_days`` UTC days, today included."""
        today = day_of(now)
        first = today - window_days + 1
        days = sorted(d for d in self.days if first <= d <= today)
        records = successes = 0
        score = duration = 0.0
        sessions: set[str] = set()
        ok_sessions: set[str] = set()
        topics: dict[str, list[float]] = {}
        get = topics.get
        for d in days:
            day = self.days[d]
            records += day.records
            successes += day.successes
            score += day.score
            duration += day.duration_s
            sessions |= day.sessions
            ok_sessions |= day.ok_sessions
            # The hot loop of analytics (days x topics): kept to dict and list operations.
            for topic, agg in day.topics.items():
                merged = get(topic)
                if merged is None:
                    topics[topic] = agg.copy()
                else:
                    merged[0] += agg[0]
                    merged[1] += agg[1]
                    merged[2] += agg[2]
                    merged[3] += agg[3]
        task_counts = [agg[3] for agg in topics.values() if agg[3]]
        early = late = None
        if len(days) >= 2:
            # The halves split the span of days that have records, so a window
            # longer than the persona's history still compares earlier with later.
            mid = (days[0] + days[-1]) / 2
            early = _mean(self.days[d] for d in days if d < mid)
            late = _mean(self.days[d] for d in days if d >= mid)
        ranked = sorted(topics.items(), key=lambda kv: (-kv[1][0], -kv[1][1] / kv[1][0], kv[0]))[:TOP_TOPICS]
        return Figures(
            window_days=window_days,
            records=records,
            total_sessions=len(sessions),
            sessions_completed=len(ok_sessions),
            unique_tasks=len(task_counts),
            repeat_tasks=sum(1 for n in task_counts if n >= 2),
            usage_streak=self.streak(now),
            total_usage_s=duration,
            average_score=score / records if records else None,
            success_rate=successes / records if records else None,
            early_score=early,
            late_score=late,
            trend=self._trend(first, window_days),
            topics=[TopicFigure(t, int(n), s / n, int(f)) for t, (n, s, f, _) in ranked],
        )

    def _trend(self, first: int, window_days: int) -> list[TrendPoint]:
        width = math.ceil(window_days / MAX_TREND_POINTS)
        points = []
        for start in range(first, first + window_days, width):
            end = min(start + width, first + window_days)
            buckets = [self.days[d] for d in range(start, end) if d in self.days]
            n = sum(b.records for b in buckets)
            points.append(
                TrendPoint(
                    start=start * DAY_S,
                    end=end * DAY_S,
                    records=n,
                    average_score=sum(b.score for b in buckets) / n if n else None,
                    success_rate=sum(b.successes for b in buckets) / n if n else None,
                )
            )
        return points


def _mean(days: Iterable[_Day]) -> float | None:
    n = total = 0.0
    for day in days:
        n += day.records
        total += day.score
    return total / n if n else None


def window_figures(db: Any, rollup: Rollup, window_days: int, now: float) -> Figures:
    """On the reader thread: bring ``rollup`` up to date, then the window's figures with knowledge hits.

    Every use of a rollup goes through here, so it is only ever touched on
    that one thread.
    """
    changes = read_changes(db, rollup.data_version, rollup.max_id, rollup.count)
    if changes is not None:
        rollup.apply(changes)
    f = rollup.figures(window_days, now)
    hits = knowledge_hits(db, [t.topic for t in f.topics])
    return replace(f, topics=[replace(t, knowledge_hit=hit) for t, hit in zip(f.topics, hits, strict=True)])

"""Recall: full-text search ranked together with recency and stored relevance.

The score of a memory ``m`` for a query::

    score(m) = 0.5 * text(m) + 0.3 * recency(m) + 0.2 * relevance(m)

    text(m)      = bm25(m) / min(bm25 over the candidates)   in (0, 1], 1 = best match
    recency(m)   = 0.5 ** (age(m) / 30 days)                 in (0, 1], halves every 30 days
    relevance(m) = the relevance stored with the memory      in [0, 1]

``bm25`` is FTS5's (k1 = 1.2, b = 0.75; negative, more negative is better),
so ``text`` is each candidate's BM25 relative to the best candidate's. The
weights and the half-life are :class:`~daemon.brain.records.ScoreWeights`
(CrewAI's similarity/recency/importance split as a start); every hit carries
its three components, so a change of weights can be measured on real recalls.

The query is a bag of words: it is split into words (``\\w+``), English
stop words are dropped (unless nothing else is left), and the remaining words
are OR-ed, each as a quoted FTS5 string, so no FTS5 syntax reaches the engine
from the caller. FTS5's porter tokenizer stems them like the stored text.

**Bounded work.** BM25 is computed for every row that matches, and each is
looked up in ``memories`` for its age and relevance, about 2 µs a row; a
word found in most memories would cost tens of milliseconds on a large brain
and contribute almost nothing to the ranking (its IDF is near zero,
FTS5 clamps it at 1e-6 above half the rows). So at most
:data:`CANDIDATE_BUDGET` rows are ranked per recall:

1. each word's document frequency is counted, stopping at the budget (cheap:
   no ranking);
2. words are admitted rarest first (highest IDF first, as BM25 weighs them)
   while their frequencies add up to at most the budget; the rest are too
   common to discriminate and are dropped;
3. if even the rarest word exceeds the budget, all words are kept but only
   their newest ``CANDIDATE_BUDGET`` matches are ranked (recency breaks the
   near-ties BM25 leaves between such rows). When filters then leave fewer
   hits than asked for, recall runs again without that window, exactly.

Filters (kinds, source, subject, since, until) apply to the candidates in SQL;
the score is computed in Python over the candidates and only the best
``limit`` rows are then read in full.
With no usable words, recall ranks the newest ``CANDIDATE_BUDGET`` memories
that pass the filters by ``0.3 * recency + 0.2 * relevance``.
"""

from __future__ import annotations

import heapq
import json
import re
from dataclasses import dataclass
from typing import Any

from .records import RecallHit, ScoreWeights, from_epoch

__all__ = [
    "CANDIDATE_BUDGET",
    "MAX_TERMS",
    "RecallFilters",
    "query_terms",
    "recall_sync",
    "recency",
]

CANDIDATE_BUDGET = 2_000
MAX_TERMS = 16
_MAX_TERM_CHARS = 64
_WORD = re.compile(r"\w+")

# A short English list: words so frequent that they would only widen the
# match set. Kept small on purpose; BM25's IDF handles the rest.
_STOP_TEXT = """
a about above after again all am an and any are as at be been before being
below between both but by can did do does doing down during each few for from
further had has have having he her here hers herself him himself his how i if in
into is it its itself just me more most my myself no nor not now of off on once
only or other our ours ourselves out over own same she should so some such than
that the their theirs them themselves then there these they this those through to
too under until up very was we were what when where which while who whom why will
with you your yours yourself yourselves
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())


@dataclass(frozen=True, slots=True)
class RecallFilters:
    kinds: tuple[str, ...] | None = None
    source: str | None = None
    subject: str | None = None
    since: float | None = None
    until: float | None = None

    def sql(self, alias: str) -> tuple[str, list[Any]]:
        """A WHERE fragment (always valid, "1" when empty) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.kinds:
            clauses.append(f"{alias}.kind IN ({', '.join('?' * len(self.kinds))})")
            params.extend(self.kinds)
        if self.source is not None:
            clauses.append(f"{alias}.source = ?")
            params.append(self.source)
        if self.subject is not None:
            clauses.append(f"{alias}.subject = ?")
            params.append(self.subject)
        if self.since is not None:
            clauses.append(f"{alias}.created_at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"{alias}.created_at < ?")
            params.append(self.until)
        return (" AND ".join(clauses) or "1"), params

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.kinds, self.source, self.subject, self.since, self.until))


def query_terms(text: str) -> list[str]:
    """The words recall searches for: lower-cased, de-duplicated, stop words dropped."""
    words: list[str] = []
    seen: set[str] = set()
    for match in _WORD.finditer(text.lower()):
        word = match.group()[:_MAX_TERM_CHARS]
        if word not in seen:
            seen.add(word)
            words.append(word)
    content = [w for w in words if w not in STOP_WORDS]
    return (content or words)[:MAX_TERMS]


def _phrase(term: str) -> str:
    # An FTS5 string: double quotes doubled (FTS5 §3.1); nothing else is special inside.
    return '"' + term.replace('"', '""') + '"'


def admit_rarest(
    db: Any, fts_table: str, terms: list[str], budget: int
) -> tuple[list[tuple[int, str]], list[str], int]:
    """Which words to OR together so that a full-text query stays within ``budget`` matches.

    Returns every word's (match count, word) with any match, rarest first
    (each counted up to ``budget + 1``, so a common word costs no more than
    the budget), the words admitted rarest first while their counts add up to
    at most ``budget`` (the first is always admitted), and that total.
    ``fts_table`` is ours (memories_fts, knowledge_fts), never the caller's.
    """
    frequencies: list[tuple[int, str]] = []
    for term in terms:
        (count,) = db.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {fts_table} WHERE {fts_table} MATCH ? LIMIT {budget + 1})",
            (_phrase(term),),
        ).fetchone()
        if count:
            frequencies.append((count, term))
    frequencies.sort()
    admitted: list[str] = []
    total = 0
    for count, term in frequencies:
        if admitted and total + count > budget:
            break
        admitted.append(term)
        total += count
    return frequencies, admitted, total


def recency(age_s: float, half_life_s: float) -> float:
    """0.5 ** (age / half-life); a memory from the future counts as brand new."""
    return float(0.5 ** (max(age_s, 0.0) / half_life_s))


_COLUMNS = "m.id, m.content, m.kind, m.source, m.subject, m.context, m.relevance, m.pinned, m.created_at"
# (id, bm25 or None, created_at, relevance)
_Candidate = tuple[int, float | None, float, float]


def recall_sync(
    db: Any,
    text: str,
    filters: RecallFilters,
    limit: int,
    now: float,
    weights: ScoreWeights,
) -> list[RecallHit]:
    """Run one recall on a reader connection (on its worker thread)."""
    where, where_params = filters.sql("m")
    terms = query_terms(text)
    if not terms:
        candidates = db.execute(
            f"SELECT m.id, NULL, m.created_at, m.relevance FROM memories m WHERE {where} "
            f"ORDER BY m.created_at DESC LIMIT {CANDIDATE_BUDGET}",
            where_params,
        ).fetchall()
        return _top(db, candidates, limit, now, weights)

    # 1-2. document frequency of each word, then the rarest first while the budget holds
    frequencies, admitted, total = admit_rarest(db, "memories_fts", terms, CANDIDATE_BUDGET)
    if not frequencies:
        return []

    # 3. every word is common: rank only the newest matches
    floor: int | None = None
    if total > CANDIDATE_BUDGET:
        admitted = [term for _, term in frequencies]
    match = " OR ".join(_phrase(t) for t in admitted)
    if total > CANDIDATE_BUDGET:
        row = db.execute(
            "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?",
            (match, CANDIDATE_BUDGET - 1),
        ).fetchone()
        floor = row[0] if row is not None else None

    hits = _top(db, _candidates(db, match, floor, where, where_params), limit, now, weights)
    if floor is not None and filters.active and len(hits) < limit:
        hits = _top(db, _candidates(db, match, None, where, where_params), limit, now, weights)
    return hits


def _candidates(
    db: Any, match: str, floor: int | None, where: str, where_params: list[Any]
) -> list[_Candidate]:
    window = "AND rowid >= ?" if floor is not None else ""
    # The subquery keeps FTS5 the outer loop: bm25() is only defined while
    # the FTS5 table drives the scan.
    sql = f"""
        SELECT f.id, f.b, m.created_at, m.relevance
        FROM (SELECT rowid AS id, bm25(memories_fts) AS b FROM memories_fts
              WHERE memories_fts MATCH ? {window}) f
        JOIN memories m ON m.id = f.id
        WHERE {where}"""
    params: list[Any] = [match]
    if floor is not None:
        params.append(floor)
    params.extend(where_params)
    rows: list[_Candidate] = db.execute(sql, params).fetchall()
    return rows


def _top(
    db: Any, candidates: list[_Candidate], limit: int, now: float, weights: ScoreWeights
) -> list[RecallHit]:
    """Score the candidates (the formula above), then load the best ``limit`` in full.

    Scoring runs here rather than in SQL: a Python function called per row
    from SQL, plus a window function for the best BM25, cost more than this
    loop over at most CANDIDATE_BUDGET tuples.
    """
    if not candidates:
        return []
    # bm25 is negative, more negative is better: the best candidate's is the minimum.
    best = min((c[1] for c in candidates if c[1] is not None), default=None)
    half_life_s = weights.half_life_days * 86_400.0
    scored = []
    for memory_id, bm25, created_at, relevance in candidates:
        text_score = bm25 / best if bm25 is not None and best else 0.0
        rec = 0.5 ** (max(now - created_at, 0.0) / half_life_s)
        score = weights.text * text_score + weights.recency * rec + weights.relevance * relevance
        scored.append((score, memory_id, text_score, rec))
    top = heapq.nlargest(limit, scored)
    rows = {
        row[0]: row
        for row in db.execute(
            f"SELECT {_COLUMNS} FROM memories m WHERE m.id IN ({', '.join('?' * len(top))})",
            [memory_id for _, memory_id, _, _ in top],
        )
    }
    return [
        RecallHit(
            id=memory_id,
            content=row[1],
            kind=row[2],
            source=row[3],
            subject=row[4],
            context=json.loads(row[5]) if row[5] is not None else None,
            relevance=row[6],
            pinned=bool(row[7]),
            created_at=from_epoch(row[8]),
            score=score,
            text_score=text_score,
            recency=rec,
        )
        for score, memory_id, text_score, rec in top
        if (row := rows.get(memory_id)) is not None
    ]

"""The knowledge table's SQL and the hybrid search's ranking (brain side, no bus, no model).

Each ``*_sync`` function takes the sqlcipher connection and runs on a
:class:`~daemon.brain.Brain` thread (``brain.write`` / ``brain.read``); the
persona's handlers (daemon/persona/knowledge.py) call them and fetch the
embeddings from ``cap:inference`` in between.

**Candidates.** A search scores a bounded set of items, never the table:

1. full-text: the query's words (recall's :func:`~daemon.brain.recall.query_terms`:
   lower-cased, stop words dropped) OR-ed as quoted FTS5 strings over content
   and context (porter stemming), the best :data:`FTS_CANDIDATES` by BM25.
   As in recall, words are admitted rarest first while their match counts add
   up to at most :data:`MATCH_BUDGET` (a word in most items says nothing and
   would cost a BM25 per row); if even the rarest is over, only the newest
   ``MATCH_BUDGET`` matches are ranked.
2. semantic: the items nearest the query's embedding among **every**
   embedded item, proposed by the persona's in-memory vector index
   (:mod:`daemon.brain.knowledge_index`) and read here by id
   (:func:`rows_sync`). A paraphrase shares no word with its answer: this is
   how it is found.
3. the pool, only for a query with no words at all (punctuation): the
   :data:`POOL` items with the highest stored relevance (newest first among
   equals; the ``knowledge_relevance`` index).

Both honour the tag filter (an item must carry every tag asked for).

**Score** (every hit carries its parts)::

    text(i)     = bm25(i) / min(bm25 over the candidates)  in (0, 1]; 0 if no word matched
    semantic(i) = max(0, cos(query, item))                 in [0, 1]; 0 if the item has no embedding
    re-ranked:  score = 0.65 semantic + 0.25 text + 0.10 relevance
    full text:  score = 0.80 text + 0.20 relevance         (semantic candidates are left out;
                                                            the pool is kept only for a wordless query)

Embeddings are unit float32 vectors stored as little-endian BLOBs with the
model's name; an item whose model differs from the current one counts as
not embedded (it is re-embedded like a new one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol.commands.knowledge import MAX_EMBED_TEXT_CHARS

from .ops import in_transaction
from .recall import admit_rarest, query_terms
from .records import from_epoch

if TYPE_CHECKING:
    import numpy as np

# numpy (16 MiB of a persona's RSS) is imported by the functions that use it:
# a persona that never adds or searches knowledge does without it.

__all__ = [
    "FTS_CANDIDATES",
    "MATCH_BUDGET",
    "POOL",
    "Candidate",
    "Scored",
    "add_sync",
    "candidates_sync",
    "count_sync",
    "embedding_blob",
    "embedding_text",
    "hits_sync",
    "pending_sync",
    "prune_sync",
    "rank",
    "rows_sync",
    "store_embeddings_sync",
]

FTS_CANDIDATES = 200
POOL = 300
MATCH_BUDGET = 1_000
W_SEMANTIC, W_TEXT, W_RELEVANCE = 0.65, 0.25, 0.10
W_TEXT_ONLY, W_RELEVANCE_ONLY = 0.80, 0.20


@dataclass(frozen=True, slots=True)
class Candidate:
    id: int
    bm25: float | None  # None: semantic or pool candidate, no word matched
    relevance: float
    embedding: bytes | None  # None: not embedded (or by another model)


@dataclass(frozen=True, slots=True)
class Scored:
    id: int
    score: float
    text_score: float
    semantic_score: float | None


def embedding_text(content: str, context: str | None) -> str:
    """What is embedded for an item: its content, then its context on the next line.

    Cut at inference.embed's limit per text: the model reads only its first
    256 tokens anyway, and one over-long text would fail every batch it is in
    (the backfill would retry it, oldest first, forever).
    """
    text = content if not context else f"{content}\n{context}"
    return text[:MAX_EMBED_TEXT_CHARS]


def embedding_blob(vector: list[float]) -> bytes:
    """A vector as stored: float32, little-endian."""
    import numpy as np

    return np.asarray(vector, dtype="<f4").tobytes()


def add_sync(
    db: Any, content: str, context: str | None, tags: list[str], relevance: float, now: float
) -> int:
    """Insert one item (its FTS row follows by trigger); its id once committed."""

    def work(db: Any) -> int:
        cursor = db.execute(
            "INSERT INTO knowledge (content, context, tags, relevance, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (content, context, json.dumps(tags), relevance, now, now),
        )
        return int(cursor.lastrowid)

    result: int = in_transaction(db, work)
    return result


def pending_sync(db: Any, model: str, limit: int, ids: list[int] | None = None) -> list[tuple[int, str]]:
    """Up to ``limit`` items (among ``ids`` if given) lacking an embedding by ``model``, oldest first."""
    where = "(embedding IS NULL OR embed_model IS NOT ?)"
    params: list[Any] = [model]
    if ids is not None:
        if not ids:
            return []
        where += f" AND id IN ({', '.join('?' * len(ids))})"
        params.extend(ids)
    rows = db.execute(
        f"SELECT id, content, context FROM knowledge WHERE {where} ORDER BY id LIMIT ?", [*params, limit]
    ).fetchall()
    return [(row[0], embedding_text(row[1], row[2])) for row in rows]


def store_embeddings_sync(db: Any, model: str, items: list[tuple[int, bytes]], now: float) -> list[int]:
    """Store embeddings by id; the ids stored (items deleted meanwhile are skipped).

    The ids tell the persona's vector index which vectors now exist: an item
    pruned while its embedding was being computed must not enter it.
    """

    def work(db: Any) -> list[int]:
        stored: list[int] = []
        for item_id, blob in items:
            if db.execute(
                "UPDATE knowledge SET embedding = ?, embed_model = ?, updated_at = ? WHERE id = ?",
                (blob, model, now, item_id),
            ).rowcount:
                stored.append(item_id)
        return stored

    result: list[int] = in_transaction(db, work)
    return result


def _phrase(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def _tag_filter(tags: list[str] | None) -> tuple[str, list[Any]]:
    if not tags:
        return "1", []
    marks = ", ".join("?" * len(tags))
    return f"(SELECT count(*) FROM json_each(k.tags) WHERE value IN ({marks})) = {len(tags)}", list(tags)


def _fts_candidates(db: Any, query: str, where: str, where_params: list[Any]) -> list[tuple[int, float]]:
    """(id, bm25) of the best FTS_CANDIDATES full-text matches, within the match budget."""
    frequencies, admitted, total = admit_rarest(db, "knowledge_fts", query_terms(query), MATCH_BUDGET)
    if not frequencies:
        return []
    match = " OR ".join(_phrase(t) for t in admitted)
    window, params = "", [match]
    if total > MATCH_BUDGET:
        row = db.execute(
            "SELECT rowid FROM knowledge_fts WHERE knowledge_fts MATCH ? "
            "ORDER BY rowid DESC LIMIT 1 OFFSET ?",
            (match, MATCH_BUDGET - 1),
        ).fetchone()
        if row is not None:
            window, params = "AND rowid >= ?", [match, row[0]]
    # The subquery keeps FTS5 the outer loop: bm25() is defined only while it drives the scan.
    # The join to the items is only for a tag filter: their rows are large (an embedding
    # each), and a lookup per match would read a page per match.
    join = f"JOIN knowledge k ON k.id = f.id WHERE {where}" if where_params else ""
    rows: list[tuple[int, float]] = db.execute(
        f"""SELECT f.id, f.b FROM
              (SELECT rowid AS id, bm25(knowledge_fts) AS b FROM knowledge_fts
               WHERE knowledge_fts MATCH ? {window}) f
            {join}
            ORDER BY f.b LIMIT {FTS_CANDIDATES}""",
        [*params, *where_params],
    ).fetchall()
    return rows


def candidates_sync(
    db: Any, query: str, tags: list[str] | None, model: str, with_pool: bool
) -> list[Candidate]:
    """Full-text candidates, plus the relevance pool when ``with_pool`` or the query has no words."""
    where, where_params = _tag_filter(tags)
    matched = dict(_fts_candidates(db, query, where, where_params))
    ids = list(matched)
    if with_pool or not query_terms(query):
        # Over-fetch by the matches so that, after skipping them, the pool is still full.
        pool = db.execute(
            f"SELECT k.id FROM knowledge k WHERE {where} ORDER BY k.relevance DESC, k.id DESC LIMIT ?",
            [*where_params, POOL + len(ids)],
        ).fetchall()
        extra = [row[0] for row in pool if row[0] not in matched][:POOL]
        ids.extend(extra)
    if not ids:
        return []
    rows = db.execute(
        "SELECT id, relevance, embedding, embed_model FROM knowledge "
        f"WHERE id IN ({', '.join('?' * len(ids))})",
        ids,
    ).fetchall()
    return [
        Candidate(row[0], matched.get(row[0]), row[1], row[2] if row[3] == model else None) for row in rows
    ]


def rank(
    candidates: list[Candidate], query_vector: list[float] | None, limit: int, *, has_terms: bool = True
) -> list[Scored]:
    """Score the candidates (the module's formula) and keep the best ``limit``; ties go to the newer id.

    ``has_terms``: the query had words to match; without any (punctuation
    only), full-text ranking falls back to the pool by relevance. Vectorised:
    the candidates are a few hundred at most, scored in one pass.
    """
    if query_vector is None:
        candidates = [c for c in candidates if c.bm25 is not None or not has_terms]
    if not candidates:
        return []
    import numpy as np

    ids = np.fromiter((c.id for c in candidates), dtype=np.int64, count=len(candidates))
    relevance = np.fromiter((c.relevance for c in candidates), dtype=np.float64, count=len(candidates))
    bm25 = np.fromiter(
        (c.bm25 if c.bm25 is not None else 0.0 for c in candidates), dtype=np.float64, count=len(candidates)
    )
    best = bm25.min()
    # bm25 is negative, more negative is better: relative to the best, in (0, 1]; 0 where no word matched.
    text = bm25 / best if best < 0 else np.zeros_like(bm25)
    semantic: np.ndarray[Any, np.dtype[np.float64]] | None = None
    if query_vector is None:
        score = W_TEXT_ONLY * text + W_RELEVANCE_ONLY * relevance
    else:
        semantic = np.zeros(len(candidates))
        embedded = [i for i, c in enumerate(candidates) if c.embedding is not None]
        if embedded:
            matrix = np.frombuffer(b"".join(candidates[i].embedding or b"" for i in embedded), dtype="<f4")
            cosines = matrix.reshape(len(embedded), -1) @ np.asarray(query_vector, dtype="<f4")
            semantic[embedded] = np.clip(cosines, 0.0, 1.0)
        score = W_SEMANTIC * semantic + W_TEXT * text + W_RELEVANCE * relevance
    order = np.lexsort((-ids, -score))[:limit]  # score descending, then the newer (higher) id
    return [
        Scored(
            int(ids[i]),
            float(score[i]),
            float(text[i]),
            float(semantic[i]) if semantic is not None else None,
        )
        for i in order
    ]


def rows_sync(db: Any, ids: list[int], tags: list[str] | None, model: str, limit: int) -> list[Candidate]:
    """Semantic candidates: the items among ``ids`` (nearest first) carrying ``tags``, the first ``limit``.

    Deleted ids are skipped, so a stale index can never bring back an item.
    """
    if not ids:
        return []
    where, where_params = _tag_filter(tags)
    rows = db.execute(
        "SELECT k.id, k.relevance, k.embedding, k.embed_model FROM knowledge k "
        f"WHERE k.id IN ({', '.join('?' * len(ids))}) AND {where}",
        [*ids, *where_params],
    ).fetchall()
    order = {item_id: i for i, item_id in enumerate(ids)}
    rows.sort(key=lambda row: order[row[0]])
    return [Candidate(row[0], None, row[1], row[2] if row[3] == model else None) for row in rows[:limit]]


def hits_sync(db: Any, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The ranked items in full, by id."""
    if not ids:
        return {}
    rows = db.execute(
        "SELECT id, content, context, tags, relevance, created_at FROM knowledge "
        f"WHERE id IN ({', '.join('?' * len(ids))})",
        ids,
    ).fetchall()
    return {
        row[0]: {
            "id": row[0],
            "content": row[1],
            "context": row[2],
            "tags": json.loads(row[3]),
            "relevance": row[4],
            "created_at": from_epoch(row[5]),
        }
        for row in rows
    }


def count_sync(db: Any) -> int:
    (count,) = db.execute("SELECT count(*) FROM knowledge").fetchone()
    return int(count)


def prune_sync(db: Any, min_relevance: float | None, max_items: int | None) -> tuple[list[int], int]:
    """Delete items under ``min_relevance``, then all but the best ``max_items``; (removed ids, remaining).

    The ids let the persona's vector index forget exactly what was deleted.
    """

    def work(db: Any) -> tuple[list[int], int]:
        removed: list[int] = []
        if min_relevance is not None:
            removed += [
                row[0]
                for row in db.execute(
                    "DELETE FROM knowledge WHERE relevance < ? RETURNING id", (min_relevance,)
                ).fetchall()
            ]
        if max_items is not None:
            removed += [
                row[0]
                for row in db.execute(
                    "DELETE FROM knowledge WHERE id NOT IN "
                    "(SELECT id FROM knowledge ORDER BY relevance DESC, id DESC LIMIT ?) RETURNING id",
                    (max_items,),
                ).fetchall()
            ]
        return removed, count_sync(db)

    result: tuple[list[int], int] = in_transaction(db, work)
    return result

"""An in-memory vector index over every knowledge item's embedding (numpy only, no model).

Hybrid search (daemon/brain/knowledge.py) scores a bounded set of candidates
exactly. Full text alone cannot propose an item that shares no word with the
query, so the semantic candidates come from here: the ``k`` items whose
stored embedding is nearest the query's, looked for among **every** embedded
item (not a sample, not a recency window). A paraphrase is then found wherever it sits in
the base, however many newer or more relevant items there are.

**Memory.** Each vector is kept scalar-quantised to int8 with one float32
scale of its own (symmetric: ``scale = max|x| / 127``, ``code = round(x /
scale)``), plus its signs as bits and two numbers for them (below), so an
item costs ``dim + dim/8 + 4 + 4 + 4 + 8`` bytes (codes, signs, scale,
magnitude, bit count, id): at 100,000 x 384 that is 38.4 MB of codes and
45.2 MB in all, against 154 MB for float32. Arrays grow by half again when
full, so up to a third more is reserved.

**Scores.** ``approx(i) = scale(i) · (code(i) · q)`` for the float32 unit
query ``q``. The quantisation error per component is at most ``scale / 2``,
so the approximate cosine is within ``|q|₁ · scale / 2`` of the exact one
(for a unit 384-d vector, a few thousandths): enough to choose candidates.
The index only proposes; the search re-scores its union with the full-text
candidates from the stored float32 embeddings, so the order of the hits is
the exact one.

**Scanning, in two stages.** Converting 38 MB of int8 codes to float32 for
every query costs 8 to 14 ms at 100,000 items on one core of the machines
we measure on, so that exhaustive scan runs only while the index holds no
more than the shortlist. Past that, each item also keeps its vector's signs
as ``dim`` bits (48 bytes at 384-d, 4.8 MB at 100,000 items), and every
item's cosine is first *estimated* from them (:meth:`VectorIndex.sign_estimates`:
the float query, quantised to 16 levels, against the item's ±1 signs scaled
by its mean magnitude, computed with popcounts). Keeping the query's
magnitudes is what makes this work: symmetric sign-against-sign (Hamming)
kept only 77% of the exact top 10 in a 500-item shortlist of 5,000 clustered
vectors where this keeps 94%. Only the :func:`shortlist_size` best estimates
(2% of the base, at least 20 per item asked for) are scored with the int8
codes, and the best ``k`` of them returned: about 3.5 ms in all at 100,000
items. What the shortlist can miss is an item whose signs misrepresent it;
on 29,700 real all-MiniLM-L6-v2 sentence embeddings (and again with random
vectors added up to 100,000), every exact top 10 of 300 held-out sentences
was inside the top 100, and ``tests/daemon/brain/test_knowledge_index.py``
holds the index to that on clustered vectors.

**Threads.** :meth:`VectorIndex.top` is meant to run off the event loop
(``asyncio.to_thread``) while adds and prunes change the index on it: a lock
makes each call whole.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["BLOCK", "SHORTLIST_PER_ITEM", "VectorIndex", "load_sync", "quantise", "shortlist_size", "signs"]

#: Rows converted to float32 per step of a scan (192 KiB of float32 at 384-d: stays in cache).
BLOCK = 512
#: Items scored with the int8 codes per item asked for, at least (the shortlist).
SHORTLIST_PER_ITEM = 20
#: ... and at least this share of the base.
SHORTLIST_SHARE = 0.02
#: Rows read from the brain per fetch while building.
_FETCH = 4_096

Int8Array = np.ndarray[Any, np.dtype[np.int8]]
F32Array = np.ndarray[Any, np.dtype[np.float32]]
U64Array = np.ndarray[Any, np.dtype[np.uint64]]


def shortlist_size(items: int, k: int) -> int:
    """How many items the sign stage passes to the int8 stage for the best ``k`` of ``items``."""
    return max(SHORTLIST_PER_ITEM * k, int(SHORTLIST_SHARE * items))


def quantise(vectors: F32Array) -> tuple[Int8Array, F32Array]:
    """Rows of float32 vectors as (int8 codes, float32 scales), one symmetric scale per row."""
    peak = np.abs(vectors).max(axis=1)
    scales = (np.where(peak > 0, peak, 1.0) / 127.0).astype(np.float32)
    codes = np.rint(vectors / scales[:, None]).clip(-127, 127).astype(np.int8)
    return codes, scales


def signs(vectors: F32Array) -> U64Array:
    """Rows of vectors as their signs, one bit per component (1 if > 0), in 64-bit words."""
    return _pack(vectors > 0)


def _pack(bits: np.ndarray[Any, np.dtype[np.bool_]]) -> U64Array:
    packed = np.packbits(bits, axis=-1)
    pad = (-packed.shape[-1]) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((*packed.shape[:-1], pad), np.uint8)], axis=-1)
    words: U64Array = np.ascontiguousarray(packed).view(np.uint64)
    return words


class VectorIndex:
    """Item ids with their int8 vectors and signs; the nearest ``k`` to a query by dot product.

    Rows are dense (``0 .. len-1``): removing an item moves the last row into
    its place, so a scan never skips holes. Per row: the id, the int8 codes
    and their scale, and for the sign stage the sign bits, the number of
    them set, and its magnitude ``|x|₁ / dim`` (the length that, times the ±1 sign vector,
    comes closest to ``x``). The sign words are stored word by word
    (``(words, capacity)``), so that stage streams one contiguous column of
    64-bit words at a time.
    """

    def __init__(self, dim: int, capacity: int = 1_024) -> None:
        if not 0 < dim <= 4_369:  # the sign stage's dot products are uint16: 15 · dim < 2**16
            raise ValueError(f"dim must be 1 to 4369, not {dim}")
        self.dim = dim
        self._words = (dim + 63) // 64
        self._row: dict[int, int] = {}
        self._lock = threading.Lock()
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._codes: Int8Array = np.zeros((capacity, self.dim), dtype=np.int8)
        self._scales: F32Array = np.zeros(capacity, dtype=np.float32)
        self._magnitudes: F32Array = np.zeros(capacity, dtype=np.float32)
        self._ones: F32Array = np.zeros(capacity, dtype=np.float32)
        self._signs: U64Array = np.zeros((self._words, capacity), dtype=np.uint64)

    def _arrays(self) -> tuple[np.ndarray[Any, Any], ...]:
        """Every per-row array, rows along the first axis (the sign words transposed)."""
        return self._ids, self._codes, self._scales, self._magnitudes, self._ones, self._signs.T

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (reserved capacity included; the id map not)."""
        return sum(array.nbytes for array in self._arrays())

    def _reserve(self, size: int) -> None:
        capacity = len(self._ids)
        if size <= capacity:
            return
        n = len(self._row)
        old = self._arrays()
        self._allocate(max(size, capacity + capacity // 2))
        for new, was in zip(self._arrays(), old, strict=True):
            new[:n] = was[:n]

    def upsert(self, items: Iterable[tuple[int, bytes]]) -> None:
        """Add or replace items' vectors, given as stored (little-endian float32 BLOBs of ``dim``)."""
        pairs = list(items)
        if not pairs:
            return
        vectors = (
            np.frombuffer(b"".join(blob for _, blob in pairs), dtype="<f4")
            .reshape(len(pairs), self.dim)
            .astype(np.float32)
        )
        codes, scales = quantise(vectors)
        magnitudes = np.abs(vectors).sum(axis=1) / self.dim
        ones = (vectors > 0).sum(axis=1)
        bits = signs(vectors)
        with self._lock:
            self._reserve(len(self._row) + len(pairs))
            for i, (item_id, _) in enumerate(pairs):
                row = self._row.get(item_id)
                if row is None:
                    row = self._row[item_id] = len(self._row)
                    self._ids[row] = item_id
                self._codes[row], self._scales[row] = codes[i], scales[i]
                self._magnitudes[row], self._ones[row] = magnitudes[i], ones[i]
                self._signs[:, row] = bits[i]

    def remove(self, ids: Iterable[int]) -> None:
        """Forget items (unknown ids are ignored)."""
        with self._lock:
            for item_id in ids:
                row = self._row.pop(item_id, None)
                if row is None:
                    continue
                last = len(self._row)  # the former last row, now past the end
                if row != last:
                    for array in self._arrays():
                        array[row] = array[last]
                    self._row[int(self._ids[row])] = row

    def scores(self, query: F32Array) -> tuple[np.ndarray[Any, np.dtype[np.int64]], F32Array]:
        """(ids, approximate cosines) of every item, in row order: the exhaustive int8 scan."""
        with self._lock:
            return self._scan(np.asarray(query, dtype=np.float32))

    def _scan(self, query: F32Array) -> tuple[np.ndarray[Any, np.dtype[np.int64]], F32Array]:
        n = len(self._row)
        out: F32Array = np.empty(n, dtype=np.float32)
        block: F32Array = np.empty((BLOCK, self.dim), dtype=np.float32)
        for start in range(0, n, BLOCK):
            end = min(n, start + BLOCK)
            rows = block[: end - start]
            rows[...] = self._codes[start:end]
            np.dot(rows, query, out=out[start:end])
        out *= self._scales[:n]
        return self._ids[:n].copy(), out

    def sign_estimates(self, query: F32Array) -> F32Array:
        """Every row's estimate of its cosine with ``query`` from its signs alone (row order).

        ``estimate(i) = magnitude(i) · (q̂ · s(i))`` with ``s(i)`` the ±1 signs and
        ``q̂`` the query quantised to 16 levels, ``q̂ = lo + Δ·u`` (``u`` in 0..15).
        With ``b`` the sign bits, ``q̂ · s = 2·lo·|b| - dim·lo + 2Δ·(u · b) - Δ·Σu``,
        and ``u · b = Σ_p 2^p · popcount(plane_p & b)`` over the four bit planes
        of ``u``: sixteen popcounts of AND-ed words per row at 384-d.
        """
        with self._lock:
            return self._sign_estimates(np.asarray(query, dtype=np.float32))

    def _sign_estimates(self, query: F32Array) -> F32Array:
        n = len(self._row)
        lo, hi = float(query.min()), float(query.max())
        step = (hi - lo) / 15 or 1.0
        levels = np.rint((query - lo) / step).astype(np.uint8)
        planes = _pack(((levels[None, :] >> np.arange(4, dtype=np.uint8)[:, None]) & 1).astype(bool))
        # One contiguous word column at a time, AND-ed with each plane's word (ufuncs with a
        # scalar: a broadcast over the whole block is several times slower), each plane
        # counted into its own uint16 (at most 64 per word) and weighted once at the end.
        per_plane = np.zeros((4, n), dtype=np.uint16)
        masked = np.empty(n, dtype=np.uint64)
        counts = np.empty(n, dtype=np.uint16)
        for w in range(self._words):
            column = self._signs[w, :n]
            for p in range(4):
                np.bitwise_and(column, planes[p, w], out=masked)
                np.bitwise_count(masked, out=counts)
                np.add(per_plane[p], counts, out=per_plane[p])
        # u · b = Σ 2^p · count_p (at most 15 · dim: fits uint16 for dim < 4,369), then the
        # affine map above in float32, times each row's magnitude.
        dot = per_plane[0]
        for p in range(1, 4):
            dot += per_plane[p] << p
        out: F32Array = np.multiply(dot, np.float32(2 * step), dtype=np.float32)
        out += self._ones[:n] * np.float32(2 * lo)
        out += np.float32(-self.dim * lo - step * float(levels.sum()))
        out *= self._magnitudes[:n]
        return out

    def top(self, query: list[float] | F32Array, k: int) -> list[tuple[int, float]]:
        """The ``k`` items nearest ``query`` (a unit vector) as (id, approximate cosine), nearest first."""
        vector = np.asarray(query, dtype=np.float32)
        with self._lock:
            n = len(self._row)
            if k <= 0 or not n:
                return []
            size = shortlist_size(n, k)
            if n <= size:
                ids, approx = self._scan(vector)
            else:
                rows = np.argpartition(-self._sign_estimates(vector), size - 1)[:size]
                ids = self._ids[rows]
                approx = self._scales[rows] * (self._codes[rows].astype(np.float32) @ vector)
        best = np.argpartition(-approx, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
        best = best[np.lexsort((-ids[best], -approx[best]))]  # nearest first, then the newer id
        return [(int(ids[i]), float(approx[i])) for i in best]


def load_sync(db: Any, model: str, dim: int) -> VectorIndex:
    """Build the index from every item embedded by ``model`` (runs on a brain thread).

    Read in fetches of a few thousand rows and quantised as they come, so
    the build never holds more than one fetch of float32 vectors.
    """
    (count,) = db.execute(
        "SELECT count(*) FROM knowledge WHERE embed_model = ? AND embedding IS NOT NULL", (model,)
    ).fetchone()
    index = VectorIndex(dim, capacity=max(1_024, int(count)))
    cursor = db.execute(
        "SELECT id, embedding FROM knowledge WHERE embed_model = ? AND embedding IS NOT NULL ORDER BY id",
        (model,),
    )
    while rows := cursor.fetchmany(_FETCH):
        index.upsert((row[0], row[1]) for row in rows if len(row[1]) == 4 * dim)
    return index

"""An in-memory vector index over every knowledge item's embedding (numpy only, no model).

Hybrid search (daemon/brain/knowledge.py) scores a bounded set of candidates
exactly. Full text alone cannot propose an item that shares no word with the
query, so the semantic candidates come from here: the ``k`` items whose
stored embedding is nearest the query's, found by a brute-force dot product
over **every** embedded item. A paraphrase is then found wherever it sits in
the base, however many newer or more relevant items there are.

**Memory.** Each vector is kept scalar-quantised to int8 with one float32
scale of its own (symmetric: ``scale = max|x| / 127``, ``code = round(x /
scale)``), so an item costs ``dim + 4 + 8`` bytes (code, scale, id): at
100,000 x 384 that is 38.4 MB of codes and 40 MB in all, against 154 MB for
float32. Arrays grow by half again when full, so up to a third more is
reserved.

**Scores.** ``approx(i) = scale(i) · (code(i) · q)`` for the float32 unit
query ``q``. The quantisation error per component is at most ``scale / 2``,
so the approximate cosine is within ``|q|₁ · scale / 2`` of the exact one
(for a unit 384-d vector, a few thousandths): enough to choose candidates.
The index only proposes; the search re-scores its union with the full-text
candidates from the stored float32 embeddings, so the order of the hits is
the exact one.

**Scanning.** numpy has no BLAS for int8, so the codes are converted in
blocks of :data:`BLOCK` rows to a float32 buffer that stays in cache, and
each block is a float32 matrix-vector product: the scan streams the 38 MB
once and allocates nothing per block.

**Threads.** :meth:`VectorIndex.top` is meant to run off the event loop
(``asyncio.to_thread``) while adds and prunes change the index on it: a lock
makes each call whole.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["BLOCK", "VectorIndex", "load_sync", "quantise"]

#: Rows converted to float32 per step of a scan (192 KiB of float32 at 384-d: stays in cache).
BLOCK = 512
#: Rows read from the brain per fetch while building.
_FETCH = 4_096

Int8Array = np.ndarray[Any, np.dtype[np.int8]]
F32Array = np.ndarray[Any, np.dtype[np.float32]]


def quantise(vectors: F32Array) -> tuple[Int8Array, F32Array]:
    """Rows of float32 vectors as (int8 codes, float32 scales), one symmetric scale per row."""
    peak = np.abs(vectors).max(axis=1)
    scales = (np.where(peak > 0, peak, 1.0) / 127.0).astype(np.float32)
    codes = np.rint(vectors / scales[:, None]).clip(-127, 127).astype(np.int8)
    return codes, scales


class VectorIndex:
    """Item ids with their int8 vectors; the nearest ``k`` to a query by dot product.

    Rows are dense (``0 .. len-1``): removing an item moves the last row into
    its place, so a scan never skips holes.
    """

    def __init__(self, dim: int, capacity: int = 1_024) -> None:
        self.dim = dim
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._codes: Int8Array = np.zeros((capacity, dim), dtype=np.int8)
        self._scales: F32Array = np.zeros(capacity, dtype=np.float32)
        self._row: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (reserved capacity included; the id map not)."""
        return self._ids.nbytes + self._codes.nbytes + self._scales.nbytes

    def _reserve(self, size: int) -> None:
        capacity = len(self._ids)
        if size <= capacity:
            return
        capacity = max(size, capacity + capacity // 2)
        n = len(self._row)
        ids = np.zeros(capacity, dtype=np.int64)
        codes: Int8Array = np.zeros((capacity, self.dim), dtype=np.int8)
        scales: F32Array = np.zeros(capacity, dtype=np.float32)
        ids[:n], codes[:n], scales[:n] = self._ids[:n], self._codes[:n], self._scales[:n]
        self._ids, self._codes, self._scales = ids, codes, scales

    def upsert(self, items: Iterable[tuple[int, bytes]]) -> None:
        """Add or replace items' vectors, given as stored (little-endian float32 BLOBs of ``dim``)."""
        pairs = list(items)
        if not pairs:
            return
        vectors = np.frombuffer(b"".join(blob for _, blob in pairs), dtype="<f4").reshape(
            len(pairs), self.dim
        )
        codes, scales = quantise(vectors.astype(np.float32))
        with self._lock:
            self._reserve(len(self._row) + len(pairs))
            for (item_id, _), code, scale in zip(pairs, codes, scales, strict=True):
                row = self._row.get(item_id)
                if row is None:
                    row = self._row[item_id] = len(self._row)
                    self._ids[row] = item_id
                self._codes[row] = code
                self._scales[row] = scale

    def remove(self, ids: Iterable[int]) -> None:
        """Forget items (unknown ids are ignored)."""
        with self._lock:
            for item_id in ids:
                row = self._row.pop(item_id, None)
                if row is None:
                    continue
                last = len(self._row)  # the former last row, now past the end
                if row != last:
                    moved = int(self._ids[last])
                    self._ids[row], self._codes[row], self._scales[row] = (
                        moved,
                        self._codes[last],
                        self._scales[last],
                    )
                    self._row[moved] = row

    def scores(self, query: F32Array) -> tuple[np.ndarray[Any, np.dtype[np.int64]], F32Array]:
        """(ids, approximate cosines) of every item, in row order."""
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

    def top(self, query: list[float] | F32Array, k: int) -> list[tuple[int, float]]:
        """The ``k`` items nearest ``query`` (a unit vector) as (id, approximate cosine), nearest first."""
        ids, approx = self.scores(np.asarray(query, dtype=np.float32))
        if k <= 0 or not len(ids):
            return []
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

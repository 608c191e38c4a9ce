"""Two-stage deduplication: near-copies by MinHash LSH, then same-meaning personas by embeddings.

Stage 1 (``minhash``) compares the *texts*: each persona's normalised text
(NFKC, lower case, every run of non-letters and non-digits one space) is cut
into character 5-grams, a 128-permutation MinHash of that set is looked up in
an LSH index of the personas kept so far (built 0.2 below the threshold, so
that it misses almost no pair at the threshold), and a candidate whose
estimated Jaccard reaches the threshold (0.9) makes this one a duplicate. Character
5-grams rather than word 3-grams because personas are short: one changed
word in a 30-word persona moves 3 of about 28 word 3-grams (Jaccard about
0.8, missed at 0.9) but only about 10 of 200 character 5-grams (about 0.9);
measured on the test set, docs/hub_quality.md. Normalising first makes case
and punctuation changes exact copies.

Stage 2 (``embedding``) compares *meaning* among the survivors: a persona
whose cosine similarity to an earlier kept one reaches 0.9 is dropped. It is
computed block by block with matrix products (each block against everything
kept before it, then within the block in order), so 10,000 personas take
seconds rather than 50 million Python comparisons.

Both stages keep the first occurrence in input order and name, for each
removed persona, the kept one it repeats (the most similar). Both are
deterministic: the permutations come from a fixed seed, and ties go to the
earliest.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from datasketch import MinHash, MinHashLSH  # type: ignore[import-untyped]

from protocol.commands.hub_quality import Removed

__all__ = [
    "SHINGLES",
    "SHINGLE_SIZE",
    "EmbeddingDedup",
    "MinhashDedup",
    "dedup_embeddings",
    "dedup_minhash",
    "normalise",
    "shingle_hashes",
    "shingles",
]

#: Characters per shingle (see the module's docstring for why characters, and why 5).
SHINGLE_SIZE: Final = 5
#: How the report describes the shingles.
SHINGLES: Final = f"character {SHINGLE_SIZE}-grams of the normalised text"
#: Rows of the embedding matrix compared at once: 512 x 384 floats is 0.8 MB, the
#: block against 10,000 kept rows a 20 MB product: large enough for BLAS to run at speed.
_BLOCK: Final = 512

#: The LSH index looks for candidates this far below the threshold: built at 0.9 itself,
#: datasketch's balanced banding (5 bands of 25 rows at 128 permutations) makes a pair at
#: Jaccard 0.9 a candidate only 31% of the time (0.92: 48%); built at 0.7 (14 bands of 9)
#: 99.9%, while a pair at 0.5 is a candidate 2.7% of the time. The estimate then decides.
_CANDIDATE_MARGIN: Final = 0.2
_NON_WORD = re.compile(r"[\W_]+")
_POLY: Final = np.uint64(1_000_003)
_MIX1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX2: Final = np.uint64(0x94D049BB133111EB)
_LOW32: Final = np.uint64(0xFFFFFFFF)


def normalise(text: str) -> str:
    """The text as MinHash sees it: NFKC, lower case, runs of non-alphanumerics one space."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD.sub(" ", folded).strip()


def shingles(text: str, size: int = SHINGLE_SIZE) -> set[bytes]:
    """The set of character ``size``-grams of the normalised text (the whole text if shorter)."""
    norm = normalise(text)
    if len(norm) <= size:
        return {norm.encode()} if norm else set()
    return {norm[i : i + size].encode() for i in range(len(norm) - size + 1)}


def shingle_hashes(text: str, size: int = SHINGLE_SIZE) -> npt.NDArray[np.uint64]:
    """The distinct 32-bit hashes of the text's shingles, computed with numpy in one pass.

    datasketch's default hashes each shingle with SHA-1 in Python, which was
    75% of the time at 10,000 personas; a polynomial hash of the code points
    finished with splitmix64's mixer is as well spread, deterministic across
    processes (unlike ``hash(str)``) and vectorised.
    """
    norm = normalise(text)
    codes = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(codes) == 0:
        return np.zeros(0, dtype=np.uint64)
    width = min(size, len(codes))
    count = len(codes) - width + 1
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        h = np.zeros(count, dtype=np.uint64)
        for k in range(width):
            h = h * _POLY + codes[k : k + count]
        h ^= h >> np.uint64(30)
        h *= _MIX1
        h ^= h >> np.uint64(27)
        h *= _MIX2
        h ^= h >> np.uint64(31)
    return np.unique(h & _LOW32)


@dataclass(frozen=True)
class MinhashDedup:
    """Indexes (into the input) of the texts kept, and a record per removed one."""

    kept: list[int]
    removed: list[tuple[int, Removed]]


def dedup_minhash(
    ids: Sequence[str], texts: Sequence[str], *, threshold: float = 0.9, num_perm: int = 128, seed: int = 0
) -> MinhashDedup:
    """Stage 1: drop every text whose estimated Jaccard to an earlier kept one reaches ``threshold``."""
    # A fixed seed fixes the permutations: the same input always gives the same result.
    # The shingles arrive already hashed (shingle_hashes), so datasketch's hashfunc is int.
    hashes = MinHash.bulk([shingle_hashes(t) for t in texts], num_perm=num_perm, seed=seed + 1, hashfunc=int)
    lsh = MinHashLSH(threshold=max(0.05, threshold - _CANDIDATE_MARGIN), num_perm=num_perm)
    kept: list[int] = []
    removed: list[tuple[int, Removed]] = []
    # The signatures as one matrix: a query's candidates are then estimated in one
    # comparison (MinHash.jaccard one by one took 40% of the time on templated personas).
    signatures = np.stack([mh.hashvalues for mh in hashes]) if hashes else np.zeros((0, num_perm))
    for i, mh in enumerate(hashes):
        # LSH returns candidates, some below the threshold: the estimate decides.
        candidates = np.array(sorted(int(key) for key in lsh.query(mh)), dtype=np.intp)
        if len(candidates):
            estimates = (signatures[candidates] == signatures[i]).mean(axis=1)
            top = int(estimates.argmax())  # the first of the best: ties go to the earliest
            estimate, j = float(estimates[top]), int(candidates[top])
        if not len(candidates) or estimate < threshold:
            lsh.insert(str(i), mh)
            kept.append(i)
            continue
        a, b = shingles(texts[i]), shingles(texts[j])
        exact = len(a & b) / len(a | b) if a or b else 1.0
        removed.append(
            (
                i,
                Removed(
                    id=ids[i],
                    stage="minhash",
                    duplicate_of=ids[j],
                    similarity=round(estimate, 4),
                    exact_jaccard=round(exact, 4),
                ),
            )
        )
    return MinhashDedup(kept=kept, removed=removed)


@dataclass(frozen=True)
class EmbeddingDedup:
    """Positions (into the given rows) kept, and (position, duplicate's position, cosine) per removed one."""

    kept: list[int]
    removed: list[tuple[int, int, float]]


def unit_rows(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Rows scaled to unit length (a zero row stays zero), as float32."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        matrix = matrix.reshape(len(matrix), -1)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    unit: npt.NDArray[np.float32] = matrix / norms
    return unit


def dedup_embeddings(vectors: npt.ArrayLike, *, threshold: float = 0.9) -> EmbeddingDedup:
    """Stage 2: drop every row whose cosine to an earlier kept row reaches ``threshold``."""
    matrix = unit_rows(vectors)
    n = len(matrix)
    kept_rows = np.empty_like(matrix)  # the kept rows, packed at the front
    kept_at: list[int] = []
    removed: list[tuple[int, int, float]] = []
    for start in range(0, n, _BLOCK):
        block = matrix[start : start + _BLOCK]
        # Against everything kept from earlier blocks: one product for the whole block.
        before = len(kept_at)
        if before:
            prior = block @ kept_rows[:before].T
            prior_best = prior.argmax(axis=1)
            prior_sim = prior[np.arange(len(block)), prior_best]
        else:
            prior_best = np.zeros(len(block), dtype=np.intp)
            prior_sim = np.full(len(block), -np.inf, dtype=np.float32)
        within = block @ block.T
        kept_here: list[int] = []  # offsets in this block of the rows kept so far
        for off in range(len(block)):
            best_sim, best_pos = float(prior_sim[off]), (kept_at[prior_best[off]] if before else -1)
            if kept_here:
                sims = within[off, kept_here]
                k = int(sims.argmax())
                # Ties go to the earlier row: earlier blocks come before this one.
                if float(sims[k]) > best_sim:
                    best_sim, best_pos = float(sims[k]), start + kept_here[k]
            if best_pos >= 0 and best_sim >= threshold:
                removed.append((start + off, best_pos, best_sim))
            else:
                kept_here.append(off)
        for off in kept_here:
            kept_rows[len(kept_at)] = block[off]
            kept_at.append(start + off)
    return EmbeddingDedup(kept=kept_at, removed=removed)

"""Diversity: how spread out the personas are, and how much of the target population they cover.

* **spread**: the mean pairwise cosine distance of the (unit) embeddings,
  ``1 - mean cosine over all pairs i != j``. For unit vectors the sum of all
  pairwise cosines is ``|sum of the vectors|^2 - n``, so the mean over every
  pair is exact in O(n d): no sample needed, even at 100,000 personas.
* **clusters**: k-means (k-means++ seeding, Lloyd's iterations, seeded) on
  the embeddings with ``k = clamp(round(sqrt(n / 2)), 2, 50)`` (at most n),
  and the entropy of the cluster sizes divided by ``log k`` (1: evenly
  spread over the clusters, 0: all in one).
* **coverage**: per attribute with a target, the share of target values seen
  at least once (occupation, region, gender, compared case-insensitively),
  and for age the share of decades of ``age_min..age_max`` with a persona.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from protocol.commands.hub_quality import Coverage, DiversityReport
from protocol.hub_persona import AttributeTargets, HubPersona

from .dedup import unit_rows

__all__ = ["MAX_K", "choose_k", "coverage", "diversity", "kmeans", "mean_pairwise_distance"]

#: The most clusters k-means looks for.
MAX_K: Final = 50
_ITERATIONS: Final = 50
_MISSING_LISTED: Final = 20


def choose_k(n: int) -> int:
    """k for n personas: about sqrt(n/2), between 2 and MAX_K, never above n."""
    if n <= 1:
        return n
    return min(n, max(2, min(MAX_K, round(math.sqrt(n / 2)))))


def mean_pairwise_distance(vectors: npt.ArrayLike) -> float:
    """1 - the mean cosine over all pairs (exact, O(n d)); 0 for fewer than two vectors."""
    unit = unit_rows(vectors).astype(np.float64)
    n = len(unit)
    if n < 2:
        return 0.0
    total = unit.sum(axis=0)
    mean_cos = (float(total @ total) - float((unit * unit).sum())) / (n * (n - 1))
    return min(1.0, max(0.0, 1.0 - mean_cos))


def kmeans(
    vectors: npt.ArrayLike, k: int, *, seed: int = 0
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Labels and centres of k-means on the rows (k-means++ seeding, deterministic by seed)."""
    data = np.asarray(vectors, dtype=np.float32)
    n = len(data)
    if n == 0 or k <= 0:
        return np.zeros(n, dtype=np.intp), np.zeros((0, data.shape[1] if data.ndim == 2 else 0), np.float32)
    rng = np.random.default_rng(seed)
    sq = (data * data).sum(axis=1)
    centres = np.empty((k, data.shape[1]), dtype=np.float32)
    centres[0] = data[rng.integers(n)]
    closest = np.maximum(sq - 2 * data @ centres[0] + centres[0] @ centres[0], 0)
    for c in range(1, k):
        total = float(closest.sum())
        pick = int(rng.choice(n, p=closest / total)) if total > 0 else int(rng.integers(n))
        centres[c] = data[pick]
        closest = np.minimum(closest, np.maximum(sq - 2 * data @ centres[c] + centres[c] @ centres[c], 0))
    labels = np.zeros(n, dtype=np.intp)
    for step in range(_ITERATIONS):
        dist = sq[:, None] - 2 * data @ centres.T + (centres * centres).sum(axis=1)[None, :]
        new = dist.argmin(axis=1)
        if step and np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = data[labels == c]
            if len(members):  # an emptied cluster keeps its centre
                centres[c] = members.mean(axis=0)
    return labels, centres


def _entropy(sizes: Sequence[int]) -> float:
    total = sum(sizes)
    k = len(sizes)
    if total == 0 or k < 2:
        return 0.0
    h = -sum((s / total) * math.log(s / total) for s in sizes if s)
    return min(1.0, max(0.0, h / math.log(k)))


def _coverage(targets: Iterable[str], seen: Iterable[str]) -> Coverage | None:
    wanted = list(dict.fromkeys(t.strip().lower() for t in targets))
    if not wanted:
        return None
    have = {s.strip().lower() for s in seen}
    missing = [w for w in wanted if w not in have]
    present = len(wanted) - len(missing)
    return Coverage(
        share=present / len(wanted), present=present, total=len(wanted), missing=missing[:_MISSING_LISTED]
    )


def coverage(personas: Sequence[HubPersona], targets: AttributeTargets) -> dict[str, Coverage]:
    """Per attribute with a target: the share of its values present among the personas."""
    from .culture import normalise_gender  # one spelling of gender for both reports

    attrs = [p.attributes for p in personas]
    out: dict[str, Coverage] = {}
    for name, wanted, seen in (
        ("occupation", [w.value for w in targets.occupation], [a.occupation for a in attrs if a.occupation]),
        ("region", [w.value for w in targets.region], [a.region for a in attrs if a.region]),
        (
            "gender",
            [normalise_gender(w.value) for w in targets.gender],
            [normalise_gender(a.gender) for a in attrs if a.gender],
        ),
    ):
        got = _coverage(wanted, seen)
        if got is not None:
            out[name] = got
    decades = [str(d) for d in range(targets.age_min // 10 * 10, targets.age_max + 1, 10)]
    ages = [str(a.age // 10 * 10) for a in attrs if a.age is not None]
    got = _coverage(decades, ages)
    if got is not None:
        out["age_decade"] = got
    return out


def diversity(
    personas: Sequence[HubPersona],
    vectors: npt.ArrayLike,
    targets: AttributeTargets | None,
    *,
    seed: int = 0,
) -> tuple[DiversityReport, npt.NDArray[np.intp]]:
    """The diversity report and each persona's cluster (for the embedding map)."""
    unit = unit_rows(vectors) if len(personas) else np.zeros((0, 0), dtype=np.float32)
    k = choose_k(len(personas))
    labels, _ = kmeans(unit, k, seed=seed) if k else (np.zeros(0, dtype=np.intp), None)
    sizes = sorted(np.bincount(labels, minlength=k).tolist(), reverse=True) if k else []
    report = DiversityReport(
        n=len(personas),
        spread=round(mean_pairwise_distance(unit), 4) if len(personas) else 0.0,
        clusters=k,
        cluster_sizes=sizes,
        cluster_entropy=round(_entropy(sizes), 4),
        coverage=coverage(personas, targets) if targets is not None else {},
    )
    return report, labels

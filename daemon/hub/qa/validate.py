"""``validate``: every quality check over a set of personas, in order, timed.

The stages: ``minhash`` (near-copies of the text), ``embed`` (the survivors'
embeddings, in chunks of MAX_EMBED_BATCH), ``embedding`` (same meaning),
then on the kept personas ``coherence`` (rules, then the model judge on a
sample when one is given), ``authenticity``, ``diversity``, ``cultural``.
``progress(stage, done, total)`` is called as each advances.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from protocol.commands.hub_quality import (
    AuthenticityExample,
    AuthenticityReport,
    CoherenceFailure,
    CoherenceReport,
    DedupReport,
    QualityReport,
    QualityThresholds,
    Removed,
)
from protocol.commands.knowledge import MAX_EMBED_BATCH
from protocol.hub_persona import AttributeTargets, HubPersona

from .authenticity import score as authenticity_score
from .coherence import check_rules
from .culture import cultural
from .dedup import SHINGLES, dedup_embeddings, dedup_minhash, unit_rows
from .diversity import diversity
from .judge import Judge, JudgeFailed, sample_for_judge

__all__ = ["Embed", "Progress", "Validation", "validate"]

#: ``embed(texts)``: unit vectors for at most MAX_EMBED_BATCH texts (inference.embed).
Embed = Callable[[list[str]], Awaitable[list[list[float]]]]
#: ``progress(stage, done, total)``.
Progress = Callable[[str, int, int], None]
#: Judge calls in flight at once: enough to fill the engine's batch of 8.
_JUDGE_CONCURRENCY: Final = 8
_HISTOGRAM_BINS: Final = 10


@dataclass(frozen=True)
class Validation:
    """The kept personas (input order), their unit embeddings and clusters (same order), the report."""

    kept: list[HubPersona]
    embeddings: npt.NDArray[np.float32]
    clusters: npt.NDArray[np.intp]
    report: QualityReport
    targets: AttributeTargets | None = field(default=None)


def _noop(stage: str, done: int, total: int) -> None:
    return None


async def _embed_all(texts: list[str], embed: Embed, progress: Progress) -> npt.NDArray[np.float32]:
    rows: list[list[float]] = []
    progress("embed", 0, len(texts))
    for start in range(0, len(texts), MAX_EMBED_BATCH):
        rows.extend(await embed(texts[start : start + MAX_EMBED_BATCH]))
        progress("embed", len(rows), len(texts))
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return unit_rows(rows)


async def _judge_all(
    personas: Sequence[HubPersona], judge: Judge, indices: list[int], progress: Progress
) -> tuple[list[CoherenceFailure], int, int]:
    """Failures the judge found, verdicts given, and calls without a usable verdict."""
    gate = asyncio.Semaphore(_JUDGE_CONCURRENCY)
    done = 0

    async def one(i: int) -> CoherenceFailure | JudgeFailed | None:
        nonlocal done
        async with gate:
            try:
                verdict = await judge(personas[i])
            except JudgeFailed as exc:
                return exc
            finally:
                done += 1
                progress("judge", done, len(indices))
        if verdict.consistent:
            return None
        reason = verdict.problem or "the model judged it inconsistent and gave no reason"
        return CoherenceFailure(id=personas[i].id, check="judge", reason=reason)

    progress("judge", 0, len(indices))
    results = await asyncio.gather(*(one(i) for i in indices))
    failures = [r for r in results if isinstance(r, CoherenceFailure)]
    errors = sum(isinstance(r, JudgeFailed) for r in results)
    return failures, len(indices) - errors, errors


async def _coherence(
    personas: Sequence[HubPersona], judge: Judge | None, t: QualityThresholds, progress: Progress
) -> CoherenceReport:
    failures: list[CoherenceFailure] = []
    for n, persona in enumerate(personas, 1):
        failures.extend(check_rules(persona))
        if n % 500 == 0 or n == len(personas):
            progress("coherence", n, len(personas))
    judged = errors = 0
    if judge is not None and t.judge_sample > 0 and personas:
        indices = sample_for_judge(len(personas), t.judge_sample, seed=t.seed)
        found, judged, errors = await _judge_all(personas, judge, indices, progress)
        failures.extend(found)
    failing = {f.id for f in failures}
    by_check: dict[str, int] = {}
    for f in failures:
        by_check[f.check] = by_check.get(f.check, 0) + 1
    return CoherenceReport(
        checked=len(personas),
        score=round(1 - len(failing) / len(personas), 4) if personas else 1.0,
        failures_by_check=by_check,
        failures=failures,
        judged=judged,
        judge_errors=errors,
    )


def _authenticity(personas: Sequence[HubPersona], worst: int) -> AuthenticityReport:
    scored = [(authenticity_score(p.persona), p) for p in personas]
    histogram = [0] * _HISTOGRAM_BINS
    for a, _ in scored:
        histogram[min(_HISTOGRAM_BINS - 1, int(a.score * _HISTOGRAM_BINS))] += 1
    lowest = sorted(range(len(scored)), key=lambda i: (scored[i][0].score, i))[:worst]
    return AuthenticityReport(
        mean=round(sum(a.score for a, _ in scored) / len(scored), 4) if scored else 0.0,
        histogram=histogram,
        residue=sum(a.residue for a, _ in scored),
        worst=[
            AuthenticityExample(
                id=scored[i][1].id,
                score=scored[i][0].score,
                reasons=list(scored[i][0].reasons),
                text=scored[i][1].persona[:200],
            )
            for i in lowest
        ],
    )


async def validate(
    personas: Sequence[HubPersona],
    *,
    embed: Embed,
    targets: AttributeTargets | None = None,
    judge: Judge | None = None,
    judge_sample: int | None = None,
    thresholds: QualityThresholds | None = None,
    progress: Progress | None = None,
) -> Validation:
    """Deduplicate the personas and measure the kept ones; see the module's docstring for the stages.

    ``judge_sample`` personas (default ``thresholds.judge_sample``; a
    deterministic sample by ``thresholds.seed``) go to ``judge`` when one is given.
    """
    t = thresholds or QualityThresholds()
    if judge_sample is not None:
        t = t.model_copy(update={"judge_sample": judge_sample})
    report_progress = progress or _noop
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 4)
        clock = now

    ids = [p.id for p in personas]
    report_progress("minhash", 0, len(personas))
    # The CPU-bound stages run on a worker thread: in the hub service they would
    # otherwise hold its event loop (and every other caller) for seconds at 10,000.
    first = await asyncio.to_thread(
        dedup_minhash,
        ids,
        [p.persona for p in personas],
        threshold=t.minhash_threshold,
        num_perm=t.num_perm,
        seed=t.seed,
    )
    report_progress("minhash", len(personas), len(personas))
    lap("minhash")
    survivors = [personas[i] for i in first.kept]
    vectors = await _embed_all([p.persona for p in survivors], embed, report_progress)
    lap("embed")
    report_progress("embedding", 0, len(survivors))
    second = (
        await asyncio.to_thread(dedup_embeddings, vectors, threshold=t.embedding_threshold)
        if len(survivors)
        else None
    )
    report_progress("embedding", len(survivors), len(survivors))
    lap("embedding")
    removed: list[tuple[int, Removed]] = list(first.removed)
    kept_pos = second.kept if second is not None else []
    if second is not None:
        for pos, dup, sim in second.removed:
            removed.append(
                (
                    first.kept[pos],
                    Removed(
                        id=survivors[pos].id,
                        stage="embedding",
                        duplicate_of=survivors[dup].id,
                        similarity=round(sim, 4),
                    ),
                )
            )
    removed.sort(key=lambda r: r[0])
    kept = [survivors[pos] for pos in kept_pos]
    embeddings = vectors[kept_pos] if len(kept_pos) else np.zeros((0, vectors.shape[1]), dtype=np.float32)

    coherence = await _coherence(kept, judge, t, report_progress)
    lap("coherence")
    report_progress("authenticity", 0, len(kept))
    authenticity = await asyncio.to_thread(_authenticity, kept, t.worst)
    report_progress("authenticity", len(kept), len(kept))
    lap("authenticity")
    report_progress("diversity", 0, len(kept))
    spread, clusters = await asyncio.to_thread(diversity, kept, embeddings, targets, seed=t.seed)
    report_progress("diversity", len(kept), len(kept))
    lap("diversity")
    report_progress("cultural", 0, len(kept))
    culture = await asyncio.to_thread(
        cultural, kept, targets, alpha=t.alpha, margin=t.balance_margin, min_count=t.min_count
    )
    report_progress("cultural", len(kept), len(kept))
    lap("cultural")

    by_stage = {"minhash": len(first.removed), "embedding": len(second.removed) if second else 0}
    report = QualityReport(
        input=len(personas),
        kept=len(kept),
        duplicates_removed=DedupReport(
            shingles=SHINGLES, removed_by_stage=by_stage, removed=[r for _, r in removed]
        ),
        coherence=coherence,
        authenticity=authenticity,
        diversity=spread,
        cultural=culture,
        thresholds=t,
        timings=timings,
    )
    return Validation(kept=kept, embeddings=embeddings, clusters=clusters, report=report, targets=targets)

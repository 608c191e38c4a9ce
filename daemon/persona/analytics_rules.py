"""The rules that turn a window's figures into growth rate, tier, recommendations and opportunities.

Pure functions over :class:`daemon.brain.performance.Figures`: no I/O, so
each rule is tested on its own and docs/analytics.md can state them one to
one. Every recommendation and opportunity names the figure that triggered
it, its value and the threshold or target, and its message is built from the
data (the topics, the numbers), never a fixed sentence alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocol.commands.analytics import TIERS, GrowthOpportunity, PluginImpact, Recommendation, Tier

from ..brain.performance import Figures

__all__ = [
    "DECLINE",
    "LOW_AVERAGE",
    "LOW_COVERAGE",
    "LOW_PLUGIN_SUCCESS",
    "LOW_SUCCESS",
    "TIER_RULES",
    "WEAK_TOPIC_GAP",
    "TierRule",
    "growth_rate",
    "opportunities",
    "recommendations",
    "tier",
]


@dataclass(frozen=True)
class TierRule:
    name: Tier
    min_average: float
    min_success: float
    min_sessions: int


#: Highest first; the first whose three minimums all hold is earned.
TIER_RULES: Final = (
    TierRule("expert", 85.0, 0.90, 20),
    TierRule("advanced", 70.0, 0.75, 10),
    TierRule("proficient", 55.0, 0.50, 3),
)
#: A growth rate at or below this is a decline: one tier lower, and a recommendation.
DECLINE: Final = -0.10
LOW_SUCCESS: Final = 0.70
LOW_AVERAGE: Final = 60.0
LOW_COVERAGE: Final = 0.60
#: A top topic this many points below the average score (with 3+ records) is weak.
WEAK_TOPIC_GAP: Final = 15.0
LOW_PLUGIN_SUCCESS: Final = 0.80
#: A topic this good (with 3+ records) is a strength to build on.
STRONG_TOPIC: Final = 80.0


def growth_rate(f: Figures) -> float | None:
    """(late - early) / max(early, 1): the relative change of the mean score across the time span."""
    if f.early_score is None or f.late_score is None:
        return None
    return (f.late_score - f.early_score) / max(f.early_score, 1.0)


def earned_tier(f: Figures) -> Tier:
    """The tier the window's average, success rate and session count reach, before any decline."""
    if f.average_score is None or f.success_rate is None:
        return "novice"
    # Judged on the average as reported (2 decimals): the sum of per-day
    # sums differs in its last bits with where day boundaries fall, and a
    # persona shown an average of 85.0 must not miss an 85 threshold by 1e-14.
    average = round(f.average_score, 2)
    for rule in TIER_RULES:
        if (
            average >= rule.min_average
            and f.success_rate >= rule.min_success
            and f.total_sessions >= rule.min_sessions
        ):
            return rule.name
    return "novice"


def tier(f: Figures) -> Tier:
    """The earned tier, one lower when the growth rate is at or below :data:`DECLINE`."""
    earned = earned_tier(f)
    rate = growth_rate(f)
    if rate is not None and rate <= DECLINE:
        return TIERS[max(0, TIERS.index(earned) - 1)]
    return earned


def _pct(x: float) -> str:
    return f"{x * 100:.0f} %"


def recommendations(
    f: Figures, window_days: int, coverage: float | None, plugins: list[PluginImpact] | None
) -> list[Recommendation]:
    """What to act on, most pressing first; see docs/analytics.md for each trigger."""
    out: list[Recommendation] = []
    if f.records == 0:
        out.append(
            Recommendation(
                figure="total_records",
                value=0,
                threshold=1,
                message=f"No performance records in the last {window_days} days: record work with "
                "persona.performance.record to get analytics.",
            )
        )
        return out + _plugin_recommendations(plugins)
    rate = growth_rate(f)
    if rate is not None and rate <= DECLINE and f.early_score is not None and f.late_score is not None:
        out.append(
            Recommendation(
                figure="growth_rate",
                value=round(rate, 4),
                threshold=DECLINE,
                message=f"The mean score fell from {f.early_score:.1f} to {f.late_score:.1f} "
                f"({_pct(rate)}) across the window: review the recent sessions.",
            )
        )
    if f.success_rate is not None and f.success_rate < LOW_SUCCESS:
        failing = max(f.topics, key=lambda t: t.failures, default=None)
        where = (
            f"; most failures are in '{failing.topic}' ({failing.failures} of {failing.records})"
            if failing is not None and failing.failures > 0
            else ""
        )
        out.append(
            Recommendation(
                figure="success_rate",
                value=round(f.success_rate, 4),
                threshold=LOW_SUCCESS,
                message=f"Only {_pct(f.success_rate)} of tasks succeeded{where}.",
            )
        )
    if f.average_score is not None and f.average_score < LOW_AVERAGE:
        out.append(
            Recommendation(
                figure="average_score",
                value=round(f.average_score, 2),
                threshold=LOW_AVERAGE,
                message=f"The average score is {f.average_score:.1f}, below {LOW_AVERAGE:.0f}: "
                "ask for feedback on low-scoring tasks.",
            )
        )
    if coverage is not None and coverage < LOW_COVERAGE:
        missing = [t.topic for t in f.topics if not t.knowledge_hit]
        out.append(
            Recommendation(
                figure="knowledge_coverage",
                value=round(coverage, 4),
                threshold=LOW_COVERAGE,
                message="The knowledge base matches few of the top topics; add knowledge on "
                + ", ".join(f"'{t}'" for t in missing)
                + ".",
            )
        )
    if f.average_score is not None:
        for t in f.topics:
            if t.records >= 3 and t.average_score < f.average_score - WEAK_TOPIC_GAP:
                out.append(
                    Recommendation(
                        figure="top_topics",
                        value=t.topic,
                        threshold=round(f.average_score - WEAK_TOPIC_GAP, 2),
                        message=f"'{t.topic}' scores {t.average_score:.1f} over {t.records} records, "
                        f"well below the average {f.average_score:.1f}: practise it.",
                    )
                )
    if f.usage_streak == 0:
        out.append(
            Recommendation(
                figure="usage_streak",
                value=0,
                threshold=1,
                message="No record today or yesterday: the usage streak is broken.",
            )
        )
    return out + _plugin_recommendations(plugins)


def _plugin_recommendations(plugins: list[PluginImpact] | None) -> list[Recommendation]:
    """Plugins that fail often (3+ runs, success below :data:`LOW_PLUGIN_SUCCESS`), records or not."""
    return [
        Recommendation(
            figure="plugin_performance_impact",
            value=p.plugin_id,
            threshold=LOW_PLUGIN_SUCCESS,
            message=f"Plugin '{p.plugin_id}' failed {p.failures} of {p.runs} runs"
            + (
                f", most often stopped by {max(p.stopped_by, key=lambda k: (p.stopped_by[k], k))}"
                if p.stopped_by
                else ""
            )
            + ": check its limits and permissions.",
        )
        for p in plugins or []
        if p.runs >= 3 and p.success_rate < LOW_PLUGIN_SUCCESS
    ]


def opportunities(f: Figures) -> list[GrowthOpportunity]:
    """How to reach the next tier, and strengths to build on; see docs/analytics.md."""
    out: list[GrowthOpportunity] = []
    earned = earned_tier(f)
    current = tier(f)
    if current != earned:
        out.append(
            GrowthOpportunity(
                figure="growth_rate",
                value=round(growth_rate(f) or 0.0, 4),
                target=DECLINE,
                message=f"Stop the decline (growth rate above {DECLINE}) to be '{earned}' again.",
            )
        )
    higher = [r for r in TIER_RULES if TIERS.index(r.name) > TIERS.index(earned)]
    if higher:
        nxt = higher[-1]  # the lowest tier above the earned one
        have = (
            ("average_score", f.average_score or 0.0, nxt.min_average),
            ("success_rate", f.success_rate or 0.0, nxt.min_success),
            ("total_sessions", float(f.total_sessions), float(nxt.min_sessions)),
        )
        for figure, value, need in have:
            if value < need:
                out.append(
                    GrowthOpportunity(
                        figure=figure,
                        value=round(value, 4),
                        target=need,
                        message=f"Raise {figure} from {value:g} to {need:g} to reach '{nxt.name}'.",
                    )
                )
    for t in f.topics:
        if t.records >= 3 and t.average_score >= STRONG_TOPIC:
            out.append(
                GrowthOpportunity(
                    figure="top_topics",
                    value=t.topic,
                    target=None,
                    message=f"'{t.topic}' is a strength ({t.average_score:.1f} over {t.records} records): "
                    "take on harder tasks in it"
                    + ("." if t.knowledge_hit else " and add what you learn to the knowledge base."),
                )
            )
    return out

"""persona.performance.record and persona.analytics (served by each persona): params and results.

A persona's recorded work (one record per task done in a session, with a
score and whether it succeeded) and what it adds up to. Every figure of
:class:`AnalyticsResult` has its formula in docs/analytics.md.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field

from .brain import MAX_LABEL_CHARS, MAX_TEXT_CHARS, IdempotencyKey, JsonObject, idempotency_key_field
from .registry import StrictModel, StrictParams, register

__all__ = [
    "MAX_DURATION_S",
    "MAX_TASK_CHARS",
    "MAX_WINDOW_DAYS",
    "TIERS",
    "AnalyticsParams",
    "AnalyticsResult",
    "GrowthOpportunity",
    "GrowthStats",
    "PerformanceRecordParams",
    "PerformanceRecordResult",
    "PluginImpact",
    "Recommendation",
    "TopicScore",
    "TrendPoint",
]

#: A task's text, after whitespace is collapsed.
MAX_TASK_CHARS: Final = 200
#: One record's duration: a week (longer is a clock or unit mistake).
MAX_DURATION_S: Final = 7 * 86_400.0
#: The longest analytics window, in days (ten years).
MAX_WINDOW_DAYS: Final = 3650
#: Tiers, lowest first.
TIERS: Final = ("novice", "proficient", "advanced", "expert")

Tier = Literal["novice", "proficient", "advanced", "expert"]


def _task(value: str) -> str:
    collapsed = " ".join(value.split())
    if not collapsed:
        raise ValueError("task is only whitespace")
    if len(collapsed) > MAX_TASK_CHARS:
        raise ValueError(f"task is over {MAX_TASK_CHARS} characters")
    return collapsed


# -- persona.performance.record ---------------------------------------------------


class PerformanceRecordParams(StrictParams):
    session_id: Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)] = Field(
        description="the session the work was done in (any label; sessions are counted by it)"
    )
    task: Annotated[str, Field(min_length=1, max_length=4 * MAX_TASK_CHARS), AfterValidator(_task)] = Field(
        description="what was done, e.g. 'code review'; its lowercase form is a topic (at most 200 chars)"
    )
    score: Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)] = Field(
        description="how well it went, 0 to 100"
    )
    success: bool = Field(description="whether the task was accomplished")
    duration_s: Annotated[float, Field(ge=0.0, le=MAX_DURATION_S, allow_inf_nan=False)] = Field(
        description="time spent on it, in seconds (at most a week)"
    )
    user_feedback: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None = Field(
        None, description="what the user said about it"
    )
    context: JsonObject = Field(
        None,
        description="any JSON object (at most 16 KiB); strings in its 'tags' array are topics too",
    )
    idempotency_key: IdempotencyKey | None = idempotency_key_field("recording it")


class PerformanceRecordResult(StrictModel):
    id: int = Field(description="the record's id in the persona's brain")
    recorded_at: float = Field(description="when it was stored, seconds since the epoch")
    replayed: bool = Field(
        False, description="true: the idempotency_key was given before for this record, stored then, not now"
    )


register(
    "persona.performance.record",
    params=PerformanceRecordParams,
    result=PerformanceRecordResult,
    summary="Record one task's outcome in the persona's brain; answered once it is on disk.",
    served_by="persona",
)


# -- persona.analytics ---------------------------------------------------------------


class AnalyticsParams(StrictParams):
    window: Annotated[int, Field(ge=1, le=MAX_WINDOW_DAYS)] = Field(
        30, description="the period analysed: this many UTC days up to and including today"
    )


class GrowthStats(StrictModel):
    sessions_completed: int = Field(description="distinct sessions with at least one successful record")
    unique_tasks: int = Field(description="distinct tasks (case-insensitive)")
    repeat_tasks: int = Field(description="tasks recorded at least twice")
    usage_streak: int = Field(
        description="consecutive UTC days with a record back from the latest one; 0 if that is before "
        "yesterday (all history, not only the window)"
    )
    total_usage_time_h: float = Field(description="sum of the records' durations, in hours")
    growth_rate: float | None = Field(
        description="relative change of the mean score from the earlier to the later half of the "
        "days with records (-0.2: scores fell 20 %); null with records on fewer than two days"
    )


class TrendPoint(StrictModel):
    start: float = Field(description="the bucket's start, seconds since the epoch")
    end: float = Field(description="its end")
    records: int = Field(description="records in it")
    average_score: float | None = Field(description="their mean score; null when empty")
    success_rate: float | None = Field(description="their share of successes; null when empty")


class TopicScore(StrictModel):
    topic: str = Field(description="a lowercase task or context tag")
    score: float = Field(description="the mean score of its records")
    records: int = Field(description="how many records name it")
    knowledge: bool = Field(description="whether the knowledge base matches every word of it")


class PluginImpact(StrictModel):
    plugin_id: str = Field(description="the plugin's id (its folder under plugins/)")
    runs: int = Field(description="runs recorded in plugins/runs.jsonl")
    failures: int = Field(description="runs that did not end ok")
    success_rate: float = Field(description="1 - failures / runs")
    mean_duration_s: float | None = Field(description="mean wall-clock time of a run; null without durations")
    stopped_by: dict[str, int] = Field(description="failed runs by what stopped them: memory, cpu_time …")


class Recommendation(StrictModel):
    figure: str = Field(description="the figure that triggered it")
    value: float | str | None = Field(description="the figure's value")
    threshold: float | None = Field(description="the threshold it crossed")
    message: str = Field(description="what to do, quoting the data")


class GrowthOpportunity(StrictModel):
    figure: str = Field(description="the figure it would raise")
    value: float | str | None = Field(description="the figure's value now")
    target: float | str | None = Field(description="what it would take")
    message: str = Field(description="the opportunity, quoting the data")


class AnalyticsResult(StrictModel):
    persona_id: str = Field(description="the persona that answered")
    persona_name: str = Field(description="from the registry's profile; the id when the registry is away")
    role: str | None = Field(description="from the registry's profile; null when the registry is away")
    status: str | None = Field(description="the registry's status for the persona; null when it is away")
    window_days: int = Field(description="the window: this many UTC days up to and including today")
    generated_at: float = Field(description="when the answer was computed, seconds since the epoch")
    growth_stats: GrowthStats = Field(description="sessions, tasks, streak, usage and growth rate")
    total_sessions: int = Field(description="distinct session ids in the window")
    total_records: int = Field(description="records in the window")
    average_score: float | None = Field(description="mean score in the window; null without records")
    success_rate: float | None = Field(description="share of successful records; null without records")
    performance_trend: list[TrendPoint] = Field(
        description="one point per day of the window; past 30 days, per group of ceil(window/30) days"
    )
    top_topics: list[TopicScore] = Field(description="the five topics with most records")
    knowledge_coverage: float | None = Field(
        description="share of the top topics the knowledge base matches; null without topics"
    )
    active_plugins: int = Field(description="plugins installed in the persona's folder")
    plugin_performance_impact: list[PluginImpact] | None = Field(
        description="per plugin, from its recorded runs; null when no plugin has run"
    )
    tier: Tier = Field(description="novice, proficient, advanced or expert (docs/analytics.md, Tiers)")
    recommendations: list[Recommendation] = Field(description="what to act on, each naming its figure")
    growth_opportunities: list[GrowthOpportunity] = Field(
        description="the next tier's missing minimums, and strengths to build on"
    )


register(
    "persona.analytics",
    params=AnalyticsParams,
    result=AnalyticsResult,
    summary="The persona's performance over a window: growth, trend, topics, tier and what to do next.",
    served_by="persona",
)

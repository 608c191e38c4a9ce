"""The brain's methods, served by every persona daemon (``to: persona:<id>``).

The persona's persistent, encrypted memory: remember / recall / forget,
skills, interactions, goals, emotions, and the operator's rights over it —
stats, export (the right to export) and erase (the right to be forgotten) —
plus read-only SQL introspection (``brain.query``, only for tokens granted
it).

Limits are named constants here and are the single source of truth: the
brain library (``daemon.brain``) checks the same ones for callers inside the
daemon. Numbers are strict (``"0.5"`` is not a float, ``1`` is not a bool),
unknown members are refused (``StrictModel``), so a misspelt filter is an
``invalid params`` error rather than a silently ignored one. Times are
ISO-8601 strings in JSON (a datetime in msgpack); without a zone they are
taken as UTC.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, Strict, model_validator

from .bus import Empty
from .registry import StrictModel, StrictParams, register

__all__ = [
    "ERASE_EVERYTHING",
    "MAX_BATCH",
    "MAX_CONTENT_BYTES",
    "MAX_JSON_BYTES",
    "MAX_LABEL_CHARS",
    "MAX_QUERY_PARAMS",
    "MAX_QUERY_ROWS",
    "MAX_QUERY_SQL_CHARS",
    "MAX_QUERY_TIME_S",
    "MAX_RECALL_LIMIT",
    "MAX_RECALL_QUERY_CHARS",
    "MAX_TEXT_CHARS",
    "BrainEraseParams",
    "BrainEraseResult",
    "BrainExportResult",
    "BrainQueryParams",
    "BrainQueryResult",
    "BrainStatsResult",
    "EmotionsRecordParams",
    "GoalModel",
    "GoalsListParams",
    "GoalsListResult",
    "GoalsSetParams",
    "GoalsSetResult",
    "IdResult",
    "InteractionsLogParams",
    "MemoryForgetParams",
    "MemoryForgetResult",
    "MemoryRecallParams",
    "MemoryRecallResult",
    "MemoryRememberParams",
    "RecallHitModel",
    "RetentionStateModel",
    "SkillModel",
    "SkillsListResult",
    "SkillsRecordUseParams",
    "SkillsRecordUseResult",
]

# -- limits -------------------------------------------------------------------

#: A memory's content, in UTF-8 bytes.
MAX_CONTENT_BYTES = 64 * 1024
#: A JSON member (context, learned), serialised, in bytes.
MAX_JSON_BYTES = 16 * 1024
#: Short labels: source, subject, persona ids, room ids, emotion names.
MAX_LABEL_CHARS = 128
#: Longer free text: outcomes, goal descriptions, emotion triggers.
MAX_TEXT_CHARS = 4096
MAX_RECALL_QUERY_CHARS = 1024
MAX_RECALL_LIMIT = 100
#: Ids per memory.forget; memories per remember_many inside the daemon.
MAX_BATCH = 1000
MAX_QUERY_SQL_CHARS = 8192
MAX_QUERY_PARAMS = 64
MAX_QUERY_ROWS = 1000
MAX_QUERY_TIME_S = 2.0
#: The confirmation brain.erase wants when erasing the whole brain.
ERASE_EVERYTHING = "erase everything"

KIND_PATTERN = r"^[a-z][a-z0-9_.-]{0,31}$"
SKILL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
GOAL_STATUSES = ("active", "paused", "done", "abandoned")


def _content_size(value: str) -> str:
    if len(value.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise ValueError(f"content is over {MAX_CONTENT_BYTES} bytes in UTF-8")
    return value


def _json_size(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and len(json.dumps(value, ensure_ascii=False)) > MAX_JSON_BYTES:
        raise ValueError(f"over {MAX_JSON_BYTES} bytes as JSON")
    return value


Content = Annotated[str, Field(min_length=1), AfterValidator(_content_size)]
JsonObject = Annotated[dict[str, Any] | None, AfterValidator(_json_size)]
Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Kind = Annotated[str, Field(pattern=KIND_PATTERN)]
SkillId = Annotated[str, Field(pattern=SKILL_ID_PATTERN)]
RowId = Annotated[int, Field(ge=1)]
#: RFC 3339 text on the wire; strict mode would accept only datetime objects,
#: which no decoded message contains.
Timestamp = Annotated[datetime, Strict(False)]


# -- memory.remember ----------------------------------------------------------


class MemoryRememberParams(StrictParams):
    content: Content
    context: JsonObject = None
    relevance: Unit = Field(0.5, description="importance in [0, 1], part of recall's score")
    source: Annotated[str, Field(max_length=MAX_LABEL_CHARS)] = Field(
        "", description="where it came from: chat, web, a persona id …"
    )
    subject: Label | None = Field(None, description="who or what it is about; brain.erase works by subject")
    pinned: bool = Field(False, description="never removed by retention")
    kind: Kind = "note"


class IdResult(StrictModel):
    id: int


register(
    "memory.remember",
    params=MemoryRememberParams,
    result=IdResult,
    summary="Store a memory; answered only once it is durable on disk.",
    served_by="persona",
)

# -- memory.recall ------------------------------------------------------------


class MemoryRecallParams(StrictParams):
    query: Annotated[str, Field(max_length=MAX_RECALL_QUERY_CHARS)] = Field(
        "", description="words to search for; empty recalls by recency and relevance"
    )
    kinds: Annotated[list[Kind], Field(min_length=1, max_length=16)] | None = None
    source: Annotated[str, Field(max_length=MAX_LABEL_CHARS)] | None = None
    subject: Label | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_RECALL_LIMIT)] = 10


class RecallHitModel(StrictModel):
    id: int
    content: str
    kind: str
    source: str
    subject: str | None
    context: dict[str, Any] | None
    relevance: float
    pinned: bool
    created_at: datetime
    score: float = Field(description="0.5 text_score + 0.3 recency + 0.2 relevance")
    text_score: float = Field(description="BM25 relative to the best candidate's, (0, 1]")
    recency: float = Field(description="0.5 ** (age / 30 days)")


class MemoryRecallResult(StrictModel):
    hits: list[RecallHitModel]


register(
    "memory.recall",
    params=MemoryRecallParams,
    result=MemoryRecallResult,
    summary="Full-text recall ranked by text match, recency and relevance, with filters.",
    served_by="persona",
)

# -- memory.forget ------------------------------------------------------------


class MemoryForgetParams(StrictParams):
    ids: Annotated[list[RowId], Field(min_length=1, max_length=MAX_BATCH)]


class MemoryForgetResult(StrictModel):
    removed: int


register(
    "memory.forget",
    params=MemoryForgetParams,
    result=MemoryForgetResult,
    summary="Delete memories by id (brain.erase also scrubs the file).",
    served_by="persona",
)

# -- skills -------------------------------------------------------------------


class SkillModel(StrictModel):
    skill_id: str
    lora_hash: str | None
    description: str | None
    effectiveness: float | None
    rated_uses: int
    usage_count: int
    acquired_at: datetime
    last_used_at: datetime | None


class SkillsListResult(StrictModel):
    skills: list[SkillModel]


register(
    "skills.list",
    params=Empty,
    result=SkillsListResult,
    summary="The persona's skills with their use counts and effectiveness.",
    served_by="persona",
)


class SkillsRecordUseParams(StrictParams):
    skill_id: SkillId
    effectiveness: Unit | None = Field(None, description="how well it worked this time")


class SkillsRecordUseResult(StrictModel):
    skill: SkillModel


register(
    "skills.record_use",
    params=SkillsRecordUseParams,
    result=SkillsRecordUseResult,
    summary="Count one use of a skill, optionally rating it.",
    served_by="persona",
)

# -- interactions.log ---------------------------------------------------------


class InteractionsLogParams(StrictParams):
    with_persona: Label
    room_id: Label | None = None
    outcome: Text | None = None
    learned: JsonObject = None
    subject: Label | None = None


register(
    "interactions.log",
    params=InteractionsLogParams,
    result=IdResult,
    summary="Record an interaction with another participant.",
    served_by="persona",
)

# -- goals --------------------------------------------------------------------

GoalStatus = Literal["active", "paused", "done", "abandoned"]


class GoalsSetParams(StrictParams):
    id: RowId | None = Field(None, description="absent: a new goal; present: update it")
    title: Annotated[str, Field(min_length=1, max_length=256)]
    description: Text | None = None
    status: GoalStatus = "active"
    priority: Unit = 0.5
    progress: Unit = 0.0
    due_at: Timestamp | None = None


class GoalModel(StrictModel):
    id: int
    title: str
    description: str | None
    status: GoalStatus
    priority: float
    progress: float
    due_at: datetime | None
    created_at: datetime
    updated_at: datetime


class GoalsSetResult(StrictModel):
    goal: GoalModel


register(
    "goals.set",
    params=GoalsSetParams,
    result=GoalsSetResult,
    summary="Create a goal, or update one by id.",
    served_by="persona",
)


class GoalsListParams(StrictParams):
    status: GoalStatus | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 100


class GoalsListResult(StrictModel):
    goals: list[GoalModel]


register(
    "goals.list",
    params=GoalsListParams,
    result=GoalsListResult,
    summary="Goals by priority, optionally of one status.",
    served_by="persona",
)

# -- emotions.record ----------------------------------------------------------


class EmotionsRecordParams(StrictParams):
    emotion: Annotated[str, Field(min_length=1, max_length=64)]
    intensity: Unit
    valence: Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)] | None = None
    trigger: Annotated[str, Field(max_length=1024)] | None = None
    subject: Label | None = None


register(
    "emotions.record",
    params=EmotionsRecordParams,
    result=IdResult,
    summary="Record an emotional state and what triggered it.",
    served_by="persona",
)

# -- brain.stats --------------------------------------------------------------


class RetentionStateModel(StrictModel):
    max_memories: int | None
    max_bytes: int | None
    interval_s: float | None
    last_run_at: datetime | None
    last_removed: int
    total_removed: int


class BrainStatsResult(StrictModel):
    schema_version: int
    counts: dict[str, int]
    pinned_memories: int
    bytes_on_disk: int = Field(description="database + WAL + shared-memory index")
    files: dict[str, int]
    bytes_live: int = Field(description="bytes in pages holding data")
    retention: RetentionStateModel


register(
    "brain.stats",
    params=Empty,
    result=BrainStatsResult,
    summary="Row counts, size on disk, schema version and retention of the brain.",
    served_by="persona",
)

# -- brain.export -------------------------------------------------------------


class BrainExportResult(StrictModel):
    path: str = Field(description="the JSON file, in the persona's artifacts folder")
    bytes: int
    sha256: str
    counts: dict[str, int]
    format_version: int


register(
    "brain.export",
    params=Empty,
    result=BrainExportResult,
    summary="Write the whole brain as a documented JSON file (the right to export).",
    served_by="persona",
)

# -- brain.erase --------------------------------------------------------------


class BrainEraseParams(StrictParams):
    subject: Label | None = None
    everything: bool = False
    confirm: Annotated[str, Field(max_length=MAX_LABEL_CHARS)] = Field(
        description=f"the subject again, or {ERASE_EVERYTHING!r}"
    )

    @model_validator(mode="after")
    def _confirmed(self) -> BrainEraseParams:
        if self.everything == (self.subject is not None):
            raise ValueError("give exactly one of subject or everything=true")
        expected = ERASE_EVERYTHING if self.everything else self.subject
        if self.confirm != expected:
            what = "the subject" if self.subject else repr(ERASE_EVERYTHING)
            raise ValueError(f"confirm must repeat {what}")
        return self


class BrainEraseResult(StrictModel):
    subject: str | None
    removed: dict[str, int]
    bytes_before: int
    bytes_after: int


register(
    "brain.erase",
    params=BrainEraseParams,
    result=BrainEraseResult,
    summary="Erase one subject or the whole brain, then VACUUM (the right to be forgotten).",
    served_by="persona",
)

# -- brain.query --------------------------------------------------------------

QueryValue = str | int | float | bytes | None


class BrainQueryParams(StrictParams):
    sql: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_SQL_CHARS)]
    params: Annotated[list[QueryValue], Field(max_length=MAX_QUERY_PARAMS)] = []
    row_limit: Annotated[int, Field(ge=1, le=MAX_QUERY_ROWS)] = 100
    time_limit_s: Annotated[float, Field(gt=0.0, le=MAX_QUERY_TIME_S)] = MAX_QUERY_TIME_S


class BrainQueryResult(StrictModel):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = Field(description="more rows existed than row_limit")
    elapsed_s: float


register(
    "brain.query",
    params=BrainQueryParams,
    result=BrainQueryResult,
    summary="One read-only SELECT over the persona's own brain, with row and time limits.",
    served_by="persona",
)

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

(About 540 lines, one file: the thirteen methods of one service share its limits,
field types and validators, and each model is a few lines; the seam, if it grows, is
memory.* against the rest.)
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, Strict, model_validator

from ..errors import ErrorCode
from .bus import Empty
from .registry import StrictModel, StrictParams, register

__all__ = [
    "ERASE_EVERYTHING",
    "IDEMPOTENCY_KEY_PATTERN",
    "MAX_BATCH",
    "MAX_CONTENT_BYTES",
    "MAX_IDEMPOTENCY_KEY_CHARS",
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
    "IdempotencyKey",
    "InteractionsLogParams",
    "MemoryForgetParams",
    "MemoryForgetResult",
    "MemoryRecallParams",
    "MemoryRecallResult",
    "MemoryRememberParams",
    "RecallHitModel",
    "RememberResult",
    "RetentionStateModel",
    "SkillModel",
    "SkillsListResult",
    "SkillsRecordUseParams",
    "SkillsRecordUseResult",
    "idempotency_key_field",
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
#: memory.remember's idempotency_key: what clients use (UUIDs, ULIDs, "batch-7:12"), no spaces.
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
MAX_IDEMPOTENCY_KEY_CHARS = 128
SKILL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
GOAL_STATUSES = ("active", "paused", "done", "abandoned")


#: A write's idempotency key (daemon/brain/idempotency.py), as its params take it.
IdempotencyKey = Annotated[str, Field(pattern=IDEMPOTENCY_KEY_PATTERN)]


def idempotency_key_field(what: str) -> Any:
    """The ``idempotency_key`` member of a write's params; ``what``: what a retry does not do twice."""
    return Field(
        None,
        description=(
            "a key of the caller's choosing (a UUID): the same call sent again with it within 24 hours "
            f"is answered with the first one's id (replayed: true) instead of {what} twice; "
            "keys are per caller (client id); the same key with another call is refused"
        ),
    )


def _content_size(value: str) -> str:
    if len(value.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise ValueError(f"content is over {MAX_CONTENT_BYTES} bytes in UTF-8")
    return value


def json_text(value: Any) -> str:
    """``value`` as JSON text, or a ValueError (so pydantic answers INVALID_PARAMS) when it is not
    JSON: msgpack callers can send bytes, which JSON has no place for."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must be JSON ({exc})") from None


def _json_size(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and len(json_text(value)) > MAX_JSON_BYTES:
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
    content: Content = Field(description="the memory's text (at most 64 KiB of UTF-8)")
    context: JsonObject = Field(None, description="any JSON object to keep with it (at most 16 KiB as JSON)")
    relevance: Unit = Field(0.5, description="importance in [0, 1], part of recall's score")
    source: Annotated[str, Field(max_length=MAX_LABEL_CHARS)] = Field(
        "", description="where it came from: chat, web, a persona id …"
    )
    subject: Label | None = Field(None, description="who or what it is about; brain.erase works by subject")
    pinned: bool = Field(False, description="never removed by retention")
    kind: Kind = Field("note", description="a label for filtering recall: note, fact, preference, …")
    idempotency_key: IdempotencyKey | None = idempotency_key_field("storing the memory")


class IdResult(StrictModel):
    id: int = Field(description="the new row's id")


class RememberResult(StrictModel):
    id: int = Field(description="the memory's id")
    replayed: bool = Field(
        False, description="true: the idempotency_key was given before for this memory, stored then, not now"
    )


register(
    "memory.remember",
    params=MemoryRememberParams,
    result=RememberResult,
    summary="Store a memory; answered once it is durable on disk. Safe to retry with an idempotency_key.",
    served_by="persona",
)

# -- memory.recall ------------------------------------------------------------


class MemoryRecallParams(StrictParams):
    query: Annotated[str, Field(max_length=MAX_RECALL_QUERY_CHARS)] = Field(
        "", description="words to search for; empty recalls by recency and relevance"
    )
    kinds: Annotated[list[Kind], Field(min_length=1, max_length=16)] | None = Field(
        None, description="only memories of these kinds"
    )
    source: Annotated[str, Field(max_length=MAX_LABEL_CHARS)] | None = Field(
        None, description="only memories from this source"
    )
    subject: Label | None = Field(None, description="only memories about this subject")
    since: Timestamp | None = Field(None, description="only memories created at or after this time")
    until: Timestamp | None = Field(None, description="only memories created before this time")
    limit: Annotated[int, Field(ge=1, le=MAX_RECALL_LIMIT)] = Field(10, description="most hits returned")


class RecallHitModel(StrictModel):
    id: int = Field(description="the memory's id")
    content: str = Field(description="its text")
    kind: str = Field(description="its kind")
    source: str = Field(description="where it came from")
    subject: str | None = Field(description="who or what it is about")
    context: dict[str, Any] | None = Field(description="the JSON object stored with it")
    relevance: float = Field(description="its importance in [0, 1]")
    pinned: bool = Field(description="never removed by retention")
    created_at: datetime = Field(description="when it was remembered")
    score: float = Field(description="0.5 text_score + 0.3 recency + 0.2 relevance")
    text_score: float = Field(description="BM25 relative to the best candidate's, (0, 1]")
    recency: float = Field(description="0.5 ** (age / 30 days)")


class MemoryRecallResult(StrictModel):
    hits: list[RecallHitModel] = Field(description="best first")


register(
    "memory.recall",
    params=MemoryRecallParams,
    result=MemoryRecallResult,
    summary="Full-text recall ranked by text match, recency and relevance, with filters.",
    served_by="persona",
)

# -- memory.forget ------------------------------------------------------------


class MemoryForgetParams(StrictParams):
    ids: Annotated[list[RowId], Field(min_length=1, max_length=MAX_BATCH)] = Field(
        description="the memories' ids (unknown ones are ignored)"
    )


class MemoryForgetResult(StrictModel):
    removed: int = Field(description="how many memories existed and were deleted")


register(
    "memory.forget",
    params=MemoryForgetParams,
    result=MemoryForgetResult,
    summary="Delete memories by id (brain.erase also scrubs the file).",
    served_by="persona",
)

# -- skills -------------------------------------------------------------------


class SkillModel(StrictModel):
    skill_id: str = Field(description="the skill's name")
    lora_hash: str | None = Field(description="sha256 of the LoRA adapter that holds it, if any")
    description: str | None = Field(description="what the skill is")
    effectiveness: float | None = Field(
        description="running mean of the rated uses, in [0, 1]; null before the first rating"
    )
    rated_uses: int = Field(description="uses that came with an effectiveness")
    usage_count: int = Field(description="all recorded uses")
    acquired_at: datetime = Field(description="when the skill was first recorded")
    last_used_at: datetime | None = Field(description="the latest recorded use")
    source: dict[str, Any] | None = Field(
        None,
        description="where it came from when acquired from elsewhere: for a skill acquired over the "
        'mesh (skill.acquire), {"via": "mesh", "skill_id", "publisher", "node", "seeders": {node: '
        'pieces}, "acquired_at"}; null for a skill made or recorded here',
    )


class SkillsListResult(StrictModel):
    skills: list[SkillModel] = Field(description="every skill, most used first, then by skill_id")


register(
    "skills.list",
    params=Empty,
    result=SkillsListResult,
    summary="The persona's skills with their use counts and effectiveness.",
    served_by="persona",
)


class SkillsRecordUseParams(StrictParams):
    skill_id: SkillId = Field(description="an existing skill (no bus method creates skills)")
    effectiveness: Unit | None = Field(None, description="how well it worked this time")


class SkillsRecordUseResult(StrictModel):
    skill: SkillModel = Field(description="the skill after this use")


register(
    "skills.record_use",
    params=SkillsRecordUseParams,
    result=SkillsRecordUseResult,
    summary="Count one use of a skill, optionally rating it.",
    served_by="persona",
    errors=((ErrorCode.INVALID_PARAMS, "no skill by that id"),),
)

# -- interactions.log ---------------------------------------------------------


class InteractionsLogParams(StrictParams):
    with_persona: Label = Field(description="the other participant's id, e.g. persona:critic")
    room_id: Label | None = Field(None, description="the room it happened in")
    outcome: Text | None = Field(None, description="what came of it, in words")
    learned: JsonObject = Field(
        None, description="what was learned, as a JSON object (at most 16 KiB as JSON)"
    )
    subject: Label | None = Field(None, description="who or what it is about; brain.erase works by subject")


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
    title: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        description="a short name for the goal"
    )
    description: Text | None = Field(None, description="the goal in more words")
    status: GoalStatus = Field("active", description="its state")
    priority: Unit = Field(0.5, description="in [0, 1]; goals.list orders by it")
    progress: Unit = Field(0.0, description="how far along, in [0, 1]")
    due_at: Timestamp | None = Field(None, description="when it should be done")


class GoalModel(StrictModel):
    id: int = Field(description="the goal's id")
    title: str = Field(description="its short name")
    description: str | None = Field(description="the goal in more words")
    status: GoalStatus = Field(description="its state")
    priority: float = Field(description="in [0, 1]")
    progress: float = Field(description="in [0, 1]")
    due_at: datetime | None = Field(description="when it should be done")
    created_at: datetime = Field(description="when it was created")
    updated_at: datetime = Field(description="its latest change")


class GoalsSetResult(StrictModel):
    goal: GoalModel = Field(description="the goal as stored")


register(
    "goals.set",
    params=GoalsSetParams,
    result=GoalsSetResult,
    summary="Create a goal, or update one by id.",
    served_by="persona",
    errors=((ErrorCode.INVALID_PARAMS, "no goal with that id"),),
)


class GoalsListParams(StrictParams):
    status: GoalStatus | None = Field(None, description="only goals in this state; omitted: all")
    limit: Annotated[int, Field(ge=1, le=500)] = Field(100, description="most goals returned")


class GoalsListResult(StrictModel):
    goals: list[GoalModel] = Field(description="highest priority first")


register(
    "goals.list",
    params=GoalsListParams,
    result=GoalsListResult,
    summary="Goals by priority, optionally of one status.",
    served_by="persona",
)

# -- emotions.record ----------------------------------------------------------


class EmotionsRecordParams(StrictParams):
    emotion: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        description="its name: curious, frustrated, …"
    )
    intensity: Unit = Field(description="how strong, in [0, 1]")
    valence: Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)] | None = Field(
        None, description="unpleasant (-1) to pleasant (1)"
    )
    trigger: Annotated[str, Field(max_length=1024)] | None = Field(None, description="what caused it")
    subject: Label | None = Field(None, description="who or what it is about; brain.erase works by subject")


register(
    "emotions.record",
    params=EmotionsRecordParams,
    result=IdResult,
    summary="Record an emotional state and what triggered it.",
    served_by="persona",
)

# -- brain.stats --------------------------------------------------------------


class RetentionStateModel(StrictModel):
    max_memories: int | None = Field(description="most memories kept (pinned ones included); null: no limit")
    max_bytes: int | None = Field(description="most bytes of live database pages; null: no limit")
    interval_s: float | None = Field(description="seconds between retention runs")
    last_run_at: datetime | None = Field(description="the latest run; null before the first")
    last_removed: int = Field(description="memories the latest run removed")
    total_removed: int = Field(description="memories removed since the daemon started")


class BrainStatsResult(StrictModel):
    schema_version: int = Field(description="version of the database schema")
    counts: dict[str, int] = Field(description="rows per table")
    pinned_memories: int = Field(description="memories retention never removes")
    bytes_on_disk: int = Field(description="database + WAL + shared-memory index")
    files: dict[str, int] = Field(description="bytes per file: db, -wal, -shm")
    bytes_live: int = Field(description="bytes in pages holding data")
    retention: RetentionStateModel = Field(description="limits and the latest run of retention")


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
    bytes: int = Field(description="size of the file as written")
    sha256: str = Field(description="of the file as written")
    counts: dict[str, int] = Field(description="rows exported per table")
    format_version: int = Field(description="version of the export's JSON format")


register(
    "brain.export",
    params=Empty,
    result=BrainExportResult,
    summary="Write the whole brain as a documented JSON file (the right to export).",
    served_by="persona",
)

# -- brain.erase --------------------------------------------------------------


class BrainEraseParams(StrictParams):
    subject: Label | None = Field(None, description="erase everything about this subject")
    everything: bool = Field(
        False, description="erase the whole brain instead (confirm must be 'erase everything')"
    )
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
    subject: str | None = Field(description="the subject erased; null when everything was")
    removed: dict[str, int] = Field(description="rows removed per table")
    bytes_before: int = Field(description="database size before")
    bytes_after: int = Field(description="database size after the VACUUM")


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
    sql: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_SQL_CHARS)] = Field(
        description="one read-only SELECT (or WITH … SELECT) statement"
    )
    params: Annotated[list[QueryValue], Field(max_length=MAX_QUERY_PARAMS)] = Field(
        [], description="values for the statement's ? placeholders"
    )
    row_limit: Annotated[int, Field(ge=1, le=MAX_QUERY_ROWS)] = Field(
        100, description="most rows returned; when there are more, truncated is true"
    )
    time_limit_s: Annotated[float, Field(gt=0.0, le=MAX_QUERY_TIME_S)] = Field(
        MAX_QUERY_TIME_S, description="seconds the query may run before it is stopped (TIMEOUT)"
    )


class BrainQueryResult(StrictModel):
    columns: list[str] = Field(description="column names, in order")
    rows: list[list[Any]] = Field(description="one list of values per row")
    truncated: bool = Field(description="more rows existed than row_limit")
    elapsed_s: float = Field(description="seconds the query took")


register(
    "brain.query",
    params=BrainQueryParams,
    result=BrainQueryResult,
    summary="One read-only SELECT over the persona's own brain, with row and time limits.",
    served_by="persona",
    errors=(
        (ErrorCode.FORBIDDEN, "the statement is not one read-only SELECT, or reads what it may not"),
        (ErrorCode.TIMEOUT, "the query ran past time_limit_s"),
        (
            ErrorCode.INVALID_PARAMS,
            "the query would need more memory than the reader allows; data.reason is query_too_large",
        ),
    ),
)

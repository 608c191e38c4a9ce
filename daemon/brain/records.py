"""What the brain returns and takes: plain frozen dataclasses.

Field names match the result models in :mod:`protocol.commands.brain`, so the
daemon turns one into the other with ``Model.model_validate(record,
from_attributes=True)``. Times are timezone-aware UTC datetimes; the database
stores them as REAL unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "BrainStats",
    "EraseSummary",
    "ExportSummary",
    "Goal",
    "MemoryItem",
    "QueryResult",
    "RecallHit",
    "RetentionPolicy",
    "RetentionState",
    "ScoreWeights",
    "Skill",
    "from_epoch",
    "to_epoch",
]


def to_epoch(moment: datetime) -> float:
    """Unix seconds of ``moment``; a naive datetime is taken to be UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@dataclass(frozen=True, slots=True)
class MemoryItem:
    """One memory to remember; the fields of :meth:`Brain.remember`."""

    content: str
    context: dict[str, Any] | None = None
    relevance: float = 0.5
    source: str = ""
    subject: str | None = None
    pinned: bool = False
    kind: str = "note"


@dataclass(frozen=True, slots=True)
class ScoreWeights:
    """The weights of recall's combined score (see :mod:`daemon.brain.recall`)."""

    text: float = 0.5
    recency: float = 0.3
    relevance: float = 0.2
    half_life_days: float = 30.0


@dataclass(frozen=True, slots=True)
class RecallHit:
    """One recalled memory with its score and the parts the score is made of."""

    id: int
    content: str
    kind: str
    source: str
    subject: str | None
    context: dict[str, Any] | None
    relevance: float
    pinned: bool
    created_at: datetime
    #: weights.text * text_score + weights.recency * recency + weights.relevance * relevance
    score: float
    #: BM25 relative to the best candidate's, in (0, 1]; 0 when recalled without a query.
    text_score: float
    #: 0.5 ** (age / half-life), in (0, 1].
    recency: float


@dataclass(frozen=True, slots=True)
class Skill:
    skill_id: str
    lora_hash: str | None
    description: str | None
    #: Mean of the effectiveness reported with uses; None until one is reported.
    effectiveness: float | None
    rated_uses: int
    usage_count: int
    acquired_at: datetime
    last_used_at: datetime | None
    #: Where it came from when acquired from elsewhere (a JSON object); None for one made here.
    source: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Goal:
    id: int
    title: str
    description: str | None
    status: str
    priority: float
    progress: float
    due_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Bounds on the brain's growth, enforced every ``interval_s`` seconds.

    ``max_memories`` bounds the number of memories; ``max_bytes`` the bytes
    the database's live pages take (free pages are handed back to the file
    system). None disables that bound. Pinned memories are never removed, so
    a brain of pinned memories alone may exceed both.
    """

    max_memories: int | None = None
    max_bytes: int | None = None
    interval_s: float = 600.0


@dataclass(frozen=True, slots=True)
class RetentionState:
    """What retention has done since this Brain was opened."""

    policy: RetentionPolicy | None
    last_run_at: datetime | None
    last_removed: int
    total_removed: int


@dataclass(frozen=True, slots=True)
class BrainStats:
    schema_version: int
    #: Rows per table: memories, skills, interactions, goals, emotions, evolution_history.
    counts: dict[str, int]
    pinned_memories: int
    #: Bytes on disk: the database, its WAL and its -shm index, added up.
    bytes_on_disk: int
    #: The same, file by file ("db", "-wal", "-shm").
    files: dict[str, int]
    #: Bytes in pages holding data (what max_bytes bounds).
    bytes_live: int
    retention: RetentionState


@dataclass(frozen=True, slots=True)
class ExportSummary:
    path: Path
    bytes: int
    sha256: str
    counts: dict[str, int]
    format_version: int


@dataclass(frozen=True, slots=True)
class EraseSummary:
    #: None when everything was erased.
    subject: str | None
    removed: dict[str, int]
    bytes_before: int
    bytes_after: int


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    #: True when more rows existed than row_limit allowed.
    truncated: bool = False
    elapsed_s: float = 0.0

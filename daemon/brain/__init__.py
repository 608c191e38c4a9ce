"""The brain: each persona's persistent, encrypted memory (issue 3).

An async library the persona daemon uses; the daemon alone opens its
persona's ``personas/<id>/brain.sqlite``::

    key = load_or_create_key(state_dir, persona_id)
    async with await Brain.open(brain_path(state_dir, persona_id), key) as brain:
        memory_id = await brain.remember("the meeting moved to Tuesday", subject="alice")
        hits = await brain.recall("when is the meeting")

Modules: ``store`` (the Brain), ``validation`` (its argument checks),
``ops`` (work on the connections' threads), ``commit`` (group commit),
``retention``, ``keys`` (where keys live), ``migrations`` (the schema chain),
``recall`` (the score), ``export`` (the export format), ``readonly``
(brain.query's fences) and ``_limits`` (SQLite's limits behind them),
``_db`` (connections), ``errors``, ``records``.
"""

from .errors import (
    BrainBusy,
    BrainClosed,
    BrainError,
    InsecureKey,
    InvalidInput,
    MigrationFailed,
    MissingKey,
    NotFound,
    QueryRefused,
    QueryTimeout,
    QueryTooLarge,
    SchemaTooNew,
    WrongKey,
)
from .keys import brain_path, key_path, load_or_create_key
from .migrations import LATEST as SCHEMA_VERSION
from .records import (
    BrainStats,
    EraseSummary,
    ExportSummary,
    Goal,
    MemoryItem,
    QueryResult,
    RecallHit,
    RetentionPolicy,
    RetentionState,
    ScoreWeights,
    Skill,
)
from .store import Brain

__all__ = [
    "SCHEMA_VERSION",
    "Brain",
    "BrainBusy",
    "BrainClosed",
    "BrainError",
    "BrainStats",
    "EraseSummary",
    "ExportSummary",
    "Goal",
    "InsecureKey",
    "InvalidInput",
    "MemoryItem",
    "MigrationFailed",
    "MissingKey",
    "NotFound",
    "QueryRefused",
    "QueryResult",
    "QueryTimeout",
    "QueryTooLarge",
    "RecallHit",
    "RetentionPolicy",
    "RetentionState",
    "SchemaTooNew",
    "ScoreWeights",
    "Skill",
    "WrongKey",
    "brain_path",
    "key_path",
    "load_or_create_key",
]

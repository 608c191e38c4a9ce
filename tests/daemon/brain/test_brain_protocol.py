"""The bus models of the brain's commands: strict, bounded, and fit the library's records."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from daemon.brain import Brain, RetentionPolicy
from protocol.commands import brain as commands
from protocol.commands.registry import REGISTRY
from protocol.validation import invalid_params

METHODS = [
    "memory.remember",
    "memory.recall",
    "memory.forget",
    "skills.list",
    "skills.record_use",
    "interactions.log",
    "goals.set",
    "goals.list",
    "emotions.record",
    "brain.stats",
    "brain.export",
    "brain.erase",
    "brain.query",
]


def test_every_method_is_registered_for_personas() -> None:
    """All thirteen methods are in the registry, served by personas, with JSON Schema."""
    for method in METHODS:
        command = REGISTRY[method]
        assert "persona" == command.served_by
        assert command.json_schema()["params"]["type"] == "object"


@pytest.mark.parametrize(
    ("model", "params"),
    [
        (commands.MemoryRememberParams, {"content": 5}),
        (commands.MemoryRememberParams, {"content": "x" * (commands.MAX_CONTENT_BYTES + 1)}),
        (commands.MemoryRememberParams, {"content": "x", "relevance": "0.5"}),
        (commands.MemoryRememberParams, {"content": "x", "relevance": 2}),
        (commands.MemoryRememberParams, {"content": "x", "pinned": 1}),
        (commands.MemoryRememberParams, {"content": "x", "context": {"k": "v" * 20_000}}),
        (commands.MemoryRememberParams, {"content": "x", "importance": 1}),
        (commands.MemoryRecallParams, {"query": "x", "type": "note"}),
        (commands.MemoryRecallParams, {"query": "x", "limit": 0}),
        (commands.MemoryRecallParams, {"query": "x", "limit": 101}),
        (commands.MemoryRecallParams, {"query": "x", "since": "yesterday"}),
        (commands.MemoryForgetParams, {"ids": []}),
        (commands.MemoryForgetParams, {"ids": ["1"]}),
        (commands.BrainEraseParams, {"subject": "alice", "confirm": "bob"}),
        (commands.BrainEraseParams, {"everything": True, "confirm": "yes"}),
        (commands.BrainEraseParams, {"confirm": "erase everything"}),
        (commands.BrainQueryParams, {"sql": "SELECT 1", "row_limit": 5000}),
        (commands.BrainQueryParams, {"sql": "SELECT 1", "time_limit_s": 60}),
        (commands.GoalsSetParams, {"title": "x", "status": "someday"}),
        (commands.SkillsRecordUseParams, {"skill_id": "bad id!"}),
    ],
)
def test_malformed_params_are_invalid_params(model: Any, params: dict[str, Any]) -> None:
    """Wrong types, oversize content and unknown filters fail validation as invalid params."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(params)
    error = invalid_params(caught.value)
    assert -32602 == error.code
    assert "x" * 100 not in str(error)


def test_good_params_validate() -> None:
    """Typical params pass, with their defaults, and times parse from ISO strings."""
    recall = commands.MemoryRecallParams.model_validate_json(
        '{"query": "patents", "kinds": ["note"], "since": "2025-01-01T00:00:00Z", "limit": 5}'
    )
    assert (5, 2025) == (recall.limit, recall.since.year if recall.since else None)
    erase = commands.BrainEraseParams.model_validate({"subject": "alice", "confirm": "alice"})
    assert not erase.everything
    remember = commands.MemoryRememberParams.model_validate({"content": "x", "relevance": 1})
    assert 1.0 == remember.relevance


async def test_library_records_fit_result_models(brain: Brain, tmp_path: Any) -> None:
    """What the Brain returns validates into the bus's result models unchanged."""
    await brain.remember("a memory", context={"a": 1}, subject="s")
    await brain.skill_upsert("s1")
    goal = await brain.goals_set("g")
    hits = await brain.recall("memory")
    commands.MemoryRecallResult.model_validate(
        {"hits": [commands.RecallHitModel.model_validate(h, from_attributes=True) for h in hits]}
    )
    skill = await brain.skill_record_use("s1", 0.5)
    commands.SkillModel.model_validate(skill, from_attributes=True)
    commands.GoalModel.model_validate(goal, from_attributes=True)
    stats = await brain.stats()
    retention = stats.retention
    policy = retention.policy or RetentionPolicy(None, None, 0.0)
    commands.BrainStatsResult.model_validate(
        {
            "schema_version": stats.schema_version,
            "counts": stats.counts,
            "pinned_memories": stats.pinned_memories,
            "bytes_on_disk": stats.bytes_on_disk,
            "files": stats.files,
            "bytes_live": stats.bytes_live,
            "retention": {
                "max_memories": policy.max_memories,
                "max_bytes": policy.max_bytes,
                "interval_s": policy.interval_s if retention.policy else None,
                "last_run_at": retention.last_run_at,
                "last_removed": retention.last_removed,
                "total_removed": retention.total_removed,
            },
        }
    )
    result = await brain.query("SELECT id, content FROM memories")
    commands.BrainQueryResult.model_validate(result, from_attributes=True)


def test_protocol_module_imports_no_io() -> None:
    """protocol.commands.brain stays sans-I/O: no asyncio, aiosqlite or sqlcipher3 imports."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(commands.__file__).read_text())
    names = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [node])  # type: ignore[list-item]
        if isinstance(alias, ast.alias)
    } | {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not names & {"asyncio", "aiosqlite", "sqlcipher3", "sqlite3", "daemon"}

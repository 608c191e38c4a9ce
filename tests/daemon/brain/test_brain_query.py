"""brain.query: read-only SELECTs only, within row and time limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.brain import Brain, InvalidInput, MemoryItem, QueryRefused, QueryTimeout


async def test_select_works_with_params_and_fts(brain: Brain) -> None:
    """Plain SELECTs, joins, CTEs, parameters and FTS5 MATCH are allowed."""
    await brain.remember("the owl hoots at night", subject="owl")
    result = await brain.query("SELECT id, content FROM memories WHERE subject = ?", ["owl"])
    assert ["id", "content"] == result.columns
    assert [[1, "the owl hoots at night"]] == result.rows
    fts = await brain.query(
        "SELECT m.id FROM memories_fts f JOIN memories m ON m.id = f.rowid WHERE memories_fts MATCH 'owl'"
    )
    assert [[1]] == fts.rows
    cte = await brain.query(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5) SELECT sum(x) FROM n"
    )
    assert [[15]] == cte.rows


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO memories (content, created_at) VALUES ('x', 0)",
        "UPDATE memories SET content = 'x'",
        "DELETE FROM memories",
        "DROP TABLE memories",
        "CREATE TABLE t (x)",
        "CREATE TEMP TABLE t (x)",
        "ATTACH DATABASE '/tmp/plain.db' AS plain",
        "PRAGMA query_only = OFF",
        "PRAGMA user_version",
        "PRAGMA key = 'x'",
        "PRAGMA rekey = 'x'",
        "BEGIN",
        "VACUUM",
        "SELECT load_extension('x')",
        "INSERT INTO memories_fts (memories_fts) VALUES ('delete-all')",
    ],
)
async def test_anything_but_reading_is_refused(brain: Brain, db_path: Path, sql: str) -> None:
    """Writes, DDL, ATTACH, PRAGMA, transactions and extensions are refused by the fences."""
    await brain.remember("still here")
    with pytest.raises(QueryRefused):
        await brain.query(sql)
    assert 1 == (await brain.stats()).counts["memories"]
    assert "plain.db" not in os.listdir("/tmp") or "ATTACH" not in sql
    assert [[1]] == (
        await brain.query("SELECT count(*) FROM memories_fts WHERE memories_fts MATCH 'still'")
    ).rows


@pytest.mark.parametrize("sql", ["SELECT 1; DELETE FROM memories", "SELEC 1"])
async def test_malformed_sql_is_invalid_input_and_runs_nothing(brain: Brain, sql: str) -> None:
    """Several statements or a syntax error are the caller's mistake (INVALID_PARAMS), and run nothing."""
    await brain.remember("still here")
    with pytest.raises(InvalidInput):
        await brain.query(sql)
    assert 1 == (await brain.stats()).counts["memories"]


async def test_row_limit_truncates(brain: Brain) -> None:
    """At most row_limit rows come back, flagged as truncated."""
    await brain.remember_many([MemoryItem(f"m{i}") for i in range(30)])
    result = await brain.query("SELECT id FROM memories", row_limit=10)
    assert 10 == len(result.rows)
    assert result.truncated
    assert not (await brain.query("SELECT id FROM memories", row_limit=30)).truncated


async def test_time_limit_interrupts(brain: Brain) -> None:
    """A query that runs past its time limit is interrupted with QueryTimeout."""
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    with pytest.raises(QueryTimeout):
        await brain.query(endless, time_limit=0.05)
    # The connection is usable afterwards, without the limits.
    assert [[1]] == (await brain.query("SELECT 1")).rows
    assert await brain.recall("anything") == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sql": ""},
        {"sql": "SELECT 1", "row_limit": 0},
        {"sql": "SELECT 1", "row_limit": 100_000},
        {"sql": "SELECT 1", "time_limit": 10},
        {"sql": "SELECT 1", "time_limit": 0},
        {"sql": "SELECT 1", "params": [object()]},
        {"sql": "SELECT " + "1," * 5000 + "1"},
    ],
)
async def test_bad_arguments(brain: Brain, kwargs: dict[str, object]) -> None:
    """Out-of-range limits and bad parameters are InvalidInput."""
    with pytest.raises(InvalidInput):
        await brain.query(**kwargs)  # type: ignore[arg-type]

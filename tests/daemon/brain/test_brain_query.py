"""brain.query: read-only SELECTs only, within row and time limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.brain import Brain, InvalidInput, MemoryItem, QueryRefused, QueryTimeout, QueryTooLarge
from daemon.brain.readonly import MAX_RESULT_BYTES


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


@pytest.mark.parametrize("sql", ["SELECT 1\x00", "\x00", "SELECT '\x00'"])
async def test_a_nul_character_in_the_sql_is_invalid_input(brain: Brain, sql: str) -> None:
    """A NUL in the statement is the caller's mistake (INVALID_PARAMS), not a handler crash.

    Found by bench/fuzz.py: sqlite3 raised ValueError, which became INTERNAL_ERROR.
    """
    with pytest.raises(InvalidInput, match="NUL character"):
        await brain.query(sql)
    assert [[1]] == (await brain.query("SELECT 1")).rows


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


# -- resource bounds (the outside attack's finding 4) --------------------------------

# s || s doubles a string each step: 2^27 bytes by n = 27, with no function
# the authorizer could refuse; SQLite's length limit stops it at 1 MiB.
DOUBLING = (
    "WITH RECURSIVE r(n, s) AS (SELECT 0, 'x' UNION ALL SELECT n + 1, s || s FROM r WHERE n < 27) "
    "SELECT length(s) FROM r ORDER BY n DESC LIMIT 1"
)
# 64 KiB values (under the length limit) sorted 3,000 times over: 200 MB of
# sorter in memory unless SQLite's heap is capped.
SORTER = (
    "WITH RECURSIVE b(n, s) AS (SELECT 0, 'x' UNION ALL SELECT n + 1, s || s FROM b WHERE n < 16), "
    "r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < 3000) "
    "SELECT i, s || i AS v FROM r, b WHERE b.n = 16 ORDER BY v"
)


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        ("SELECT printf('%.*c', 100000000, 'x')", "printf"),
        ("SELECT format('%.*c', 100000000, 'x')", "format"),
        ("SELECT zeroblob(1000000000)", "zeroblob"),
        ("SELECT randomblob(1000000000)", "randomblob"),
        ("SELECT replace(replace('xxxxxxxx', 'x', 'xxxxxxxx'), 'x', 'xxxxxxxx')", "replace"),
        ("SELECT length(content) FROM memories WHERE content = PRINTF('%d', 1)", "printf"),
        ("""SELECT json_patch('{"a": 1}', '{"b": 2}')""", "json_patch"),
    ],
)
async def test_amplifying_functions_are_refused_by_name(brain: Brain, sql: str, name: str) -> None:
    """Functions that build large values from a small query are refused, and named."""
    with pytest.raises(QueryRefused, match=rf"function {name}\(\)"):
        await brain.query(sql)
    assert [[1]] == (await brain.query("SELECT 1")).rows


@pytest.mark.parametrize("sql", [DOUBLING, SORTER])
async def test_memory_hungry_queries_stop_at_the_limits(brain: Brain, sql: str) -> None:
    """A value past the length limit, or a sort past the heap's headroom, stops with QueryTooLarge."""
    with pytest.raises(QueryTooLarge):
        await brain.query(sql)
    # The limits were lifted after the query: recall and plain reads work.
    await brain.remember("after the attack")
    assert [[1]] == (await brain.query("SELECT count(*) FROM memories")).rows
    assert 1 == len(await brain.recall("attack"))


async def test_result_over_the_byte_cap_is_refused(brain: Brain) -> None:
    """Rows adding up past MAX_RESULT_BYTES stop the query with QueryTooLarge, not a huge answer."""
    await brain.remember_many([MemoryItem("y" * 60_000) for _ in range(200)])  # 12 MB of content
    with pytest.raises(QueryTooLarge, match=str(MAX_RESULT_BYTES)):
        await brain.query("SELECT content FROM memories", row_limit=1000)
    assert 100 == len((await brain.query("SELECT content FROM memories", row_limit=100)).rows)


async def test_stored_rows_are_readable_under_the_limits(brain: Brain) -> None:
    """The largest memory the brain accepts reads back whole through brain.query."""
    content = "z" * 65_536
    await brain.remember(content, context={"k": "v" * 16_000})
    result = await brain.query("SELECT content, context FROM memories")
    assert content == result.rows[0][0]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT trim('xxhixx', 'x'), ltrim('xxhixx', 'x'), rtrim('xxhixx', 'x')", ["hi", "hixx", "xxhi"]),
        ("SELECT trim('  hi  '), trim('ab', ''), trim('', 'a'), trim(NULL, 'a')", ["hi", "ab", "", None]),
        ("SELECT trim('éàhé', 'é'), trim(1221, 1), trim(x'616263', 'a')", ["àh", "22", "bc"]),
    ],
)
async def test_trim_with_a_character_set_behaves_like_sqlites(
    brain: Brain, sql: str, expected: list[object]
) -> None:
    """The reader's linear trim/ltrim/rtrim(X, Y) answer what SQLite's own would."""
    assert [expected] == (await brain.query(sql)).rows


async def test_long_like_patterns_are_refused(brain: Brain) -> None:
    """LIKE/GLOB cost value x pattern inside one instruction: patterns over 256 characters are refused."""
    await brain.remember("abc")
    longest = await brain.query("SELECT count(*) FROM memories WHERE content LIKE ?", ["%" * 256])
    assert [[1]] == longest.rows
    for op in ("LIKE", "GLOB"):
        with pytest.raises(InvalidInput, match="pattern too complex"):
            await brain.query(f"SELECT count(*) FROM memories WHERE content {op} ?", ["a" * 257])


async def test_without_sqlites_limits_queries_are_refused(brain: Brain, db_path: Path) -> None:
    """A handle that is not the reader's is refused, and no handle means no query (fail closed)."""
    from daemon.brain._db import run_on
    from daemon.brain._limits import LimitsUnavailable, handle
    from daemon.brain.readonly import query_sync

    assert await run_on(brain._reader, handle, str(db_path))
    with pytest.raises(LimitsUnavailable):
        await run_on(brain._reader, handle, str(db_path.parent / "other.sqlite"))
    with pytest.raises(QueryRefused, match="unavailable"):
        await run_on(brain._reader, query_sync, None, "SELECT 1", (), 1, 1.0)
    assert [[1]] == (await brain.query("SELECT 1")).rows

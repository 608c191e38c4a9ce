"""Bounded growth: retention removes the oldest, least relevant, unpinned memories first."""

from __future__ import annotations

import asyncio
from pathlib import Path

from daemon.brain import Brain, MemoryItem, RetentionPolicy
from tests.conftest import eventually


async def test_max_memories_bounds_rows_and_keeps_pinned(db_path: Path, key: bytes) -> None:
    """Over the bound, unpinned low-relevance memories go first; pinned ones stay."""
    policy = RetentionPolicy(max_memories=50, interval_s=60)
    async with await Brain.open(db_path, key, retention=policy) as brain:
        pinned = await brain.remember_many(
            [MemoryItem(f"pinned {i}", pinned=True, relevance=0.0) for i in range(10)]
        )
        important = await brain.remember_many(
            [MemoryItem(f"important {i}", relevance=1.0) for i in range(30)]
        )
        trivia = await brain.remember_many([MemoryItem(f"trivia {i}", relevance=0.0) for i in range(60)])
        assert 50 == await brain.enforce_retention()
        stats = await brain.stats()
        assert 50 == stats.counts["memories"]
        assert 10 == stats.pinned_memories
        assert 50 == stats.retention.total_removed
        assert stats.retention.last_run_at is not None
        # Equal age and relevance: the older (lower id) trivia went first.
        result = await brain.query("SELECT id FROM memories ORDER BY id")
        assert pinned + important + trivia[-10:] == [row[0] for row in result.rows]
        assert 0 == await brain.enforce_retention()


async def test_only_pinned_left_is_not_an_error(db_path: Path, key: bytes) -> None:
    """Pinned memories are kept even when they alone exceed the bound."""
    async with await Brain.open(db_path, key, retention=RetentionPolicy(max_memories=2)) as brain:
        await brain.remember_many([MemoryItem(f"p{i}", pinned=True) for i in range(5)])
        assert 0 == await brain.enforce_retention()
        assert 5 == (await brain.stats()).counts["memories"]


async def test_max_bytes_bounds_live_bytes(db_path: Path, key: bytes) -> None:
    """With max_bytes, memories are removed until the live pages fit, and the file shrinks."""
    async with await Brain.open(db_path, key) as unbounded:
        text = "lorem ipsum dolor sit amet " * 40
        await unbounded.remember_many([MemoryItem(f"{i} {text}") for i in range(2000)])
        big = await unbounded.stats()
    limit = big.bytes_live // 3
    async with await Brain.open(db_path, key, retention=RetentionPolicy(max_bytes=limit)) as brain:
        removed = await brain.enforce_retention()
        stats = await brain.stats()
        assert removed > 1000
        assert stats.bytes_live <= limit
        assert stats.files["db"] < big.files["db"] + big.files["-wal"]


async def test_run_retention_loop_in_a_task_group(db_path: Path, key: bytes) -> None:
    """run_retention enforces on its interval until its task is cancelled."""
    policy = RetentionPolicy(max_memories=5, interval_s=0.01)
    async with await Brain.open(db_path, key, retention=policy) as brain:
        await brain.remember_many([MemoryItem(f"m{i}") for i in range(20)])
        async with asyncio.TaskGroup() as group:
            task = group.create_task(brain.run_retention())

            async def bounded() -> bool:
                return (await brain.stats()).counts["memories"] <= 5

            await eventually(bounded, what="retention to bound the brain")
            task.cancel()
        assert 15 == brain.retention_state().total_removed


async def test_no_policy_means_no_removal(brain: Brain) -> None:
    """Without a policy nothing is removed and run_retention returns at once."""
    await brain.remember("x")
    assert 0 == await brain.enforce_retention()
    await brain.run_retention()
    assert brain.retention_state().policy is None

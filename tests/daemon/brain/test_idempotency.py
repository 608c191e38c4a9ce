"""Idempotency keys in the brain: a retry gets the first answer, never a second row, across
batches, concurrent retries, a reopened brain and a persona killed mid-write; a key reused
for another write is refused; keys are per caller and expire. memory.remember and
persona.performance.record share them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from daemon.brain import Brain, InvalidInput
from daemon.brain.idempotency import KEY_TTL_S, KeyReused
from daemon.brain.performance import NewRecord, insert_record_once


async def count(brain: Brain, table: str = "memories") -> int:
    def rows(db: object) -> int:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[attr-defined]

    return int(await brain.read(rows))


async def test_a_retry_gets_the_first_answer_and_stores_nothing(brain: Brain) -> None:
    first = await brain.remember_once("the client prefers email", caller="cli:a", key="k-1", relevance=0.8)
    again = await brain.remember_once("the client prefers email", caller="cli:a", key="k-1", relevance=0.8)
    assert (first[0], False) == first
    assert (first[0], True) == again
    assert 1 == await count(brain)
    assert 1 == await count(brain, "idempotency_keys")


async def test_retries_in_one_batch_make_one_memory(brain: Brain) -> None:
    """Sent at once (one group commit), ten retries of one call store it once."""
    outcomes = await asyncio.gather(
        *(brain.remember_once("sent ten times", caller="cli:a", key="k-2") for _ in range(10))
    )
    assert 1 == len({memory_id for memory_id, _ in outcomes})
    assert [False] + [True] * 9 == [replayed for _, replayed in outcomes]
    assert 1 == await count(brain)
    assert (1, 10) == (brain.group_commits, brain.group_committed_calls)  # one transaction


async def test_a_key_given_for_another_memory_is_refused_and_the_batch_goes_on(brain: Brain) -> None:
    await brain.remember_once("first", caller="cli:a", key="k-3")
    reused, plain = await asyncio.gather(
        brain.remember_once("not the same", caller="cli:a", key="k-3"),
        brain.remember("unkeyed, in the same batch"),
        return_exceptions=True,
    )
    assert isinstance(reused, InvalidInput)
    assert "idempotency_key" == reused.field
    assert "another write" in reused.reason
    assert isinstance(plain, int)
    assert 2 == await count(brain)
    # Any field counts, not only the content.
    with pytest.raises(InvalidInput):
        await brain.remember_once("first", caller="cli:a", key="k-3", pinned=True)


async def test_keys_are_per_caller(brain: Brain) -> None:
    a = await brain.remember_once("same words", caller="cli:a", key="shared")
    b = await brain.remember_once("same words", caller="cli:b", key="shared")
    assert a[0] != b[0]
    assert (False, False) == (a[1], b[1])


async def test_an_expired_key_is_forgotten_and_its_memory_kept(brain: Brain) -> None:
    old, _ = await brain.remember_once("a day ago", caller="cli:a", key="k-4")

    def age(db: object) -> None:
        db.execute(  # type: ignore[attr-defined]
            "UPDATE idempotency_keys SET created_at = created_at - ?", (KEY_TTL_S + 1,)
        )

    await brain.write(age)
    new, replayed = await brain.remember_once("a day ago", caller="cli:a", key="k-4")
    assert (new != old, replayed) == (True, False)
    assert 2 == await count(brain)
    assert 1 == await count(brain, "idempotency_keys")


async def test_a_key_outlives_the_process(db_path: Path, key: bytes) -> None:
    async with await Brain.open(db_path, key) as brain:
        first, _ = await brain.remember_once("durable", caller="persona:ada", key="k-5")
    async with await Brain.open(db_path, key) as brain:
        assert (first, True) == await brain.remember_once("durable", caller="persona:ada", key="k-5")
        assert 1 == await count(brain)


async def test_a_bad_key_is_refused(brain: Brain) -> None:
    for bad in ("", "k" * 129):
        with pytest.raises(InvalidInput) as info:
            await brain.remember_once("x", caller="cli:a", key=bad)
        assert "idempotency_key" == info.value.field
    assert 0 == await count(brain)


async def test_an_erased_memory_takes_its_key_with_it(brain: Brain) -> None:
    """brain.erase removes the keys of what it erases (they hold a hash of its fields)."""
    await brain.remember_once("about alice", caller="cli:a", key="k-6", subject="alice")
    await brain.remember_once("about bob", caller="cli:a", key="k-7", subject="bob")
    await brain.erase(subject="alice", confirm="alice")
    assert 1 == await count(brain, "idempotency_keys")
    await brain.erase(everything=True, confirm="erase everything")
    assert 0 == await count(brain, "idempotency_keys")


async def test_a_performance_record_retried_with_its_key_is_recorded_once(brain: Brain) -> None:
    record = NewRecord(session_id="s1", task="draft a claim", score=80, success=True, duration_s=12.5)
    first = await brain.write(insert_record_once, record, "cli:a", "r-1")
    again = await brain.write(insert_record_once, record, "cli:a", "r-1")
    assert not isinstance(first, KeyReused)
    assert (first[0], first[1], True) == again  # the first call's id and time
    assert 1 == await count(brain, "performance_records")
    changed = NewRecord(session_id="s1", task="draft a claim", score=81, success=True, duration_s=12.5)
    assert isinstance(await brain.write(insert_record_once, changed, "cli:a", "r-1"), KeyReused)
    # A key is one write's, whatever the method: a memory's key does not record a task.
    await brain.remember_once("a memory", caller="cli:a", key="shared-1")
    assert isinstance(await brain.write(insert_record_once, record, "cli:a", "shared-1"), KeyReused)
    # Erasing a subject takes the keys of its memories only.
    await brain.erase(subject="nobody", confirm="nobody")
    assert 2 == await count(brain, "idempotency_keys")

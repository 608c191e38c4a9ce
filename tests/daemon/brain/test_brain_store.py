"""The Brain's API: records, group commit, export, and clear errors on bad input."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from daemon.brain import Brain, BrainBusy, BrainClosed, InvalidInput, MemoryItem, NotFound
from daemon.brain.migrations import LATEST
from daemon.brain.store import MAX_WAITING, MAX_WAITING_PER_CALLER
from daemon.callers import current_caller
from protocol.commands.brain import MAX_CONTENT_BYTES

from .conftest import wal_size


async def test_concurrent_remembers_share_one_transaction(brain: Brain) -> None:
    """remember calls of one event-loop tick are committed together, each id once."""
    ids = await asyncio.gather(*(brain.remember(f"note {i}") for i in range(50)))
    assert sorted(ids) == ids == list(range(1, 51))
    assert 1 == brain.group_commits
    assert 50 == brain.group_committed_calls
    assert 50 == (await brain.stats()).counts["memories"]


async def test_a_cancelled_caller_is_not_written(brain: Brain) -> None:
    """A remember cancelled before its batch is taken never reaches the database."""
    task = asyncio.ensure_future(brain.remember("never"))
    other = asyncio.ensure_future(brain.remember("kept"))
    await asyncio.sleep(0)
    task.cancel()
    assert 1 == await other
    assert ["kept"] == [h.content for h in await brain.recall("")]


@pytest.mark.parametrize("side", ["read", "write"])
async def test_work_whose_caller_gave_up_is_not_run(brain: Brain, side: str) -> None:
    """Work queued behind a slow one is skipped if its caller is cancelled meanwhile.

    Under a backlog (a slow disk, a burst) callers give up at their deadline;
    were their work still run, everyone after them would wait for it too.
    """
    run = getattr(brain, side)
    release = threading.Event()
    ran: list[int] = []

    def slow(_db: Any) -> str:
        release.wait(30)
        return "slow done"

    def count(_db: Any, i: int) -> int:
        ran.append(i)
        return i

    first = asyncio.ensure_future(run(slow))
    queued = [asyncio.ensure_future(run(count, i)) for i in range(20)]
    kept = asyncio.ensure_future(run(count, 99))
    await asyncio.sleep(0.05)  # all of them on the worker thread's queue, behind `slow`
    for task in queued:
        task.cancel()
    await asyncio.sleep(0)  # the cancellations reach the tasks (a bus.cancel's would long before)
    release.set()
    assert "slow done" == await first
    assert 99 == await kept
    assert [99] == ran  # none of the twenty abandoned ones ran
    assert all(task.cancelled() for task in queued)
    assert 7 == await run(count, 7)  # and the connection still works


async def test_a_brain_with_a_full_read_queue_refuses_at_once(brain: Brain) -> None:
    """With MAX_WAITING reads waiting for the reader, the next is refused with BrainBusy,
    not queued; the waiting ones all run, and once they have, reads are taken again."""
    run = brain.read
    release = threading.Event()
    ran: list[int] = []

    def slow(_db: Any) -> None:
        release.wait(30)

    def count(_db: Any, i: int) -> int:
        ran.append(i)
        return i

    first = asyncio.ensure_future(run(slow))
    waiting = [asyncio.ensure_future(run(count, i)) for i in range(MAX_WAITING - 1)]
    await asyncio.sleep(0)
    with pytest.raises(BrainBusy) as refused:
        await run(count, -1)
    assert refused.value.retry_after_ms > 0
    assert "the brain's reads are busy" in str(refused.value)
    assert MAX_WAITING == refused.value.waiting
    release.set()
    await first
    assert list(range(MAX_WAITING - 1)) == await asyncio.gather(*waiting) == ran
    assert 7 == await run(count, 7)


async def test_one_caller_cannot_take_every_place_in_the_read_queue(brain: Brain) -> None:
    """A caller with MAX_WAITING_PER_CALLER reads waiting is refused its next one at once;
    another caller, and the brain's own work (no caller), are still taken."""
    release = threading.Event()

    def slow(_db: Any) -> None:
        release.wait(30)

    def one(_db: Any) -> int:
        return 1

    def asked_by(caller: str | None, fn: Any) -> asyncio.Future[Any]:
        token = current_caller.set(caller)
        try:
            return asyncio.ensure_future(brain.read(fn))  # the task copies the context now
        finally:
            current_caller.reset(token)

    first = asked_by(None, slow)
    greedy = [asked_by("cli:greedy", one) for _ in range(MAX_WAITING_PER_CALLER)]
    await asyncio.sleep(0)
    with pytest.raises(BrainBusy) as refused:
        await asked_by("cli:greedy", one)
    assert MAX_WAITING_PER_CALLER == refused.value.yours
    assert f"{MAX_WAITING_PER_CALLER} of them yours" in str(refused.value)
    others = [asked_by("cli:other", one), asked_by(None, one)]
    await asyncio.sleep(0)
    release.set()
    await first
    assert [1] * (MAX_WAITING_PER_CALLER + 2) == await asyncio.gather(*greedy, *others)
    assert 1 == await asked_by("cli:greedy", one)  # its places are given back
    assert {} == brain._reads_by_caller


async def test_writes_are_never_refused_for_a_long_queue(brain: Brain) -> None:
    """A handler that writes twice must not be stopped between them: writes queue, however many."""
    release = threading.Event()

    def slow(_db: Any) -> None:
        release.wait(30)

    def one(_db: Any, i: int) -> int:
        return i

    first = asyncio.ensure_future(brain.write(slow))
    queued = [asyncio.ensure_future(brain.write(one, i)) for i in range(MAX_WAITING * 2)]
    await asyncio.sleep(0)
    release.set()
    await first
    assert list(range(MAX_WAITING * 2)) == await asyncio.gather(*queued)


async def test_bad_memory_in_a_batch_rejects_the_batch_only(brain: Brain) -> None:
    """remember_many validates every item first and names the bad one."""
    with pytest.raises(InvalidInput) as caught:
        await brain.remember_many([MemoryItem("ok"), MemoryItem("bad", relevance=2.0)])
    assert "items[1].relevance" == caught.value.field
    assert 0 == (await brain.stats()).counts["memories"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"content": ""}, "content"),
        ({"content": 42}, "content"),
        ({"content": "é" * (MAX_CONTENT_BYTES // 2 + 1)}, "content"),
        ({"content": "x", "relevance": 1.5}, "relevance"),
        ({"content": "x", "relevance": float("nan")}, "relevance"),
        ({"content": "x", "relevance": True}, "relevance"),
        ({"content": "x", "relevance": "0.5"}, "relevance"),
        ({"content": "x", "context": ["not", "an", "object"]}, "context"),
        ({"content": "x", "context": {"k": object()}}, "context"),
        ({"content": "x", "context": {"k": "v" * 20_000}}, "context"),
        ({"content": "x", "subject": "   "}, "subject"),
        ({"content": "x", "subject": "s" * 129}, "subject"),
        ({"content": "x", "pinned": 1}, "pinned"),
        ({"content": "x", "kind": "Bad Kind"}, "kind"),
        ({"content": "x", "source": None}, "source"),
    ],
)
async def test_remember_rejects_bad_input(brain: Brain, kwargs: dict[str, Any], field: str) -> None:
    """Wrong types, oversize content and out-of-range numbers raise InvalidInput naming the field."""
    content = kwargs.pop("content")
    with pytest.raises(InvalidInput) as caught:
        await brain.remember(content, **kwargs)
    assert field == caught.value.field


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": 101},
        {"kinds": []},
        {"kinds": "note"},
        {"since": "2024-01-01"},
        {"subject": 3},
    ],
)
async def test_recall_rejects_bad_input(brain: Brain, kwargs: dict[str, Any]) -> None:
    """Recall's filters and limit are checked."""
    with pytest.raises(InvalidInput):
        await brain.recall("x", **kwargs)


async def test_forget(brain: Brain) -> None:
    """forget removes by id, counts only those that existed, and recall no longer finds them."""
    a = await brain.remember("apples are red")
    b = await brain.remember("apples are green")
    assert 1 == await brain.forget([a, 999])
    assert [b] == [h.id for h in await brain.recall("apples")]
    with pytest.raises(InvalidInput):
        await brain.forget([0])


async def test_skills(brain: Brain) -> None:
    """Skills are upserted, their uses counted and effectiveness averaged exactly."""
    await brain.skill_upsert("legal.patent", lora_hash="aa", description="patents")
    await brain.skill_upsert("legal.patent", description=None)
    await brain.skill_record_use("legal.patent")
    await brain.skill_record_use("legal.patent", effectiveness=1.0)
    skill = await brain.skill_record_use("legal.patent", effectiveness=0.5)
    assert (3, 2, 0.75, "aa", "patents") == (
        skill.usage_count,
        skill.rated_uses,
        skill.effectiveness,
        skill.lora_hash,
        skill.description,
    )
    assert ["legal.patent"] == [s.skill_id for s in await brain.skills_list()]
    with pytest.raises(NotFound):
        await brain.skill_record_use("nope")
    with pytest.raises(InvalidInput):
        await brain.skill_record_use("bad id!")


async def test_goals(brain: Brain) -> None:
    """Goals are created, replaced by id, listed by priority and status."""
    low = await brain.goals_set("tidy notes", priority=0.2)
    high = await brain.goals_set("file the patent", priority=0.9)
    done = await brain.goals_set("tidy notes", goal_id=low.id, status="done", progress=1.0)
    assert (low.id, "done", 1.0) == (done.id, done.status, done.progress)
    assert done.created_at == low.created_at
    assert [high.id, low.id] == [g.id for g in await brain.goals_list()]
    assert [high.id] == [g.id for g in await brain.goals_list(status="active")]
    with pytest.raises(NotFound):
        await brain.goals_set("x", goal_id=999)
    with pytest.raises(InvalidInput):
        await brain.goals_set("x", status="someday")


async def test_interactions_and_emotions(brain: Brain) -> None:
    """Interactions and emotions are stored with their ids; bad values are refused."""
    assert 1 == await brain.log_interaction(
        with_persona="persona:bob", room_id="room:1", outcome="agreed", learned={"a": 1}
    )
    assert 1 == await brain.emotions_record("curiosity", intensity=0.4, valence=0.5)
    with pytest.raises(InvalidInput):
        await brain.emotions_record("rage", intensity=2.0)
    with pytest.raises(InvalidInput):
        await brain.log_interaction(with_persona="")


async def test_export_document(brain: Brain, tmp_path: Path) -> None:
    """export writes the documented JSON atomically, 0600, with every table."""
    await brain.remember("exported memory", context={"k": [1, 2]}, subject="Zed", pinned=True)
    await brain.skill_upsert("s1")
    await brain.goals_set("g1")
    target = tmp_path / "export.json"
    target.write_text("old")
    summary = await brain.export(target)
    document = json.loads(target.read_text())
    assert ("personad.brain", 1) == (document["format"], document["format_version"])
    memory = document["tables"]["memories"][0]
    assert {"k": [1, 2]} == memory["context"]
    assert (True, "zed") == (memory["pinned"], memory["subject"])
    assert memory["created_at"].endswith("+00:00")
    assert document["counts"] == summary.counts
    assert {"memories": 1, "skills": 1, "goals": 1} == {k: v for k, v in summary.counts.items() if v}
    assert target.stat().st_size == summary.bytes
    assert 0o600 == stat.S_IMODE(target.stat().st_mode)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


async def test_stats(brain: Brain, db_path: Path) -> None:
    """stats reports counts, bytes on disk including the WAL, and the schema version."""
    await brain.remember("x")
    stats = await brain.stats()
    assert 1 == stats.counts["memories"]
    assert stats.files["-wal"] > 0
    assert stats.bytes_on_disk == sum(stats.files.values())
    assert LATEST == stats.schema_version
    assert {"performance_records", "knowledge"} <= set(stats.counts)


async def test_closed_brain_refuses_work(db_path: Path, key: bytes) -> None:
    """After close, calls raise BrainClosed; close is idempotent; pending writes finish first."""
    brain = await Brain.open(db_path, key)
    pending = asyncio.ensure_future(brain.remember("last words"))
    await asyncio.sleep(0)
    await brain.close()
    assert 1 == await pending
    await brain.close()
    with pytest.raises(BrainClosed):
        await brain.remember("too late")
    with pytest.raises(BrainClosed):
        await brain.recall("x")
    assert wal_size(db_path) is None


async def test_open_needs_an_existing_folder(tmp_path: Path, key: bytes) -> None:
    """The brain never creates the session directory layout itself."""
    with pytest.raises(InvalidInput):
        await Brain.open(tmp_path / "missing" / "brain.sqlite", key)

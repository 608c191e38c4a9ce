"""Brain copy (fork) and merge on real SQLCipher files (daemon/brain/lineage.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.brain import Brain, InvalidInput, MemoryItem, SchemaTooNew, WrongKey
from daemon.brain._db import connect_writer
from daemon.brain.lineage import copy_brain, merge_brains

from .conftest import data_digests

T0 = 1_700_000_000.0  # 2023-11-14, the source's oldest memory
DAY = 86_400.0


@contextmanager
def raw(path: Path, key: bytes) -> Iterator[Any]:
    """A raw writer connection, for test set-up and for reading rows back exactly."""
    db = connect_writer(path, key, {})()
    try:
        yield db
    finally:
        db.close()


def rows(path: Path, key: bytes, sql: str) -> list[tuple[Any, ...]]:
    with raw(path, key) as db:
        return [tuple(r) for r in db.execute(sql).fetchall()]


async def build_source(path: Path, key: bytes) -> None:
    """A brain with every kind of row, memories spread over ten days."""
    async with await Brain.open(path, key) as brain:
        await brain.remember_many(
            [
                MemoryItem("alice prefers tea over coffee", subject="Alice", kind="fact"),
                MemoryItem("bob is allergic to peanuts", subject="bob", context={"tags": ["health"]}),
                MemoryItem("the quarterly report is due friday", kind="task"),
                MemoryItem(
                    "alice moved to lisbon in march", subject="alice", context={"tags": ["travel", "x"]}
                ),
                MemoryItem("general note about patents", context={"tags": "legal"}),
                MemoryItem("a memory that will be forgotten"),
            ]
        )
        await brain.forget([6])  # a deleted id above the rest: its number must never come back
        await brain.skill_upsert("summarise", lora_hash="a" * 64, description="short summaries")
        await brain.skill_record_use("summarise", 0.75)
        await brain.goals_set("learn portuguese", priority=0.8)
        await brain.log_interaction(with_persona="other", outcome="talked about alice", subject="alice")
        await brain.emotions_record("curious", intensity=0.4)
    with raw(path, key) as db:
        db.execute("BEGIN")
        db.execute("UPDATE memories SET created_at = ? + (id - 1) * 2 * ?", (T0, DAY))
        db.execute(
            "INSERT INTO evolution_history (trigger_pattern, lora_generated, success_rate, created_at) "
            "VALUES ('legal questions', 'legal-v1', 0.6, ?)",
            (T0,),
        )
        db.execute("COMMIT")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "personas"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
async def source(folder: Path, key: bytes) -> Path:
    path = folder / "source.sqlite"
    await build_source(path, key)
    return path


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Files in ``folder`` other than ``keep`` and the sources' derived -wal/-shm."""
    return sorted(
        name
        for name in os.listdir(folder)
        if name not in keep and not any(name == f"{k}{s}" for k in keep for s in ("-wal", "-shm"))
    )


MEMORY_SQL = (
    "SELECT id, content, kind, source, subject, context, relevance, pinned, created_at "
    "FROM memories ORDER BY id"
)


# -- copy ------------------------------------------------------------------------------------


async def test_copy_carries_knowledge_not_history_and_leaves_the_source_untouched(
    folder: Path, source: Path, key: bytes
) -> None:
    before = data_digests(source)
    dest_key = os.urandom(32)
    report = copy_brain(source, key, folder / "fork.sqlite", dest_key)
    assert data_digests(source) == before
    dest = folder / "fork.sqlite"
    assert (report.memories, report.memories_in_source, report.skills, report.goals) == (5, 5, 1, 1)
    assert report.evolution_history == 1
    assert rows(dest, dest_key, MEMORY_SQL) == rows(source, key, MEMORY_SQL)
    for table in ("skills", "goals", "evolution_history"):
        assert rows(dest, dest_key, f"SELECT * FROM {table}") == rows(source, key, f"SELECT * FROM {table}")
    # The conversation log and emotional state stay with the source.
    assert rows(dest, dest_key, "SELECT count(*) FROM interactions") == [(0,)]
    assert rows(dest, dest_key, "SELECT count(*) FROM emotions") == [(0,)]
    assert oct(dest.stat().st_mode & 0o777) == "0o600"
    # The copy is encrypted under its own key, not the source's.
    with pytest.raises(WrongKey):
        await Brain.open(dest, key)
    # Recall goes through FTS5: the index is consistent and finds the text.
    with raw(dest, dest_key) as db:
        db.execute("INSERT INTO memories_fts (memories_fts) VALUES ('integrity-check')")
    async with await Brain.open(dest, dest_key) as brain:
        hits = await brain.recall("peanuts allergy")
        assert [h.content for h in hits][:1] == ["bob is allergic to peanuts"]
        # A new memory in the fork never takes an id the source has used (6 was forgotten).
        assert await brain.remember("fork's own memory") == 7
    assert leftovers(folder, {"source.sqlite", "fork.sqlite"}) == []


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"subjects": ["ALICE "]}, [1, 4]),
        ({"subjects": ["bob", "nobody"]}, [2]),
        ({"tags": ["task"]}, [3]),  # a kind
        ({"tags": ["travel"]}, [4]),  # in context.tags
        ({"tags": ["legal"]}, [5]),  # context.tags as one string
        ({"tags": ["health", "fact"]}, [1, 2]),
        ({"since": datetime.fromtimestamp(T0 + 2 * DAY, UTC)}, [2, 3, 4, 5]),
        ({"until": datetime.fromtimestamp(T0 + 4 * DAY, UTC)}, [1, 2]),
        (
            {
                "since": datetime.fromtimestamp(T0 + 2 * DAY, UTC),
                "until": datetime.fromtimestamp(T0 + 8 * DAY, UTC),
            },
            [2, 3, 4],
        ),
        ({"subjects": ["alice"], "since": datetime.fromtimestamp(T0 + 1, UTC)}, [4]),
        ({"subjects": ["alice"], "tags": ["nothing"]}, []),
    ],
)
async def test_copy_filters_memories(
    folder: Path, source: Path, key: bytes, filters: dict[str, Any], expected: list[int]
) -> None:
    dest_key = os.urandom(32)
    report = copy_brain(source, key, folder / "fork.sqlite", dest_key, **filters)
    ids = [r[0] for r in rows(folder / "fork.sqlite", dest_key, "SELECT id FROM memories ORDER BY id")]
    assert ids == expected
    assert report.memories == len(expected)
    # Only memories are filtered.
    assert report.skills == 1
    assert report.goals == 1
    # And the FTS index holds exactly the copied rows.
    fts = rows(
        folder / "fork.sqlite",
        dest_key,
        "SELECT rowid FROM memories_fts WHERE memories_fts MATCH 'a OR alice OR bob OR the OR general'",
    )
    assert {r[0] for r in fts} <= set(expected)
    with raw(folder / "fork.sqlite", dest_key) as db:
        db.execute("INSERT INTO memories_fts (memories_fts) VALUES ('integrity-check')")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"subjects": []}, "subjects"),
        ({"subjects": "alice"}, "subjects"),
        ({"subjects": [3]}, "subjects[0]"),
        ({"subjects": ["  "]}, "subjects[0]"),
        ({"tags": [""]}, "tags[0]"),
        ({"tags": ["x" * 129]}, "tags[0]"),
        ({"since": "2024-01-01"}, "since"),
        ({"until": 5.0}, "until"),
        ({"since": datetime(2024, 1, 2, tzinfo=UTC), "until": datetime(2024, 1, 1, tzinfo=UTC)}, "until"),
        ({"source_key": b"short"}, "source_key"),
        ({"dest_key": "00" * 32}, "dest_key"),
        ({"dest": "fork.sqlite"}, "dest"),
    ],
)
async def test_copy_refuses_bad_arguments_and_writes_nothing(
    folder: Path, source: Path, key: bytes, kwargs: dict[str, Any], field: str
) -> None:
    before = data_digests(source)
    args: dict[str, Any] = {"source_key": key, "dest": folder / "fork.sqlite", "dest_key": os.urandom(32)}
    args |= kwargs
    with pytest.raises(InvalidInput) as caught:
        copy_brain(source, **args)
    assert caught.value.field == field
    assert data_digests(source) == before
    assert leftovers(folder, {"source.sqlite"}) == []


async def test_copy_with_a_wrong_source_key_is_refused_and_leaves_nothing(
    folder: Path, source: Path, key: bytes
) -> None:
    before = data_digests(source)
    with pytest.raises(WrongKey) as caught:
        copy_brain(source, os.urandom(32), folder / "fork.sqlite", os.urandom(32))
    assert caught.value.path == source
    assert data_digests(source) == before
    assert leftovers(folder, {"source.sqlite"}) == []


async def test_copy_never_overwrites_and_refuses_itself(folder: Path, source: Path, key: bytes) -> None:
    existing = folder / "fork.sqlite"
    existing.write_bytes(b"someone else's brain")
    with pytest.raises(InvalidInput, match="never overwrites"):
        copy_brain(source, key, existing, os.urandom(32))
    assert existing.read_bytes() == b"someone else's brain"
    with pytest.raises(InvalidInput):
        copy_brain(source, key, source, key)
    with pytest.raises(InvalidInput, match="does not exist"):
        copy_brain(source, key, folder / "missing" / "fork.sqlite", key)
    with pytest.raises(InvalidInput, match="not a brain file"):
        copy_brain(folder / "absent.sqlite", key, folder / "f2.sqlite", key)


async def test_copy_refuses_garbage_truncated_and_newer_sources(
    folder: Path, source: Path, key: bytes
) -> None:
    garbage = folder / "garbage.sqlite"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(WrongKey):
        copy_brain(garbage, key, folder / "f1.sqlite", key)

    # Page 1 intact, the rest cut off: it opens, then fails while copying;
    # the half-written destination must not survive.
    async with await Brain.open(folder / "big.sqlite", key) as brain:
        await brain.remember_many([MemoryItem(f"memory {i} " + "words " * 40) for i in range(2000)])
    truncated = folder / "truncated.sqlite"
    truncated.write_bytes((folder / "big.sqlite").read_bytes()[: 4096 * 3])
    with pytest.raises(InvalidInput, match="is damaged") as caught:
        copy_brain(truncated, key, folder / "f2.sqlite", key)
    assert caught.value.field == "source"

    newer = folder / "newer.sqlite"
    shutil.copyfile(source, newer)
    with raw(newer, key) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaTooNew):
        copy_brain(newer, key, folder / "f3.sqlite", key)
    keep = {"source.sqlite", "garbage.sqlite", "big.sqlite", "truncated.sqlite", "newer.sqlite"}
    assert leftovers(folder, keep) == []


async def test_copy_handles_a_hostile_path(folder: Path, source: Path, key: bytes) -> None:
    odd = folder / "we?ird #name%20'\".sqlite"
    shutil.copyfile(source, odd)
    dest_key = os.urandom(32)
    copy_brain(odd, key, folder / "fork?#.sqlite", dest_key)
    assert len(rows(folder / "fork?#.sqlite", dest_key, "SELECT id FROM memories")) == 5
    # A '?' must not end the path: no stray file named after its first half.
    assert leftovers(folder, {"source.sqlite", odd.name, "fork?#.sqlite"}) == []


# -- merge -------------------------------------------------------------------------------


async def make_brain(path: Path, key: bytes, memories: list[tuple[MemoryItem, float]]) -> None:
    async with await Brain.open(path, key) as brain:
        await brain.remember_many([m for m, _ in memories])
    with raw(path, key) as db:
        db.execute("BEGIN")
        for memory_id, (_, created) in enumerate(memories, start=1):
            db.execute("UPDATE memories SET created_at = ? WHERE id = ?", (created, memory_id))
        db.execute("COMMIT")


@pytest.fixture
async def pair(folder: Path) -> tuple[Path, bytes, Path, bytes]:
    pk, sk = os.urandom(32), os.urandom(32)
    primary, secondary = folder / "primary.sqlite", folder / "secondary.sqlite"
    await make_brain(
        primary,
        pk,
        [
            (MemoryItem("only the primary knows the vault code is 4412"), T0),
            (MemoryItem("The meeting moved to Tuesday.", relevance=0.5), T0 + 1),
            (
                MemoryItem("alice prefers tea over coffee", relevance=0.9, context={"tags": ["drinks"]}),
                T0 + 2,
            ),
            (MemoryItem("bob is allergic to peanuts", subject="bob"), T0 + 3),
            (MemoryItem("the office is on the third floor", relevance=0.2), T0 + 4),
            (MemoryItem("carol runs the marathon", subject="carol"), T0 + 5),
        ],
    )
    await make_brain(
        secondary,
        sk,
        [
            (MemoryItem("only the secondary knows the boat is called Osprey"), T0),
            # Same relevance, newer: the secondary's wins.
            (MemoryItem("the meeting moved to tuesday", relevance=0.5), T0 + 10),
            # Lower relevance: the primary's wins, tags unioned.
            (
                MemoryItem(
                    "Alice prefers tea over coffee!", relevance=0.3, context={"tags": ["alice", "drinks"]}
                ),
                T0 + 10,
            ),
            # Pinned beats higher relevance.
            (MemoryItem("bob is allergic to peanuts", pinned=True, relevance=0.1), T0 - 100),
            # The subject moves onto the kept memory, which had none.
            (MemoryItem("the office is on the third floor", subject="dave", relevance=0.1), T0),
            # Same text, another person: never folded (erasing one must find it).
            (MemoryItem("carol runs the marathon", subject="erin"), T0 + 6),
            (MemoryItem("The meeting moved to Thursday."), T0 + 11),
        ],
    )
    async with await Brain.open(primary, pk) as brain:
        await brain.skill_upsert("summarise", lora_hash="a" * 64)
        await brain.skill_record_use("summarise", 0.5)
        await brain.skill_record_use("summarise", 0.5)
        await brain.skill_upsert("translate")
        await brain.skill_record_use("translate", 0.9)
        await brain.skill_upsert("unrated")
        await brain.goals_set("learn portuguese", description="to A2")
        await brain.goals_set("ship the report")
    async with await Brain.open(secondary, sk) as brain:
        await brain.skill_upsert("summarise", lora_hash="b" * 64)
        await brain.skill_record_use("summarise", 0.8)
        await brain.skill_upsert("translate")
        await brain.skill_record_use("translate", 0.9)
        await brain.skill_upsert("unrated")
        await brain.skill_record_use("unrated", 0.1)
        await brain.skill_upsert("draw")
        await brain.goals_set("Learn  Portuguese", description="to A2", progress=0.5)
        await brain.goals_set("paint the fence")
    return primary, pk, secondary, sk


async def test_merge_unions_memories_and_drops_near_duplicates_by_the_rule(
    folder: Path, pair: tuple[Path, bytes, Path, bytes]
) -> None:
    primary, pk, secondary, sk = pair
    before = (data_digests(primary), data_digests(secondary))
    dk = os.urandom(32)
    dest = folder / "merged.sqlite"
    report = merge_brains(primary, pk, secondary, sk, dest, dk)
    assert (data_digests(primary), data_digests(secondary)) == before
    got = {
        r[0]: r[1:]
        for r in rows(
            dest, dk, "SELECT content, subject, context, relevance, pinned, created_at FROM memories"
        )
    }
    # A memory only the secondary had is in the result; and one only the primary had.
    assert "only the secondary knows the boat is called Osprey" in got
    assert "only the primary knows the vault code is 4412" in got
    # Equal relevance: the newer (secondary's) is kept, the other dropped.
    assert "the meeting moved to tuesday" in got
    assert "The meeting moved to Tuesday." not in got
    # Higher relevance wins; tags are the union.
    assert got["alice prefers tea over coffee"][1] == '{"tags":["drinks","alice"]}'
    assert "Alice prefers tea over coffee!" not in got
    # Pinned (the secondary's) wins over relevance, and takes the primary's subject.
    assert got["bob is allergic to peanuts"][3] == 1
    assert got["bob is allergic to peanuts"][0] == "bob"
    assert list(got).count("bob is allergic to peanuts") == 1
    # The kept memory takes the dropped one's subject.
    assert got["the office is on the third floor"][0] == "dave"
    # Different subjects: both kept.
    assert rows(
        dest, dk, "SELECT subject FROM memories WHERE content = 'carol runs the marathon' ORDER BY subject"
    ) == [
        ("carol",),
        ("erin",),
    ]
    # One fact apart: both kept.
    assert "The meeting moved to Thursday." in got
    assert report.memories == len(rows(dest, dk, "SELECT id FROM memories")) == 9
    assert report.dropped_duplicates == 4
    # Dropped: the primary's meeting and bob, the secondary's alice and office.
    assert report.dropped_by_side == {"primary": 2, "secondary": 2}
    assert (report.kept_primary, report.kept_secondary) == (4, 5)
    # New ids follow created_at; the FTS index is consistent and recall finds the secondary's memory.
    assert [r[0] for r in rows(dest, dk, "SELECT created_at FROM memories ORDER BY id")] == sorted(
        r[0] for r in rows(dest, dk, "SELECT created_at FROM memories")
    )
    with raw(dest, dk) as db:
        db.execute("INSERT INTO memories_fts (memories_fts) VALUES ('integrity-check')")
    async with await Brain.open(dest, dk) as brain:
        hits = await brain.recall("boat Osprey")
        assert hits[0].content == "only the secondary knows the boat is called Osprey"
    assert leftovers(folder, {"primary.sqlite", "secondary.sqlite", "merged.sqlite"}) == []


async def test_merge_keeps_skills_by_best_effectiveness_and_unions_goals(
    folder: Path, pair: tuple[Path, bytes, Path, bytes]
) -> None:
    primary, pk, secondary, sk = pair
    dk = os.urandom(32)
    report = merge_brains(primary, pk, secondary, sk, folder / "merged.sqlite", dk)
    skills = {
        r[0]: r[1:]
        for r in rows(
            folder / "merged.sqlite",
            dk,
            "SELECT skill_id, lora_hash, effectiveness, rated_uses, usage_count FROM skills",
        )
    }
    # summarise: 0.8 (secondary) beats 0.5; its adapter and rated uses; usage summed (2 + 1).
    assert skills["summarise"] == ("b" * 64, 0.8, 1, 3)
    # translate: a tie goes to the primary; usage summed.
    assert skills["translate"] == (None, 0.9, 1, 2)
    # unrated in the primary loses to any rating.
    assert skills["unrated"] == (None, 0.1, 1, 1)
    # draw: only the secondary had it.
    assert skills["draw"] == (None, None, 0, 0)
    assert (report.skills, report.skills_in_both) == (4, 3)
    goals = rows(folder / "merged.sqlite", dk, "SELECT title, progress FROM goals ORDER BY title")
    # The same goal in both is kept once: the one updated last (the secondary's).
    assert goals == [("Learn  Portuguese", 0.5), ("paint the fence", 0.0), ("ship the report", 0.0)]
    assert report.goals == 3


async def test_merge_with_a_wrong_key_names_the_file_and_leaves_nothing(
    folder: Path, pair: tuple[Path, bytes, Path, bytes]
) -> None:
    primary, pk, secondary, sk = pair
    before = (data_digests(primary), data_digests(secondary))
    for keys, culprit in (((os.urandom(32), sk), primary), ((pk, os.urandom(32)), secondary)):
        with pytest.raises(WrongKey) as caught:
            merge_brains(primary, keys[0], secondary, keys[1], folder / "merged.sqlite", os.urandom(32))
        assert caught.value.path == culprit
    with pytest.raises(InvalidInput) as bad:
        merge_brains(primary, pk, primary, pk, folder / "merged.sqlite", os.urandom(32))
    assert bad.value.field == "secondary"
    with pytest.raises(InvalidInput) as bad:
        merge_brains(primary, pk, secondary, sk, folder / "merged.sqlite", os.urandom(32), near_duplicate=2)
    assert bad.value.field == "near_duplicate"
    assert (data_digests(primary), data_digests(secondary)) == before
    assert leftovers(folder, {"primary.sqlite", "secondary.sqlite"}) == []

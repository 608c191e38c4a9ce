"""Recall ranks by text, recency and relevance, and its filters hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.brain import Brain, MemoryItem
from daemon.brain import recall as recall_module
from daemon.brain.recall import query_terms

DAY = 86_400.0


async def backdate(brain: Brain, memory_id: int, days: float) -> None:
    """Move a memory into the past (through the writer, as a migration would)."""

    def update(db: object) -> None:
        db.execute(  # type: ignore[attr-defined]
            "UPDATE memories SET created_at = created_at - ? WHERE id = ?", (days * DAY, memory_id)
        )

    from daemon.brain._db import run_on

    await run_on(brain._writer, update)


async def test_relevant_recent_memory_beats_irrelevant_and_old(brain: Brain) -> None:
    """The matching, recent, relevant memory ranks first; unrelated ones are not recalled."""
    recent = await brain.remember("Alice moved the patent review to Tuesday", relevance=0.8)
    old = await brain.remember("the patent review happened on Tuesday", relevance=0.8)
    await backdate(brain, old, 120)
    await brain.remember("the cafeteria serves soup on Fridays", relevance=1.0)
    hits = await brain.recall("when is the patent review")
    assert [recent, old] == [h.id for h in hits]
    top = hits[0]
    assert top.score == pytest.approx(0.5 * top.text_score + 0.3 * top.recency + 0.2 * top.relevance)
    assert hits[1].recency == pytest.approx(0.5**4, rel=1e-3)


async def test_stronger_text_match_wins_at_equal_age(brain: Brain) -> None:
    """Among equally recent, equally relevant memories, the better BM25 match is first."""
    weak = await brain.remember("notes about gardening and also one patent")
    strong = await brain.remember("patent claims, patent drawings, patent office fees")
    hits = await brain.recall("patent")
    assert [strong, weak] == [h.id for h in hits]
    assert 1.0 == hits[0].text_score
    assert 0 < hits[1].text_score < 1


async def test_stemming_and_stop_words(brain: Brain) -> None:
    """'patents' finds 'patent'; stop words alone do not match everything."""
    memory = await brain.remember("she filed a patent")
    assert [memory] == [h.id for h in await brain.recall("Patents")]
    assert ["patents", "filed"] == query_terms("the patents that were filed")
    assert ["the"] == query_terms("the the")


async def test_fts_syntax_in_query_is_just_text(brain: Brain) -> None:
    """FTS5 operators and quotes in a query are searched as words, never parsed."""
    memory = await brain.remember('say "NEAR" or NOT and * ( )')
    for query in ['"', "NEAR(", "a OR", "*", "content:x", "NOT", '"near"']:
        await brain.recall(query)
    assert [memory] == [h.id for h in await brain.recall('"NEAR"')]


async def test_filters(brain: Brain) -> None:
    """kinds, source, subject, since and until each narrow the hits."""
    a = await brain.remember("budget meeting notes", kind="note", source="chat", subject="Alice")
    b = await brain.remember("budget meeting fact", kind="fact", source="web", subject="bob")
    c = await brain.remember("budget meeting old", kind="note", source="chat")
    await backdate(brain, c, 10)

    async def ids(**filters: object) -> set[int]:
        return {h.id for h in await brain.recall("budget meeting", **filters)}  # type: ignore[arg-type]

    now = datetime.now(tz=UTC)
    assert {a, b, c} == await ids()
    assert {b} == await ids(kinds=["fact"])
    assert {a, c} == await ids(source="chat")
    assert {a} == await ids(subject="ALICE ")
    assert {a, b} == await ids(since=now - timedelta(days=1))
    assert {c} == await ids(until=now - timedelta(days=1))
    assert set() == await ids(kinds=["fact"], source="chat")


async def test_empty_query_recalls_by_recency_and_relevance(brain: Brain) -> None:
    """Without words, the newest relevant memories come first, filters still apply."""
    old = await brain.remember("old", relevance=0.5)
    await backdate(brain, old, 60)
    new = await brain.remember("new", relevance=0.5)
    pinned_fact = await brain.remember("a fact", kind="fact")
    hits = await brain.recall("")
    assert [pinned_fact, new, old] == [h.id for h in hits]
    assert all(0.0 == h.text_score for h in hits)
    assert [pinned_fact] == [h.id for h in await brain.recall("", kinds=["fact"])]


async def test_limit(brain: Brain) -> None:
    """At most `limit` hits come back."""
    await brain.remember_many([MemoryItem(f"item number {i} of the list") for i in range(30)])
    assert 7 == len(await brain.recall("list", limit=7))


async def test_bounded_candidates_keep_rare_words_and_filters_exact(
    brain: Brain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tiny budget: common words are dropped for rare ones; filtered recall stays exact."""
    monkeypatch.setattr(recall_module, "CANDIDATE_BUDGET", 5)
    items = [MemoryItem(f"common word entry {i}", source="bulk") for i in range(20)]
    ids = await brain.remember_many(items)
    rare = await brain.remember("common word with a zeppelin", source="rare")
    # "zeppelin" is rare: it is admitted, "common" (20 rows) is not.
    assert [rare] == [h.id for h in await brain.recall("common zeppelin")]
    # Only common words: the newest 5 matches are ranked...
    hits = await brain.recall("common word", limit=10)
    assert set(ids[-4:]) | {rare} == {h.id for h in hits}
    # ...but a filter that leaves fewer than asked reruns without the window.
    oldest = await brain.recall("common word", source="bulk", limit=30)
    assert set(ids) == {h.id for h in oldest}


async def test_recall_scales_to_thousands(tmp_path: Path, key: bytes) -> None:
    """A brain of a few thousand memories recalls the one that matches a rare word."""
    folder = tmp_path / "big"
    folder.mkdir()
    async with await Brain.open(folder / "brain.sqlite", key) as brain:
        await brain.remember_many([MemoryItem(f"routine log line {i}") for i in range(3000)])
        needle = await brain.remember("the routine found a quasar")
        assert needle == (await brain.recall("routine quasar"))[0].id

"""persona.knowledge.* end to end: a real persona daemon, a real bus, real embeddings from cap:inference.

The embeddings come from the real all-MiniLM-L6-v2 (daemon/inference/embed.py)
served as ``inference.embed`` on ``cap:inference`` by a client holding the
inference service's own token; the persona process itself loads no model.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.brain.recall import STOP_WORDS, query_terms
from daemon.brain.store import MAX_WAITING
from daemon.client import BusClient
from daemon.dispatch import Dispatcher
from daemon.inference.embed import Embedder, register_embed_command
from daemon.inference.service import service_token
from daemon.persona.daemon import PersonaDaemon
from daemon.persona.knowledge import SEMANTIC_CANDIDATES, live_index
from protocol import ErrorCode, RpcError
from tests.conftest import WAIT
from tests.daemon.persona.running import running_persona

PARAPHRASES = Path(__file__).with_name("knowledge_paraphrases.json")
ADA = "persona:ada"


def load_paraphrases() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PARAPHRASES.read_text(encoding="utf-8"))
    return data


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"\w+", text.lower()) if w not in STOP_WORDS}


def _related(a: str, b: str) -> bool:
    """Stemming-ish sameness, stricter than porter: one a prefix of the other, or 5 letters in common."""
    short, long = sorted((a, b), key=len)
    return (
        short == long or (len(short) >= 3 and long.startswith(short)) or (len(short) >= 5 and a[:5] == b[:5])
    )


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    """One real embedder for the module (loading the model takes seconds)."""
    running = Embedder(threads=1)
    yield running
    running.close()


@pytest.fixture
async def embed_service(bus, state, embedder) -> AsyncIterator[Any]:  # type: ignore[no-untyped-def]
    """Factory: serve inference.embed on cap:inference (start() again after stop() to come back)."""
    clients: list[BusClient] = []

    async def start() -> BusClient:
        dispatcher = Dispatcher()
        register_embed_command(dispatcher, embedder)
        client = BusClient(
            bus.url,
            token=service_token(state, "main"),
            kind="inference",
            name="main",
            capabilities=["inference"],
            handler=dispatcher,
        )
        await client.start()
        await client.wait_connected(WAIT)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def ada(bus, state) -> AsyncIterator[PersonaDaemon]:  # type: ignore[no-untyped-def]
    """The persona daemon ada, in-process, with its brain open (the same brain on every start)."""
    async with running_persona(bus, state, "ada") as daemon:
        yield daemon


async def unembedded(daemon: PersonaDaemon) -> int:
    assert daemon.brain is not None
    count: int = await daemon.brain.read(
        lambda db: db.execute("SELECT count(*) FROM knowledge WHERE embedding IS NULL").fetchone()[0]
    )
    return count


def test_paraphrase_set_shares_no_word_with_its_answers() -> None:
    """≥ 40 documents and ≥ 40 queries; no query shares a content word (stemming-ish) with its answer."""
    data = load_paraphrases()
    documents = {d["id"]: d["content"] for d in data["documents"]}
    assert len(documents) >= 40
    assert len(data["queries"]) >= 40
    for item in data["queries"]:
        shared = [
            (q, d) for q in _words(item["query"]) for d in _words(documents[item["answer"]]) if _related(q, d)
        ]
        assert [] == shared, item["query"]


def test_paraphrase_queries_do_not_match_their_answers_in_fts5() -> None:
    """The same check by FTS5 itself, with the brain's porter tokenizer and recall's query words."""
    data = load_paraphrases()
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE VIRTUAL TABLE f USING fts5(content, tokenize = 'porter unicode61 remove_diacritics 2')"
    )
    rowids = {
        doc["id"]: db.execute("INSERT INTO f (content) VALUES (?)", (doc["content"],)).lastrowid
        for doc in data["documents"]
    }
    for item in data["queries"]:
        match = " OR ".join(f'"{term}"' for term in query_terms(item["query"]))
        matched = {row[0] for row in db.execute("SELECT rowid FROM f WHERE f MATCH ?", (match,))}
        assert rowids[item["answer"]] not in matched, item["query"]


async def test_hybrid_search_finds_paraphrases_full_text_cannot(ada, connect, embed_service) -> None:
    """Added while cap:inference is offline: full text only (reranked false); once it is back,
    the first search embeds the backlog and hybrid recall@10 beats full text's."""
    caller = await connect()
    data = load_paraphrases()
    ids: dict[str, int] = {}
    for doc in data["documents"]:
        added = await caller.call("persona.knowledge.add", {"content": doc["content"]}, to=ADA)
        assert added["embedded"] is False
        ids[doc["id"]] = added["id"]
    assert len(ids) == await unembedded(ada)

    async def recall_at_10() -> tuple[float, set[bool]]:
        found, modes = 0, set()
        for item in data["queries"]:
            result = await caller.call("persona.knowledge.search", {"query": item["query"]}, to=ADA)
            modes.add(result["reranked"])
            found += ids[item["answer"]] in [hit["id"] for hit in result["hits"]]
        return found / len(data["queries"]), modes

    full_text, modes = await recall_at_10()
    assert {False} == modes
    await embed_service()
    hybrid, modes = await recall_at_10()
    assert {True} == modes
    assert 0 == await unembedded(ada)
    assert hybrid >= 0.8, hybrid
    assert hybrid > full_text + 0.5, (hybrid, full_text)


async def recall_at_10(caller: BusClient, ids: dict[str, int]) -> float:
    """recall@10 of persona.knowledge.search on the paraphrase set (every search re-ranked)."""
    queries = load_paraphrases()["queries"]
    found = 0
    for item in queries:
        result = await caller.call("persona.knowledge.search", {"query": item["query"]}, to=ADA)
        assert result["reranked"] is True
        found += ids[item["answer"]] in [hit["id"] for hit in result["hits"]]
    return found / len(queries)


async def add_paraphrase_documents(caller: BusClient) -> dict[str, int]:
    ids: dict[str, int] = {}
    for doc in load_paraphrases()["documents"]:
        ids[doc["id"]] = (await caller.call("persona.knowledge.add", {"content": doc["content"]}, to=ADA))[
            "id"
        ]
    return ids


async def test_paraphrases_are_found_among_many_newer_items(ada, connect, embed_service) -> None:
    """600 newer items of equal relevance (twice the old relevance pool) do not hide a paraphrase:
    the semantic candidates come from an index over every embedded item. Added offline, the
    backlog is embedded by searches, oldest first, into the index."""
    caller = await connect()
    ids = await add_paraphrase_documents(caller)
    for i in range(600):
        content = f"Inventory note {i}: shelf {i % 37} holds {i % 11 + 1} boxes of part number {1000 + i}."
        await caller.call("persona.knowledge.add", {"content": content}, to=ADA)
    await embed_service()
    searches = 0
    while await unembedded(ada):
        await caller.call("persona.knowledge.search", {"query": "shelf boxes"}, to=ADA)
        searches += 1
    assert searches <= 11  # 645 items, 63 per search
    live = live_index(ada.brain)
    assert live is not None
    assert live.built is not None
    assert len(live.built) == 645
    assert await recall_at_10(caller, ids) >= 0.9


async def test_the_index_follows_add_and_prune_and_is_rebuilt_after_a_restart(
    bus, state, connect, embed_service
) -> None:
    """An item added after the index is built is found by meaning; a pruned one is gone from the
    index and never returned; a restarted daemon builds the same index from its brain."""
    caller = await connect()
    await embed_service()
    query = "Which planet has the most moons?"
    async with running_persona(bus, state, "ada") as daemon:
        ids = await add_paraphrase_documents(caller)
        before = await recall_at_10(caller, ids)
        live = live_index(daemon.brain)
        assert live is not None
        assert live.built is not None
        assert len(live.built) == len(ids)
        added = await caller.call(
            "persona.knowledge.add",
            {
                "content": "Saturn is orbited by well over a hundred natural satellites.",
                "relevance_score": 0.1,
            },
            to=ADA,
        )
        assert added["id"] in live.built
        hits = (await caller.call("persona.knowledge.search", {"query": query}, to=ADA))["hits"]
        assert added["id"] == hits[0]["id"]
        pruned = await caller.call("persona.knowledge.prune", {"min_relevance": 0.2}, to=ADA)
        assert 1 == pruned["removed"]
        assert added["id"] not in live.built
        assert len(live.built) == len(ids)
        result = await caller.call("persona.knowledge.search", {"query": query, "limit": 50}, to=ADA)
        assert added["id"] not in [hit["id"] for hit in result["hits"]]
        assert result["candidates"] <= len(ids)
        nearest = live.built.top([0.0] * 383 + [1.0], SEMANTIC_CANDIDATES)
    async with running_persona(bus, state, "ada") as daemon:
        assert live_index(daemon.brain) is not live
        assert await recall_at_10(caller, ids) == before
        again = live_index(daemon.brain)
        assert again is not None
        assert again.built is not None
        assert len(again.built) == len(ids)
        assert added["id"] not in again.built
        assert again.built.top([0.0] * 383 + [1.0], SEMANTIC_CANDIDATES) == nearest


async def test_add_embeds_now_and_backfills_the_offline_ones(ada, connect, embed_service) -> None:
    """An add while online stores its embedding and those of items added while offline."""
    caller = await connect()
    first = await caller.call("persona.knowledge.add", {"content": "Tides follow the moon."}, to=ADA)
    assert (False, 0) == (first["embedded"], first["backfilled"])
    await embed_service()
    second = await caller.call(
        "persona.knowledge.add", {"content": "Salt lowers water's freezing point."}, to=ADA
    )
    assert (True, 1) == (second["embedded"], second["backfilled"])
    assert 0 == await unembedded(ada)
    result = await caller.call("persona.knowledge.search", {"query": "why the sea rises and falls"}, to=ADA)
    assert result["reranked"] is True
    assert first["id"] == result["hits"][0]["id"]
    top = result["hits"][0]
    expected = 0.65 * top["semantic_score"] + 0.25 * top["text_score"] + 0.10 * top["relevance"]
    assert top["score"] == pytest.approx(expected)


async def test_an_offline_embedder_is_logged_once_and_its_return_once(
    ada, connect, embed_service, caplog
) -> None:
    """Searches while cap:inference is away say so once, not once per search; its return is said too."""
    import logging

    caplog.set_level(logging.INFO, logger="personad.persona.knowledge")
    caller = await connect()
    for query in ("tides", "moon", "salt"):
        result = await caller.call("persona.knowledge.search", {"query": query}, to=ADA)
        assert result["reranked"] is False
    await embed_service()
    await caller.call("persona.knowledge.search", {"query": "tides"}, to=ADA)
    said = [r.getMessage() for r in caplog.records if r.name == "personad.persona.knowledge"]
    assert 1 == sum("inference.embed unavailable" in m for m in said), said
    assert 1 == sum("answers again" in m for m in said), said


async def test_a_long_item_is_embedded_and_does_not_block_the_backfill(ada, connect, embed_service) -> None:
    """Content past inference.embed's per-text limit is embedded by its beginning (the model reads 256)."""
    caller = await connect()
    await embed_service()
    long = await caller.call("persona.knowledge.add", {"content": "volcanic eruptions " * 1500}, to=ADA)
    short = await caller.call("persona.knowledge.add", {"content": "lava and ash"}, to=ADA)
    assert (True, True) == (long["embedded"], short["embedded"])
    assert 0 == await unembedded(ada)


async def test_a_query_without_words_ranks_by_relevance(ada, connect) -> None:
    """Offline and with nothing to match, the pool is ranked by stored relevance."""
    caller = await connect()
    for content, relevance in [("low", 0.1), ("high", 0.9), ("middle", 0.5)]:
        await caller.call("persona.knowledge.add", {"content": content, "relevance_score": relevance}, to=ADA)
    result = await caller.call("persona.knowledge.search", {"query": "?!"}, to=ADA)
    assert (False, ["high", "middle", "low"]) == (result["reranked"], [h["content"] for h in result["hits"]])


async def test_tags_filter_and_full_text_scores(ada, connect) -> None:
    """Search keeps items carrying every tag asked for; offline it ranks by BM25 and relevance only."""
    caller = await connect()
    items = [
        ("GDPR fines reach four percent of turnover.", ["law", "eu"], 0.9),
        ("GDPR applies to processors as well as controllers.", ["law"], 0.5),
        ("GDPR is pronounced letter by letter.", ["trivia"], 0.1),
    ]
    for content, tags, relevance in items:
        await caller.call(
            "persona.knowledge.add", {"content": content, "tags": tags, "relevance_score": relevance}, to=ADA
        )
    both = await caller.call("persona.knowledge.search", {"query": "gdpr", "tags": ["law", "eu"]}, to=ADA)
    assert [items[0][0]] == [hit["content"] for hit in both["hits"]]
    law = await caller.call("persona.knowledge.search", {"query": "gdpr", "tags": ["law"]}, to=ADA)
    assert [items[0][0], items[1][0]] == [hit["content"] for hit in law["hits"]]
    every = await caller.call("persona.knowledge.search", {"query": "gdpr", "limit": 2}, to=ADA)
    assert every["reranked"] is False
    assert 2 == len(every["hits"])
    for hit in every["hits"]:
        assert hit["semantic_score"] is None
        assert hit["score"] == pytest.approx(0.8 * hit["text_score"] + 0.2 * hit["relevance"])
    nothing = await caller.call("persona.knowledge.search", {"query": "zeppelin"}, to=ADA)
    assert [] == nothing["hits"]


async def test_prune_by_relevance_then_count(ada, connect) -> None:
    """min_relevance removes the low ones, max_items keeps the most relevant; neither is refused."""
    caller = await connect()
    for i, relevance in enumerate([0.1, 0.2, 0.6, 0.7, 0.8, 0.9]):
        await caller.call(
            "persona.knowledge.add", {"content": f"fact number {i}", "relevance_score": relevance}, to=ADA
        )
    pruned = await caller.call("persona.knowledge.prune", {"min_relevance": 0.5}, to=ADA)
    assert {"removed": 2, "remaining": 4} == pruned
    pruned = await caller.call("persona.knowledge.prune", {"max_items": 2}, to=ADA)
    assert {"removed": 2, "remaining": 2} == pruned
    left = await caller.call("persona.knowledge.search", {"query": "fact"}, to=ADA)
    assert {"fact number 4", "fact number 5"} == {hit["content"] for hit in left["hits"]}
    with pytest.raises(RpcError) as info:
        await caller.call("persona.knowledge.prune", {}, to=ADA)
    assert (ErrorCode.INVALID_PARAMS, "min_relevance") == (info.value.code, info.value.data["field"])
    assert 2 == len((await caller.call("persona.knowledge.search", {"query": "fact"}, to=ADA))["hits"])


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("persona.knowledge.add", {"content": "   "}, "content"),
        ("persona.knowledge.add", {"content": "x", "relevance_score": 1.5}, "relevance_score"),
        ("persona.knowledge.add", {"content": "x", "tags": ["a", "a"]}, "tags"),
        ("persona.knowledge.add", {"content": "x", "tags": ["no spaces"]}, "tags"),
        ("persona.knowledge.search", {"query": ""}, "query"),
        ("persona.knowledge.search", {"query": "x", "limit": 0}, "limit"),
        ("persona.knowledge.prune", {"max_items": -1}, "max_items"),
    ],
)
async def test_bad_params_name_the_field_and_change_nothing(ada, connect, method, params, field) -> None:
    caller = await connect()
    with pytest.raises(RpcError) as info:
        await caller.call(method, params, to=ADA)
    assert ErrorCode.INVALID_PARAMS == info.value.code
    assert info.value.message.startswith(f"invalid params: {field}")
    assert field == info.value.data[0]["loc"][0]
    assert ada.brain is not None
    assert 0 == await ada.brain.read(lambda db: db.execute("SELECT count(*) FROM knowledge").fetchone()[0])


async def test_another_persona_may_not_touch_adas_knowledge(ada, connect, state) -> None:
    """bob's persona token holds no persona.knowledge.* grant on persona:ada: FORBIDDEN, nothing stored."""
    bob = await connect(token=state.persona_token("bob", create=True), kind="persona", name="bob")
    for method, params in [
        ("persona.knowledge.add", {"content": "bob was here"}),
        ("persona.knowledge.search", {"query": "bob"}),
        ("persona.knowledge.prune", {"max_items": 0}),
    ]:
        with pytest.raises(RpcError) as info:
            await bob.call(method, params, to=ADA)
        assert ErrorCode.FORBIDDEN == info.value.code, method
    assert ada.brain is not None
    assert 0 == await ada.brain.read(lambda db: db.execute("SELECT count(*) FROM knowledge").fetchone()[0])


async def test_semantic_candidates_honour_the_tag_filter(ada, connect, embed_service) -> None:
    """With tags, the index's nearest items are kept only if they carry them: a tagged paraphrase
    is found by meaning, an untagged answer never comes back."""
    caller = await connect()
    await embed_service()
    data = load_paraphrases()
    tagged: dict[str, bool] = {}
    ids: dict[str, int] = {}
    for n, doc in enumerate(data["documents"]):
        tagged[doc["id"]] = n % 2 == 0
        params = {"content": doc["content"], "tags": ["even"] if tagged[doc["id"]] else ["odd"]}
        ids[doc["id"]] = (await caller.call("persona.knowledge.add", params, to=ADA))["id"]
    found = expected = 0
    for item in data["queries"]:
        result = await caller.call(
            "persona.knowledge.search", {"query": item["query"], "tags": ["even"]}, to=ADA
        )
        assert all(hit["tags"] == ["even"] for hit in result["hits"])
        hit_ids = [hit["id"] for hit in result["hits"]]
        if tagged[item["answer"]]:
            expected += 1
            found += ids[item["answer"]] in hit_ids
        else:
            assert ids[item["answer"]] not in hit_ids
    assert found >= 0.9 * expected


async def test_an_add_is_not_refused_after_it_stored_its_item(ada, connect) -> None:
    """With the brain's reader busy (every place in its queue taken), an add still stores its item
    and says so: refused after the write, its caller would add it again."""
    brain = ada.brain
    assert brain is not None
    release = threading.Event()
    busy = [asyncio.ensure_future(brain.read(lambda db: release.wait(WAIT))) for _ in range(MAX_WAITING)]
    await asyncio.sleep(0)
    caller = await connect()
    try:
        added = await caller.call("persona.knowledge.add", {"content": "Basalt is a volcanic rock."}, to=ADA)
    finally:
        release.set()
        await asyncio.gather(*busy)
    assert added["embedded"] is False  # its vector comes later, with the backlog
    rows = await brain.read(lambda db: db.execute("SELECT id, content FROM knowledge").fetchall())
    assert [(added["id"], "Basalt is a volcanic rock.")] == [tuple(r) for r in rows]

#!/usr/bin/env python
"""The knowledge base: search latency at 100,000 items, embedding throughput, recall@10 on paraphrases.

    .venv/bin/python bench/work_knowledge.py [--items 100000] [--calls 300] [--quick]

Real components only, on 127.0.0.1 in a throwaway state dir: a
:class:`daemon.bus.Bus` and the persona daemon (:class:`PersonaDaemon`, its
SQLCipher brain) in this process, and ``inference.embed`` served on
``cap:inference`` from another process (this script with ``--serve-embed``)
by the real all-MiniLM-L6-v2 (:class:`daemon.inference.embed.Embedder`, one
torch thread) under the inference service's own token, as the inference
service serves it. Every figure is a
``persona.knowledge.search`` call through the bus from a BusClient.

1. Recall@10 on the paraphrase set (tests/daemon/persona/knowledge_paraphrases.json:
   each query shares no content word with its answer): hybrid search (the
   embed service online) against full text alone (offline; the same persona,
   the same brain). Then again with ``--distractors`` synthetic items added
   after the set through the bus (embedded by the model too), more than any
   relevance/recency pool would hold: the vector index must still find them.
2. Search at ``--items`` items: the brain keeps the set and the distractors
   and is seeded up to that many with synthetic English-like items (Zipf
   words) with stored embeddings. The seeded vectors are random unit vectors,
   not the model's (embedding 100,000 texts would take most of an hour here);
   scanning and ranking cost the same for any vector. Queries of 1-3 words
   drawn by corpus frequency. p50/p99 of hybrid search (which embeds each
   query through cap:inference) and of full text alone (target: hybrid p99 ≤
   30 ms), the time of the first re-ranked search (it builds the vector
   index), the index's size and the time of one scan of it, and recall@10
   on the paraphrase set again among all of them.
3. Embedding throughput (items/s), the embedder directly: texts in calls of
   64 against one text per call, for short texts (the paraphrase queries,
   about 12 tokens) and item-length ones (about 80 tokens of synthetic words).

The last line is ``work_knowledge.py: ok`` (exit 0) if the search target holds
and hybrid recall@10 beats full text's, else ``work_knowledge.py: FAIL``.
:func:`bench_knowledge` is the entry point for bench/work.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from daemon.brain import Brain, load_or_create_key  # noqa: E402
from daemon.bus import Bus, BusConfig  # noqa: E402
from daemon.client import BusClient  # noqa: E402
from daemon.dispatch import Dispatcher  # noqa: E402
from daemon.inference.embed import Embedder, register_embed_command  # noqa: E402
from daemon.inference.service import service_token  # noqa: E402
from daemon.persona.config import PersonaConfig  # noqa: E402
from daemon.persona.daemon import PersonaDaemon  # noqa: E402
from daemon.persona.knowledge import SEMANTIC_CANDIDATES, live_index  # noqa: E402
from daemon.persona.session_dir import prepare_session_dir  # noqa: E402
from daemon.state import StateDir  # noqa: E402
from protocol.commands.knowledge import EMBED_DIM, EMBED_MODEL  # noqa: E402

TARGET_P99_MS = 30.0
PERSONA = "bench"
TO = f"persona:{PERSONA}"
PARAPHRASES = REPO / "tests" / "daemon" / "persona" / "knowledge_paraphrases.json"
STOP = ("the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "with", "on", "by", "at")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def vocabulary(rng: random.Random, size: int = 5000) -> tuple[list[str], list[float]]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choices(letters, k=rng.randint(3, 9))) for _ in range(size)})
    return words, [1 / (rank + 1) for rank in range(len(words))]


def sentence(rng: random.Random, words: list[str], weights: list[float], n: int) -> str:
    picked = rng.choices(words, weights, k=n)
    return " ".join(w if i % 3 else f"{w} {rng.choice(STOP)}" for i, w in enumerate(picked))


async def seed(brain: Brain, items: int, rng: random.Random, words: list[str], weights: list[float]) -> None:
    """``items`` more synthetic items with random unit embeddings, in transactions of 5,000."""
    now = time.time()
    np_rng = np.random.default_rng(7)
    for start in range(0, items, 5000):
        count = min(5000, items - start)
        vectors = np_rng.standard_normal((count, EMBED_DIM)).astype("<f4")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = [
            (
                sentence(rng, words, weights, rng.randint(8, 30)),
                round(rng.random(), 2),
                vectors[i].tobytes(),
                EMBED_MODEL,
                now - (items - start - i),
                now,
            )
            for i in range(count)
        ]

        def insert(db: Any, rows: list[tuple[Any, ...]] = rows) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO knowledge (content, relevance, embedding, embed_model, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.execute("COMMIT")

        await brain.write(insert)


async def recall_at_10(client: BusClient, data: dict[str, Any], ids: dict[str, int]) -> tuple[float, bool]:
    found, reranked = 0, True
    for item in data["queries"]:
        result = await client.call("persona.knowledge.search", {"query": item["query"]}, to=TO)
        reranked &= result["reranked"]
        found += ids[item["answer"]] in [hit["id"] for hit in result["hits"]]
    return found / len(data["queries"]), reranked


async def timed_searches(client: BusClient, queries: list[str]) -> tuple[list[float], bool]:
    for query in queries[:20]:  # warm-up
        await client.call("persona.knowledge.search", {"query": query}, to=TO)
    times, reranked = [], True
    for query in queries[20:]:
        t0 = time.perf_counter()
        result = await client.call("persona.knowledge.search", {"query": query}, to=TO)
        times.append((time.perf_counter() - t0) * 1000)
        reranked &= result["reranked"]
    return times, reranked


def embedding_throughput(embedder: Embedder, texts: list[str]) -> dict[str, float]:
    """Items/s for ``texts`` in calls of 64 against one per call, and the tokens per text."""
    embedder.embed_sync(texts[:8])  # load and warm up
    t0 = time.perf_counter()
    for start in range(0, len(texts), 64):
        embedder.embed_sync(texts[start : start + 64])
    batched = len(texts) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for text in texts:
        embedder.embed_sync([text])
    single = len(texts) / (time.perf_counter() - t0)
    tokens = sum(len(ids) for ids in embedder._tokenizer(texts)["input_ids"]) / len(texts)
    return {"batched": batched, "one_at_a_time": single, "ratio": batched / single, "tokens": tokens}


async def bench_knowledge(items: int = 100_000, calls: int = 300, distractors: int = 1000) -> dict[str, Any]:
    """Seed, start, measure; return the figures (and ``ok``)."""
    tmp = Path(tempfile.mkdtemp(prefix="personad-bench-knowledge-"))
    rng = random.Random(11)
    words, weights = vocabulary(rng)
    embedder = Embedder(threads=1)
    out: dict[str, Any] = {"items": items, "calls": calls, "distractors": distractors}
    try:
        state = StateDir(tmp / "state")
        admin = state.init()
        assert admin is not None
        session_dir = prepare_session_dir(state.root, PERSONA)
        key = load_or_create_key(state.root, PERSONA, environ={})
        # Short texts (queries, titles: English from the paraphrase set) and item-length ones.
        data = json.loads(PARAPHRASES.read_text(encoding="utf-8"))
        short = [q["query"] for q in data["queries"]] * 3
        long = [sentence(rng, words, weights, rng.randint(10, 20)) for _ in range(128)]
        out["embed"] = {
            "short": embedding_throughput(embedder, short),
            "long": embedding_throughput(embedder, long),
        }
        embedder.close()  # the service below is another process with its own
        async with Bus(BusConfig(port=0), state.tokens()) as bus:

            @contextlib.asynccontextmanager
            async def embed_service() -> AsyncIterator[None]:
                """inference.embed on cap:inference from its own process, as the real service serves it."""
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--serve-embed", bus.url,
                    env={**os.environ, "PERSONAD_TOKEN": service_token(state, "main")},
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                try:
                    assert proc.stdout is not None
                    line = await asyncio.wait_for(proc.stdout.readline(), 120)
                    if b"embed ready" not in line:
                        raise RuntimeError(f"the embed service did not start: {line!r}")
                    while "inference:main" not in bus.router.clients:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                    yield
                finally:
                    if proc.stdin is not None:
                        proc.stdin.close()
                    try:
                        await asyncio.wait_for(proc.wait(), 10)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
                    while "inference:main" in bus.router.clients:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)

            async def persona_up() -> tuple[PersonaDaemon, asyncio.Event, asyncio.Task[None]]:
                daemon = PersonaDaemon(
                    PersonaConfig(id=PERSONA, name="Bench"), session_dir, url=bus.url,
                    token=state.persona_token(PERSONA, create=True), brain_key=key,
                )  # fmt: skip
                stop = asyncio.Event()
                task = asyncio.ensure_future(daemon.run(stop))
                while TO not in bus.router.clients:  # noqa: ASYNC110 (the bus has no join event to wait on)
                    await asyncio.sleep(0.05)
                return daemon, stop, task

            async with BusClient(bus.url, token=admin, kind="cli", name="bench") as client:
                # 1. recall@10 on the paraphrase set, then with distractors
                _, stop, task = await persona_up()
                ids = {}
                for doc in data["documents"]:
                    added = await client.call("persona.knowledge.add", {"content": doc["content"]}, to=TO)
                    ids[doc["id"]] = added["id"]
                full_text, _ = await recall_at_10(client, data, ids)
                async with embed_service():
                    hybrid, reranked = await recall_at_10(client, data, ids)
                    assert reranked
                    for _ in range(distractors):
                        text = sentence(rng, words, weights, rng.randint(8, 20))
                        await client.call("persona.knowledge.add", {"content": text}, to=TO)
                    crowded, _ = await recall_at_10(client, data, ids)
                out["recall"] = {
                    "documents": len(data["documents"]),
                    "queries": len(data["queries"]),
                    "hybrid": hybrid,
                    "full_text": full_text,
                    "hybrid_with_distractors": crowded,
                }
                stop.set()
                await task
                # 2. search at `items` items (the set and the distractors among them)
                async with await Brain.open(session_dir.brain, key) as brain:
                    existing = await brain.read(
                        lambda db: db.execute("SELECT count(*) FROM knowledge").fetchone()[0]
                    )
                    await seed(brain, max(0, items - existing), rng, words, weights)
                queries = [
                    " ".join(rng.choices(words, weights, k=rng.randint(1, 3))) for _ in range(calls + 20)
                ]
                daemon, stop, task = await persona_up()
                offline, reranked = await timed_searches(client, queries)
                assert not reranked
                async with embed_service():
                    t0 = time.perf_counter()
                    first = await client.call("persona.knowledge.search", {"query": queries[0]}, to=TO)
                    build_ms = (time.perf_counter() - t0) * 1000
                    assert first["reranked"]
                    online, reranked = await timed_searches(client, queries)
                    assert reranked
                    at_items, _ = await recall_at_10(client, data, ids)
                live = live_index(daemon.brain) if daemon.brain is not None else None
                assert live is not None
                assert live.built is not None
                index = live.built
                probe = np.random.default_rng(3).standard_normal(EMBED_DIM).astype(np.float32)
                probe /= np.linalg.norm(probe)
                scans = []
                for _ in range(50):
                    t0 = time.perf_counter()
                    index.top(probe, SEMANTIC_CANDIDATES)
                    scans.append((time.perf_counter() - t0) * 1000)
                out["index"] = {
                    "items": len(index),
                    "mb": index.nbytes / 1e6,
                    "first_search_ms": build_ms,
                    "scan_p50": percentile(scans, 0.5),
                    "scan_p99": percentile(scans, 0.99),
                }
                out["recall"]["hybrid_at_items"] = at_items
                stop.set()
                await task
        out["load_average"] = os.getloadavg()
        out["search"] = {
            "hybrid": {"p50": percentile(online, 0.5), "p99": percentile(online, 0.99)},
            "full_text": {"p50": percentile(offline, 0.5), "p99": percentile(offline, 0.99)},
        }
        out["ok"] = (
            out["search"]["hybrid"]["p99"] <= TARGET_P99_MS
            and hybrid > full_text
            and crowded >= 0.9
            and at_items >= 0.9
        )
        return out
    finally:
        embedder.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def serve_embed(url: str) -> None:
    """The --serve-embed mode: inference.embed on cap:inference until stdin closes."""
    embedder = Embedder(threads=1)
    await embedder.embed(["warm up"])  # load (on its worker thread, as served) before saying ready
    dispatcher = Dispatcher()
    register_embed_command(dispatcher, embedder)
    token = os.environ["PERSONAD_TOKEN"]
    async with BusClient(
        url, token=token, kind="inference", name="main", capabilities=["inference"], handler=dispatcher
    ):
        print("embed ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    embedder.close()


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-embed":
        asyncio.run(serve_embed(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--distractors", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="10,000 items, 100 calls, 300 distractors")
    args = parser.parse_args()
    if args.quick:
        args.items, args.calls, args.distractors = 10_000, 100, 300
    r = asyncio.run(bench_knowledge(args.items, args.calls, args.distractors))
    rc, e, s = r["recall"], r["embed"], r["search"]
    print(f"recall@10 on {rc['queries']} paraphrase queries over {rc['documents']} documents:")
    margin = rc["hybrid"] - rc["full_text"]
    print(f"  hybrid {rc['hybrid']:.3f}  full text {rc['full_text']:.3f}  margin {margin:+.3f}")
    print(f"  hybrid after {r['distractors']} newer distractor items: {rc['hybrid_with_distractors']:.3f}")
    print(f"  hybrid among {r['items']:,} items: {rc['hybrid_at_items']:.3f}")
    ix = r["index"]
    print(
        f"vector index: {ix['items']:,} items, {ix['mb']:.1f} MB; first re-ranked search (builds it) "
        f"{ix['first_search_ms']:.0f} ms; one scan for {SEMANTIC_CANDIDATES} p50 {ix['scan_p50']:.1f} ms "
        f"p99 {ix['scan_p99']:.1f} ms"
    )
    print(
        f"search at {r['items']:,} items, {r['calls']} calls: hybrid p50 {s['hybrid']['p50']:.1f} ms "
        f"p99 {s['hybrid']['p99']:.1f} ms (target ≤ {TARGET_P99_MS:.0f}); full text p50 "
        f"{s['full_text']['p50']:.1f} ms p99 {s['full_text']['p99']:.1f} ms"
    )
    for name, t in e.items():
        print(
            f"embedding throughput, {name} texts ({t['tokens']:.0f} tokens): "
            f"batched {t['batched']:.0f} items/s, "
            f"one at a time {t['one_at_a_time']:.0f} items/s ({t['ratio']:.1f}x)"
        )
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.2f}" for x in r["load_average"]))
    print(f"work_knowledge.py: {'ok' if r['ok'] else 'FAIL'}")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

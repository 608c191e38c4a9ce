#!/usr/bin/env python
"""The brain against raw SQLCipher / SQLite, as ratios measured in one run.

    .venv/bin/python bench/brain.py [--quick]

Real files in a temporary folder, the same schema (built by the migration
chain, FTS5 index and its triggers included) and the same durability
settings everywhere (WAL, ``synchronous = FULL``). Text is English-like and
deterministic: words drawn from a seeded random vocabulary with Zipf
frequencies, interleaved with real English stop words.

1. ``remember`` throughput: 64 concurrent callers each remembering in a loop
   through :class:`daemon.brain.Brain` (group commit), against raw
   ``sqlcipher3`` ``executemany`` inserts in transactions of 64 rows (the
   batch the callers make). Target: at least 0.5x. SQLCipher's own cost is
   the same raw loop on plain ``sqlite3``, reported. Rounds alternate
   raw/brain; medians are compared. The same callers sending an idempotency
   key with each call (``remember_once``: a key looked up and written in the
   same transaction) against no key: the cost of retry safety, reported.
2. ``recall`` top-10 on a brain of 100,000 memories (ages spread over a
   year): p50 and p99 latency of ``Brain.recall`` end to end (thread hop
   included) over queries of 1-3 words drawn by corpus frequency, so common
   words are queried as often as people would. Baseline: FTS5's plain BM25
   top-10 (``ORDER BY rank LIMIT 10``) on the same file and queries, with the
   same page cache. Target:
   p99 at most 20 ms.
3. Brain file size per 100,000 memories (after a checkpoint), against the
   bytes of their text.

The last line is ``brain.py: ok`` only if the targets hold (exit status 0),
else ``brain.py: FAIL`` (exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlcipher3.dbapi2 as sqlcipher

from daemon.brain import Brain, MemoryItem
from daemon.brain._db import READER_CACHE_KIB, file_bytes, run_on
from daemon.brain.migrations import LATEST, run_step

# Targets (issue 3)
REMEMBER_RATIO_TARGET = 0.5
RECALL_P99_TARGET_S = 0.020

CALLERS = 64
RECALL_MEMORIES = 100_000

STOP_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "i",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "been",
    "one",
    "all",
    "we",
    "their",
]
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "ten",
    "vos",
    "pel",
    "dri",
    "an",
    "or",
    "un",
    "se",
    "bri",
    "tor",
    "mag",
    "nel",
    "qui",
    "sto",
    "fal",
    "ver",
    "ble",
    "cor",
    "den",
    "gar",
    "hup",
    "ist",
    "jen",
    "mor",
    "pra",
    "sul",
]


class Corpus:
    """Deterministic English-like text: a Zipf vocabulary plus stop words."""

    def __init__(self, seed: int = 7, vocabulary: int = 8_000) -> None:
        self.rng = random.Random(seed)
        words: set[str] = set()
        while len(words) < vocabulary:
            words.add("".join(self.rng.choice(SYLLABLES) for _ in range(self.rng.randint(2, 4))))
        self.words = sorted(words)
        self.rng.shuffle(self.words)
        self.cum = list(itertools.accumulate(1 / (rank + 1) ** 1.07 for rank in range(vocabulary)))

    def word(self) -> str:
        return self.rng.choices(self.words, cum_weights=self.cum)[0]

    def sentence(self) -> str:
        return " ".join(
            self.rng.choice(STOP_WORDS) if self.rng.random() < 0.4 else self.word()
            for _ in range(self.rng.randint(8, 40))
        )

    def query(self) -> str:
        return " ".join(self.word() for _ in range(self.rng.randint(1, 3)))


def fresh_schema(path: Path, key: bytes | None) -> Any:
    """A raw connection on a new file with the brain's schema and durability pragmas."""
    module: Any = sqlcipher if key is not None else sqlite3
    db = module.connect(str(path), isolation_level=None)
    if key is not None:
        db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        db.execute("PRAGMA cipher_compatibility = 4")
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA secure_delete = ON")
    db.execute("PRAGMA temp_store = MEMORY")
    for version in range(1, LATEST + 1):
        run_step(db, version)
    return db


INSERT = (
    "INSERT INTO memories (content, kind, source, subject, context, relevance, pinned, "
    "created_at) VALUES (?, 'note', 'bench', NULL, NULL, 0.5, 0, ?)"
)


def raw_inserts(folder: Path, texts: list[str], key: bytes | None) -> float:
    """Rows/s of executemany inserts in transactions of CALLERS rows."""
    path = folder / f"raw-{'cipher' if key else 'plain'}-{time.monotonic_ns()}.sqlite"
    db = fresh_schema(path, key)
    now = time.time()
    started = time.perf_counter()
    for start in range(0, len(texts), CALLERS):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(INSERT, [(t, now) for t in texts[start : start + CALLERS]])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return len(texts) / elapsed


async def brain_remembers(
    folder: Path, texts: list[str], key: bytes, *, keyed: bool = False
) -> tuple[float, float]:
    """Rows/s of CALLERS concurrent callers remembering in a loop (``keyed``: each call with
    an idempotency key of its own); and the mean batch."""
    path = folder / f"brain-{time.monotonic_ns()}.sqlite"
    async with await Brain.open(path, key) as brain:
        share = [texts[i::CALLERS] for i in range(CALLERS)]

        async def caller(mine: list[str]) -> None:
            name = f"cli:bench-{id(mine)}"
            for n, text in enumerate(mine):
                if keyed:
                    await brain.remember_once(text, caller=name, key=f"k-{n}", source="bench")
                else:
                    await brain.remember(text, source="bench")

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for mine in share:
                group.create_task(caller(mine))
        elapsed = time.perf_counter() - started
        batch = brain.group_committed_calls / max(brain.group_commits, 1)
    return len(texts) / elapsed, batch


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def build_recall_brain(path: Path, key: bytes, corpus: Corpus, n: int) -> int:
    """Fill a brain with n memories, ages spread over a year; return their text bytes."""
    text_bytes = 0
    async with await Brain.open(path, key) as brain:
        for start in range(0, n, 5_000):
            items = []
            for _ in range(min(5_000, n - start)):
                text = corpus.sentence()
                text_bytes += len(text.encode())
                items.append(MemoryItem(text, relevance=corpus.rng.random(), source="bench"))
            await brain.remember_many(items)

        def spread_ages(db: Any) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE memories SET created_at = created_at - (abs(random()) % 31536000)")
            db.execute("COMMIT")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        # A bench-only shortcut through the writer's thread: the API has no backdating.
        await run_on(brain._writer, spread_ages)
    return text_bytes


async def recall_latencies(path: Path, key: bytes, queries: list[str]) -> list[float]:
    async with await Brain.open(path, key) as brain:
        for query in queries[:20]:  # warm the page cache
            await brain.recall(query)
        latencies = []
        for query in queries:
            started = time.perf_counter()
            await brain.recall(query, limit=10)
            latencies.append(time.perf_counter() - started)
    return latencies


def raw_bm25_latencies(path: Path, key: bytes, queries: list[str]) -> list[float]:
    db = sqlcipher.connect(str(path), isolation_level=None)
    db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    db.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")  # the same cache as the brain's reader
    sql = "SELECT rowid, rank FROM memories_fts WHERE memories_fts MATCH ? ORDER BY rank LIMIT 10"

    def match(query: str) -> str:
        return " OR ".join(f'"{w}"' for w in query.split())

    for query in queries[:20]:
        db.execute(sql, (match(query),)).fetchall()
    latencies = []
    for query in queries:
        started = time.perf_counter()
        db.execute(sql, (match(query),)).fetchall()
        latencies.append(time.perf_counter() - started)
    db.close()
    return latencies


def line(label: str, value: str, baseline: str, ratio: str, verdict: str = "") -> None:
    print(f"{label:<44} {value:>14}   baseline {baseline:>14}   ratio {ratio:>7}  {verdict}")


async def main(quick: bool) -> bool:
    ok = True
    key = os.urandom(32)
    corpus = Corpus()
    remember_n = 4_000 if quick else 12_000
    recall_n = 20_000 if quick else RECALL_MEMORIES
    rounds = 2 if quick else 3

    with tempfile.TemporaryDirectory(prefix="bench-brain-") as tmp:
        folder = Path(tmp)
        texts = [corpus.sentence() for _ in range(remember_n)]

        # 1. remember throughput, raw and brain alternating
        raw_rates, brain_rates, plain_rates, keyed_rates, batches = [], [], [], [], []
        for _ in range(rounds):
            plain_rates.append(raw_inserts(folder, texts, None))
            raw_rates.append(raw_inserts(folder, texts, key))
            rate, batch = await brain_remembers(folder, texts, key)
            brain_rates.append(rate)
            batches.append(batch)
            keyed_rates.append((await brain_remembers(folder, texts, key, keyed=True))[0])
        raw_rate = statistics.median(raw_rates)
        brain_rate = statistics.median(brain_rates)
        plain_rate = statistics.median(plain_rates)
        ratio = brain_rate / raw_rate
        held = ratio >= REMEMBER_RATIO_TARGET
        ok &= held
        print(f"brain.py: {remember_n} memories x {rounds} rounds, {CALLERS} callers, WAL + FULL")
        line(
            "remember/s, Brain vs raw sqlcipher3",
            f"{brain_rate:,.0f}",
            f"{raw_rate:,.0f}",
            f"{ratio:.2f}x",
            f"target >= {REMEMBER_RATIO_TARGET}x: {'ok' if held else 'MISSED'}",
        )
        print(f"{'':<44} mean group-commit batch {statistics.median(batches):.1f} calls")
        keyed_rate = statistics.median(keyed_rates)
        line(
            "remember/s, idempotency key vs none",
            f"{keyed_rate:,.0f}",
            f"{brain_rate:,.0f}",
            f"{keyed_rate / brain_rate:.2f}x",
            "(reported: the cost of retry safety)",
        )
        line(
            "inserts/s, raw sqlcipher3 vs plain sqlite3",
            f"{raw_rate:,.0f}",
            f"{plain_rate:,.0f}",
            f"{raw_rate / plain_rate:.2f}x",
            f"(SQLCipher costs {100 * (1 - raw_rate / plain_rate):.0f}% of throughput)",
        )

        # 2. recall on a large brain
        path = folder / "recall.sqlite"
        started = time.perf_counter()
        text_bytes = await build_recall_brain(path, key, corpus, recall_n)
        build_s = time.perf_counter() - started
        queries = [corpus.query() for _ in range(300 if quick else 1_000)]
        ours = await recall_latencies(path, key, queries)
        raw = raw_bm25_latencies(path, key, queries)
        p50, p99 = percentile(ours, 0.50), percentile(ours, 0.99)
        raw50, raw99 = percentile(raw, 0.50), percentile(raw, 0.99)
        held = p99 <= RECALL_P99_TARGET_S
        ok &= held
        print(f"recall: {recall_n:,} memories (built in {build_s:.1f} s), {len(queries)} queries")
        line(
            "recall top-10 p50 (ms), vs raw FTS5 BM25",
            f"{p50 * 1e3:.2f}",
            f"{raw50 * 1e3:.2f}",
            f"{p50 / raw50:.2f}x",
        )
        line(
            "recall top-10 p99 (ms), vs raw FTS5 BM25",
            f"{p99 * 1e3:.2f}",
            f"{raw99 * 1e3:.2f}",
            f"{p99 / raw99:.2f}x",
            f"target <= {RECALL_P99_TARGET_S * 1e3:.0f} ms: {'ok' if held else 'MISSED'}",
        )
        print(f"{'':<44} max {max(ours) * 1e3:.2f} ms (raw max {max(raw) * 1e3:.2f} ms)")

        # 3. size on disk
        size = sum(file_bytes(path).values())
        per_100k = size * RECALL_MEMORIES / recall_n
        line(
            "file bytes per 100,000 memories, vs text",
            f"{per_100k / 1e6:.1f} MB",
            f"{text_bytes * RECALL_MEMORIES / recall_n / 1e6:.1f} MB",
            f"{size / text_bytes:.2f}x",
        )
    return ok


def run(quick: bool) -> int:
    runner_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        runner_factory = uvloop.new_event_loop  # the daemons' loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=runner_factory) as runner:
        ok = runner.run(main(quick))
    print(f"brain.py: {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    sys.exit(run(parser.parse_args().quick))

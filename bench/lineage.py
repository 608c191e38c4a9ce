#!/usr/bin/env python
"""Fork (brain copy) and merge against raw SQLCipher, as ratios measured in one run.

    .venv/bin/python bench/lineage.py [--quick]

A source brain of 100,000 memories (20,000 with ``--quick``) built through
:class:`daemon.brain.Brain` (so with the real schema, FTS5 index and
triggers), plus skills and goals; English-like deterministic text.

1. ``copy_brain`` of the whole brain under a new key (what ``persona.fork``
   does), median of 3, against what an operator would do by hand:
   ``sqlcipher_export`` into a new database under the new key, and a file
   copy followed by ``PRAGMA rekey``. Target (issue 9): at most 5 s for
   100,000 memories. Also a filtered copy (one subject, 10 %).
   Then ``persona.fork`` of the persona owning that brain, through a real
   bus and registry in this process (median of 3), against ``copy_brain``
   alone: what the bus, the checks, the new key, the registry transaction
   and the audit entries add. Same target.
2. ``merge_brains`` of the source and a fork of it that has 10 % new
   memories and 10 % lightly edited ones (so near-duplicate removal has real
   work: 200,000 memories in, about 110,000 out), against a raw union of the
   two memory tables into a fresh brain with no duplicate removal.

The last line is ``lineage.py: ok`` only if both fork targets hold (exit
status 0), else ``lineage.py: FAIL`` (exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.brain import Brain, MemoryItem
from daemon.brain._db import connect_writer, create_private, sqlcipher
from daemon.brain.keys import brain_path, load_or_create_key
from daemon.brain.lineage import copy_brain, merge_brains
from daemon.brain.ops import prepare
from daemon.bus import Bus, BusConfig
from daemon.client import BusClient
from daemon.registry.cli import registry_token
from daemon.registry.service import RegistryService
from daemon.registry.store import Registry
from daemon.state import StateDir

FORK_TARGET_S = 5.0
_STOP_TEXT = "the of and to in a is that for it as was with be by on not he i this are or his from at"
STOP = _STOP_TEXT.split(" ")


def sentence(rnd: random.Random, vocabulary: list[str]) -> str:
    words = [
        rnd.choice(STOP) if rnd.random() < 0.4 else rnd.choice(vocabulary) for _ in range(rnd.randint(8, 30))
    ]
    return " ".join(words)


async def build(path: Path, key: bytes, n: int) -> list[str]:
    rnd = random.Random(7)
    vocabulary = [
        f"{rnd.choice('bcdfglmnprst')}{rnd.choice('aeiou')}{rnd.choice('lmnrst')}{i}" for i in range(8000)
    ]
    texts = [sentence(rnd, vocabulary) for _ in range(n)]
    async with await Brain.open(path, key) as brain:
        for start in range(0, n, 5000):
            await brain.remember_many(
                MemoryItem(text, subject="alice" if i % 10 == 0 else None, relevance=rnd.random())
                for i, text in enumerate(texts[start : start + 5000], start)
            )
        for i in range(100):
            await brain.skill_upsert(f"skill-{i}")
            await brain.skill_record_use(f"skill-{i}", rnd.random())
        for i in range(20):
            await brain.goals_set(f"goal {i}")
    return texts


async def build_fork(source: Path, key: bytes, dest: Path, dest_key: bytes, texts: list[str]) -> None:
    copy_brain(source, key, dest, dest_key)
    rnd = random.Random(11)
    async with await Brain.open(dest, dest_key) as brain:
        n = len(texts)
        # 10 % new memories, 10 % lightly edited copies (a word appended).
        await brain.remember_many(
            MemoryItem(f"new in the fork {i} " + texts[rnd.randrange(n)][::-1]) for i in range(n // 10)
        )
        await brain.remember_many(MemoryItem(texts[rnd.randrange(n)] + " indeed") for _ in range(n // 10))


def sqlcipher_export(source: Path, key: bytes, dest: Path, dest_key: bytes) -> None:
    db = sqlcipher.connect(str(source), isolation_level=None)
    db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    db.execute(f"ATTACH DATABASE ? AS dst KEY \"x'{dest_key.hex()}'\"", (str(dest),))
    db.execute("SELECT sqlcipher_export('dst')")
    db.execute("DETACH DATABASE dst")
    db.close()


def copy_and_rekey(source: Path, key: bytes, dest: Path, dest_key: bytes) -> None:
    shutil.copyfile(source, dest)
    db = sqlcipher.connect(str(dest), isolation_level=None)
    db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    db.execute("PRAGMA journal_mode = DELETE")  # rekey rewrites every page; not through a WAL
    db.execute(f"PRAGMA rekey = \"x'{dest_key.hex()}'\"")
    db.close()


def raw_union(primary: Path, pk: bytes, secondary: Path, sk: bytes, dest: Path, dk: bytes) -> None:
    create_private(dest)
    db = connect_writer(dest, dk, {})()
    prepare(db, dest)
    for schema, path, k in (("p", primary, pk), ("s", secondary, sk)):
        db.execute(f"ATTACH DATABASE ? AS {schema} KEY ?", (str(path), f"x'{k.hex()}'"))
    cols = "content, kind, source, subject, context, relevance, pinned, created_at"
    db.execute("BEGIN IMMEDIATE")
    db.execute(
        f"INSERT INTO memories ({cols}) SELECT {cols} FROM p.memories UNION ALL SELECT {cols} FROM s.memories"
    )
    db.execute("COMMIT")
    db.close()


async def forks_over_the_bus(state: StateDir, admin_token: str, source_id: str, runs: int) -> float:
    """Median wall time of ``persona.fork`` of ``source_id`` (its whole brain), client call to answer."""
    registry = await Registry.open(state.root, environ={})
    try:
        async with Bus(BusConfig(port=0), state.tokens()) as bus:
            service = RegistryService(
                registry, url=bus.url, token=registry_token(state), state_root=state.root
            )
            stop = asyncio.Event()
            serving = asyncio.create_task(service.run(stop))
            await service.client.wait_connected(30)
            profile = {"id": source_id, "name": "Bench", "role": "assistant", "status": "active"}
            times = []
            async with BusClient(bus.url, token=admin_token, kind="cli") as admin:
                await admin.call("persona.create", {"profile": profile}, to="cap:registry")
                for _ in range(runs):
                    started = time.perf_counter()
                    answer = await admin.call(
                        "persona.fork",
                        {"source_persona_id": source_id},
                        to="cap:registry",
                        deadline_ms=300_000,
                    )
                    times.append(time.perf_counter() - started)
                    assert answer["brain"]["memories"] == answer["brain"]["memories_in_source"] > 0
            stop.set()
            await serving
    finally:
        await registry.close()
    return statistics.median(times)


def timed(folder: Path, runs: int, fn: Callable[[Path], object]) -> float:
    times = []
    for run in range(runs):
        dest = folder / f"out-{time.monotonic_ns()}-{run}.sqlite"
        started = time.perf_counter()
        fn(dest)
        times.append(time.perf_counter() - started)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{dest}{suffix}").unlink(missing_ok=True)
    return statistics.median(times)


def line(label: str, value: float, baseline: str, base: float) -> None:
    print(f"{label:<44} {value:7.2f} s   {baseline:<30} {base:7.2f} s   ratio {value / base:5.2f}x")


def main(quick: bool) -> bool:
    n = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="bench-lineage-") as tmp:
        folder = Path(tmp)
        # The source is a persona's brain in a state dir, so persona.fork can fork it below.
        state = StateDir(folder / "state")
        admin_token = state.init()
        assert admin_token is not None
        source = brain_path(state.root, "bench")
        source.parent.mkdir(parents=True, mode=0o700)
        key, fork_key = load_or_create_key(state.root, "bench", environ={}), os.urandom(32)
        started = time.perf_counter()
        texts = asyncio.run(build(source, key, n))
        print(
            f"source: {n:,} memories, {source.stat().st_size / 1e6:.1f} MB, "
            f"built in {time.perf_counter() - started:.1f} s"
        )

        fork = timed(folder, 3, lambda d: copy_brain(source, key, d, fork_key))
        export = timed(folder, 3, lambda d: sqlcipher_export(source, key, d, fork_key))
        rekey = timed(folder, 3, lambda d: copy_and_rekey(source, key, d, fork_key))
        filtered = timed(folder, 3, lambda d: copy_brain(source, key, d, fork_key, subjects=["alice"]))
        line(f"copy_brain, {n:,} memories", fork, "sqlcipher_export", export)
        line("", fork, "file copy + PRAGMA rekey", rekey)
        line("copy_brain, subject filter (10 %)", filtered, "sqlcipher_export (all)", export)
        bus_fork = asyncio.run(forks_over_the_bus(state, admin_token, "bench", 3))
        line(f"persona.fork over the bus, {n:,} memories", bus_fork, "copy_brain (the library)", fork)

        secondary = folder / "fork.sqlite"
        asyncio.run(build_fork(source, key, secondary, fork_key, texts))
        merged_key = os.urandom(32)
        reports = []

        def merge(d: Path) -> None:
            reports.append(merge_brains(source, key, secondary, fork_key, d, merged_key))

        merge_s = timed(folder, 1, merge)
        union_s = timed(folder, 1, lambda d: raw_union(source, key, secondary, fork_key, d, merged_key))
        report = reports[-1]
        line(f"merge_brains, {n + n + n // 5:,} memories in", merge_s, "raw union, no dedup", union_s)
        print(
            f"  kept {report.memories:,} (primary {report.kept_primary:,}, "
            f"secondary {report.kept_secondary:,}), dropped {report.dropped_duplicates:,} near-duplicates"
        )
    ok = True
    for what, seconds in (("copy_brain", fork), ("persona.fork", bus_fork)):
        met = quick or seconds <= FORK_TARGET_S
        ok = ok and met
        print(
            f"fork target ({what}): {n:,} memories in at most {FORK_TARGET_S:g} s: "
            f"{seconds:.2f} s {'ok' if met else 'MISSED'}"
        )
    print(f"lineage.py: {'ok' if ok else 'FAIL'}")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 memories; no target check")
    sys.exit(0 if main(parser.parse_args().quick) else 1)

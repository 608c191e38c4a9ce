#!/usr/bin/env python
"""session.recommendations over 1,000 personas, through the bus.

    .venv/bin/python bench/work_sessions.py [--personas 1000] [--online 4] [--calls 300]

Real components only, on 127.0.0.1 in a throwaway state dir. The registry's
SQLCipher database is seeded with ``--personas`` active profiles (ten roles,
descriptions and tags drawn from a small vocabulary, traits spread 0-100).
The bus (``python -m daemon bus``), the registry (``python -m daemon
registry --no-import``) and ``--online`` persona daemons (``python -m daemon
persona <id>``, the first seeded ids) start as processes, so each ranking
also asks those personas for ``persona.knowledge.search`` and
``persona.analytics`` (docs/sessions.md). This process calls
``session.recommendations`` on ``cap:registry`` through a
:class:`daemon.client.BusClient`, one call in flight, ``--calls`` times
after a warm-up, topics and context flags taken in turn; ``session.status``
(no ranking) is the floor of a registry round trip.

Printed: the first call (the profile cache filling), p50 and p99 of each.
The target: p99 of session.recommendations ≤ 50 ms. The last line is
``work_sessions.py: ok`` (exit 0) or ``work_sessions.py: FAIL`` (exit 1).
:func:`bench_sessions` is the entry point for bench/work.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.client import BusClient  # noqa: E402
from daemon.registry import store  # noqa: E402
from daemon.registry.keys import load_or_create_registry_key, registry_path  # noqa: E402
from daemon.state import StateDir  # noqa: E402
from protocol.profile import TRAITS, Profile  # noqa: E402

TARGET_P99_MS = 50.0
ROLES = (
    "patent attorney",
    "tax accountant",
    "ledger auditor",
    "nurse",
    "poet",
    "data engineer",
    "teacher",
    "translator",
    "chess coach",
    "travel agent",
)
WORDS = [
    "contracts",
    "invoices",
    "ledgers",
    "audits",
    "patents",
    "claims",
    "drafting",
    "care",
    "wards",
    "verses",
    "metaphors",
    "pipelines",
    "schemas",
    "lessons",
    "grammar",
    "openings",
    "itineraries",
    "budgets",
    "compliance",
    "risk",
    "review",
]
TOPICS: list[dict[str, Any]] = [
    {"topic": "patent claims review", "context": {"requires_precision": True}},
    {"topic": "quarterly ledger audit and invoices", "context": {"requires_precision": True, "formal": True}},
    {"topic": "a poem about budgets", "context": {"requires_creativity": True}},
    {"topic": "data pipeline schema migration", "context": {"requires_focus": True}},
    {"topic": "comforting a worried patient", "context": {"requires_empathy": True}},
    {"topic": "travel itineraries on a budget"},
]


def seed(state: Path, count: int) -> None:
    """``count`` active profiles in one transaction (a seed: no audit entries)."""
    rng = random.Random(7)
    key = load_or_create_registry_key(state, environ={})
    db = store.open_raw(registry_path(state), key)
    now = time.time()
    db.execute("BEGIN IMMEDIATE")
    for i in range(count):
        raw = {
            "id": f"p{i:05d}",
            "name": f"Persona {i}",
            "role": ROLES[i % len(ROLES)],
            "description": " ".join(rng.sample(WORDS, 6)),
            "tags": rng.sample(WORDS, 2),
            "traits": {t: rng.randint(0, 100) for t in TRAITS},
            "status": "active",
            "lineage": {"created_at": now, "updated_at": now},
        }
        store.write_profile(db, Profile.model_validate_json(json.dumps(raw)), insert=True)
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _wait_line(proc: asyncio.subprocess.Process, needle: str, timeout: float = 60.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode()
        if not line:
            break
        if needle in line:
            return line
    raise SystemExit(f"a process did not print {needle!r}")


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.read(65536):
        pass


async def bench_sessions(personas: int = 1000, online: int = 4, calls: int = 300) -> dict[str, Any]:
    """Seed, start, measure; return the figures (and ``ok``)."""
    tmp = Path(tempfile.mkdtemp(prefix="personad-bench-sessions-"))
    procs: list[asyncio.subprocess.Process] = []
    drains: list[asyncio.Task[None]] = []
    try:
        state = StateDir(tmp / "state")
        token = state.init()
        assert token is not None
        seed(state.root, personas)
        config = tmp / "config"
        (config / "personas").mkdir(parents=True)
        ids = [f"p{i:05d}" for i in range(min(online, personas))]
        for pid in ids:
            (config / "personas" / f"{pid}.toml").write_text(f'id = "{pid}"\nname = "Persona {pid}"\n')
        env = {**os.environ, "PERSONAD_STATE_DIR": str(state.root), "PERSONAD_CONFIG_DIR": str(config)}
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PERSONAD_TOKEN", None)
        env.pop("NOTIFY_SOCKET", None)

        async def start(*argv: str, needle: str | None, extra: dict[str, str] | None = None) -> str:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "daemon",
                *argv,
                env={**env, **(extra or {})},
                stdout=asyncio.subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
            procs.append(proc)
            # Personas are waited for on the bus (bus.clients) rather than by what they print.
            line = await _wait_line(proc, needle) if needle is not None else ""
            drains.append(asyncio.create_task(_drain(proc)))
            return line

        line = await start("bus", "--port", "0", needle="listening on")
        url = next(word for word in line.split() if word.startswith("ws://"))
        await start("registry", "--no-import", needle="serving cap:registry", extra={"PERSONAD_URL": url})
        for pid in ids:
            await start("persona", pid, needle=None, extra={"PERSONAD_URL": url})
        async with BusClient(url, token=token, kind="cli", name="bench") as client:
            deadline = time.monotonic() + 60
            while len((await client.call("bus.clients", {"kind": "persona"}))["clients"]) < len(ids):
                if time.monotonic() > deadline:
                    raise SystemExit("the personas did not join the bus")
                await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            first = await client.call("session.recommendations", TOPICS[0], to="cap:registry")
            cold_ms = (time.perf_counter() - t0) * 1000
            assert personas == first["considered"], first["considered"]
            for n in range(20):  # warm-up
                await client.call("session.recommendations", TOPICS[n % len(TOPICS)], to="cap:registry")
            out: dict[str, list[float]] = {"session.recommendations": [], "session.status": []}
            for n in range(calls):
                for method, params in (
                    ("session.recommendations", TOPICS[n % len(TOPICS)]),
                    ("session.status", {}),
                ):
                    t0 = time.perf_counter()
                    await client.call(method, params, to="cap:registry")
                    out[method].append((time.perf_counter() - t0) * 1000)
            online_seen = sum(r["online"] for r in first["recommendations"])
        p99 = percentile(out["session.recommendations"], 0.99)
        return {
            "personas": personas,
            "online": len(ids),
            "calls": calls,
            "cold_ms": cold_ms,
            "top_online": online_seen,
            "times": out,
            "p99": p99,
            "ok": p99 <= TARGET_P99_MS,
        }
    finally:
        for proc in reversed(procs):
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
        for task in drains:
            task.cancel()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--personas", type=int, default=1000)
    parser.add_argument("--online", type=int, default=4)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    result = asyncio.run(bench_sessions(args.personas, args.online, args.calls))
    print(
        f"session.recommendations over {result['personas']:,} personas ({result['online']} online), "
        f"{result['calls']} calls, one in flight"
    )
    print(f"first call (profile cache filling): {result['cold_ms']:.1f} ms")
    print(f"{'method':<25} {'p50':>8} {'p99':>8}")
    for method, times in result["times"].items():
        print(f"{method:<25} {statistics.median(times):8.2f} {percentile(times, 0.99):8.2f}")
    print(f"(ms; target: session.recommendations p99 <= {TARGET_P99_MS:g} ms)")
    print("work_sessions.py: ok" if result["ok"] else "work_sessions.py: FAIL")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

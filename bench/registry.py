#!/usr/bin/env python
"""persona.list over 10,000 personas through the bus, against the same query on the database;
persona.generate through the bus with the default model.

    .venv/bin/python bench/registry.py [--personas 10000] [--calls 400] [--generations 3] [--model M]

Real components only, on 127.0.0.1 in a throwaway state dir: the bus
(``python -m daemon bus``) and the registry (``python -m daemon registry``),
whose SQLCipher database is seeded first with ``--personas`` profiles
(statuses, roles and tags spread so that each filter matches a fraction).
This process calls ``persona.list`` on ``cap:registry`` through a
:class:`daemon.client.BusClient` (msgpack), one call in flight, for four
queries: no filter, ``status``, ``role`` and ``tag`` (each a page of 100);
and, as the baseline, runs the very same queries straight on the database
(``daemon.registry.store.list_page`` on its own SQLCipher connection).

Printed per query: p50 and p99 of both, and the ratio of the p50s. The
target: p99 through the bus ≤ 20 ms for every query. The last line is
``registry.py: ok`` (exit 0) or ``registry.py: FAIL`` (exit 1).

Then ``persona.generate``: the inference service (``python -m daemon
inference``, the default model SmolLM2-135M-Instruct unless ``--model``; one
torch thread) joins the same bus, and this process asks ``persona.generate``
on ``cap:registry`` for ``--generations`` varied roles (base traits,
preferences and context flags mixed; one call in flight, each stored as a
draft), timing each call end to end: the registry's prompt, the constrained
decoding, the rules, the store and its audit entry. Printed: median and p95
(no target: the time is the model's decoding; docs/generation.md).
``--generations 0`` skips it (and the model load).

The fork of a 100,000-memory persona is measured by bench/lineage.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.client import BusClient  # noqa: E402
from daemon.registry import store  # noqa: E402
from daemon.registry.keys import load_or_create_registry_key, registry_path  # noqa: E402
from daemon.state import StateDir  # noqa: E402
from protocol.profile import Profile  # noqa: E402

TARGET_P99_MS = 20.0
ROLES = ("lawyer", "teacher", "engineer", "nurse", "clerk")
#: Varied persona.generate requests, taken in turn.
GENERATE: list[dict[str, Any]] = [
    {"role": "patent attorney", "base_traits": {"precision": 85}, "context": {"requires_precision": True}},
    {"role": "kindergarten teacher", "user_preferences": {"style": "warm", "detail_level": "brief"}},
    {"role": "crisis counsellor", "base_traits": {"empathy": 80}, "context": {"requires_empathy": True}},
    {"role": "tax accountant", "context": {"formal": True}, "user_preferences": {"detail_level": "detailed"}},
    {"role": "stand-up comedian", "base_traits": {"humor": 90}},
    {"role": "museum guide", "user_preferences": {"notes": "speaks slowly, avoids dates"}},
    {"role": "travel agent", "context": {"requires_adaptability": True, "notes": "budget trips"}},
    {"role": "chess coach", "base_traits": {"focus": 70, "precision": 70}},
    {"role": "poet", "base_traits": {"creativity": 95}, "user_preferences": {"style": "lyrical"}},
    {"role": "diplomat", "context": {"formal": True}, "base_traits": {"empathy": 65, "assertiveness": 55}},
]
QUERIES: dict[str, dict[str, Any]] = {
    "no filter": {},
    "status=active": {"status": "active"},
    "role=nurse": {"role": "nurse"},
    "tag=t7": {"tag": "t7"},
}


def seed(state: Path, count: int) -> None:
    """``count`` profiles in one transaction (a seed: no audit entries)."""
    key = load_or_create_registry_key(state, environ={})
    db = store.open_raw(registry_path(state), key)
    now = time.time()
    db.execute("BEGIN IMMEDIATE")
    for i in range(count):
        raw = {
            "id": f"p{i:05d}",
            "name": f"Persona {i}",
            "role": ROLES[i % len(ROLES)],
            "description": "a benchmark persona " * 5,
            "tags": [f"t{i % 10}", f"g{i % 3}"],
            "status": "active" if i % 4 else "draft",
            "lineage": {"created_at": now, "updated_at": now},
        }
        store.write_profile(db, Profile.model_validate_json(json.dumps(raw)), insert=True)
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start(argv: list[str], env: dict[str, str], pattern: str, timeout: float = 30.0) -> tuple[Any, str]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.search(pattern, line):
            # Keep reading what it prints, so a full pipe never blocks it.
            threading.Thread(target=proc.stdout.read, name="drain", daemon=True).start()
            return proc, m.group(1) if m.groups() else line
    proc.kill()
    raise SystemExit(f"{argv[3:]} did not print {pattern!r}")


async def wait_for_inference(url: str, token: str, timeout: float = 60.0) -> None:
    async with BusClient(url, token=token, kind="cli", name="bench-wait") as client:
        deadline = time.monotonic() + timeout
        while not (await client.call("bus.clients", {"capability": "inference"}))["clients"]:
            if time.monotonic() > deadline:
                raise SystemExit("the inference service did not join the bus")
            await asyncio.sleep(0.2)


async def through_bus(url: str, token: str, calls: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    async with BusClient(url, token=token, kind="cli", name="bench") as client:
        for name, params in QUERIES.items():
            for _ in range(20):  # warm-up
                await client.call("persona.list", params, to="cap:registry")
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                page = await client.call("persona.list", params, to="cap:registry")
                times.append((time.perf_counter() - t0) * 1000)
            assert len(page["personas"]) == 100, (name, len(page["personas"]))
            out[name] = times
    return out


async def generations(url: str, token: str, count: int) -> list[float]:
    """``count`` persona.generate calls, one in flight, through the bus (ms each)."""
    times = []
    async with BusClient(url, token=token, kind="cli", name="bench-generate") as client:
        for i in range(count):
            params = GENERATE[i % len(GENERATE)]
            t0 = time.perf_counter()
            result = await client.call("persona.generate", params, to="cap:registry", deadline_ms=600_000)
            times.append((time.perf_counter() - t0) * 1000)
            profile = result["profile"]
            name = f"{result['persona_id']}: {profile['name']}"
            print(f"  {params['role']:<22} {times[-1] / 1000:6.1f} s  {name}")
    return times


def direct(state: Path, calls: int) -> dict[str, list[float]]:
    key = load_or_create_registry_key(state, environ={})
    db = store.open_raw(registry_path(state), key)
    out: dict[str, list[float]] = {}
    try:
        for name, params in QUERIES.items():
            for _ in range(20):
                store.list_page(db, **params)
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                page = store.list_page(db, **params)
                times.append((time.perf_counter() - t0) * 1000)
            assert len(page.personas) == 100
            out[name] = times
    finally:
        db.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--personas", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument(
        "--generations", type=int, default=3, help="persona.generate calls (0: skip; 20 for a steadier p95)"
    )
    parser.add_argument("--model", default=None, help="the inference service's --model (default smollm2)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="personad-bench-registry-"))
    procs: list[Any] = []
    try:
        state = StateDir(root / "state")
        token = state.init()
        assert token is not None
        t0 = time.perf_counter()
        seed(state.root, args.personas)
        print(f"seeded {args.personas} personas in {time.perf_counter() - t0:.1f} s")
        env = {**os.environ, "PERSONAD_STATE_DIR": str(state.root), "PYTHONUNBUFFERED": "1"}
        env.pop("PERSONAD_TOKEN", None)
        env.pop("NOTIFY_SOCKET", None)
        daemon = [sys.executable, "-m", "daemon"]
        bus, url = start([*daemon, "bus", "--port", "0"], env, r"listening on (ws://\S+)")
        procs.append(bus)
        registry, _ = start(
            [*daemon, "registry", "--no-import"], {**env, "PERSONAD_URL": url}, r"(serving cap:registry)"
        )
        procs.append(registry)
        # Alternate: baseline, bus, baseline, so that a slow spell hits both.
        base1 = direct(state.root, args.calls // 2)
        via_bus = asyncio.run(through_bus(url, token, args.calls))
        base2 = direct(state.root, args.calls - args.calls // 2)
        ok = True
        print(f"persona.list, page of 100, over {args.personas} personas; {args.calls} calls each")
        print(f"{'query':<15} {'bus p50':>8} {'bus p99':>8} {'db p50':>8} {'db p99':>8} {'ratio':>6}")
        for name in QUERIES:
            b = via_bus[name]
            d = base1[name] + base2[name]
            p99 = pct(b, 0.99)
            ok &= p99 <= TARGET_P99_MS
            print(
                f"{name:<15} {statistics.median(b):8.2f} {p99:8.2f} {statistics.median(d):8.2f} "
                f"{pct(d, 0.99):8.2f} {statistics.median(b) / statistics.median(d):6.1f}x"
            )
        print(f"(ms; ratio = bus p50 / database p50; target: bus p99 <= {TARGET_P99_MS:g} ms)")
        if args.generations > 0:
            model = ["--model", args.model] if args.model else []
            inference, _ = start(
                [*daemon, "inference", "--threads", "1", *model],
                {**env, "PERSONAD_URL": url},
                r"(inference main ready)",
                timeout=600.0,  # a fresh state dir converts SmolLM2 first (~20 s)
            )
            procs.append(inference)
            # "ready" is printed before it joins the bus: wait until it is there.
            asyncio.run(wait_for_inference(url, token))
            print(f"persona.generate through the bus, {args.generations} varied roles, one in flight:")
            gen = asyncio.run(generations(url, token, args.generations))
            median, p95 = statistics.median(gen), pct(gen, 0.95)
            print(f"{'persona.generate':<15} median {median:8.0f} p95 {p95:8.0f} (ms)")
        print("registry.py: ok" if ok else "registry.py: FAIL")
        return 0 if ok else 1
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

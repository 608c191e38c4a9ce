#!/usr/bin/env python
"""The cost of the plugin sandbox: a plain subprocess against bwrap, and a run through the bus.

    .venv/bin/python bench/work_plugins.py [--runs 30]

Real components only, on 127.0.0.1 in a throwaway state dir. One tiny
plugin (read the input, answer with ``finish``: the channel's smallest round
trip) is signed with a fresh key the state dir trusts, and run ``--runs``
times each way, one at a time and interleaved (plain, sandbox, bus, plain …), after a warm-up:

* ``plain``: the same Python (``python -s -B main.py``) as a plain
  subprocess with the channel helper on its path, no sandbox, no limits;
* ``sandbox``: :func:`daemon.plugins.sandbox.run_sandboxed` (prlimit +
  bwrap with every namespace, the read-only binds, the channel);
* ``bus``: ``persona.plugin.run`` on an in-process persona through an
  in-process bus (signature check of the installed copy, the sandbox, the
  runs.jsonl line, the RPC).

Printed: p50 and p99 of each, and the sandbox's overhead over plain (p50
difference). No target: the figure is there to size plugin calls (a
plugin is for work that takes longer than its start). The last line is
``work_plugins.py: ok`` (exit 0) when every run succeeded, else
``work_plugins.py: FAIL`` (exit 1). :func:`bench_plugins` is the entry
point for bench/work.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.brain import load_or_create_key  # noqa: E402
from daemon.bus import Bus, BusConfig  # noqa: E402
from daemon.client import BusClient  # noqa: E402
from daemon.persona.config import PersonaConfig  # noqa: E402
from daemon.persona.daemon import PersonaDaemon  # noqa: E402
from daemon.persona.session_dir import prepare_session_dir  # noqa: E402
from daemon.plugins.manifest import load_manifest  # noqa: E402
from daemon.plugins.sandbox import API_FILE, run_sandboxed  # noqa: E402
from daemon.plugins.signing import generate_key, load_private_key, sign_folder  # noqa: E402
from daemon.plugins.trust import TrustStore  # noqa: E402
from daemon.state import StateDir  # noqa: E402
from daemon.systemd_notify import Notifier  # noqa: E402

CODE = "import personad_plugin as host\nhost.finish({'echo': host.input()})\n"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_plugin(root: Path, state: StateDir) -> Path:
    folder = root / "echo"
    folder.mkdir()
    manifest = {"id": "echo", "name": "Echo", "version": "1.0.0", "entry": "main.py"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "main.py").write_text(CODE)
    public = generate_key(root / "bench.key")
    sign_folder(folder, load_private_key(root / "bench.key"))
    TrustStore.for_state(state.root).trust(public, "bench")
    return folder


async def plain_run(folder: Path, helper_dir: Path) -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-s", "-B", str(folder / "main.py"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={"PYTHONPATH": str(helper_dir), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    out, _ = await proc.communicate(
        json.dumps({"input": 1, "plugin": "echo", "permissions": []}).encode() + b"\n"
    )
    if proc.returncode != 0 or json.loads(out) != {"output": {"echo": 1}}:
        raise RuntimeError(f"plain run failed: {proc.returncode} {out!r}")
    return time.perf_counter() - started


async def interleaved(runs: int, **fns: Any) -> dict[str, list[float]]:
    """Time each fn ``runs`` times, alternating them so that a busy moment of the machine hits all alike."""
    for fn in fns.values():
        await fn()  # warm-up: page cache, imports
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            times[name].append(await fn())
    return times


async def bench_plugins(runs: int = 30) -> bool:
    tmp = Path(tempfile.mkdtemp(prefix="bench-plugins-"))
    try:
        state = StateDir(tmp / "state")
        admin_token = state.init()
        assert admin_token is not None
        folder = make_plugin(tmp, state)
        helper_dir = tmp / "helper"
        helper_dir.mkdir()
        shutil.copyfile(API_FILE, helper_dir / "personad_plugin.py")
        manifest = load_manifest(folder)

        async def no_channel(method: str, params: dict[str, Any]) -> Any:
            raise RuntimeError("the echo plugin makes no requests")

        async def sandbox_run() -> float:
            started = time.perf_counter()
            outcome = await run_sandboxed(folder, manifest, 1, no_channel)
            if not outcome.ok or outcome.output != {"echo": 1}:
                raise RuntimeError(f"sandboxed run failed: {outcome}")
            return time.perf_counter() - started

        async with Bus(BusConfig(port=0), state.tokens()) as bus:
            daemon = PersonaDaemon(
                PersonaConfig(id="bench", name="Bench"),
                prepare_session_dir(state.root, "bench"),
                url=bus.url,
                token=state.persona_token("bench", create=True),
                brain_key=load_or_create_key(state.root, "bench", environ={}),
                notifier=Notifier.from_env({}),
            )
            stop = asyncio.Event()
            task = asyncio.ensure_future(daemon.run(stop))
            try:
                async with BusClient(bus.url, token=admin_token, kind="cli") as client:
                    for _ in range(3000):  # the persona joins the bus: up to 30 s
                        if "persona:bench" in bus.router.clients:
                            break
                        await asyncio.sleep(0.01)
                    await client.call("persona.plugin.add", {"path": str(folder)}, to="persona:bench")

                    async def bus_run() -> float:
                        started = time.perf_counter()
                        result = await client.call(
                            "persona.plugin.run", {"plugin_id": "echo", "input": 1}, to="persona:bench"
                        )
                        if not result["ok"]:
                            raise RuntimeError(f"run through the bus failed: {result}")
                        return time.perf_counter() - started

                    results = await interleaved(
                        runs, plain=lambda: plain_run(folder, helper_dir), sandbox=sandbox_run, bus=bus_run
                    )
            finally:
                stop.set()
                await task
        for name, values in results.items():
            ms = [v * 1000 for v in values]
            p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
            print(f"{name:8s} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   ({runs} runs)")
        overhead = (percentile(results["sandbox"], 0.5) - percentile(results["plain"], 0.5)) * 1000
        print(f"sandbox overhead over a plain subprocess: {overhead:.1f} ms at p50")
        return True
    except RuntimeError as exc:
        print(exc)
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    ok = asyncio.run(bench_plugins(args.runs))
    print(f"work_plugins.py: {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PERSONAD_LOG_LEVEL", "WARNING")
    raise SystemExit(main())

#!/usr/bin/env python
"""Federated buses over NATS: across nodes against one node, as ratios measured in one run.

    .venv/bin/python bench/federation.py [--quick]

Real components only, all on 127.0.0.1: Debian's ``nats-server`` with
JetStream in a temp dir, three ``python -m daemon bus --nats ... --node X``
processes (a, b, c), one ``python -m daemon persona`` daemon per node (pa on
a, pb on b, pc on c; copies of the demo persona's config under other ids),
and one caller process per node holding a :class:`daemon.client.BusClient`
(msgpack) that sends ``persona.ping``. The figures are interleaved in one run:

1. a request across two nodes against the same on one node: the caller on b
   calling pa (on a) against the caller on a calling pa, 1 and 64 in flight;
   req/s, p50 and p99; the ratio is the median of the paired ratios (each
   cross-node run against the one-node run next to it).
2. aggregate req/s with 1, 2 and 3 nodes: every node's caller, 32 in flight,
   calls the persona on the next node (its own with one node), all at once.
   With two or three nodes every request crosses nodes once.
3. TARGET_OFFLINE: 200 calls to a persona on no node (after 5 warm-up
   calls), p50, p99 and max, against the 50 ms target.

The last line is ``federation.py: ok`` when the TARGET_OFFLINE max is within
50 ms (exit status 0), else ``federation.py: FAIL`` (exit status 1); the
throughput figures are informational. Every child process is stopped at the
end, on error or Ctrl-C too. ``federation.py _caller`` is the caller process,
not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

# The child-process handling, free ports and the environment line are bus.py's.
from bus import REPO, Child, environment, free_port, raise_nofile, run_reported

if TYPE_CHECKING:
    from daemon.client import BusClient

HERE = Path(__file__).resolve()
NODES = ("a", "b", "c")
OFFLINE_TARGET_MS = 50.0
OFFLINE_CALLS = 200
OFFLINE_WARMUP = 5
AGG_INFLIGHT = 32


def now() -> float:
    return time.monotonic()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ===================================================================================
# The caller process
# ===================================================================================


async def _worker(client: BusClient, to: str, end: float, latencies: list[float]) -> None:
    while (started := now()) < end:
        await client.call("persona.ping", to=to)
        latencies.append(now() - started)


async def caller_main(url: str, token: str) -> None:
    """One BusClient; commands on stdin: ``wait TO``, ``run TO INFLIGHT SECONDS``, ``quit``."""
    from daemon.client import BusClient
    from protocol import RpcError

    client = BusClient(url, token=token, kind="cli", name=f"bench-fed-{os.getpid()}")
    await client.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while line := (await reader.readline()).decode().split():
        if line[0] == "quit":
            break
        to = line[1]
        if line[0] == "wait":  # until the persona is reachable from this node
            async with asyncio.timeout(60):
                while True:
                    try:
                        await client.call("persona.ping", to=to, deadline_ms=5000)
                        break
                    except RpcError:
                        await asyncio.sleep(0.1)
            print("reached", flush=True)
            continue
        inflight, seconds = int(line[2]), float(line[3])
        latencies: list[float] = []
        end = now() + seconds

        started = now()
        await asyncio.gather(*(_worker(client, to, end, latencies) for _ in range(inflight)))
        took = now() - started
        print(
            f"result {len(latencies) / took:.1f} {pct(latencies, 0.5) * 1e6:.0f} "
            f"{pct(latencies, 0.99) * 1e6:.0f}",
            flush=True,
        )
    await client.close()


# ===================================================================================
# The benchmark
# ===================================================================================


class Run:
    """One (rate, p50 µs, p99 µs) figure as a caller reported it."""

    def __init__(self, text: str) -> None:
        rate, p50, p99 = text.split()
        self.rate, self.p50, self.p99 = float(rate), float(p50), float(p99)


class Bench:
    def __init__(self, opts: argparse.Namespace, tmp: Path) -> None:
        self.opts = opts
        self.tmp = tmp
        self.children: list[Child] = []
        self.lines: list[str] = []
        self.ok = False

    async def spawn(self, name: str, argv: list[str], **kw: object) -> Child:
        child = await Child.start(name, argv, **kw)  # type: ignore[arg-type]
        self.children.append(child)
        return child

    async def stop_all(self) -> None:
        # Callers first, then personas, then the nodes, nats-server last.
        for child in reversed(self.children):
            try:
                await child.stop()
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {child.name}: {exc}", file=sys.stderr)
        self.children.clear()

    async def setup(self) -> None:
        from daemon.state import StateDir

        state_dir = self.tmp / "state"
        token = StateDir(state_dir).init()
        assert token is not None
        self.token: str = token
        # The demo persona under one id per node: one id is one connection cluster-wide.
        config = self.tmp / "config"
        shutil.copytree(REPO / "config", config)
        demo = (config / "personas" / "demo.toml").read_text("utf-8")
        for node in NODES:
            (config / "personas" / f"p{node}.toml").write_text(
                demo.replace('id = "demo"', f'id = "p{node}"', 1), "utf-8"
            )
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"PERSONAD_TOKEN", "NOTIFY_SOCKET", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY"}
        }
        env.update(PERSONAD_STATE_DIR=str(state_dir), PERSONAD_CONFIG_DIR=str(config), PYTHONUNBUFFERED="1")

        binary = shutil.which("nats-server") or shutil.which("/usr/sbin/nats-server")
        if binary is None:
            raise RuntimeError("nats-server not found: run scripts/system-deps")
        port = free_port()
        await self.spawn(
            "nats-server",
            [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(self.tmp / "js")],
            log=self.tmp / "nats.log",
            capture=False,
        )
        nats_url = f"nats://127.0.0.1:{port}"
        py = sys.executable
        self.urls: dict[str, str] = {}
        for node in NODES:
            bus = await self.spawn(
                f"bus-{node}",
                [
                    py,
                    "-m",
                    "daemon",
                    "--state-dir",
                    str(state_dir),
                    "bus",
                    "--port",
                    "0",
                    "--nats",
                    nats_url,
                    "--node",
                    node,
                ],
                env=env,
                log=self.tmp / f"bus-{node}.log",
            )
            self.urls[node] = (await bus.line("personad bus listening on", 30)).strip()
        for node in NODES:
            await self.spawn(
                f"persona-p{node}",
                [py, "-m", "daemon", "persona", f"p{node}"],
                env={**env, "PERSONAD_URL": self.urls[node]},
                log=self.tmp / f"persona-p{node}.log",
                capture=False,
            )
        caller_env = {**env, "BENCH_BUS_TOKEN": self.token}
        self.callers: dict[str, Child] = {}
        for node in NODES:
            self.callers[node] = await self.spawn(
                f"caller-{node}",
                [py, str(HERE), "_caller", self.urls[node]],
                env=caller_env,
                stdin=True,
                log=self.tmp / f"caller-{node}.log",
            )
            await self.callers[node].line("ready", 30)
        for node in NODES:  # every persona is reachable from every node before any figure
            for target in NODES:
                self.callers[node].send(f"wait persona:p{target}")
                await self.callers[node].line("reached", 65)

    async def run_on(self, jobs: list[tuple[str, str, int]]) -> list[Run]:
        """Run (caller node, target, in flight) jobs at the same time; their results."""
        for node, to, inflight in jobs:
            self.callers[node].send(f"run {to} {inflight} {self.opts.duration}")
        return [Run(await self.callers[node].line("result", self.opts.duration + 60)) for node, _, _ in jobs]

    def report(self, name: str, value: str, baseline: str, ratio: str) -> None:
        line = f"{name}: {value} | {baseline} | {ratio}"
        self.lines.append(line)
        print(f"  => {line}", flush=True)

    # -- 1: across nodes against one node -------------------------------------------------

    async def bench_cross(self) -> None:
        print("1. pa on node a: caller on b (across) against caller on a (one node)", flush=True)
        for inflight in (1, 64):
            one: list[Run] = []
            cross: list[Run] = []
            for rep in range(self.opts.warmup + self.opts.reps):
                order = [("a", one), ("b", cross)]
                if rep % 2:
                    order.reverse()
                got: dict[str, Run] = {}
                for node, _ in order:
                    got[node] = (await self.run_on([(node, "persona:pa", inflight)]))[0]
                if rep >= self.opts.warmup:
                    one.append(got["a"])
                    cross.append(got["b"])
            pairs = [c.rate / o.rate for c, o in zip(cross, one, strict=True)]
            print(
                f"  {inflight:>2} in flight, one node req/s: {', '.join(f'{r.rate:,.0f}' for r in one)}\n"
                f"  {inflight:>2} in flight, across req/s:   {', '.join(f'{r.rate:,.0f}' for r in cross)}\n"
                f"  paired ratios: {', '.join(f'{p:.2f}' for p in pairs)}",
                flush=True,
            )

            def fig(runs: list[Run]) -> str:
                return (
                    f"{statistics.median(r.rate for r in runs):,.0f} req/s, "
                    f"p50 {statistics.median(r.p50 for r in runs):,.0f} µs, "
                    f"p99 {statistics.median(r.p99 for r in runs):,.0f} µs"
                )

            self.report(
                f"across two nodes, {inflight} in flight",
                fig(cross),
                f"one node {fig(one)}",
                f"{statistics.median(pairs):.2f}x (pairs {min(pairs):.2f}-{max(pairs):.2f})",
            )

    # -- 2: aggregate with 1, 2, 3 nodes ---------------------------------------------------

    async def bench_aggregate(self) -> None:
        print(
            f"2. aggregate: each node's caller ({AGG_INFLIGHT} in flight) calls the next node's persona",
            flush=True,
        )
        totals: dict[int, list[float]] = {1: [], 2: [], 3: []}
        for rep in range(self.opts.warmup + self.opts.reps):
            counts = [1, 2, 3] if rep % 2 == 0 else [3, 2, 1]
            for n in counts:
                nodes = NODES[:n]
                jobs = [
                    (node, f"persona:p{nodes[(i + 1) % n]}", AGG_INFLIGHT) for i, node in enumerate(nodes)
                ]
                total = sum(r.rate for r in await self.run_on(jobs))
                if rep >= self.opts.warmup:
                    totals[n].append(total)
        for n, runs in totals.items():
            print(f"  {n} node(s) req/s: {', '.join(f'{t:,.0f}' for t in runs)}", flush=True)
        base = statistics.median(totals[1])
        for n in (2, 3):
            value = statistics.median(totals[n])
            pairs = [t / o for t, o in zip(totals[n], totals[1], strict=True)]
            self.report(
                f"aggregate, {n} nodes",
                f"{value:,.0f} req/s",
                f"1 node {base:,.0f} req/s",
                f"{statistics.median(pairs):.2f}x (pairs {min(pairs):.2f}-{max(pairs):.2f})",
            )

    # -- 3: TARGET_OFFLINE -----------------------------------------------------------------

    async def bench_offline(self) -> None:
        from daemon.client import BusClient
        from protocol import RpcError
        from protocol.errors import ErrorCode

        print(f"3. TARGET_OFFLINE: {OFFLINE_CALLS} calls from node c to a persona on no node", flush=True)
        client = BusClient(self.urls["c"], token=self.token, kind="cli", name="bench-fed-offline")
        await client.start()
        times: list[float] = []
        try:
            for i in range(OFFLINE_WARMUP + OFFLINE_CALLS):
                started = now()
                try:
                    await client.call("persona.ping", to="persona:nobody", deadline_ms=60_000)
                    raise RuntimeError("persona:nobody answered")
                except RpcError as exc:
                    if exc.code != ErrorCode.TARGET_OFFLINE:
                        raise
                if i >= OFFLINE_WARMUP:
                    times.append(now() - started)
        finally:
            await client.close()
        worst = max(times) * 1e3
        self.ok = worst <= OFFLINE_TARGET_MS
        self.report(
            "TARGET_OFFLINE, no node holds the target",
            f"p50 {pct(times, 0.5) * 1e3:.2f} ms, p99 {pct(times, 0.99) * 1e3:.2f} ms, max {worst:.2f} ms",
            f"target max ≤ {OFFLINE_TARGET_MS:.0f} ms",
            "ok" if self.ok else "FAIL",
        )

    async def run(self) -> bool:
        try:
            await self.setup()
            await self.bench_cross()
            await self.bench_aggregate()
            await self.bench_offline()
        finally:
            await self.stop_all()
        return self.ok


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions (~40 s)")
    parser.add_argument("--reps", type=int, default=None, help="measured repetitions per figure")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run")
    opts = parser.parse_args(argv)
    opts.warmup = 1
    if opts.reps is None:
        opts.reps = 2 if opts.quick else 5
    if opts.duration is None:
        opts.duration = 0.8 if opts.quick else 2.0
    return opts


async def bench_main(opts: argparse.Namespace) -> int:
    nofile = raise_nofile()
    print(
        "bench/federation.py: federated buses over NATS, ratios measured in one run\n"
        f"{environment(nofile)}\n"
        f"reps {opts.reps} (median; 1 warm-up), {opts.duration}s per run",
        flush=True,
    )
    return await run_reported(lambda tmp: Bench(opts, tmp), "federation")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_caller":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(caller_main(sys.argv[2], os.environ["BENCH_BUS_TOKEN"]))
        return 0
    opts = parse_args(sys.argv[1:])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bench_main(opts))


if __name__ == "__main__":
    sys.exit(main())

"""Faults, injected while the load runs, and the wait for everything to come back.

Each fault does the damage for real (``kill -9``, a filesystem filled to the
last block, a client that stops reading its socket), with a request of its
own in flight where the fault is "mid-something", and reports what that
request was answered and how long after the damage. ``recover`` then waits,
with no help from the soak, for every part to answer again: the supervisor
restarts what died, clients reconnect by themselves.

(About 510 lines, one class: each fault is a method of a few lines on the same system,
load and control clients, and ``catalogue`` says which this machine can make; a module
per fault would pass those three around for nothing.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import random
import signal
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from soak_artifacts import HubJobs
from soak_load import Load, _profile_create, _remember, import_bundle, outcome_of
from soak_system import DISK_PERSONA, System
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from daemon.client import BusClient
from protocol import RpcError


@dataclass
class Fault:
    kind: str
    at: float  # seconds since the load started
    detail: str = ""
    #: What the request caught by the fault was answered (an error code, or ok), and after how long.
    in_flight: list[str] = field(default_factory=list)
    recovered_s: float | None = None
    violations: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class Faults:
    system: System
    load: Load
    control: BusClient
    personas: list[str]
    t0: float
    #: How far the machine's wall clock is stepped each way (0: not at all).
    clock_jump_s: float = 0.0
    #: The cluster's second bus node, and a control client that speaks to it alone.
    node_b: System | None = None
    remote: BusClient | None = None
    #: The Academy, skill sharing and PersonaHub run too: they must come back, and are killed.
    ecosystem: bool = False
    #: The soak's hub jobs (bench/soak_artifacts.py), when the hub runs.
    hub: HubJobs | None = None
    #: Kinds of fault this machine cannot make, and why (filled by ``catalogue``).
    skipped: dict[str, str] = field(default_factory=dict)

    # -- recovery --------------------------------------------------------------------------

    async def recover(self, timeout: float = 180.0) -> float:
        """Seconds until the bus, every persona, the registry, inference and the browser answer
        (and the Academy, skill sharing and PersonaHub, when they run)."""
        started = time.monotonic()
        c = self.control
        checks: list[tuple[BusClient, str, dict[str, Any] | None, str | None]] = [
            (c, "bus.ping", None, None),
            *[(c, "persona.ping", None, f"persona:{p}") for p in self.personas],
            (c, "persona.get", {"persona_id": self.personas[0]}, "cap:registry"),
            (c, "inference.status", None, "cap:inference"),
            (c, "browser_js", {"script": "2 + 2"}, "cap:browser"),
        ]
        if self.ecosystem:
            checks += [
                (c, "academy.status", None, "cap:academy"),
                (c, "skill.popular", {"limit": 1}, "cap:skills"),
                (c, "skill.held", None, "mesh:main"),
                (c, "hub.status", None, "cap:hub"),
            ]
        if self.remote is not None:  # and across the cluster, from the other node
            checks += [(self.remote, "persona.ping", None, f"persona:{p}") for p in self.personas]
        pending = list(checks)
        while pending:
            client, method, params, to = pending[0]
            try:
                await client.call(method, params, to=to, deadline_ms=5_000)
                pending.pop(0)
            except RpcError as exc:
                if time.monotonic() - started > timeout:
                    raise TimeoutError(
                        f"{method} on {to or 'the bus'} still fails after {timeout:.0f}s: {exc}"
                    ) from None
                await asyncio.sleep(0.2)
        return time.monotonic() - started

    # -- the faults ---------------------------------------------------------------------------

    def catalogue(self) -> dict[str, Callable[[Fault], Awaitable[None]]]:
        """The faults this machine can make; why any other was left out is in ``skipped``."""
        faults: dict[str, Callable[[Fault], Awaitable[None]]] = {
            "kill -9 bus": self.kill_bus,
            "kill -9 persona mid-write": self.kill_persona_mid_write,
            "kill -9 registry mid-write": self.kill_registry_mid_write,
            "kill -9 inference mid-generation": self.kill_inference_mid_generation,
            "kill -9 inference mid-training": self.kill_inference_mid_training,
            "kill -9 chromium mid-request": self.kill_chromium_mid_request,
            "client stops reading": self.stalled_reader,
        }
        if self.ecosystem:
            faults["kill -9 academy, skill sharing and hub"] = self.kill_ecosystem
        disk = self.system.disk
        if disk is None:
            self.skipped["full disk under a persona"] = "no small filesystem (mounting needs root)"
        else:
            faults["full disk under a persona"] = self.full_disk
        if disk is None or disk.throttle is None:
            self.skipped["slow disk under a persona"] = (
                "no loop device or no I/O cgroup" if disk is not None else "no small filesystem"
            )
        else:
            faults["slow disk under a persona"] = self.slow_disk
        if self.node_b is None:
            self.skipped["kill -9 federated bus node"] = "one bus node (no nats-server, or --no-federation)"
        else:
            faults["kill -9 federated bus node"] = self.kill_node_b
        if not self.clock_jump_s:
            self.skipped["clock jumps"] = "--clock-jump 0"
        elif not Clock.can_step():
            self.skipped["clock jumps"] = "the wall clock cannot be set here (CAP_SYS_TIME is needed)"
        else:
            faults["clock jumps"] = self.clock_jumps
        return faults

    async def kill_bus(self, fault: Fault) -> None:
        pid = self.system.kill("bus")
        fault.detail = f"pid {pid}"

    async def kill_ecosystem(self, fault: Fault) -> None:
        """kill -9 the Academy, skill sharing and PersonaHub services at once, mid-run (the
        load does not call them): their supervisor starts each again, and ``recover`` asks
        each to answer."""
        started = ""
        if self.hub is not None:  # a job of the soak's own mid-generation: it must resume by itself
            started = await self.hub.start_one(self.load._timed)
            await asyncio.sleep(2.0)
        pids = {role: self.system.kill(role) for role in ("academy", "skills", "hub")}
        fault.detail = ", ".join(f"{role} pid {pid}" for role, pid in pids.items())
        if started:
            fault.detail += f"; a hub job started 2 s before: {started}"
        missing = [role for role, pid in pids.items() if pid is None]
        if missing:
            raise RuntimeError(f"not running, so not killed: {', '.join(missing)}")

    async def kill_node_b(self, fault: Fault) -> None:
        """kill -9 the other node's bus while 16 writers write through it to a persona on
        this one: its clients move here, its supervisor starts it again, and it rejoins."""
        assert self.node_b is not None
        assert self.remote is not None
        remote, target = self.remote, f"persona:{self.personas[0]}"
        rng = random.Random(int(fault.at * 1000))
        await self._burst(fault, lambda: _remember(self.load, remote, rng, target), "bus", system=self.node_b)
        fault.detail = f"node soak-b's {fault.detail}, to {target} on soak-a"

    async def _burst(
        self,
        fault: Fault,
        write: Callable[[], Awaitable[Any]],
        role: str,
        n: int = 16,
        system: System | None = None,
    ) -> None:
        """``n`` writers writing back to back, and kill -9 of ``role`` (of ``system``) while
        they are; what the writes were answered, counted (those in flight at the kill cannot
        all be "ok")."""
        outcomes: Counter[str] = Counter()
        stop = asyncio.Event()

        async def writer() -> None:
            while not stop.is_set():
                outcome = await _outcome(write)
                outcomes[outcome] += 1
                if outcome != "ok":  # refused at once while the target is down: do not spin
                    await asyncio.sleep(0.02)

        writers = [asyncio.create_task(writer()) for _ in range(n)]
        await asyncio.sleep(0.3)
        pid = (system or self.system).kill(role)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*writers)
        fault.detail = f"{role} pid {pid}, {n} writers writing"
        fault.in_flight = [f"{o} x{k}" for o, k in outcomes.most_common()]

    async def kill_persona_mid_write(self, fault: Fault) -> None:
        pid = next(p for p in self.personas if p != DISK_PERSONA)

        rng = random.Random(int(fault.at * 1000))
        await self._burst(
            fault, lambda: _remember(self.load, self.control, rng, f"persona:{pid}"), f"persona:{pid}"
        )

    async def kill_registry_mid_write(self, fault: Fault) -> None:
        """Eight writers, every other write a persona.create, the rest persona.import of a
        bundle (a brain, an adapter, a record: the registry must take back a half-made one)."""
        rng = random.Random(int(fault.at * 1000))
        turn = itertools.count()

        def write() -> Awaitable[Any]:
            if next(turn) % 2:
                return import_bundle(self.load, self.control, rng)
            return _profile_create(self.load, self.control, rng, "")

        await self._burst(fault, write, "registry", 8)

    async def _kill_mid_stream(
        self, fault: Fault, method: str, params: dict[str, Any], deadline_ms: int
    ) -> None:
        """Start a streaming call on cap:inference, kill -9 the service at its first progress."""
        first = asyncio.Event()
        call = asyncio.create_task(
            _outcome(
                lambda: self.control.call(
                    method,
                    params,
                    to="cap:inference",
                    deadline_ms=deadline_ms,
                    on_progress=lambda _n: first.set(),
                ),
                with_time=True,
            )
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first.wait(), 60)
        killed = time.monotonic()
        pid = self.system.kill("inference")
        outcome = await call
        fault.detail = (
            f"pid {pid}, {'after its first progress' if first.is_set() else 'no progress seen in 60 s'}"
        )
        fault.in_flight = [f"{outcome} ({time.monotonic() - killed:.2f} s after the kill)"]

    async def kill_inference_mid_generation(self, fault: Fault) -> None:
        await self._kill_mid_stream(
            fault,
            "inference.generate",
            {
                "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
                "max_tokens": 1024,
                "temperature": 0.0,
            },
            120_000,
        )

    async def kill_inference_mid_training(self, fault: Fault) -> None:
        example = {
            "messages": [
                {"role": "user", "content": "Who keeps the ledger?"},
                {"role": "assistant", "content": "The soak keeps the ledger."},
            ]
        }
        name = f"soak{int(fault.at * 1000) % 10**9}"
        await self._kill_mid_stream(
            fault,
            "adapter.train",
            {"name": name, "examples": [example] * 8, "epochs": 20, "rank": 2, "max_tokens": 128},
            300_000,
        )

    async def kill_chromium_mid_request(self, fault: Fault) -> None:
        slow = "new Promise(r => setTimeout(() => r('late'), 4000))"
        call = asyncio.create_task(
            _outcome(
                lambda: self.control.call(
                    "browser_js", {"script": slow, "timeout_ms": 10_000}, to="cap:browser", deadline_ms=30_000
                ),
                with_time=True,
            )
        )
        await asyncio.sleep(1.0)
        pid = self.system.chromium_browser_pid()
        killed = time.monotonic()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        outcome = await call
        fault.detail = f"chromium pid {pid}"
        fault.in_flight = [f"{outcome} ({time.monotonic() - killed:.2f} s after the kill)"]

    async def full_disk(self, fault: Fault) -> None:
        disk = self.system.disk
        assert disk is not None
        filled = await asyncio.to_thread(disk.fill)

        rng = random.Random(int(fault.at * 1000))
        target = f"persona:{DISK_PERSONA}"
        # SQLite first fills the room its WAL already has: write until the disk says so (10 s at most).
        outcomes: Counter[str] = Counter()
        full_at = time.monotonic()
        while time.monotonic() - full_at < 10 and sum(n for o, n in outcomes.items() if o != "ok") < 5:
            outcomes[await _outcome(lambda: _remember(self.load, self.control, rng, target))] += 1
        await asyncio.sleep(1.0)
        disk.free()
        fault.detail = (
            f"{filled / 2**20:.1f} MiB of filler on {disk.mib} MiB of {disk.kind}, "
            f"for {time.monotonic() - full_at:.1f} s"
        )
        fault.in_flight = [f"{o} x{n}" for o, n in outcomes.items()]
        # Space is back: the same persona must take writes again, by itself.
        deadline = time.monotonic() + 60
        while True:
            if await _remember(self.load, self.control, rng, f"persona:{DISK_PERSONA}") == "ok":
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the persona took no write within 60 s of the space coming back")
            await asyncio.sleep(0.5)

    async def slow_disk(self, fault: Fault, iops: int = 20, seconds: float = 20.0) -> None:
        """The persona's disk serves ``iops`` operations a second for ``seconds``, while 8
        writers write to it and a pinger asks it how it is: writes may take long, or
        time out, but every one is answered, and the persona keeps answering pings."""
        disk = self.system.disk
        assert disk is not None
        assert disk.throttle is not None
        target = f"persona:{DISK_PERSONA}"
        rng = random.Random(int(fault.at * 1000))
        outcomes: Counter[str] = Counter()
        write_s: list[float] = []
        ping_s: list[float] = []
        stop = asyncio.Event()

        async def writer() -> None:
            while not stop.is_set():
                started = time.monotonic()
                outcomes[await _outcome(lambda: _remember(self.load, self.control, rng, target))] += 1
                write_s.append(time.monotonic() - started)

        async def pinger() -> None:
            while not stop.is_set():
                started = time.monotonic()
                outcome = await _outcome(
                    lambda: self.control.call("persona.ping", to=target, deadline_ms=10_000)
                )
                ping_s.append(time.monotonic() - started)
                outcomes[f"ping {outcome}"] += 1
                await asyncio.sleep(0.5)

        disk.throttle.slow(iops)
        try:
            tasks = [asyncio.create_task(writer()) for _ in range(8)] + [asyncio.create_task(pinger())]
            await asyncio.sleep(seconds)
        finally:
            disk.throttle.fast()
        stop.set()
        await asyncio.gather(*tasks)
        write_s.sort()
        fault.detail = (
            f"{disk.kind} capped at {iops} I/O operations/s for {seconds:.0f} s: "
            f"{len(write_s)} writes, median {write_s[len(write_s) // 2]:.2f} s, max {write_s[-1]:.2f} s; "
            f"pings max {max(ping_s) * 1000:.0f} ms"
        )
        fault.in_flight = [f"{o} x{n}" for o, n in outcomes.most_common()]

    async def clock_jumps(self, fault: Fault, hold: float = 6.0) -> None:
        """The machine's wall clock steps forward by ``clock_jump_s``, back to the true time,
        back by as much, and to the true time again, ``hold`` seconds each, while the load
        runs: as an NTP step or an operator's ``date -s`` does. The real clock, not a fake
        one in a preloaded library: every process sees it, the kernel's timers too. What
        the load was answered in the meantime is counted, and the bus's uptime
        (``/healthz``) must only ever grow."""
        clock = Clock()
        jump = self.clock_jump_s
        errors_before = self.load.stats.errors.copy()
        requests_before = self.load.stats.total()
        uptimes: list[float] = []
        rng = random.Random(int(fault.at * 1000))
        writes: Counter[str] = Counter()
        try:
            for by in (jump, 0.0, -jump, 0.0):
                clock.step(by)
                until = time.monotonic() + hold
                while time.monotonic() < until:
                    uptimes.append(await asyncio.to_thread(self._uptime))
                    persona = f"persona:{rng.choice(self.personas)}"
                    write = functools.partial(_remember, self.load, self.control, rng, persona)
                    writes[await _outcome(write)] += 1
                    await asyncio.sleep(0.25)
        finally:
            clock.step(0.0)
        errors = self.load.stats.errors - errors_before
        fault.detail = (
            f"wall clock +{jump:.0f} s, back, -{jump:.0f} s, back, {hold:.0f} s each; "
            f"the load made {self.load.stats.total() - requests_before} requests meanwhile, "
            f"errors {dict(errors.most_common(6)) or 'none'}; bus uptime {uptimes[0]:.1f}-{uptimes[-1]:.1f} s"
        )
        fault.in_flight = [f"{o} x{n}" for o, n in writes.most_common()]
        if any(b < a for a, b in itertools.pairwise(uptimes)):
            fault.error = f"the bus's uptime went backwards with the clock: {uptimes}"

    def _uptime(self) -> float:
        port = urllib.parse.urlsplit(self.system.url).port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return float(json.load(answer)["uptime_s"])

    async def stalled_reader(self, fault: Fault) -> None:
        """A client that subscribes, then never reads again, while events pile up for it.

        The bus must drop it (its buffer per connection is capped) and everyone else must
        not notice. The reader is paused at the transport: the kernel's buffers fill, then
        the bus's.
        """
        headers = {"Authorization": f"Bearer {self.system.admin_token}"}
        ws = await connect(
            self.system.url,
            subprotocols=[Subprotocol("personad.v1.json")],
            additional_headers=headers,
            max_size=None,
        )
        name = f"stalled-{int(fault.at)}"
        await ws.send(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "hello",
                    "params": {"protocol": 1, "kind": "cli", "name": name},
                }
            )
        )
        await ws.recv()
        await ws.send(
            json.dumps(
                {"jsonrpc": "2.0", "id": 1, "method": "bus.subscribe", "params": {"topics": ["soak.stall"]}}
            )
        )
        await ws.recv()
        ws.transport.pause_reading()
        client_id = f"cli:{name}"
        blob = "x" * 32_768
        started = time.monotonic()
        published = 0
        try:
            while time.monotonic() - started < 60:
                for _ in range(20):
                    await self.control.publish("soak.stall", {"blob": blob})
                    published += 1
                listed = await self.control.call("bus.clients", {"kind": "cli"})
                if client_id not in {c["id"] for c in listed["clients"]}:
                    fault.detail = (
                        f"dropped by the bus after {published} events of 32 KiB "
                        f"({time.monotonic() - started:.1f} s)"
                    )
                    return
                await asyncio.sleep(0.05)
            fault.error = f"still connected after {published} events of 32 KiB and 60 s"
        finally:
            with contextlib.suppress(Exception):
                ws.transport.abort()
            with contextlib.suppress(ConnectionClosed, Exception):
                await asyncio.wait_for(ws.close(), 1)


class Clock:
    """The machine's wall clock (CLOCK_REALTIME), stepped and put back exactly.

    The true time is kept as its distance from the monotonic clock, which no step
    moves, so putting it back needs no network and loses nothing. Stepping needs
    CAP_SYS_TIME (root on a machine of one's own).
    """

    def __init__(self) -> None:
        self.offset = time.time() - time.monotonic()

    @staticmethod
    def can_step() -> bool:
        try:
            time.clock_settime(time.CLOCK_REALTIME, time.time())
        except OSError:
            return False
        return True

    def step(self, by: float) -> None:
        """Set the clock to the true time plus ``by`` seconds."""
        time.clock_settime(time.CLOCK_REALTIME, time.monotonic() + self.offset + by)


async def _outcome(call: Callable[[], Awaitable[Any]], with_time: bool = False) -> str:
    started = time.monotonic()
    try:
        value = await asyncio.wait_for(call(), 360)
        result = value if isinstance(value, str) else "ok"
    except RpcError as exc:
        result = outcome_of(exc)
        if with_time:
            result += f" ({exc.message[:160]})"
    except TimeoutError:
        result = "HUNG"
    return f"{result} in {time.monotonic() - started:.2f} s" if with_time else result

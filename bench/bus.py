#!/usr/bin/env python
"""The bus against raw websockets and against NATS, as ratios measured in one run.

    .venv/bin/python bench/bus.py [--quick] [--explain] [--cpus 0]

Real components only, all on 127.0.0.1: the bus (``python -m daemon bus``,
uvloop), a persona daemon (``python -m daemon persona demo``) and, in this
process, a :class:`daemon.client.BusClient` (msgpack). The baselines use plain
``websockets`` (asyncio API, compression off, uvloop) with the same msgpack
codec (``protocol.codec.MSGPACK``) and the same JSON-RPC-shaped payloads, in a
separate server process, so the process counts are comparable. Request/response
is also measured against NATS in the same topology: a ``nats-server`` started
here (Debian's package, ``scripts/system-deps``) on a free port, a nats-py
responder process answering ``persona.ping``-shaped msgpack requests, and
nats-py ``request()`` calls from this process (caller -> broker -> responder ->
broker -> caller, three processes, as for the bus). Each figure is
measured interleaved with its baseline (raw, bus, bus, raw, ...) after a
warm-up; the figures are the medians, the ratio is the median of the paired
ratios (each bus run against the baseline run next to it).

1. request/response, one in flight: this process -> bus -> persona -> bus ->
   this process, against this process -> raw echo server -> this process.
2. the same with 64 requests in flight (64 tasks on one BusClient; a window of
   64 on one raw connection).
3. one event to 200 subscribers: ``bus.publish`` against websockets'
   ``broadcast()``; 200 subscriber connections in two subscriber processes,
   deliveries/s counted at the receivers (first publish -> last receipt).
4. 2,000 idle authenticated connections (opened by a separate process, with
   the real hello): the bus's RSS growth per connection, the raw server's as
   the baseline; and a persona daemon's idle RSS. The targets' KB and MB
   are read as KiB and MiB.

Under each figure come its repetitions, the paired ratios and the CPU time
per operation of every process involved (psutil). ``--explain`` adds,
for information, the same request/response through stand-ins (a plain
websockets relay, a raw caller, a raw persona) to show which part costs what.

Against NATS, the targets are ≥ 1.0 at 1 in flight and ≥ 0.8 at 64 (ratios), and the
bus's CPU per relayed request (psutil, 1 in flight) ≤ 100 µs.

The last line is ``bus.py: ok`` only if every target holds (exit status 0),
else ``bus.py: FAIL`` (exit status 1). Every child process is stopped at the
end, whatever happens. The same file also holds the helper processes
(``bus.py _raw-server``, ``_subscribers``, ``_idle``, ``_relay``, ``_raw-persona``,
``_nats-responder``),
not meant to be run by hand.

(One file past 1,000 lines on purpose: the bench and the helper processes it
starts, ``bus.py _raw-server`` and the rest, share the payload builders and
must stay in step; a helper is a role of this same script.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.metadata
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import uvloop  # noqa: E402
import websockets  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from protocol.codec import MSGPACK  # noqa: E402

PERSONA = "persona:demo"
RAW_PERSONA = "persona:bench-raw"  # --explain only: a raw websockets stand-in for the daemon
TOPIC = "bench.fanout"
PUBLISHER = "cli:bench-pub"  # the bus stamps the publisher's client id; raw uses the same string
SUBPROTOCOL = MSGPACK.subprotocol
MAX_SIZE = 16 * 1024 * 1024  # BusConfig.max_message_bytes
MAX_QUEUE = 32  # BusConfig.max_queue
KIB = 1024
MIB = 1024 * 1024

TARGETS = {"rr": 0.40, "pipelined": 0.35, "fanout": 0.70}
#: Against nats-server + nats-py in the same topology.
NATS_TARGETS = {"rr": 1.0, "pipelined": 0.8}
MAX_BUS_CPU_US = 100.0
NATS_SUBJECT = "persona.demo"
MAX_KIB_PER_CONN = 30.0
MAX_PERSONA_MIB = 60.0


Ops = tuple[int, float]  # operations done, seconds taken


def now() -> float:
    return time.monotonic()


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the bench dies (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


# -- payloads (the same shapes on both sides) -------------------------------------------


def ping_request(rid: int, to: str = PERSONA) -> dict[str, Any]:
    """What BusClient.call("persona.ping", to=PERSONA) puts on the wire."""
    return {"jsonrpc": "2.0", "id": rid, "method": "persona.ping", "to": to, "meta": {"deadline_ms": 30_000}}


def ping_reply(rid: Any) -> dict[str, Any]:
    """What the bus relays back from the persona."""
    return {"jsonrpc": "2.0", "id": rid, "from": PERSONA, "result": {"pong": True, "time": time.time()}}


def event_data(seq: int) -> dict[str, Any]:
    return {"seq": seq, "text": "the quick brown fox jumps over the lazy dog " * 2}


def publish_request(rid: int, seq: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "bus.publish",
        "params": {"topic": TOPIC, "data": event_data(seq)},
        "meta": {"deadline_ms": 30_000},
    }


def hello_request(name: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "hello",
        "params": {"protocol": 1, "kind": "cli", "name": name},
    }


# ===================================================================================
# Helper processes
# ===================================================================================


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _say(*parts: Any) -> None:
    print(*parts, flush=True)


async def raw_server_main(args: argparse.Namespace) -> None:
    """The baseline: plain websockets, echo + broadcast, same codec and shapes."""
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    subscribers: set[ServerConnection] = set()
    encode, decode = MSGPACK.encode_wire, MSGPACK.decode_data

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        if path == "/sub":
            subscribers.add(ws)
            try:
                await ws.send(encode({"jsonrpc": "2.0", "id": 1, "result": {"topics": [TOPIC]}}))
                await ws.wait_closed()
            finally:
                subscribers.discard(ws)
            return
        if path == "/pub":
            async for frame in ws:
                req = decode(frame)
                p = req["params"]
                event = encode(
                    {
                        "jsonrpc": "2.0",
                        "method": "event",
                        "params": {"topic": p["topic"], "data": p["data"], "publisher": PUBLISHER},
                    }
                )
                broadcast(subscribers, event)
                await ws.send(
                    encode({"jsonrpc": "2.0", "id": req["id"], "result": {"delivered": len(subscribers)}})
                )
            return
        async for frame in ws:  # echo: /echo and /idle (the hello gets its answer)
            req = decode(frame)
            await ws.send(encode(ping_reply(req["id"])))

    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        max_size=MAX_SIZE,
        max_queue=MAX_QUEUE,
        ping_interval=20,
        ping_timeout=20,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        _say(f"raw listening on ws://127.0.0.1:{port}")
        stdin = await _stdin_reader()
        while (await stdin.readline()).strip() not in (b"quit", b""):
            pass


async def _open_bus_conn(url: str, token: str, name: str) -> ClientConnection:
    ws = await connect(
        url,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        max_size=MAX_SIZE,
        ping_interval=None,
        open_timeout=30,
    )
    await ws.send(MSGPACK.encode_wire(hello_request(name)))
    reply = MSGPACK.decode_data(await asyncio.wait_for(ws.recv(), 30))
    if "result" not in reply:
        await ws.close()
        raise RuntimeError(f"hello refused: {reply}")
    return ws


async def _open_all(
    count: int, opener: Callable[[int], Awaitable[ClientConnection]], concurrency: int = 50
) -> list[ClientConnection]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> ClientConnection:
        async with sem:
            return await opener(i)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def _close_all(conns: list[ClientConnection]) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(15):
            await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


async def subscribers_main(args: argparse.Namespace) -> None:
    """``count`` subscriber connections; counts receipts per connection.

    stdin ``expect N``: reset, answer ``armed``, then ``done <monotonic of the
    last receipt>`` once every connection has N events (``fail ...`` if not
    within the bound). Receivers do the same minimal work on both sides.
    """
    count, mode = args.count, args.mode

    async def opener(i: int) -> ClientConnection:
        name = f"bench-sub-{args.tag}-{i}"
        if mode == "bus":
            ws = await _open_bus_conn(args.url, args.token, name)
            await ws.send(
                MSGPACK.encode_wire(
                    {"jsonrpc": "2.0", "id": 1, "method": "bus.subscribe", "params": {"topics": [TOPIC]}}
                )
            )
        else:
            ws = await connect(
                args.url + "/sub", compression=None, max_size=MAX_SIZE, ping_interval=None, open_timeout=30
            )
        ack = MSGPACK.decode_data(await asyncio.wait_for(ws.recv(), 30))
        if ack.get("id") != 1 or "result" not in ack:
            raise RuntimeError(f"subscribe refused: {ack}")
        return ws

    conns = await _open_all(count, opener)
    counts = [0] * count
    st: dict[str, Any] = {"expect": -1, "remaining": 0, "last": 0.0, "bad": 0}
    done = asyncio.Event()

    async def reader(i: int, ws: ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in ws:
                c = counts[i] = counts[i] + 1
                if c == st["expect"]:
                    if MSGPACK.decode_data(frame).get("method") != "event":
                        st["bad"] += 1
                    st["last"] = now()
                    st["remaining"] -= 1
                    if st["remaining"] == 0:
                        done.set()

    readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(conns)]
    _say(f"ready {count}")
    stdin = await _stdin_reader()
    try:
        while True:
            line = (await stdin.readline()).decode().split()
            if not line or line[0] == "quit":
                break
            if line[0] == "expect":
                n = int(line[1])
                for i in range(count):
                    counts[i] = 0
                done.clear()
                st.update(expect=n, remaining=count, bad=0)
                _say("armed")
                try:
                    await asyncio.wait_for(done.wait(), float(line[2]) if len(line) > 2 else 60)
                except TimeoutError:
                    _say(f"fail got min={min(counts)} max={max(counts)} of {n}")
                    continue
                _say(f"fail {st['bad']} not events" if st["bad"] else f"done {st['last']!r}")
    finally:
        await _close_all(conns)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def idle_main(args: argparse.Namespace) -> None:
    """``count`` idle connections, each having said its hello; waits for ``quit``."""
    raise_nofile()
    hello = MSGPACK.encode_wire(hello_request("x"))

    async def opener(i: int) -> ClientConnection:
        if args.mode == "bus":
            return await _open_bus_conn(args.url, args.token, f"bench-idle-{i}")
        ws = await connect(
            args.url + "/idle", compression=None, max_size=MAX_SIZE, ping_interval=None, open_timeout=30
        )
        await ws.send(hello)
        reply = MSGPACK.decode_data(await asyncio.wait_for(ws.recv(), 30))
        assert "result" in reply
        return ws

    started = now()
    conns = await _open_all(args.count, opener)
    _say(f"ready {len(conns)} {now() - started:.2f}")
    stdin = await _stdin_reader()
    while (await stdin.readline()).strip() not in (b"quit", b""):
        pass
    await _close_all(conns)


async def relay_main(args: argparse.Namespace) -> None:
    """--explain only: a plain websockets relay, one upstream connection per client."""
    from websockets.asyncio.server import ServerConnection, serve

    encode, decode = MSGPACK.encode_wire, MSGPACK.decode_data

    async def handler(ws: ServerConnection) -> None:
        async with connect(args.url + "/echo", compression=None, max_size=MAX_SIZE) as up:

            async def downstream() -> None:
                async for frame in up:
                    await ws.send(encode(decode(frame)))

            task = asyncio.create_task(downstream())
            try:
                async for frame in ws:
                    data = decode(frame)
                    data["from"] = "cli:bench"
                    await up.send(encode(data))
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async with serve(
        handler, "127.0.0.1", 0, compression=None, max_size=MAX_SIZE, max_queue=MAX_QUEUE
    ) as server:
        _say(f"relay listening on ws://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        stdin = await _stdin_reader()
        while (await stdin.readline()).strip() not in (b"quit", b""):
            pass


async def raw_persona_main(args: argparse.Namespace) -> None:
    """--explain only: a persona that is nothing but a hello and a ping answer."""
    encode, decode = MSGPACK.encode_wire, MSGPACK.decode_data
    ws = await connect(
        args.url,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {args.token}"},
        compression=None,
        max_size=MAX_SIZE,
    )
    await ws.send(
        encode(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "hello",
                "params": {"protocol": 1, "kind": "persona", "name": RAW_PERSONA[8:]},
            }
        )
    )
    if "result" not in decode(await asyncio.wait_for(ws.recv(), 30)):
        raise RuntimeError("hello refused")

    async def serve_requests() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in ws:
                req = decode(frame)
                if "id" in req and "method" in req:
                    await ws.send(
                        encode(
                            {"jsonrpc": "2.0", "id": req["id"], "result": {"pong": True, "time": time.time()}}
                        )
                    )

    task = asyncio.create_task(serve_requests())
    _say("ready")
    stdin = await _stdin_reader()
    while (await stdin.readline()).strip() not in (b"quit", b""):
        pass
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await ws.close()


async def nats_responder_main(args: argparse.Namespace) -> None:
    """The NATS side's persona: answers each request on NATS_SUBJECT, same codec and shapes."""
    import nats

    encode, decode = MSGPACK.encode_wire, MSGPACK.decode_data
    nc = await nats.connect(args.url, allow_reconnect=False)

    async def answer(msg: Any) -> None:
        req = decode(msg.data)
        await msg.respond(encode(ping_reply(req["id"])))

    await nc.subscribe(NATS_SUBJECT, cb=answer)
    await nc.flush()
    _say("ready")
    stdin = await _stdin_reader()
    while (await stdin.readline()).strip() not in (b"quit", b""):
        pass
    await nc.drain()


def free_port() -> int:
    """A port free now on 127.0.0.1 (nats-server cannot be asked for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ===================================================================================
# The benchmark
# ===================================================================================


class Child:
    """A child process we started; always stopped by ``stop()``."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path | None = None) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @classmethod
    async def start(
        cls,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        stdin: bool = False,
        capture: bool = True,
    ) -> Child:
        """Start ``argv``; stderr (and stdout unless ``capture``) go to ``log``."""
        err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if log is not None else None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture or err is None else err,
                stderr=err,
                preexec_fn=_die_with_parent,
            )
        finally:
            if err is not None:
                os.close(err)
        return cls(name, proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text("utf-8", "replace").splitlines()[-lines:])

    async def line(self, prefix: str, timeout: float) -> str:
        """The next stdout line starting with ``prefix`` (its remainder), within ``timeout``."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await self.proc.stdout.readline()
                    if not raw:
                        raise RuntimeError(
                            f"{self.name} exited (status {await self.proc.wait()})\n{self.tail()}"
                        )
                    text = raw.decode().strip()
                    if text.startswith("fail"):
                        raise RuntimeError(f"{self.name}: {text}")
                    if text.startswith(prefix):
                        return text[len(prefix) :].strip()
        except TimeoutError:
            raise RuntimeError(
                f"{self.name} did not print {prefix!r} within {timeout}s\n{self.tail()}"
            ) from None

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")

    async def stop(self, timeout: float = 10.0) -> None:
        if self.proc.returncode is not None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.send("quit")
                await self.proc.stdin.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await asyncio.wait_for(self.proc.wait(), 5)


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


async def settled_rss(
    pid: int,
    *,
    min_wait: float = 1.0,
    max_wait: float = 15.0,
    tolerance: int = 64 * KIB,
    samples: int = 5,
    interval: float = 0.25,
) -> int:
    """Poll the RSS until the last ``samples`` readings agree within ``tolerance`` (bounded)."""
    started = now()
    seen: list[int] = []
    while True:
        seen.append(rss(pid))
        recent = seen[-samples:]
        waited = now() - started
        if waited >= max_wait or (
            waited >= min_wait and len(recent) == samples and max(recent) - min(recent) <= tolerance
        ):
            return recent[-1]
        await asyncio.sleep(interval)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def median(values: list[float]) -> float:
    return statistics.median(values)


class Bench:
    def __init__(self, opts: argparse.Namespace, tmp: Path) -> None:
        self.opts = opts
        self.tmp = tmp
        self.children: list[Child] = []
        self.results: list[tuple[str, bool]] = []
        self.lines: list[str] = []
        self.python = sys.executable

    # -- setup -------------------------------------------------------------------------

    async def spawn(self, name: str, argv: list[str], **kw: Any) -> Child:
        child = await Child.start(name, argv, **kw)
        self.children.append(child)
        return child

    async def stop_all(self) -> None:
        # Helpers first (they are clients), then persona, then servers.
        for child in reversed(self.children):
            try:
                await child.stop()
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {child.name}: {exc}", file=sys.stderr)
        self.children.clear()

    def helper(self, role: str, *args: str) -> list[str]:
        return [self.python, str(Path(__file__).resolve()), role, *args]

    async def setup(self) -> None:
        from daemon.state import StateDir

        state_dir = self.tmp / "state"
        token = StateDir(state_dir).init()
        assert token is not None
        self.token: str = token
        # Helpers get the token in their environment, not on their command line.
        self.helper_env = {**os.environ, "BENCH_BUS_TOKEN": self.token}
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"PERSONAD_TOKEN", "NOTIFY_SOCKET", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY"}
        }
        env.update(
            PERSONAD_STATE_DIR=str(state_dir), PERSONAD_CONFIG_DIR=str(REPO / "config"), PYTHONUNBUFFERED="1"
        )
        self.bus = await self.spawn(
            "bus",
            [self.python, "-m", "daemon", "--state-dir", str(state_dir), "bus", "--port", "0"],
            env=env,
            log=self.tmp / "bus.log",
        )
        self.url = (await self.bus.line("personad bus listening on", 30)).strip()
        env["PERSONAD_URL"] = self.url
        self.persona = await self.spawn(
            "persona",
            [self.python, "-m", "daemon", "persona", "demo"],
            env=env,
            log=self.tmp / "persona.log",
            capture=False,
        )
        self.raw = await self.spawn(
            "raw-server", self.helper("_raw-server"), stdin=True, log=self.tmp / "raw.log"
        )
        self.raw_url = await self.raw.line("raw listening on", 30)

        from daemon.client import BusClient
        from protocol import RpcError

        self.client = BusClient(self.url, token=self.token, kind="cli", name="bench")
        await self.client.start()
        self.pub = BusClient(self.url, token=self.token, kind="cli", name="bench-pub")
        await self.pub.start()
        async with asyncio.timeout(30):
            while True:
                try:
                    await self.client.call("persona.ping", to=PERSONA, deadline_ms=5000)
                    break
                except RpcError:
                    await asyncio.sleep(0.1)
        me = os.getpid()
        self.raw_pids = {"client": me, "raw server": self.raw.pid}
        self.bus_pids = {"client": me, "bus": self.bus.pid, "persona": self.persona.pid}
        self.raw_ws = await connect(self.raw_url + "/echo", compression=None, max_size=MAX_SIZE)
        self.raw_pub = await connect(self.raw_url + "/pub", compression=None, max_size=MAX_SIZE)
        await self.setup_nats()

    async def setup_nats(self) -> None:
        """nats-server on a free port, a nats-py responder process, a nats-py caller here."""
        import nats

        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not os.access(binary, os.X_OK):
            raise RuntimeError("nats-server is not installed: run scripts/system-deps")
        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        self.nats_server = await self.spawn(
            "nats-server",
            [binary, "-a", "127.0.0.1", "-p", str(port)],
            log=self.tmp / "nats.log",
            capture=False,
        )
        # Wait for the port with plain TCP: nats-py prints a traceback per refused attempt.
        async with asyncio.timeout(30):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    if self.nats_server.proc.returncode is not None:
                        raise RuntimeError(f"nats-server exited\n{self.nats_server.tail()}") from None
                    await asyncio.sleep(0.05)
        self.nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
        self.responder = await self.spawn(
            "nats-responder",
            self.helper("_nats-responder", "--url", url),
            stdin=True,
            log=self.tmp / "nats-responder.log",
        )
        await self.responder.line("ready", 30)
        self.nats_pids = {
            "client": os.getpid(),
            "nats-server": self.nats_server.pid,
            "responder": self.responder.pid,
        }

    async def teardown(self) -> None:
        nc = getattr(self, "nc", None)
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
        for closer in (getattr(self, "raw_ws", None), getattr(self, "raw_pub", None)):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closer.close(), 5)
        for client in (getattr(self, "client", None), getattr(self, "pub", None)):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 10)
        await self.stop_all()

    # -- reporting ---------------------------------------------------------------------

    def report(
        self, name: str, value: str, baseline: str, ratio: float | None, target: str, ok: bool
    ) -> None:
        ratio_text = f" ratio {ratio:.2f}" if ratio is not None else ""
        line = f"{name}: {value} ({baseline}){ratio_text} target {target}: {'ok' if ok else 'FAIL'}"
        self.lines.append(line)
        self.results.append((name, ok))
        print(line, flush=True)

    # -- 1 and 2: request/response ---------------------------------------------------

    async def bus_rr(self, duration: float, to: str = PERSONA) -> Ops:
        """BusClient.call, one at a time, for ``duration`` seconds."""
        client = self.client
        n, t0 = 0, now()
        deadline = t0 + duration
        async with asyncio.timeout(duration + 30):
            while True:
                result = await client.call("persona.ping", to=to)
                n += 1
                t = now()
                if t >= deadline:
                    break
        assert result["pong"] is True
        return n, t - t0

    async def raw_rr(self, duration: float, ws: ClientConnection | None = None, to: str = PERSONA) -> Ops:
        """Plain send/recv on one connection, one at a time."""
        ws = ws or self.raw_ws
        encode, decode = MSGPACK.encode_wire, MSGPACK.decode_data
        n, t0 = 0, now()
        deadline = t0 + duration
        async with asyncio.timeout(duration + 30):
            while True:
                n += 1
                await ws.send(encode(ping_request(n, to)))
                reply = decode(await ws.recv())
                t = now()
                if t >= deadline:
                    break
        assert reply["id"] == n, reply
        assert reply["result"]["pong"] is True, reply
        return n, t - t0

    async def bus_pipelined(self, duration: float, window: int, to: str = PERSONA) -> Ops:
        """``window`` tasks calling through one BusClient."""
        client = self.client
        done = 0
        deadline = now() + duration

        async def worker() -> None:
            nonlocal done
            while now() < deadline:
                await client.call("persona.ping", to=to)
                done += 1

        t0 = now()
        async with asyncio.timeout(duration + 30):
            await asyncio.gather(*(worker() for _ in range(window)))
        return done, now() - t0

    async def raw_pipelined(
        self, duration: float, window: int, ws: ClientConnection | None = None, to: str = PERSONA
    ) -> Ops:
        """A window of ``window`` requests on one connection: each answer lets one more go."""
        ws = ws or self.raw_ws
        encode, decode = MSGPACK.encode_wire, MSGPACK.decode_data
        sent = received = 0
        t0 = now()
        deadline = t0 + duration
        async with asyncio.timeout(duration + 30):
            for _ in range(window):
                sent += 1
                await ws.send(encode(ping_request(sent, to)))
            while received < sent:
                reply = decode(await ws.recv())
                received += 1
                if now() < deadline:
                    sent += 1
                    await ws.send(encode(ping_request(sent, to)))
        assert "result" in reply, reply
        return received, now() - t0

    async def nats_rr(self, duration: float) -> Ops:
        """nats-py request(), one at a time: the NATS side of figure 1."""
        nc, encode, decode = self.nc, MSGPACK.encode_wire, MSGPACK.decode_data
        n, t0 = 0, now()
        deadline = t0 + duration
        async with asyncio.timeout(duration + 30):
            while True:
                n += 1
                reply = decode((await nc.request(NATS_SUBJECT, encode(ping_request(n)), timeout=30)).data)
                t = now()
                if t >= deadline:
                    break
        assert reply["id"] == n, reply
        assert reply["result"]["pong"] is True, reply
        return n, t - t0

    async def nats_pipelined(self, duration: float, window: int) -> Ops:
        """``window`` tasks calling request() on one nats-py connection (as bus_pipelined)."""
        nc, encode, decode = self.nc, MSGPACK.encode_wire, MSGPACK.decode_data
        done = 0
        deadline = now() + duration

        async def worker(i: int) -> None:
            nonlocal done
            while now() < deadline:
                reply = decode((await nc.request(NATS_SUBJECT, encode(ping_request(i)), timeout=30)).data)
                assert reply["id"] == i
                done += 1

        t0 = now()
        async with asyncio.timeout(duration + 30):
            await asyncio.gather(*(worker(i) for i in range(window)))
        return done, now() - t0

    async def interleave(
        self,
        runs: dict[str, tuple[Callable[[], Awaitable[Ops]], dict[str, int]]],
    ) -> dict[str, tuple[list[float], dict[str, float]]]:
        """Warm up, then run every variant once per repetition, rotating the order.

        Returns per variant its rates (ops/s) and the CPU time each of its
        processes spent per operation during the measured runs (psutil).
        """
        names = list(runs)
        for _ in range(self.opts.warmup):
            for name in names:
                await runs[name][0]()
        rates: dict[str, list[float]] = {name: [] for name in names}
        ops = dict.fromkeys(names, 0)
        cpu = {name: dict.fromkeys(runs[name][1], 0.0) for name in names}
        for rep in range(self.opts.reps):
            # Rotate the order so that no variant always runs first or last.
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                fn, pids = runs[name]
                before = {proc: cpu_seconds(pid) for proc, pid in pids.items()}
                n, seconds = await fn()
                for proc, pid in pids.items():
                    cpu[name][proc] += cpu_seconds(pid) - before[proc]
                rates[name].append(n / seconds)
                ops[name] += n
        return {
            name: (rates[name], {proc: 1e6 * sec / max(ops[name], 1) for proc, sec in cpu[name].items()})
            for name in names
        }

    async def compare(
        self,
        label: str,
        unit: str,
        raw: Callable[[], Awaitable[Ops]],
        raw_pids: dict[str, int],
        bus: Callable[[], Awaitable[Ops]],
        bus_pids: dict[str, int],
        nats: Callable[[], Awaitable[Ops]] | None = None,
    ) -> tuple[float, float, float]:
        """The bus against its baseline, interleaved: median rates (ops/s) and median paired ratio.

        The ratio is the median of the paired ratios (each bus run against the
        baseline run next to it), not the ratio of the medians: on a shared
        machine whose speed jumps between two levels for seconds at a time, the
        two medians can land on different levels, while a pair shares one.
        """
        runs = {"raw": (raw, raw_pids), "bus": (bus, bus_pids)}
        if nats is not None:
            runs["nats"] = (nats, self.nats_pids)
        res = await self.interleave(runs)
        (raw_rates, _), (bus_rates, bus_cpu) = res["raw"], res["bus"]
        pairs = [b / r for b, r in zip(bus_rates, raw_rates, strict=True)]
        print(
            f"  {label}:\n"
            f"    raw {unit}/s: {', '.join(f'{v:,.0f}' for v in raw_rates)}\n"
            f"    bus {unit}/s: {', '.join(f'{v:,.0f}' for v in bus_rates)}\n"
            f"    paired ratios: {', '.join(f'{v:.2f}' for v in pairs)}",
            flush=True,
        )
        if "nats" in res:
            nats_rates = res["nats"][0]
            self.nats_pairs = [b / n for b, n in zip(bus_rates, nats_rates, strict=True)]
            self.nats_rate = median(nats_rates)
            print(
                f"    nats {unit}/s: {', '.join(f'{v:,.0f}' for v in nats_rates)}\n"
                f"    paired ratios to nats: {', '.join(f'{v:.2f}' for v in self.nats_pairs)}",
                flush=True,
            )
        for side, (_, per) in res.items():
            print(
                f"    {side} CPU µs per {unit}: {', '.join(f'{proc} {us:.1f}' for proc, us in per.items())}",
                flush=True,
            )
        self.bus_cpu_us = bus_cpu.get("bus", 0.0)
        self.nats_server_cpu_us = res["nats"][1].get("nats-server", 0.0) if "nats" in res else None
        return median(bus_rates), median(raw_rates), median(pairs)

    async def bench_rr(self) -> None:
        d = self.opts.duration
        bus, raw, ratio = await self.compare(
            "request/response, 1 in flight",
            "req",
            lambda: self.raw_rr(d),
            self.raw_pids,
            lambda: self.bus_rr(d),
            self.bus_pids,
            lambda: self.nats_rr(d),
        )
        self.report(
            "request/response 1 in flight",
            f"{bus:,.0f} req/s",
            f"raw websockets echo {raw:,.0f} req/s",
            ratio,
            f"≥ {TARGETS['rr']:.2f}",
            ratio >= TARGETS["rr"],
        )
        self.report_nats("request/response 1 in flight against NATS", bus, "rr")
        cpu = self.bus_cpu_us
        self.report(
            "bus CPU per relayed request (1 in flight)",
            f"{cpu:.0f} µs",
            "psutil, the bus process's user+system time over the runs; "
            f"nats-server's in the same runs {self.nats_server_cpu_us:.0f} µs",
            None,
            f"≤ {MAX_BUS_CPU_US:.0f} µs",
            cpu <= MAX_BUS_CPU_US,
        )

    def report_nats(self, name: str, bus: float, key: str) -> None:
        ratio = median(self.nats_pairs)
        self.report(
            name,
            f"{bus:,.0f} req/s",
            f"nats-server + nats-py {self.nats_rate:,.0f} req/s",
            ratio,
            f"≥ {NATS_TARGETS[key]:.2f}",
            ratio >= NATS_TARGETS[key],
        )

    async def bench_pipelined(self) -> None:
        d, w = self.opts.duration, self.opts.window
        bus, raw, ratio = await self.compare(
            f"request/response, {w} in flight",
            "req",
            lambda: self.raw_pipelined(d, w),
            self.raw_pids,
            lambda: self.bus_pipelined(d, w),
            self.bus_pids,
            lambda: self.nats_pipelined(d, w),
        )
        self.report(
            f"request/response {w} in flight",
            f"{bus:,.0f} req/s",
            f"raw pipelined echo {raw:,.0f} req/s",
            ratio,
            f"≥ {TARGETS['pipelined']:.2f}",
            ratio >= TARGETS["pipelined"],
        )
        self.report_nats(f"request/response {w} in flight against NATS", bus, "pipelined")
        print(
            f"  bus CPU per relayed request at {w} in flight: {self.bus_cpu_us:.0f} µs "
            f"(nats-server {self.nats_server_cpu_us:.0f} µs)",
            flush=True,
        )

    # -- --explain: where the request/response ratio goes ------------------------------

    async def explain(self) -> None:
        """Informational, no target: the same call through simpler stand-ins.

        * a plain websockets relay (decode, re-encode, forward; no routing)
          in front of the raw echo server: the ceiling of any two-hop design;
        * a raw caller (hello, then send/recv) instead of the BusClient;
        * a raw persona (hello, then answer persona.ping) instead of the daemon.
        """
        relay = await self.spawn("relay", self.helper("_relay", "--url", self.raw_url), stdin=True)
        raw_persona = await self.spawn(
            "raw-persona", self.helper("_raw-persona", "--url", self.url), env=self.helper_env, stdin=True
        )
        relay_url = await relay.line("relay listening on", 30)
        await raw_persona.line("ready", 30)
        relay_ws = await connect(relay_url, compression=None, max_size=MAX_SIZE)
        caller = await _open_bus_conn(self.url, self.token, "bench-raw-caller")
        me, bus = os.getpid(), self.bus.pid
        raw_p, daemon_p, rel = raw_persona.pid, self.persona.pid, relay.pid
        d, w = min(self.opts.duration, 1.0), self.opts.window
        reps, self.opts.reps = self.opts.reps, min(self.opts.reps, 4)
        try:
            for title, raw_fn, bus_fn in (
                ("1 in flight", partial(self.raw_rr, d), partial(self.bus_rr, d)),
                (f"{w} in flight", partial(self.raw_pipelined, d, w), partial(self.bus_pipelined, d, w)),
            ):
                res = await self.interleave(
                    {
                        "raw echo (the baseline)": (
                            partial(raw_fn, self.raw_ws, PERSONA),
                            {"caller": me, "echo": self.raw.pid},
                        ),
                        "raw caller -> plain relay -> raw echo": (
                            partial(raw_fn, relay_ws, PERSONA),
                            {"caller": me, "relay": rel, "echo": self.raw.pid},
                        ),
                        "raw caller -> bus -> raw persona": (
                            partial(raw_fn, caller, RAW_PERSONA),
                            {"caller": me, "bus": bus, "persona": raw_p},
                        ),
                        "raw caller -> bus -> persona daemon": (
                            partial(raw_fn, caller, PERSONA),
                            {"caller": me, "bus": bus, "persona": daemon_p},
                        ),
                        "BusClient -> bus -> raw persona": (
                            partial(bus_fn, RAW_PERSONA),
                            {"caller": me, "bus": bus, "persona": raw_p},
                        ),
                        "BusClient -> bus -> persona daemon": (
                            partial(bus_fn, PERSONA),
                            {"caller": me, "bus": bus, "persona": daemon_p},
                        ),
                    }
                )
                base = median(res["raw echo (the baseline)"][0])
                print(f"  explain, request/response {title} (median req/s, ratio to raw echo, CPU µs/req):")
                for name, (rates, per) in res.items():
                    rate = median(rates)
                    cpu = ", ".join(f"{proc} {us:.0f}" for proc, us in per.items())
                    print(f"    {name:<40} {rate:>9,.0f}  {rate / base:4.2f}   {cpu}", flush=True)
        finally:
            self.opts.reps = reps
            for ws in (relay_ws, caller):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 5)
            for child in (raw_persona, relay):
                await child.stop()
                self.children.remove(child)

    # -- 3: fan-out --------------------------------------------------------------------

    async def start_subscribers(self, mode: str, url: str, total: int, procs: int) -> list[Child]:
        per = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
        children = []
        for i, count in enumerate(per):
            children.append(
                await self.spawn(
                    f"{mode}-subscribers-{i}",
                    self.helper(
                        "_subscribers", "--mode", mode, "--url", url, "--count", str(count), "--tag", str(i)
                    ),
                    env=self.helper_env,
                    stdin=True,
                )
            )
        for child in children:
            await child.line("ready", 120)
        return children

    async def bus_publish(self, n: int) -> None:
        results = await asyncio.gather(
            *(self.pub.call("bus.publish", {"topic": TOPIC, "data": event_data(i)}) for i in range(n))
        )
        bad = [r for r in results if r["delivered"] != self.opts.subscribers]
        if bad:
            raise RuntimeError(f"bus.publish delivered {bad[0]['delivered']}, not {self.opts.subscribers}")

    async def raw_publish(self, n: int) -> None:
        ws, encode, decode = self.raw_pub, MSGPACK.encode_wire, MSGPACK.decode_data

        async def send_all() -> None:
            for i in range(n):
                await ws.send(encode(publish_request(i + 1, i)))

        sender = asyncio.create_task(send_all())
        try:
            for _ in range(n):
                reply = decode(await ws.recv())
                if reply["result"]["delivered"] != self.opts.subscribers:
                    raise RuntimeError(f"broadcast reached {reply['result']['delivered']} subscribers")
        finally:
            await sender

    async def fanout_once(self, subs: list[Child], publish: Callable[[int], Awaitable[None]]) -> Ops:
        n = self.opts.events
        for child in subs:
            child.send(f"expect {n} 60")
        for child in subs:
            await child.line("armed", 30)
        t0 = now()
        async with asyncio.timeout(90):
            await publish(n)
        ends = [float(await child.line("done", 90)) for child in subs]
        return n * self.opts.subscribers, max(ends) - t0

    async def bench_fanout(self) -> None:
        total, procs = self.opts.subscribers, self.opts.subscriber_procs
        bus_subs = await self.start_subscribers("bus", self.url, total, procs)
        raw_subs = await self.start_subscribers("raw", self.raw_url, total, procs)
        try:
            bus, raw, ratio = await self.compare(
                f"1 event -> {total} subscribers, {self.opts.events} events per run",
                "delivery",
                lambda: self.fanout_once(raw_subs, self.raw_publish),
                {**self.raw_pids, **{c.name: c.pid for c in raw_subs}},
                lambda: self.fanout_once(bus_subs, self.bus_publish),
                {**self.bus_pids, **{c.name: c.pid for c in bus_subs}},
            )
        finally:
            for child in [*bus_subs, *raw_subs]:
                await child.stop()
                self.children.remove(child)
        self.report(
            f"fan-out to {total} subscribers",
            f"{bus:,.0f} deliveries/s",
            f"websockets broadcast() {raw:,.0f} deliveries/s",
            ratio,
            f"≥ {TARGETS['fanout']:.2f}",
            ratio >= TARGETS["fanout"],
        )

    # -- 4: memory ---------------------------------------------------------------------

    async def conn_growth(self, mode: str, pid: int, url: str) -> tuple[float, int, int, float]:
        """Bytes of RSS growth per idle connection in ``pid``; (per_conn, before, after, open_s)."""
        count = self.opts.conns
        before = await settled_rss(pid)
        child = await self.spawn(
            f"{mode}-idle",
            self.helper("_idle", "--mode", mode, "--url", url, "--count", str(count)),
            env=self.helper_env,
            stdin=True,
        )
        try:
            ready = (await child.line("ready", 180)).split()
            assert int(ready[0]) == count
            after = await settled_rss(pid, min_wait=2.0, max_wait=20.0)
        finally:
            await child.stop(timeout=30)
            self.children.remove(child)
        return (after - before) / count, before, after, float(ready[1])

    async def bench_memory(self) -> None:
        persona_idle = await settled_rss(self.persona.pid)
        self.persona_idle = persona_idle
        raw_idle = await settled_rss(self.raw.pid)
        bus_per, bus_before, bus_after, bus_open = await self.conn_growth("bus", self.bus.pid, self.url)
        raw_per, raw_before, raw_after, raw_open = await self.conn_growth("raw", self.raw.pid, self.raw_url)
        print(
            f"  {self.opts.conns} idle connections: "
            f"bus RSS {bus_before / MIB:.1f} -> {bus_after / MIB:.1f} MiB "
            f"(opened in {bus_open:.1f}s); raw server RSS {raw_before / MIB:.1f} -> "
            f"{raw_after / MIB:.1f} MiB (opened in {raw_open:.1f}s)",
            flush=True,
        )
        # Let the bus forget them before the throughput figures.
        for _ in range(300):
            if len((await self.client.call("bus.clients"))["clients"]) <= 3:
                break
            await asyncio.sleep(0.2)
        ok = bus_per <= MAX_KIB_PER_CONN * KIB
        self.report(
            f"bus memory per idle connection ({self.opts.conns})",
            f"{bus_per / KIB:.1f} KiB/conn",
            f"raw websockets server {raw_per / KIB:.1f} KiB/conn",
            bus_per / raw_per if raw_per > 0 else None,
            f"≤ {MAX_KIB_PER_CONN:.0f} KiB/conn",
            ok,
        )
        ok = persona_idle <= MAX_PERSONA_MIB * MIB
        self.report(
            "persona daemon idle RSS",
            f"{persona_idle / MIB:.1f} MiB",
            f"raw websockets server process {raw_idle / MIB:.1f} MiB",
            persona_idle / raw_idle,
            f"≤ {MAX_PERSONA_MIB:.0f} MiB",
            ok,
        )

    # -- main --------------------------------------------------------------------------

    async def run(self) -> bool:
        try:
            await self.setup()
            await self.bench_memory()
            await self.bench_rr()
            await self.bench_pipelined()
            await self.bench_fanout()
            if self.opts.explain:
                await self.explain()
            after_load = await settled_rss(self.persona.pid, max_wait=5.0)
            print(
                f"  persona RSS after the load: {after_load / MIB:.1f} MiB "
                f"(idle, before: {self.persona_idle / MIB:.1f} MiB)",
                flush=True,
            )
        finally:
            await self.teardown()
        return all(ok for _, ok in self.results) and len(self.results) == 8


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def environment(nofile: int) -> str:
    try:
        cpus = sorted(os.sched_getaffinity(0))
        affinity = f"{len(cpus)} usable: {','.join(map(str, cpus))}"
    except AttributeError:
        affinity = "affinity unknown"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"websockets {_version('websockets')}, uvloop {_version('uvloop')}, "
        f"msgpack {_version('msgpack')}, psutil {_version('psutil')}, nats-py {_version('nats-py')}\n"
        f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"{os.cpu_count()} cores ({affinity}), load average {load}, RLIMIT_NOFILE {nofile}"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions (~30 s)")
    parser.add_argument("--reps", type=int, default=None, help="measured repetitions per figure")
    parser.add_argument("--duration", type=float, default=None, help="seconds per request/response run")
    parser.add_argument("--window", type=int, default=64, help="requests in flight for figure 2")
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--subscriber-procs", type=int, default=2)
    parser.add_argument("--events", type=int, default=None, help="events per fan-out run")
    parser.add_argument("--conns", type=int, default=2000, help="idle connections for figure 4")
    parser.add_argument(
        "--cpus",
        default=None,
        metavar="LIST",
        help="pin this process and every child to these CPUs, e.g. 0 or 0,1 "
        "(default: no pinning, the scheduler decides, as in production)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also run request/response through stand-ins (a plain relay, a raw caller, "
        "a raw persona) to show where the ratio goes; informational, ~1 minute more",
    )
    opts = parser.parse_args(argv)
    opts.warmup = 1
    if opts.reps is None:
        opts.reps = 3 if opts.quick else 7
    if opts.duration is None:
        opts.duration = 0.6 if opts.quick else 1.5
    if opts.events is None:
        opts.events = 150 if opts.quick else 500
    return opts


async def bench_main(opts: argparse.Namespace) -> int:
    nofile = raise_nofile()
    if opts.cpus:
        os.sched_setaffinity(0, {int(c) for c in opts.cpus.split(",")})  # children inherit it
    print(
        "bench/bus.py: the bus against raw websockets and NATS, ratios measured in one run\n"
        f"{environment(nofile)}\n"
        f"reps {opts.reps} (median; 1 warm-up), {opts.duration}s per request/response run, "
        f"{opts.events} events per fan-out run, {opts.conns} idle connections",
        flush=True,
    )
    return await run_reported(lambda tmp: Bench(opts, tmp), "bus")


async def run_reported(make_bench: Callable[[Path], Any], name: str) -> int:
    """Run a bench (``make_bench(tmp).run()`` -> ok) in a throwaway folder: SIGTERM or Ctrl-C
    stops it cleanly, a failure prints its traceback; then its lines and ``<name>.py: ok|FAIL``."""
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    tmp = Path(tempfile.mkdtemp(prefix=f"personad-bench-{name}-"))
    bench = make_bench(tmp)
    ok = False
    started = now()
    try:
        ok = await bench.run()
    except Exception as exc:  # a failed run is a FAIL line (after its traceback)
        import traceback

        traceback.print_exc()
        print(f"error: {exc}", flush=True)
    except asyncio.CancelledError:  # SIGTERM or Ctrl-C: everything was stopped on the way out
        print("interrupted", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"took {now() - started:.0f}s")
    if bench.lines:
        print("\n".join(bench.lines))
    print(f"{name}.py: {'ok' if ok else 'FAIL'}", flush=True)
    return 0 if ok else 1


HELPERS = {"_raw-server", "_subscribers", "_idle", "_relay", "_raw-persona", "_nats-responder"}


def helper_main(role: str, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"bus.py {role}")
    parser.add_argument("--mode", choices=["bus", "raw"], default="raw")
    parser.add_argument("--url", default="")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--tag", default="0")
    args = parser.parse_args(argv)
    args.token = os.environ.get("BENCH_BUS_TOKEN", "")
    raise_nofile()
    entry = {
        "_raw-server": raw_server_main,
        "_subscribers": subscribers_main,
        "_idle": idle_main,
        "_relay": relay_main,
        "_raw-persona": raw_persona_main,
        "_nats-responder": nats_responder_main,
    }[role]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(entry(args))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in HELPERS:
        helper_main(sys.argv[1], sys.argv[2:])
        return 0
    opts = parse_args(sys.argv[1:])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bench_main(opts))


if __name__ == "__main__":
    sys.exit(main())

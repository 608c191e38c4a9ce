#!/usr/bin/env python
"""What each door costs against the same call over the WebSocket, as ratios measured in one run.

    .venv/bin/python bench/doors.py [--calls 200] [--chats 12] [--no-chat] [--no-mcp]

Real processes on 127.0.0.1: the bus (``python -m daemon bus``), the
inference service with SmolLM2 (one thread) and the demo persona. The
caller is this process. Each door is measured interleaved with its
WebSocket baseline (a :class:`daemon.client.BusClient`, msgpack) in rounds
(ws, door, door, ws, ...), one call in flight, after a warm-up:

1. **HTTP call**: ``persona.status`` on ``persona:demo`` through
   ``POST /v1/call`` on one keep-alive connection, against the same call
   from a BusClient: once from a minimal HTTP client (what the door itself
   adds) and once from httpx (what a Python program using it sees).
2. **OpenAI-compatible chat, time to first token**: a streamed
   ``/v1/chat/completions`` from the official ``openai`` client, to its
   first content chunk, against a ``chat`` call over the WebSocket to its
   first ``chat.token`` (same message, temperature 0, 8 tokens).
3. **MCP tool call**: ``memory_recall`` through ``personad mcp`` (the
   official MCP SDK's client, over stdio and over Streamable HTTP), against
   ``memory.recall`` from a BusClient.

Each line gives the p50 and p99 of both, and their ratios (door / WebSocket).
There are no targets to pass: the figures say what a door adds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.client import BusClient  # noqa: E402
from daemon.state import StateDir  # noqa: E402

PERSONA = "persona:demo"


class Child:
    """A ``python -m daemon ...`` process whose output is read until a line matches."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "daemon", *argv],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        assert self.popen.stdout is not None
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} exited:\n" + "".join(self.lines[-20:]))
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match
        raise TimeoutError(
            f"{self.name}: no line matching {pattern!r} within {timeout}s:\n" + "".join(self.lines[-20:])
        )

    def drain(self) -> None:
        import threading

        def read() -> None:
            assert self.popen.stdout is not None
            with contextlib.suppress(ValueError, OSError):
                for line in self.popen.stdout:
                    self.lines.append(line)

        threading.Thread(target=read, daemon=True).start()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def interleaved(
    baseline: Callable[[], Awaitable[float]],
    door: Callable[[], Awaitable[float]],
    *,
    calls: int,
    rounds: int = 10,
    warmup: int = 5,
) -> tuple[list[float], list[float]]:
    """Latencies (seconds) of both, in alternating rounds so that load drifts hit both alike."""
    for _ in range(warmup):
        await baseline()
        await door()
    base: list[float] = []
    other: list[float] = []
    per_round = max(1, calls // rounds)
    for r in range(rounds):
        order = (baseline, door) if r % 2 == 0 else (door, baseline)
        for fn in order:
            sink = base if fn is baseline else other
            for _ in range(per_round):
                sink.append(await fn())
    return base, other


def report(name: str, base: list[float], door: list[float]) -> None:
    b50, b99, d50, d99 = (
        pct(base, 0.5) * 1e3,
        pct(base, 0.99) * 1e3,
        pct(door, 0.5) * 1e3,
        pct(door, 0.99) * 1e3,
    )
    print(
        f"{name:<38} ws p50 {b50:7.2f} ms  p99 {b99:7.2f} ms | "
        f"door p50 {d50:7.2f} ms  p99 {d99:7.2f} ms | "
        f"ratio p50 {d50 / b50:5.2f}x  p99 {d99 / b99:5.2f}x  (n={len(base)}+{len(door)})",
        flush=True,
    )


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client: what the door costs without a client library's own time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, http_url: str) -> RawHttp:
        host, port = http_url.removeprefix("http://").rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def post(self, request: bytes) -> bytes:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode("latin-1"))
        length = re.search(rb"Content-Length: (\d+)", head)
        assert length is not None
        return await self.reader.readexactly(int(length.group(1)))


async def bench_http(client: BusClient, http_url: str, token: str, calls: int) -> None:
    import httpx

    async def ws() -> float:
        began = time.perf_counter()
        await client.call("persona.status", to=PERSONA)
        return time.perf_counter() - began

    raw = await RawHttp.open(http_url)
    host = http_url.removeprefix("http://")
    request = (
        f"POST /v1/call/{PERSONA}/persona.status HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    ).encode()

    async def door_raw() -> float:
        began = time.perf_counter()
        await raw.post(request)
        return time.perf_counter() - began

    report("HTTP /v1/call, raw keep-alive client", *await interleaved(ws, door_raw, calls=calls))
    raw.writer.close()

    async with httpx.AsyncClient(base_url=http_url, headers={"Authorization": f"Bearer {token}"}) as http:

        async def door_httpx() -> float:
            began = time.perf_counter()
            response = await http.post(f"/v1/call/{PERSONA}/persona.status")
            response.raise_for_status()
            return time.perf_counter() - began

        report("HTTP /v1/call, httpx client", *await interleaved(ws, door_httpx, calls=calls))


async def bench_openai(client: BusClient, http_url: str, token: str, chats: int) -> None:
    import openai

    message = "Say hello in five words."
    oai = openai.AsyncOpenAI(base_url=http_url + "/v1", api_key=token, max_retries=0)

    async def ws() -> float:
        began = time.perf_counter()
        first = asyncio.get_running_loop().create_future()

        def on_progress(note: Any) -> None:
            if not first.done():
                first.set_result(time.perf_counter() - began)

        await client.call(
            "chat",
            to=PERSONA,
            params={"message": message, "max_tokens": 8, "temperature": 0.0, "stream": True},
            on_progress=on_progress,
            deadline_ms=120_000,
        )
        return first.result() if first.done() else time.perf_counter() - began

    async def door() -> float:
        began = time.perf_counter()
        ttft: float | None = None
        stream = await oai.chat.completions.create(
            model=PERSONA,
            messages=[{"role": "user", "content": message}],
            max_tokens=8,
            temperature=0.0,
            stream=True,
        )
        async for chunk in stream:
            if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                ttft = time.perf_counter() - began
        return ttft if ttft is not None else time.perf_counter() - began

    report("OpenAI chat, time to first token", *await interleaved(ws, door, calls=chats, rounds=4, warmup=1))
    await oai.close()


async def bench_mcp(client: BusClient, env: dict[str, str], token: str, calls: int) -> None:
    import httpx2
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client
    from mcp.client.streamable_http import streamable_http_client

    async def ws() -> float:
        began = time.perf_counter()
        await client.call("memory.recall", to=PERSONA, params={"query": "hello", "limit": 3})
        return time.perf_counter() - began

    def door_of(session: ClientSession) -> Callable[[], Awaitable[float]]:
        async def door() -> float:
            began = time.perf_counter()
            result = await session.call_tool(
                "memory_recall", {"persona": "demo", "query": "hello", "limit": 3}
            )
            if result.is_error:
                raise RuntimeError(f"memory_recall failed: {result.content}")
            return time.perf_counter() - began

        return door

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "daemon", "mcp"], env=env, cwd=str(REPO)
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        report("MCP tool call, stdio", *await interleaved(ws, door_of(session), calls=calls))

    server = Child("mcp", ["mcp", "--http", "127.0.0.1:0"], env)
    try:
        endpoint = server.wait_for(r"Streamable HTTP at (http://\S+/mcp)", 60).group(1)
        server.drain()
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
        async with (
            http,
            streamable_http_client(endpoint, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            report("MCP tool call, Streamable HTTP", *await interleaved(ws, door_of(session), calls=calls))
    finally:
        server.stop()


async def main(opts: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-doors-"))
    state = StateDir(tmp / "state")
    token = state.init()
    assert token is not None
    env = {k: v for k, v in os.environ.items() if k not in {"PERSONAD_TOKEN", "NOTIFY_SOCKET"}}
    env.update(
        PERSONAD_STATE_DIR=str(state.root),
        PERSONAD_CONFIG_DIR=str(REPO / "config"),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
    )
    children: list[Child] = []
    try:
        bus = Child("bus", ["bus", "--port", "0"], env)
        children.append(bus)
        url = bus.wait_for(r"listening on (ws://\S+)", 30).group(1)
        bus.drain()
        env["PERSONAD_URL"] = url
        if opts.chat:
            inference = Child("inference", ["inference", "--threads", "1"], env)
            children.append(inference)
            inference.wait_for(r"connected url=\S+ client_id=inference:main\b", 300)
            inference.drain()
        persona = Child("persona", ["persona", "demo"], env)
        children.append(persona)
        persona.wait_for(r"connected url=\S+ client_id=persona:demo\b", 60)
        persona.drain()
        http_url = url.replace("ws://", "http://")
        client = BusClient(url, token=token, kind="cli", name="bench")
        await client.start()
        print(f"doors.py: bus {url}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
        try:
            await bench_http(client, http_url, token, opts.calls)
            if opts.chat:
                await bench_openai(client, http_url, token, opts.chats)
            if opts.mcp:
                await bench_mcp(client, {**env, "PERSONAD_TOKEN": token}, token, opts.calls)
        finally:
            await client.close()
    finally:
        for child in reversed(children):
            child.stop()
    print("doors.py: ok", flush=True)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--calls", type=int, default=400, help="calls per side for HTTP and MCP (default 400)"
    )
    parser.add_argument("--chats", type=int, default=12, help="chats per side for time to first token")
    parser.add_argument(
        "--no-chat", dest="chat", action="store_false", help="skip the model (no OpenAI figure)"
    )
    parser.add_argument("--no-mcp", dest="mcp", action="store_false", help="skip MCP")
    return parser.parse_args(argv)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))

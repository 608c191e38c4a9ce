"""Attacks on the bus, one after another for the whole soak, while everyone else works.

The attacks of the hardening tests (tests/e2e/test_security_bus.py,
bench/bus_attack.py), re-run under load from fresh connections:

- a decompression-style bomb (7.6 MiB of eight million empty msgpack arrays) before any hello;
- bytes that are not msgpack at all, after a valid hello;
- a wrong token in the Authorization header;
- a hello that asks for protocol version 99;
- a frame over the bus's 16 MiB message limit, after a valid hello;
- a slowloris: a TCP connection that sends half an HTTP upgrade, then nothing.

Each must end with the bus closing the connection (a documented close code,
or an HTTP refusal, or the socket closed on a stalled handshake) within
``ATTACK_WAIT`` seconds; the soak's other clients must not notice (their
latencies are on the same chart).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.typing import Subprotocol

from protocol.errors import CloseCode

#: Seconds an attack's connection may stay open before the bus must have closed it: the bus
#: gives a request head 30 s to arrive (docs/http.md, Limits), so a slowloris lasts that long.
ATTACK_WAIT = 45.0
#: Eight million empty msgpack arrays in 7.6 MiB: tiny on the wire, huge once decoded.
BOMB = b"\xdd" + (8_000_000).to_bytes(4, "big") + b"\x90" * 8_000_000
#: Over the bus's 16 MiB limit on one message.
HUGE_BYTES = 17 * 2**20


@dataclass
class Attacks:
    url: str
    token: str
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Attacks whose connection the bus did not close, or closed with an undocumented code.
    findings: list[str] = field(default_factory=list)
    running: bool = True

    async def run(self) -> None:
        kinds = [self.bomb, self.garbage, self.bad_token, self.bad_version, self.huge, self.slowloris]
        i = 0
        while self.running:
            attack = kinds[i % len(kinds)]
            i += 1
            name = attack.__name__
            try:
                outcome = await asyncio.wait_for(attack(), ATTACK_WAIT)
            except TimeoutError:
                outcome = "still open"
            except (OSError, ConnectionClosed) as exc:  # refused at connect: the bus restarting
                outcome = f"connect failed ({type(exc).__name__})"
            except InvalidMessage:
                # Closed before any HTTP answer: the bus's 10 s opening deadline passed while
                # it was busy (its restart, or 1,000 clients leaving at once). Nothing was let in.
                outcome = "closed before the HTTP answer"
            except Exception as exc:  # anything else is the soak's finding, not the end of the run
                outcome = f"attacker failed ({type(exc).__name__}: {str(exc)[:120]})"
                self.findings.append(f"{name}: {outcome}")
            except InvalidStatus as exc:  # answered over HTTP before the upgrade
                outcome = f"HTTP {exc.response.status_code} at connect"
                if exc.response.status_code != 503:  # 503: shutting down or full, and says so
                    self.findings.append(f"{name}: {outcome}")
            self.outcomes[f"{name}: {outcome}"] += 1
            if outcome == "still open" or outcome.startswith("close undocumented"):
                self.findings.append(f"{name}: {outcome}")
            await asyncio.sleep(1.0)

    async def _open(self, *, token: str | None, codec: str = "msgpack") -> ClientConnection:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return await connect(
            self.url,
            subprotocols=[Subprotocol(f"personad.v1.{codec}")],
            additional_headers=headers,
            compression=None,
            max_size=None,
            open_timeout=10,
        )

    async def _closed_by_bus(self, ws: ClientConnection) -> str:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
        code = ws.close_code
        if code is None or code == 1006:
            return "aborted (1006)"
        try:
            return f"close {CloseCode(code).name}"
        except ValueError:
            return f"close undocumented {code}"

    async def _hello(self, ws: ClientConnection) -> None:
        await ws.send(
            msgpack.packb(
                {"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {"protocol": 1, "kind": "cli"}}
            )
        )
        await ws.recv()

    async def bomb(self) -> str:
        ws = await self._open(token=None)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(BOMB)
        return await self._closed_by_bus(ws)

    async def garbage(self) -> str:
        ws = await self._open(token=self.token)
        await self._hello(ws)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(b"\xc1\xc1\xc1 not msgpack")
        return await self._closed_by_bus(ws)

    async def bad_token(self) -> str:
        try:
            ws = await self._open(token="pd_not-a-token")
        except InvalidStatus as exc:
            return f"HTTP {exc.response.status_code}"
        with contextlib.suppress(ConnectionClosed):
            await self._hello(ws)
        return await self._closed_by_bus(ws)

    async def bad_version(self) -> str:
        ws = await self._open(token=self.token, codec="json")
        with contextlib.suppress(ConnectionClosed):
            await ws.send(
                json.dumps(
                    {"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {"protocol": 99, "kind": "cli"}}
                )
            )
        return await self._closed_by_bus(ws)

    async def huge(self) -> str:
        ws = await self._open(token=self.token)
        await self._hello(ws)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(bytes(HUGE_BYTES))
        return await self._closed_by_bus(ws)

    async def slowloris(self) -> str:
        url = urlparse(self.url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        await writer.drain()
        try:
            while await reader.read(65536):  # b"" once the bus closes it (after what it answers)
                pass
        finally:
            writer.close()
        return "closed by the bus"

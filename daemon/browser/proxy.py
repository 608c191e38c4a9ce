"""The worker's egress proxy: every connection Chromium makes goes through it.

Chromium is started with ``--proxy-server=http://127.0.0.1:<port>`` and
``--proxy-bypass-list=<-loopback>`` (which removes Chromium's built-in
exception for loopback, so even ``localhost`` goes through the proxy), and
every requester's browser context gets a listener of its own
(``Target.createBrowserContext``'s ``proxyServer``). Through an HTTP proxy
Chromium never resolves a destination itself: it sends plain-HTTP requests
as ``GET http://host:port/path`` and everything else — https, ws, wss — as
``CONNECT host:port``. So for every request, whatever made it (navigation,
redirect, subresource, fetch/XHR, iframe, worker, WebSocket):

1. the proxy resolves the host itself (``getaddrinfo``);
2. checks **every** address against the policy (netpolicy.py): one denied
   address refuses the request, so a name cannot mix a public address with a
   private one;
3. connects to exactly the address it checked, never to the name again.

Checking the address actually connected to is what defeats DNS rebinding: a
name that resolved to a public address for a check and to 127.0.0.1 for the
connection would beat any check made in front of Chromium (a CDP ``Fetch``
interception sees URLs, and Chromium would resolve the name again itself).

A refused request gets no answer: the proxy closes the connection (plain
HTTP; Chromium reports ``net::ERR_EMPTY_RESPONSE``) or answers CONNECT with
403 (``net::ERR_TUNNEL_CONNECTION_FAILED``); nothing is sent to the address.
Each refusal is logged and kept on its listener (:class:`Listener.events`), so
the worker can tell a requester *why* a navigation failed.

Plain-HTTP requests are forwarded with ``Connection: close``: one request per
upstream connection, so a reused client connection can never carry a request
for another host to an address that was checked for the first one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import itertools
import logging
import re
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .netpolicy import NetworkPolicy

log = logging.getLogger("personad.browser.proxy")

#: Hop-by-hop headers we drop from a forwarded plain-HTTP request.
_HOP_HEADERS = frozenset({"proxy-connection", "proxy-authorization", "connection", "keep-alive"})
_CONNECT_TARGET = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.%]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class ProxyEvent:
    """A request the proxy did not carry: refused by the policy, or unreachable."""

    seq: int
    url: str
    host: str
    port: int
    #: The address refused or tried; None when the name did not resolve.
    address: str | None
    #: The policy's rule for a refusal ("loopback 127.0.0.0/8"); None for a failure.
    rule: str | None
    #: Chromium's name for what the page saw instead (net::ERR_…), for callers.
    error: str
    detail: str
    at: float

    @property
    def blocked(self) -> bool:
        return self.rule is not None


class Listener:
    """One listening port of the proxy (one per browser context, and one default)."""

    def __init__(self, tag: str, *, max_events: int) -> None:
        self.tag = tag
        self.port = 0
        self.server: asyncio.Server | None = None
        self.events: deque[ProxyEvent] = deque(maxlen=max_events)
        self._seq = itertools.count(1)
        self.last_seq = 0
        #: Connections open through this listener now.
        self.open = 0

    @property
    def url(self) -> str:
        """The value for ``--proxy-server`` / ``proxyServer``."""
        return f"http://127.0.0.1:{self.port}"

    def mark(self) -> int:
        """A position: :meth:`since` returns what happened after it."""
        return self.last_seq

    def since(self, mark: int) -> list[ProxyEvent]:
        return [event for event in self.events if event.seq > mark]

    def record(self, **fields: object) -> ProxyEvent:
        self.last_seq = next(self._seq)
        event = ProxyEvent(seq=self.last_seq, at=time.monotonic(), **fields)  # type: ignore[arg-type]
        self.events.append(event)
        return event

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class EgressProxy:
    """The forward proxy enforcing a :class:`NetworkPolicy` on Chromium's connections."""

    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        # Limits
        max_connections: int = 512,
        #: One requester's page cannot take every connection from the others.
        max_per_listener: int = 128,
        max_head_bytes: int = 64 * 1024,
        max_events: int = 64,
        # Timeouts
        head_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        resolve_timeout: float = 10.0,
    ) -> None:
        self.policy = policy
        self.max_connections = max_connections
        self.max_per_listener = max_per_listener
        self.max_head_bytes = max_head_bytes
        self.max_events = max_events
        self.head_timeout = head_timeout
        self.connect_timeout = connect_timeout
        self.resolve_timeout = resolve_timeout
        self.listeners: dict[str, Listener] = {}
        self._connections: set[asyncio.Task[None]] = set()

    async def listen(self, tag: str) -> Listener:
        """A new listener on 127.0.0.1 (an ephemeral port), replacing any of the same tag."""
        self.close_listener(tag)
        listener = Listener(tag, max_events=self.max_events)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._handle(listener, reader, writer)

        listener.server = await asyncio.start_server(
            handle, "127.0.0.1", 0, limit=self.max_head_bytes, reuse_address=True
        )
        listener.port = listener.server.sockets[0].getsockname()[1]
        self.listeners[tag] = listener
        return listener

    def close_listener(self, tag: str) -> None:
        listener = self.listeners.pop(tag, None)
        if listener is not None:
            listener.close()

    async def aclose(self) -> None:
        for tag in list(self.listeners):
            self.close_listener(tag)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # -- one connection ------------------------------------------------------------

    async def _handle(
        self, listener: Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.max_connections or listener.open >= self.max_per_listener:
            log.warning(
                "egress proxy: %d connections open (%d for %s); refusing another",
                len(self._connections),
                listener.open,
                listener.tag,
            )
            writer.close()
            return
        self._connections.add(task)
        listener.open += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(self.head_timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            lines = head[:-4].decode("latin-1").split("\r\n")
            request = _parse_request_line(lines[0])
            if request is None:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                return
            method, host, port, url, path, version = request
            connected = await self._connect(listener, url, host, port)
            if connected is None:
                if method == "CONNECT":
                    writer.write(b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n")
                return  # plain HTTP: no answer at all (net::ERR_EMPTY_RESPONSE)
            up_reader, upstream = connected
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await _pipe_both(reader, writer, up_reader, upstream)
            else:
                headers = [
                    line for line in lines[1:] if line.split(":", 1)[0].strip().lower() not in _HOP_HEADERS
                ]
                forwarded = "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close", "", ""])
                upstream.write(forwarded.encode("latin-1"))
                # The request's body (if any) goes on; the answer comes back
                # until the server closes, and then so do we.
                sending = asyncio.ensure_future(_pipe(reader, upstream))
                try:
                    await _pipe(up_reader, writer)
                finally:
                    sending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sending
        except (ConnectionError, OSError):
            pass
        finally:
            self._connections.discard(task)
            listener.open -= 1
            for side in (writer, upstream):
                if side is not None:
                    side.close()

    async def _connect(
        self, listener: Listener, url: str, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Resolve, check every address, connect to a checked one; record and log refusals."""
        loop = asyncio.get_running_loop()
        try:
            # An address literal (Chromium sends them canonical) needs no
            # resolver thread; anything else goes through getaddrinfo.
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        try:
            async with asyncio.timeout(self.resolve_timeout):
                if literal is not None:
                    infos: list[Any] = [(0, 0, 0, "", (host, port))]
                else:
                    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            detail = f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc or 'timed out'}"
            listener.record(
                url=url,
                host=host,
                port=port,
                address=None,
                rule=None,
                error="net::ERR_NAME_NOT_RESOLVED",
                detail=detail,
            )
            return None
        addresses: list[str] = []
        for info in infos:
            address = str(info[4][0])
            if address not in addresses:
                addresses.append(address)
        for address in addresses:
            decision = self.policy.check(host, port, ipaddress.ip_address(address))
            if not decision.allowed:
                event = listener.record(
                    url=url,
                    host=host,
                    port=port,
                    address=address,
                    rule=decision.rule,
                    error="net::ERR_BLOCKED_BY_CLIENT",
                    detail=f"{address} is {decision.rule}",
                )
                log.warning(
                    "blocked %s for %s: %s is %s (allow it with --allow)",
                    url,
                    listener.tag,
                    address,
                    event.rule,
                )
                return None
        failure: BaseException | None = None
        for address in addresses:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    # An address literal: no second resolution, this very address.
                    return await asyncio.open_connection(address, port, limit=self.max_head_bytes)
            except (OSError, TimeoutError) as exc:
                failure = exc
        error = "net::ERR_CONNECTION_FAILED"
        if isinstance(failure, TimeoutError):
            error = "net::ERR_CONNECTION_TIMED_OUT"
        elif isinstance(failure, OSError) and failure.errno == errno.ECONNREFUSED:
            error = "net::ERR_CONNECTION_REFUSED"
        listener.record(
            url=url,
            host=host,
            port=port,
            address=addresses[-1] if addresses else None,
            rule=None,
            error=error,
            detail=f"cannot connect to {host}:{port}: {failure}",
        )
        return None


def _parse_request_line(line: str) -> tuple[str, str, int, str, str, str] | None:
    """(method, host, port, url, origin-form path, version) or None when we cannot carry it."""
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, version = parts
    if method == "CONNECT":
        match = _CONNECT_TARGET.match(target)
        if match is None or not 0 < int(match["port"]) < 65536:
            return None
        host = match["v6"] or match["host"]
        return method, host, int(match["port"]), target, "", version
    try:
        split = urlsplit(target)
        port = split.port or 80
    except ValueError:
        return None
    if split.scheme != "http" or not split.hostname or not re.fullmatch(r"[A-Z]{1,20}", method):
        return None
    path = (split.path or "/") + (f"?{split.query}" if split.query else "")
    return method, split.hostname, port, target, path, version


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the sink."""
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    upstream: asyncio.StreamWriter,
    *,
    linger: float = 30.0,
) -> None:
    """A tunnel: both directions until both end (or one ended ``linger`` seconds ago)."""
    directions = [
        asyncio.ensure_future(_pipe(reader, upstream)),
        asyncio.ensure_future(_pipe(up_reader, writer)),
    ]
    try:
        _done, pending = await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=linger)
    finally:
        for direction in directions:
            direction.cancel()
        await asyncio.gather(*directions, return_exceptions=True)

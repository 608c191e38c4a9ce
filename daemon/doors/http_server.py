"""HTTP/1.1 on the bus's own port, beside the WebSocket upgrade.

websockets' server reads only GET requests without a body and answers them
whole, which rules out ``POST /v1/call`` and Server-Sent Events. So each
connection's first bytes are looked at before websockets sees them
(:func:`front_connection`, given to websockets as its ``create_connection``):
a GET asking to upgrade to WebSocket goes on to websockets untouched; any
other request is handed to :class:`HttpProtocol`, a small HTTP/1.1 server on
h11 (a sans-I/O parser, the one httpx and uvicorn use), on the same socket.

The HTTP side keeps the bus's discipline: bounded request heads and bodies,
a timeout for a head that never completes and for idle keep-alive
connections, one request at a time per connection (pipelined ones wait in
h11's buffer, reading paused once it passes a bound), a client that closes
its side ending its request (so its bus call is cancelled), and streamed responses that wait for the
client to drain and drop it past a buffer cap instead of buffering without
bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import h11
from websockets.asyncio.server import ServerConnection

log = logging.getLogger("personad.doors")


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    #: The request line and headers together.
    max_head_bytes: int = 16 * 1024
    max_body_bytes: int = 16 * 1024 * 1024
    #: From the first byte of a request (or of the connection) to its end.
    request_timeout: float = 30.0
    #: A keep-alive connection with no request for this long is closed.
    idle_timeout: float = 30.0
    #: A streamed response's bytes queued for a client that does not read.
    max_send_buffer: int = 4 * 1024 * 1024


@dataclass(slots=True)
class HttpRequest:
    method: str
    #: Percent-decoded path, without the query.
    path: str
    query: dict[str, list[str]]
    #: Lowercased names; repeated headers joined with ", ".
    headers: dict[str, str]
    body: bytes
    peer: str
    raw_path: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


Handler = Callable[[HttpRequest, "HttpResponder"], Awaitable[None]]


@dataclass(slots=True)
class _Flow:
    """Write-side flow control of one connection (asyncio's pause/resume_writing)."""

    paused: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)


class HttpResponder:
    """The answer to one request: whole (:meth:`send`) or streamed (:meth:`start`, :meth:`write`...)."""

    def __init__(self, conn: HttpProtocol) -> None:
        self._conn = conn
        self.started = False
        self.finished = False

    @property
    def disconnected(self) -> bool:
        return self._conn.lost

    def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self._conn.write_event(
            h11.Response(
                status_code=int(status), headers=self._conn.base_headers(headers), reason=_reason(status)
            )
        )

    async def write(self, data: bytes) -> None:
        """Send a piece of a streamed body, waiting while the client is not reading."""
        if self._conn.lost:
            raise ConnectionResetError("the client went away")
        self._conn.write_event(h11.Data(data=data))
        await self._conn.drain()

    def end(self) -> None:
        if not self.finished:
            self.finished = True
            self._conn.write_event(h11.EndOfMessage())

    async def send(
        self, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        all_headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *(headers or [])]
        self.start(status, all_headers)
        if body:
            self._conn.write_event(h11.Data(data=body))
        self.end()
        await self._conn.drain()


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection, served by ``handler`` one request at a time."""

    def __init__(
        self,
        handler: Handler,
        limits: HttpLimits,
        *,
        server_header: str,
        on_close: Callable[[HttpProtocol], None] | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.server_header = server_header
        self.on_close = on_close
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.peer = "-"
        self._flow = _Flow()
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def handler_task(self) -> asyncio.Task[None] | None:
        """The task answering the current request, if one is."""
        return self._task

    # -- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its API.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._arm(self.limits.request_timeout)

    def data_received(self, data: bytes) -> None:
        try:
            self.h11.receive_data(data)
        except RuntimeError:  # data after the connection was marked closed
            return
        if self._task is not None:
            # Reading goes on while a request is handled, so that a client
            # that leaves is noticed (and its bus call cancelled); what it
            # pipelines meanwhile waits in h11's buffer, up to a bound.
            if len(self.h11.trailing_data[0]) > self.limits.max_head_bytes and self.transport is not None:
                self.transport.pause_reading()
            return
        self._process()

    def eof_received(self) -> bool:
        with contextlib.suppress(RuntimeError):
            self.h11.receive_data(b"")
        if self._task is None:
            self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
        self._flow.drained.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the handler's cleanup (closing its bus session) runs now
        if self.on_close is not None:
            self.on_close(self)

    def pause_writing(self) -> None:
        self._flow.paused = True
        self._flow.drained.clear()

    def resume_writing(self) -> None:
        self._flow.paused = False
        self._flow.drained.set()

    # -- writing ---------------------------------------------------------------------

    def base_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [("Server", self.server_header), *headers]

    def write_event(self, event: Any) -> None:
        if self.transport is None or self.lost:
            return
        try:
            data = self.h11.send(event)
        except h11.LocalProtocolError as exc:
            log.error("HTTP response error for %s: %s", self.peer, exc)
            self.transport.abort()
            return
        if data:
            self.transport.write(data)
        if self.transport.get_write_buffer_size() > self.limits.max_send_buffer:
            log.warning("dropping HTTP client %s: it stopped reading", self.peer)
            self.transport.abort()

    async def drain(self) -> None:
        if self._flow.paused and not self.lost:
            await self._flow.drained.wait()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- reading ---------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _expired(self) -> None:
        if self._task is None:  # waiting for a request (or its rest): give up on it
            self.close()

    def _process(self) -> None:
        while self._task is None and not self.lost:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(exc.error_status_hint, f"bad request: {exc}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                self.close()
                return
            if isinstance(event, h11.Request):
                self._request, self._body = event, bytearray()
                self._arm(self.limits.request_timeout)
                length = _content_length(event)
                if length is not None and length > self.limits.max_body_bytes:
                    self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
                    return
                if self.h11.they_are_waiting_for_100_continue:
                    self.write_event(h11.InformationalResponse(status_code=100, headers=[]))
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self.limits.max_body_bytes:
                    self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._start_handler()

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request we will not read, then close (its body may still be arriving)."""
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = (message + "\n").encode()
            headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
            headers.append(("Connection", "close"))
            self.write_event(
                h11.Response(status_code=status, headers=self.base_headers(headers), reason=_reason(status))
            )
            self.write_event(h11.Data(data=body))
            self.write_event(h11.EndOfMessage())
        self.close()

    def _start_handler(self) -> None:
        assert self._request is not None
        assert self.transport is not None
        if self._timer is not None:
            self._timer.cancel()
        request = _to_request(self._request, bytes(self._body), self.peer)
        self._request, self._body = None, bytearray()
        self._task = asyncio.get_running_loop().create_task(self._run(request), name="http-request")

    async def _run(self, request: HttpRequest) -> None:
        responder = HttpResponder(self)
        try:
            await self.handler(request, responder)
        except asyncio.CancelledError:
            return  # connection_lost: nobody to answer
        except Exception:
            log.exception("HTTP handler failed for %s %s", request.method, request.path)
            if not responder.started:
                await responder.send(500, b"internal error\n", "text/plain; charset=utf-8")
            else:
                self.close()  # a half-sent stream cannot be finished honestly
                return
        finally:
            self._task = None
        if not responder.finished:
            responder.end()
        self._next_cycle()

    def _next_cycle(self) -> None:
        if self.lost or self.transport is None:
            return
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
            self.close()
            return
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self._arm(self.limits.idle_timeout)
            if not self.transport.is_reading():
                self.transport.resume_reading()
            self._process()
        else:
            self.close()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _content_length(event: h11.Request) -> int | None:
    for name, value in event.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _to_request(event: h11.Request, body: bytes, peer: str) -> HttpRequest:
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    raw = event.target.decode("latin-1")
    parts = urlsplit(raw)
    return HttpRequest(
        method=event.method.decode("ascii"),
        path=unquote(parts.path),
        query=parse_qs(parts.query, keep_blank_values=True),
        headers=headers,
        body=body,
        peer=peer,
        raw_path=parts.path,
    )


# -- sharing the port with websockets --------------------------------------------------


def _is_websocket_upgrade(head: bytes) -> bool:
    request_line, _, rest = head.partition(b"\r\n")
    if not request_line.startswith(b"GET "):
        return False
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.strip().lower():
            return True
    return False


def front_connection(make_http: Callable[[], asyncio.Protocol], limits: HttpLimits) -> type[ServerConnection]:
    """A websockets connection class that first decides whether the peer wants WebSocket or HTTP.

    Nothing reaches websockets until the request head is complete; then a
    WebSocket upgrade is replayed to it as if it had just arrived, and any
    other request moves the socket to ``make_http()``'s protocol.
    """

    class FrontConnection(ServerConnection):
        _front_transport: asyncio.Transport | None = None
        _front_head: bytearray
        _front_timer: asyncio.TimerHandle | None = None
        _front_websocket = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
            self._front_transport = transport
            self._front_head = bytearray()
            # A head that never completes (slowloris) holds nothing for long.
            self._front_timer = asyncio.get_running_loop().call_later(limits.request_timeout, transport.abort)

        def data_received(self, data: bytes) -> None:
            if self._front_websocket:
                super().data_received(data)
                return
            transport = self._front_transport
            assert transport is not None
            self._front_head += data
            end = self._front_head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._front_head) > limits.max_head_bytes:
                    transport.write(
                        b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n"
                    )
                    transport.close()
                return
            if self._front_timer is not None:
                self._front_timer.cancel()
            head = bytes(self._front_head)
            self._front_head = bytearray()
            if _is_websocket_upgrade(head[:end]):
                self._front_websocket = True
                super().connection_made(transport)
                super().data_received(head)
                return
            protocol = make_http()
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            protocol.data_received(head)

        def eof_received(self) -> None:
            if self._front_websocket:
                super().eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._front_websocket:
                super().connection_lost(exc)
            elif self._front_timer is not None:
                self._front_timer.cancel()

    return FrontConnection

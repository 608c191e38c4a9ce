"""The bus server: accepting connections, the handshake, lifecycle.

Built on websockets' asyncio server with compression off (faster, and about
14 KiB instead of 64 KiB per connection), a frame size limit, Origin checking,
and ``process_request`` serving ``/healthz`` and ``/metrics`` on the same port
and checking the Host header and the bearer token before the WebSocket upgrade.
Any request that is not a WebSocket upgrade goes to the HTTP door
(daemon/doors: the HTTP API, the web console, /healthz and /metrics) on the
same socket.

Until its hello is accepted a connection may send one small frame only
(``max_hello_bytes``, checked by websockets from the frame header, before the
payload is read); then the limit is raised to ``max_message_bytes``. Frames
of ``decode_in_thread_bytes`` or more are decoded in a worker thread so the
loop keeps serving the other clients.

Once a session is serving, a small binary frame is routed from the read
callback, mostly without websockets' parser (daemon/wsfast.py): no queue, no
future and no task wake-up per relayed message, and what it produced is
written at the end of that read. Everything else (text frames, fragments,
big frames, and any frame while an earlier one still waits in the queue, so
that order is kept) goes through the queue and ``_serve``'s loop. The
envelope is read without pydantic when it is plainly valid
(daemon/envelope.py); anything else is validated as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse

from protocol import (
    PROTOCOL_VERSION,
    SUBPROTOCOLS,
    CloseCode,
    ErrorCode,
    Notification,
    ProtocolError,
    Request,
    Response,
)
from protocol.codec import validate
from protocol.connection import State as ConnState

from .. import __version__
from ..envelope import FastMessage, read
from ..systemd_notify import Notifier
from ..tokens import TokenEntry, TokenStore
from ..wsfast import FAST_FRAME_BYTES, fast_server_connection, set_on_frame, swallow, took
from .config import BusConfig, fit_to_fd_limit
from .handshake import handshake
from .metrics import Metrics
from .offload import receive_off_loop
from .router import Router
from .session import Session

if TYPE_CHECKING:
    from .federation import Federation

log = logging.getLogger("personad.bus")


class Bus:
    """The running bus. ``async with Bus(...) as bus`` serves until closed."""

    def __init__(self, config: BusConfig, tokens: TokenStore) -> None:
        self.config = config
        self.tokens = tokens
        self.metrics = Metrics()
        self.router = Router(config=config, metrics=self.metrics)
        self.started = time.monotonic()  # uptime: a clock step must not change it
        self.shutting_down = False
        self._server: Server | None = None
        self._connections = 0
        self._sweeper: asyncio.Task[None] | None = None
        #: Closing handshakes started from synchronous code; owned here, awaited on close().
        self._closing: set[asyncio.Task[None]] = set()
        #: Sessions with frames queued this loop iteration (see Session.push).
        self._to_flush: list[Session] = []
        #: True while a connection handles the data it read (see schedule_flush).
        self._receiving = False
        #: Decodes big frames off the loop; two threads, so a flood of big
        #: frames queues here instead of taking every core.
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bus-decode")
        #: Host headers answered; set in start() once the port is known.
        self._hosts: frozenset[str] = frozenset()
        #: This node's part of a NATS cluster (``config.nats_url``), else None.
        self.federation: Federation | None = None
        # Imported here: the doors build on the bus's router and sessions,
        # so importing them at the top would be circular.
        from ..doors.api import HttpApi

        #: Plain HTTP on the same port (everything but the WebSocket upgrade).
        self.http = HttpApi(self)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self.config = fit_to_fd_limit(self.config)
        if self.config.nats_url is not None:
            # Joined before the port opens: a client that says hello here must be
            # seen by the other nodes and judged by the cluster's tokens, and one
            # that comes while this node restarts finds the port closed (and
            # retries), not a half-started bus.
            # Imported only here: a bus without --nats never loads nats.
            from .federation import Federation

            self.federation = Federation(self, self.router, url=self.config.nats_url, node=self.config.node)
            await self.federation.start()
            # Tokens made and revoked on any machine count on every node.
            self.tokens = await self.federation.share_tokens(self.tokens)
            self.router.federation = self.federation
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            origins=list(self.config.origins),  # type: ignore[arg-type]
            process_request=self._process_request,
            create_connection=fast_server_connection(self.http.front_connection(), self._received),
            compression=None,
            # Raised to max_message_bytes per connection once hello succeeds.
            max_size=self.config.max_hello_bytes,
            max_queue=self.config.max_queue,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
            close_timeout=self.config.shutdown_timeout,
            server_header=f"personad/{__version__}",
        )
        self._hosts = allowed_hosts(self.config.host, self.port, self.config.allowed_hosts)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="bus-sweeper")
        log.info("bus listening url=%s", self.url)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    async def close(self) -> None:
        """Graceful shutdown: answer every request in flight, close clients with 1001."""
        if self.shutting_down:
            return
        self.shutting_down = True
        failed = self.router.fail_all(ErrorCode.SHUTTING_DOWN, "the bus is shutting down")
        log.info("shutting down: answered %d requests in flight", failed)
        if self.federation is not None:
            self.router.federation = None
            await self.federation.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.http.shutdown()
        if self._server is not None:
            self._server.close(close_connections=True)  # 1001 going away
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.shutdown_timeout + 1):
                    await self._server.wait_closed()
        self._decoder.shutdown(wait=False, cancel_futures=True)

    def schedule_flush(self, session: Session) -> None:
        # Frames queued while a connection's data is being handled are
        # written when it is done (_received): one more loop iteration, with
        # its poll syscall, would cost more than the batching saves there.
        if not self._to_flush and not self._receiving:
            asyncio.get_running_loop().call_soon(self._flush)
        self._to_flush.append(session)

    def _received(self, receiving: bool) -> None:
        """A connection starts (True) or ends (False) handling the data it read."""
        self._receiving = receiving
        if not receiving and self._to_flush:
            self._flush()

    def _flush(self) -> None:
        sessions, self._to_flush = self._to_flush, []
        for session in sessions:
            session.flush()

    def close_later(self, session: Session, code: CloseCode, reason: str) -> None:
        """Start a closing handshake without waiting for it (routing never waits)."""
        task = asyncio.get_running_loop().create_task(session.ws.close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def _sweep(self) -> None:
        """Once a second: drop clients whose send buffer stopped draining (see
        session.py), and close connections whose token was revoked since."""
        while True:
            await asyncio.sleep(1.0)
            try:
                self._sweep_once(time.monotonic())
            except Exception:  # the sweeper must outlive any one bad round
                log.exception("sweeper round failed")

    def _sweep_once(self, now: float) -> None:
        valid = {e.sha256 for e in self.tokens.entries()}
        for session in list(self.router.clients.values()):
            session.check_stall(now)
            if session.token is not None and session.token.sha256 not in valid and not session.closed:
                log.warning("closing %s: its token was revoked", session.client_id)
                session.closed = True
                self.metrics.closed["token_revoked"] += 1
                self.close_later(session, CloseCode.TOKEN_REVOKED, "token revoked")

    # -- HTTP on the same port ---------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: HttpRequest) -> HttpResponse | None:
        path = request.path.partition("?")[0]
        if not self._hosts:
            # The listening socket is open, start() has not yet learned its port.
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "the bus is starting\n")
        if not self._host_allowed(request):
            # Before anything else, the WebSocket upgrade included: a page
            # whose DNS name was rebound to this address sends its own name.
            self.metrics.closed["bad_host"] += 1
            log.warning(
                "refused %s from %s: Host %r is not allowed (see --allow-host)",
                path,
                connection.remote_address,
                request.headers.get("Host"),
            )
            return connection.respond(HTTPStatus.MISDIRECTED_REQUEST, "unknown Host; see --allow-host\n")
        if self.shutting_down:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "the bus is shutting down\n")
        if self.connection_count() >= self.config.max_connections:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        if request.headers.get("Authorization") is not None and self._header_token(request) is None:
            self.metrics.closed["unauthenticated"] += 1
            log.warning("refused connection from %s: invalid bearer token", connection.remote_address)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid bearer token\n")
        return None

    def connection_count(self) -> int:
        """WebSocket clients and HTTP door connections open now: one budget, max_connections."""
        return self._connections + len(self.http.connections)

    def _host_allowed(self, request: HttpRequest) -> bool:
        return self.host_allowed(request.headers.get("Host"))

    def host_allowed(self, host: str | None) -> bool:
        """Whether a Host header is one this bus answers (DNS rebinding defence)."""
        if "*" in self._hosts:
            return True
        return host is not None and host.strip().lower() in self._hosts

    def render_metrics(self) -> str:
        return self.metrics.render(
            uptime=time.monotonic() - self.started,
            clients_by_kind=self.clients_by_kind(),
            inflight=len(self.router.pending),
            version=__version__,
        )

    def _header_token(self, request: HttpRequest | None) -> TokenEntry | None:
        """The token of an ``Authorization: Bearer`` header, if present and valid.

        Checked in process_request (to answer 401 before the upgrade) and again
        when the connection is handled: nothing is kept in between, so an
        upgrade that fails later (Origin, subprotocol) leaves nothing behind.
        """
        header = request.headers.get("Authorization") if request is not None else None
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        return self.tokens.verify(token.strip()) if scheme.lower() == "bearer" else None

    def health(self) -> dict[str, Any]:
        return {
            "status": "shutting_down" if self.shutting_down else "ok",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "connections": self._connections,
            "clients": self.clients_by_kind(),
            "inflight": len(self.router.pending),
        }

    def clients_by_kind(self) -> dict[str, int]:
        return dict(Counter(s.kind for s in self.router.clients.values()))

    # -- connections ---------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        token = self._header_token(ws.request)
        codec = SUBPROTOCOLS.get(ws.subprotocol or "")
        if codec is None:  # websockets already refuses a missing one; belt and braces
            await ws.close(CloseCode.PROTOCOL_ERROR, "negotiate a personad subprotocol")
            return
        self._connections += 1
        self.metrics.connections_total += 1
        session = Session(self, ws, codec, token)
        try:
            if not await self._handshake(session):
                return
            replaced = self.router.add(session)
            if replaced is not None:
                replaced.closed = True
                self.close_later(replaced, CloseCode.REPLACED, "replaced by a newer connection")
            await self._serve(session)
        except ConnectionClosed:
            pass
        finally:
            self._connections -= 1
            if session.client_id:
                self.router.remove(session)
                log.info("client left id=%s code=%s", session.client_id, ws.close_code)

    async def _serve(self, session: Session) -> None:
        ws = session.ws
        in_thread = self.config.decode_in_thread_bytes
        loop = asyncio.get_running_loop()

        def on_frame(frame: bytes) -> bool:
            if len(frame) >= in_thread:
                return False  # queued, for the loop below to decode off the loop
            refusal = self._receive(session, frame)
            if refusal is not None:
                set_on_frame(ws, swallow)  # closing: read nothing more
                self.close_later(session, *refusal)
            return True

        ws.fast_limit = min(in_thread, FAST_FRAME_BYTES)  # type: ignore[attr-defined]
        set_on_frame(ws, on_frame)
        try:
            async for frame in ws:
                try:
                    if len(frame) < in_thread:
                        refusal = self._receive(session, frame)
                    else:
                        self.metrics.frames_in += 1
                        self.metrics.bytes_in += len(frame)
                        try:
                            # This session waits (its messages stay in order: the
                            # fast path is off while a frame is queued or here);
                            # the others are served meanwhile. Only this session's
                            # Connection is touched, by one thread at a time.
                            message = await loop.run_in_executor(
                                self._decoder, receive_off_loop, session.conn, frame
                            )
                        except ProtocolError as exc:
                            refusal = self._refused(session, exc)
                        else:
                            self._route(session, message)
                            refusal = None
                    if refusal is not None:
                        await ws.close(*refusal)
                        return
                finally:
                    took(ws)
        finally:
            set_on_frame(ws, None)

    def _receive(self, session: Session, frame: bytes | str) -> tuple[CloseCode, str] | None:
        """Decode and route one frame; the close code and reason when the connection must close."""
        metrics = self.metrics
        metrics.frames_in += 1
        metrics.bytes_in += len(frame)
        conn = session.conn
        try:
            if conn.state is ConnState.READY:
                data = session.codec.decode_data(frame, max_bytes=conn.max_message_bytes)
                message: Request | Response | Notification | FastMessage | None = read(data)
                if message is None:
                    message = validate(data)  # the exact refusal, or a message read() leaves to pydantic
            else:
                message = conn.receive(frame)
        except ProtocolError as exc:
            return self._refused(session, exc)
        self._route(session, message)
        return None

    def _refused(self, session: Session, exc: ProtocolError) -> tuple[CloseCode, str] | None:
        request_id = getattr(exc, "request_id", None)
        if request_id is not None:
            # Parsable but invalid: answer it, JSON-RPC style, and go on.
            self.router._reply_error(session, request_id, ErrorCode.INVALID_REQUEST, exc.reason)
            return None
        log.warning("closing %s: %s", session.client_id, exc.reason)
        self.metrics.closed["protocol_error"] += 1
        session.closed = True
        return CloseCode(exc.close_code), exc.reason[:120]

    def _route(self, session: Session, message: Request | Response | Notification | FastMessage) -> None:
        router = self.router
        if isinstance(message, FastMessage):
            kind = message.kind
            if kind == "request":
                router.on_request(session, message)
            elif kind == "response":
                router.on_response(session, message)
            else:
                router.on_notification(session, message)
        elif isinstance(message, Request):
            router.on_request(session, message)
        elif isinstance(message, Response):
            router.on_response(session, message)
        else:
            assert isinstance(message, Notification)
            router.on_notification(session, message)

    async def _handshake(self, session: Session) -> bool:
        return await handshake(session, config=self.config, metrics=self.metrics, tokens=self.tokens)


def allowed_hosts(bind_host: str, port: int, extra: tuple[str, ...]) -> frozenset[str]:
    """Every Host header value the bus answers, lowercased.

    Loopback names and the bind host, each with the port (and bare when the
    port is 80, as clients omit it then); an ``extra`` entry without a port
    is allowed bare (a reverse proxy's name) and with the bus's port. An
    address literal, even 0.0.0.0, is safe to allow: DNS rebinding needs a
    name, and a page that asks for an address is cross-origin to it.
    """
    names = {"localhost", "127.0.0.1", "[::1]"}
    bind = bind_host.strip().lower()
    if bind:
        names.add(f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind)
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:
        hosts |= names
    for entry in extra:
        entry = entry.strip().lower()
        if entry == "*":
            hosts.add("*")
        elif entry.endswith("]") or ":" not in entry:  # a name or [v6] without a port
            hosts |= {entry, f"{entry}:{port}"}
        else:
            hosts.add(entry)
    return frozenset(hosts)


async def run_bus(config: BusConfig, tokens: TokenStore, *, notifier: Notifier | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    notifier = notifier or Notifier.from_env()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Bus(config, tokens) as bus, asyncio.TaskGroup() as tg:
        # Printed for supervisors and people; the port matters when 0 was asked.
        print(f"personad bus listening on {bus.url}", flush=True)
        notifier.ready(f"listening on {bus.url}")
        watchdog = tg.create_task(notifier.run_watchdog())
        await stop.wait()
        notifier.stopping("shutting down")
        watchdog.cancel()
    log.info("bus stopped")

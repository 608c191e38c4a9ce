"""The HTTP API on the bus's port: every request becomes bus calls with its bearer token.

Routes (docs/http.md has them all, with curl examples):

- ``POST /v1/call/{target}/{method}``: one bus call; the JSON body is its
  params. ``{"result": ...}`` or ``{"error": {"code", "message", "data"}}``
  with the HTTP status of :mod:`.status`. With ``Accept: text/event-stream``
  the answer is Server-Sent Events: ``progress`` events as the target
  streams, then one ``result`` or ``error`` event.
- ``GET /v1/events?topic=T&room=R``: Server-Sent Events of bus topics and
  room messages, subscribed (and joined) with the caller's token.
- ``POST /v1/pair``: a one-time pairing code (from ``personad console``)
  for a token; the web console logs in with it.
- ``GET /healthz``, ``GET /metrics``: as before the HTTP door existed.
- the web console's files at ``/``, and the routes other door modules add
  (:data:`ROUTE_MODULES`).

Every request is checked first for its Host (DNS rebinding) and Origin
(another site's page), as the WebSocket side checks them.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection

from protocol import ErrorCode

from .. import __version__
from ..bus.metrics import METRICS_GRANT
from ..tokens import TokenEntry
from .http_io import (
    SseStream,
    deadline_header,
    read_json,
    send_error,
    send_json,
    send_text,
    wants_events,
    without_envelope,
)
from .http_server import HttpLimits, HttpProtocol, HttpRequest, HttpResponder, front_connection
from .pairing import PairingStore
from .session import BusCaller, DoorError

if TYPE_CHECKING:
    from ..bus.server import Bus

log = logging.getLogger("personad.doors")

#: Modules that add routes: each has ``routes(api: HttpApi) -> None``.
ROUTE_MODULES: tuple[str, ...] = ("openai_compat", "mimic_rest", "openapi")

CONSOLE_DIR = Path(__file__).with_name("console")
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
#: The console loads nothing from elsewhere and cannot be framed.
_CONSOLE_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
]

RouteHandler = Callable[..., Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: RouteHandler
    #: Whether a bearer token is required (it is then passed as ``token=``).
    auth: bool


class HttpApi:
    """The routes of the bus's HTTP door, and the connections it serves."""

    def __init__(self, bus: Bus, limits: HttpLimits | None = None) -> None:
        self.bus = bus
        self.limits = limits or HttpLimits(max_body_bytes=bus.config.max_message_bytes)
        self.caller = BusCaller(bus, bus.router)
        self.pairings = PairingStore(bus.tokens)
        self.connections: set[HttpProtocol] = set()
        self.routes: list[Route] = []
        self.console = _load_console()
        self.route("GET", "/healthz", self._healthz, auth=False)
        self.route("GET", "/metrics", self._metrics, auth=False)
        self.route("POST", "/v1/call/{target}/{method}", self._call)
        self.route("GET", "/v1/events", self._events)
        self.route("POST", "/v1/pair", self._pair, auth=False)
        for name in ROUTE_MODULES:
            importlib.import_module(f"{__package__}.{name}").routes(self)
        # Last: the console's files, so that no other route is shadowed by one.
        self.route("GET", "/{path:(?!v1/|api/).*}", self._console, auth=False)

    def route(self, method: str, template: str, handler: RouteHandler, *, auth: bool = True) -> None:
        """Add a route; ``{name}`` matches one path segment, ``{name:regex}`` a regex."""

        def group(m: re.Match[str]) -> str:
            name, _, regex = m.group(1).partition(":")
            return f"(?P<{name}>{regex or '[^/]+'})"

        pattern = re.compile("^" + re.sub(r"\{([^}]+)\}", group, template) + "$")
        self.routes.append(Route(method, pattern, handler, auth))

    def protocol_factory(self) -> HttpProtocol:
        protocol = HttpProtocol(
            self.handle,
            self.limits,
            server_header=f"personad/{__version__}",
            on_close=self.connections.discard,
        )
        self.connections.add(protocol)
        return protocol

    def front_connection(self) -> type[ServerConnection]:
        """The connection class the bus's websockets server uses: it hands plain HTTP to this door."""
        return front_connection(self.protocol_factory, self.limits)

    async def shutdown(self, grace: float = 1.0) -> None:
        """Let answers already settled (SHUTTING_DOWN, after the router's fail_all) reach their
        callers, for up to ``grace`` seconds, then close every connection; event streams end here."""
        busy = [p.handler_task for p in self.connections if p.handler_task is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for protocol in list(self.connections):
            protocol.close()

    # -- dispatch ----------------------------------------------------------------------

    async def handle(self, request: HttpRequest, response: HttpResponder) -> None:
        bus = self.bus
        if not bus.host_allowed(request.header("host")):
            bus.metrics.closed["bad_host"] += 1
            log.warning(
                "refused HTTP %s from %s: Host %r", request.path, request.peer, request.header("host")
            )
            await send_text(response, HTTPStatus.MISDIRECTED_REQUEST, "unknown Host; see --allow-host")
            return
        origin = request.header("origin")
        if origin is not None and not self._origin_allowed(origin, request.header("host") or ""):
            log.warning("refused HTTP %s from %s: Origin %r", request.path, request.peer, origin)
            await send_error(
                response, ErrorCode.FORBIDDEN, f"Origin {origin} is not allowed", HTTPStatus.FORBIDDEN
            )
            return
        if bus.connection_count() > bus.config.max_connections:  # this one counts already
            await send_text(response, HTTPStatus.SERVICE_UNAVAILABLE, "too many connections")
            return
        allowed: list[str] = []
        for route in self.routes:
            match = route.pattern.match(request.path)
            if match is None:
                continue
            if route.method != request.method:
                allowed.append(route.method)
                continue
            kwargs: dict[str, Any] = dict(match.groupdict())
            if route.auth:
                token = self.bearer(request)
                if token is None:
                    await send_error(
                        response,
                        ErrorCode.UNAUTHENTICATED,
                        "send 'Authorization: Bearer <token>'"
                        if request.header("authorization") is None
                        else "invalid bearer token",
                        headers=[("WWW-Authenticate", 'Bearer realm="personad"')],
                    )
                    return
                kwargs["token"] = token
            await route.handler(request, response, **kwargs)
            return
        if allowed:
            await send_error(
                response,
                ErrorCode.METHOD_NOT_FOUND,
                f"{request.method} is not served at {request.path}",
                HTTPStatus.METHOD_NOT_ALLOWED,
                headers=[("Allow", ", ".join(sorted(set(allowed))))],
            )
            return
        await send_error(response, ErrorCode.METHOD_NOT_FOUND, f"nothing is served at {request.path}")

    def bearer(self, request: HttpRequest) -> TokenEntry | None:
        header = request.header("authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        return self.bus.tokens.verify(token.strip()) if scheme.lower() == "bearer" else None

    def _origin_allowed(self, origin: str, host: str) -> bool:
        # The console's own page (same origin), or an origin the operator listed.
        return origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower()) or (
            origin in self.bus.config.origins
        )

    # -- bus calls ---------------------------------------------------------------------

    async def call(
        self,
        token: TokenEntry,
        target: str | None,
        method: str,
        params: Any = None,
        *,
        label: str = "http",
        deadline_ms: int | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> Any:
        """One bus call with ``token``'s grants, in a door session of its own; raises DoorError."""
        session = self.caller.open(token, label)
        try:
            return await self.caller.call(
                session, target, method, params, deadline_ms=deadline_ms, on_progress=on_progress
            )
        finally:
            self.caller.close(session)

    async def _call(
        self, request: HttpRequest, response: HttpResponder, *, target: str, method: str, token: TokenEntry
    ) -> None:
        try:
            params = read_json(request)
            deadline_ms = deadline_header(request)
        except DoorError as exc:
            await send_error(response, exc.code, exc.message, data=exc.data)
            return
        if wants_events(request):
            await self._call_streamed(request, response, token, target, method, params, deadline_ms)
            return
        try:
            result = await self.call(token, target, method, params, deadline_ms=deadline_ms)
        except DoorError as exc:
            await send_error(response, exc.code, exc.message, data=exc.data)
            return
        await send_json(response, HTTPStatus.OK, {"result": result})

    async def _call_streamed(
        self,
        request: HttpRequest,
        response: HttpResponder,
        token: TokenEntry,
        target: str,
        method: str,
        params: Any,
        deadline_ms: int | None,
    ) -> None:
        stream = SseStream(response)
        stream.start()

        def progress(wire: dict[str, Any]) -> None:
            stream.queue("progress", {"method": wire["method"], "params": wire.get("params")})

        async def run() -> None:
            try:
                result = await self.call(
                    token, target, method, params, deadline_ms=deadline_ms, on_progress=progress
                )
                stream.queue("result", {"result": result})
            except DoorError as exc:
                stream.queue("error", {"error": exc.wire()})
            stream.finish()

        await stream.pump(run())

    # -- events ------------------------------------------------------------------------

    async def _events(self, request: HttpRequest, response: HttpResponder, *, token: TokenEntry) -> None:
        topics = request.query.get("topic", [])
        rooms = request.query.get("room", [])
        if not topics and not rooms:
            await send_error(response, ErrorCode.INVALID_PARAMS, "ask for at least one ?topic= or ?room=")
            return
        session = self.caller.open(token, "events")
        stream = SseStream(response)
        try:
            session.attach(lambda wire: stream.queue(str(wire.get("method")), without_envelope(wire)))
            try:
                if topics:
                    await self.caller.call(session, None, "bus.subscribe", {"topics": topics})
                for room in rooms:
                    await self.caller.call(session, None, "bus.room.join", {"room": room})
            except DoorError as exc:
                await send_error(response, exc.code, exc.message, data=exc.data)
                return
            stream.start()
            stream.queue("ready", {"topics": topics, "rooms": rooms})

            async def until_gone() -> None:
                await asyncio.Event().wait()  # the client ends it by going away

            await stream.pump(until_gone())
        finally:
            self.caller.close(session)

    # -- pairing -----------------------------------------------------------------------

    async def _pair(self, request: HttpRequest, response: HttpResponder) -> None:
        try:
            body = read_json(request)
        except DoorError as exc:
            await send_error(response, exc.code, exc.message)
            return
        code = body.get("code") if isinstance(body, dict) else None
        if not isinstance(code, str) or not code:
            await send_error(response, ErrorCode.INVALID_PARAMS, 'send {"code": "<pairing code>"}')
            return
        redeemed = await asyncio.to_thread(self.pairings.redeem, code)
        if redeemed is None:
            log.warning("refused a pairing code from %s", request.peer)
            await send_error(
                response,
                ErrorCode.UNAUTHENTICATED,
                "this pairing code is unknown, used or expired; run `personad console` for a new one",
            )
            return
        plaintext, entry = redeemed
        log.info("paired a console: token %s (%s) for %s", entry.name, entry.id, request.peer)
        await send_json(
            response,
            HTTPStatus.OK,
            {"token": plaintext, "name": entry.name, "id": entry.id, "grants": list(entry.grants)},
            headers=[("Cache-Control", "no-store")],
        )

    # -- health, metrics, console ------------------------------------------------------

    async def _healthz(self, request: HttpRequest, response: HttpResponder) -> None:
        status = HTTPStatus.OK if not self.bus.shutting_down else HTTPStatus.SERVICE_UNAVAILABLE
        await send_json(response, status, self.bus.health())

    async def _metrics(self, request: HttpRequest, response: HttpResponder) -> None:
        if not self.bus.config.public_metrics:
            token = self.bearer(request)
            if token is None:
                await send_text(
                    response,
                    HTTPStatus.UNAUTHORIZED,
                    "/metrics needs 'Authorization: Bearer <token>'",
                    headers=[("WWW-Authenticate", 'Bearer realm="personad"')],
                )
                return
            if not token.allows(METRICS_GRANT, "bus"):
                await send_text(
                    response, HTTPStatus.FORBIDDEN, f"token {token.name!r} lacks the {METRICS_GRANT!r} grant"
                )
                return
        body = self.bus.render_metrics().encode()
        await response.send(HTTPStatus.OK, body, "text/plain; version=0.0.4; charset=utf-8")

    async def _console(self, request: HttpRequest, response: HttpResponder, *, path: str) -> None:
        name = path.lstrip("/") or "index.html"
        found = self.console.get(name)
        if found is None:
            await send_error(response, ErrorCode.METHOD_NOT_FOUND, f"nothing is served at {request.path}")
            return
        body, content_type = found
        await response.send(HTTPStatus.OK, body, content_type, headers=list(_CONSOLE_HEADERS))


def _load_console() -> dict[str, tuple[bytes, str]]:
    """The console's files, read once: only these names are served (no wire path reaches the disk)."""
    files: dict[str, tuple[bytes, str]] = {}
    if not CONSOLE_DIR.is_dir():
        return files
    for path in sorted(CONSOLE_DIR.rglob("*")):
        content_type = _CONTENT_TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            files[path.relative_to(CONSOLE_DIR).as_posix()] = (path.read_bytes(), content_type)
    return files


__all__ = ["ROUTE_MODULES", "HttpApi", "Route"]

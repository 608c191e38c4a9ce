"""``personad mcp``: the Model Context Protocol door, for desktop assistants and agents.

A translation, not a client of its own: each MCP tool call becomes one
``POST /v1/call/{target}/{method}`` on the bus's HTTP door (the bus's own
host and port), made with the caller's token (:mod:`.mcp_tools`). Grants,
params validation, deadlines and errors are therefore the bus's, exactly as
on every other door.

Transports (the official SDK's):

- stdio (default): the MCP client spawns ``personad mcp``; the token is
  ``--token``, else ``$PERSONAD_TOKEN``, else the state dir's admin token.
  stdout is the transport, so logs go to stderr; closing stdin ends it.
- Streamable HTTP (``--http HOST:PORT``, endpoint ``/mcp``): every request
  carries ``Authorization: Bearer <personad token>``, forwarded as-is to the
  bus; this process holds no token of its own. A request without a token the
  bus knows is answered 401 before any tool runs. SIGTERM/SIGINT stop it.

docs/mcp.md has the configuration snippets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Callable, Generator
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__, runtime
from ..errors import ConfigError
from ..state import StateDir, find_token
from ..systemd_notify import Notifier
from .mcp_tools import BusDoor, BusTool, DoorFailure, ProgressSink, build_tools, http_url_of

__all__ = ["BearerGate", "build_server", "parse_listen", "run"]

log = logging.getLogger("personad.doors.mcp")

#: On SIGTERM, how long requests in flight (open SSE streams among them) get
#: before the sessions are torn down.
SHUTDOWN_GRACE_S = 5

INSTRUCTIONS = (
    "personad runs AI personas on one command bus. Every tool is one bus call made with your "
    "token, so what you may do is what its grants allow. chat talks to a persona by id "
    "(persona_list gives the ids); memory_recall and memory_remember read and write a persona's "
    "memory; screenshot and browser_js drive the shared headless browser (each call is a fresh "
    "page: give url every time)."
)


# -- the MCP server ----------------------------------------------------------------------

#: The caller's Authorization header for one MCP request.
AuthorizationOf = Callable[[ServerRequestContext[Any, Any]], str]


def build_server(tools: dict[str, BusTool], door: BusDoor, authorization_of: AuthorizationOf) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool.tool for tool in tools.values()])

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = tools.get(params.name)
        if tool is None:
            raise MCPError(types.INVALID_PARAMS, f"no tool {params.name!r}; tools/list has them")
        arguments = dict(params.arguments or {})
        return await tool.call(door, authorization_of(ctx), arguments, _progress_of(ctx))

    def input_schema(name: str) -> dict[str, Any] | None:
        tool = tools.get(name)
        return tool.tool.input_schema if tool is not None else None

    return Server(
        "personad",
        version=__version__,
        instructions=INSTRUCTIONS,
        get_tool_input_schema=input_schema,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _progress_of(ctx: ServerRequestContext[Any, Any]) -> ProgressSink | None:
    """MCP progress notifications for the target's, when the client asked (a progressToken)."""
    if ctx.meta is None or ctx.meta.get("progress_token") is None:
        return None
    count = 0

    async def forward(note: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        params = note.get("params")
        text = params.get("text") if isinstance(params, dict) else None
        await ctx.session.report_progress(
            count, None, text if isinstance(text, str) else str(note.get("method"))
        )

    return forward


# -- transports --------------------------------------------------------------------------


def run(args: argparse.Namespace, state: StateDir, url: str) -> int:
    """``personad mcp``: serve until stdin closes (stdio) or a stop signal (``--http``)."""
    http_url = http_url_of(url)
    tools = build_tools()
    # One line per bus call at INFO would drown the door's own lines.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    if args.http is None:
        token = find_token(state, args.token)
        return runtime.run(_serve_stdio(tools, http_url, f"Bearer {token}"))
    if args.token is not None:
        raise ConfigError("--token is for stdio; over HTTP each MCP client sends its own bearer token")
    host, port = parse_listen(args.http)
    # Bind before the loop starts, so that a taken port is a clear error.
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.http}: {exc.strerror}") from None
    return runtime.run(_serve_http(tools, http_url, sock))


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0 picks a free one)."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--http takes HOST:PORT (e.g. 127.0.0.1:8766), not {value!r}")
    return host, int(port)


async def _serve_stdio(tools: dict[str, BusTool], http_url: str, authorization: str) -> int:
    door = BusDoor(http_url)
    server = build_server(tools, door, lambda ctx: authorization)
    try:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        await door.aclose()
    log.info("stdin closed; personad mcp stops")
    return 0


def _authorization_of(ctx: ServerRequestContext[Any, Any]) -> str:
    # The gate let this request in with a bearer; it is what goes to the bus.
    request = ctx.request
    header = request.headers.get("authorization") if request is not None else None
    if not isinstance(header, str):
        raise MCPError(types.INVALID_REQUEST, "no Authorization header reached this request")
    return header


async def _serve_http(tools: dict[str, BusTool], http_url: str, sock: socket.socket) -> int:
    door = BusDoor(http_url)
    server = build_server(tools, door, _authorization_of)
    host, port = sock.getsockname()[:2]
    # The SDK turns on its Host/Origin checks (DNS rebinding) for a loopback host.
    app = server.streamable_http_app(streamable_http_path="/mcp", host=host)
    config = uvicorn.Config(
        BearerGate(app, door),
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    web = _UvicornServer(config)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        web.should_exit = True

    for sig in runtime.STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    shown = f"[{host}]" if ":" in host else host
    # The socket listens already: a client may connect from this line on.
    log.info("serving MCP over Streamable HTTP at http://%s:%d/mcp (bus %s)", shown, port, http_url)
    notifier = Notifier.from_env()
    serving = asyncio.ensure_future(web.serve(sockets=[sock]))
    watchdog: asyncio.Task[None] | None = None
    try:
        # systemd (Type=notify): ready once uvicorn has started its app.
        started = asyncio.ensure_future(web.ready.wait())
        await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if web.started:
            notifier.ready(f"serving MCP at http://{shown}:{port}/mcp")
            watchdog = asyncio.ensure_future(notifier.run_watchdog())
        await serving
    finally:
        if watchdog is not None:
            watchdog.cancel()
        notifier.stopping("stopping")
        for sig in runtime.STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        await door.aclose()
    log.info("personad mcp stopped")
    return 0


class _UvicornServer(uvicorn.Server):
    """uvicorn, stopped by the loop's signal handlers.

    Its own handlers re-raise the signal once it has shut down, so the
    process would die by SIGTERM instead of exiting 0 after a clean stop.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class BearerGate:
    """Every HTTP request must carry a personad token the bus knows: 401 otherwise.

    The token is checked by asking the bus (this process keeps none), then
    recorded as the request's user, so that the SDK binds each MCP session to
    the token that opened it: another token's requests get 404 for it.
    """

    def __init__(self, app: ASGIApp, door: BusDoor) -> None:
        self.app = app
        self.door = door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = Headers(scope=scope).get("authorization") or ""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            await _refuse(scope, receive, send, 401, "send 'Authorization: Bearer <personad token>'")
            return
        try:
            known = await self.door.knows(authorization)
        except DoorFailure as exc:
            log.warning("cannot check a bearer token: %s", exc)
            await _refuse(scope, receive, send, 503, str(exc))
            return
        if not known:
            await _refuse(scope, receive, send, 401, "the bus does not know this token")
            return
        fingerprint = hashlib.sha256(token.encode()).hexdigest()[:16]
        scope["user"] = AuthenticatedUser(
            AccessToken(token=token, client_id=f"token-{fingerprint}", scopes=[])
        )
        scope["auth"] = AuthCredentials([])
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    headers = {"WWW-Authenticate": 'Bearer realm="personad", error="invalid_token"'} if status == 401 else {}
    error = "invalid_token" if status == 401 else "temporarily_unavailable"
    body = {"error": error, "error_description": message}
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)

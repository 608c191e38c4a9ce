"""The hello: how a WebSocket connection becomes a client of the bus.

The first frame must be a small ``hello`` request (the bus reads at most
``max_hello_bytes`` before it); it is judged in this order: shape, protocol
version, token (the upgrade's bearer header, else the hello's own), a kind
that is not reserved (``cap``, ``room``, ``bus``, ``door``), a client id the
token may claim, and capabilities the token may provide. A refusal is
answered with the bus's error and the connection closed with its close code;
an acceptance raises the connection's frame limit and answers with the
client's id, limits and grants.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed

from protocol import PROTOCOL_VERSION, CloseCode, ErrorCode, ProtocolError, Request, Response
from protocol.commands.bus import RESERVED_KINDS, HelloParams
from protocol.validation import invalid_params

from .. import __version__
from ..tokens import PROVIDE_PREFIX, TokenStore
from ..wsfast import took
from .config import BusConfig
from .metrics import Metrics
from .session import Session

log = logging.getLogger("personad.bus")


async def handshake(session: Session, *, config: BusConfig, metrics: Metrics, tokens: TokenStore) -> bool:
    """Read and judge a connection's hello; True once it is accepted (the session then has its id)."""
    ws, conn = session.ws, session.conn
    try:
        async with asyncio.timeout(config.hello_timeout):
            frame = await ws.recv()
        took(ws)
    except TimeoutError:
        await ws.close(CloseCode.HELLO_TIMEOUT, "no hello in time")
        return False
    except ConnectionClosed:
        sent = ws.protocol.close_sent
        if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:
            # Over max_hello_bytes: websockets refused it from the header.
            metrics.closed["hello_too_big"] += 1
            log.warning(
                "refused a first frame over %d bytes from %s",
                config.max_hello_bytes,
                ws.remote_address,
            )
        raise
    try:
        hello = conn.receive(frame)
    except ProtocolError as exc:
        metrics.closed["bad_hello"] += 1
        await ws.close(exc.close_code, exc.reason[:120])
        return False
    assert isinstance(hello, Request)

    async def refuse(code: ErrorCode, message: str, close: CloseCode, data: Any = None) -> bool:
        error: dict[str, Any] = {"code": int(code), "message": message}
        if data is not None:
            error["data"] = data
        await ws.send(conn.send(Response.model_validate({"id": hello.id, "error": error})))
        conn.hello_rejected()
        metrics.closed[close.name.lower()] += 1
        log.warning("refused hello from %s: %s", ws.remote_address, message)
        await ws.close(close, message[:120])
        return False

    if isinstance(hello.params, list):
        return await refuse(ErrorCode.INVALID_PARAMS, "hello params must be an object", CloseCode.BAD_HELLO)
    try:
        params = HelloParams.model_validate(hello.params or {})
    except ValidationError as exc:
        error = invalid_params(exc)
        return await refuse(ErrorCode.INVALID_PARAMS, error.message, CloseCode.BAD_HELLO, error.data)
    if params.protocol != PROTOCOL_VERSION:
        return await refuse(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol {params.protocol} is not supported; this bus speaks {PROTOCOL_VERSION}",
            CloseCode.BAD_HELLO,
        )
    token = session.token
    if token is None and params.token is not None:
        token = tokens.verify(params.token)
    if token is None:
        reason = (
            "invalid token"
            if params.token
            else ("no token: send 'Authorization: Bearer <token>' or hello.params.token")
        )
        return await refuse(ErrorCode.UNAUTHENTICATED, reason, CloseCode.UNAUTHENTICATED)
    if params.kind in RESERVED_KINDS:
        return await refuse(
            ErrorCode.INVALID_PARAMS, f"kind {params.kind!r} is reserved", CloseCode.BAD_HELLO
        )
    client_id = f"{params.kind}:{params.name or secrets.token_hex(4)}"
    if not token.may_claim(client_id):
        return await refuse(
            ErrorCode.FORBIDDEN,
            f"token {token.name!r} may not connect as {client_id}",
            CloseCode.POLICY_VIOLATION,
        )
    # Declaring a capability means receiving what is sent to cap:<name>
    # (for inference: every persona's prompt), so it needs a grant too.
    denied = [cap for cap in dict.fromkeys(params.capabilities) if not token.may_provide(cap)]
    if denied:
        return await refuse(
            ErrorCode.FORBIDDEN,
            f"token {token.name!r} may not provide {', '.join(denied)} "
            f"(it needs the grant {PROVIDE_PREFIX}{denied[0]})",
            CloseCode.POLICY_VIOLATION,
        )
    session.token = token
    session.client_id = client_id
    session.kind = params.kind
    session.capabilities = tuple(dict.fromkeys(params.capabilities))
    result = {
        "client_id": client_id,
        "bus_version": __version__,
        "protocol": PROTOCOL_VERSION,
        "limits": {
            "max_message_bytes": config.max_message_bytes,
            "max_inflight": config.max_inflight_per_client,
            "default_deadline_ms": config.default_deadline_ms,
            "max_deadline_ms": config.max_deadline_ms,
        },
        "grants": list(token.grants),
    }
    # Authenticated: from the next frame on, the full message size. Set
    # before answering, since websockets reads the limit when the next
    # frame's first bytes arrive; a frame pipelined before this answer
    # was sent anonymously and stays under the hello limit.
    ws.protocol.max_message_size = config.max_message_bytes
    await ws.send(conn.send(Response(id=hello.id, result=result)))
    conn.hello_accepted()
    log.info("client joined id=%s codec=%s token=%s", client_id, session.codec.name, token.name)
    return True

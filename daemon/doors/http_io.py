"""Reading HTTP requests and writing answers, the same way for every HTTP door.

JSON as the bus's JSON codec reads and writes it (bytes as
``{"$bytes": base64}``, the same nesting and size limits as a WebSocket
frame), the bus's error objects with the HTTP status of :mod:`.status`, and
Server-Sent Events that never make the router wait on a slow reader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from http import HTTPStatus
from typing import Any

from protocol import JSON, ErrorCode, ProtocolError

from .http_server import HttpRequest, HttpResponder
from .session import DoorError
from .status import http_status

#: Send an SSE comment this often so that proxies keep a quiet stream open.
SSE_KEEPALIVE_S = 15.0
#: Events queued for a reader that does not keep up; past it the stream ends.
MAX_QUEUED_EVENTS = 1024


def read_json(request: HttpRequest) -> Any:
    """The request body as the JSON codec reads a frame (bytes as {"$bytes"}); None when empty."""
    if not request.body.strip():
        return None
    content_type = (request.header("content-type") or "application/json").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise DoorError(ErrorCode.INVALID_REQUEST, f"send the body as application/json, not {content_type}")
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise DoorError(ErrorCode.PARSE_ERROR, "the body is not UTF-8") from None
    try:
        return JSON.decode_data(text, max_bytes=len(request.body) + 1)
    except ProtocolError as exc:
        raise DoorError(ErrorCode.PARSE_ERROR, exc.reason) from None


def wants_events(request: HttpRequest) -> bool:
    return "text/event-stream" in (request.header("accept") or "")


def deadline_header(request: HttpRequest) -> int | None:
    """``X-Deadline-Ms``, the request's deadline in ms, if given (the bus caps it at its maximum)."""
    raw = request.header("x-deadline-ms")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise DoorError(ErrorCode.INVALID_REQUEST, "X-Deadline-Ms must be an integer") from None
    if value < 1:
        raise DoorError(ErrorCode.INVALID_REQUEST, "X-Deadline-Ms must be at least 1")
    return value


def without_envelope(wire: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in wire.items() if k != "jsonrpc"}


def dumps(data: Any) -> bytes:
    """JSON as the bus's JSON codec writes it (bytes as {"$bytes": base64})."""
    text = JSON.dumps(data)
    assert isinstance(text, str)
    return text.encode("utf-8")


async def send_json(
    response: HttpResponder, status: int, data: Any, headers: list[tuple[str, str]] | None = None
) -> None:
    await response.send(status, dumps(data) + b"\n", "application/json", headers)


async def send_text(
    response: HttpResponder, status: int, text: str, headers: list[tuple[str, str]] | None = None
) -> None:
    await response.send(status, (text + "\n").encode(), "text/plain; charset=utf-8", headers)


async def send_error(
    response: HttpResponder,
    code: int,
    message: str,
    status: int | None = None,
    *,
    data: Any = None,
    headers: list[tuple[str, str]] | None = None,
) -> None:
    """The bus's error object, with the HTTP status of the error table (or ``status``)."""
    error: dict[str, Any] = {"code": int(code), "message": message}
    if data is not None:
        error["data"] = data
    extra = list(headers or [])
    if code == ErrorCode.OVERLOADED:
        extra.append(("Retry-After", "1"))
    await send_json(response, status or http_status(code), {"error": error}, extra)


class SseStream:
    """Server-Sent Events to one client: events queued from callbacks, written in order.

    Callbacks (the router's deliveries) never wait; :meth:`pump` writes what
    they queued, waiting on the client's drain. A client that falls
    ``MAX_QUEUED_EVENTS`` behind gets an ``error`` event and the end.
    """

    def __init__(self, response: HttpResponder) -> None:
        self.response = response
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._overflowed = False

    def start(self) -> None:
        self.response.start(
            HTTPStatus.OK,
            [
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("Cache-Control", "no-store"),
                ("X-Accel-Buffering", "no"),
            ],
        )

    def queue(self, event: str, data: Any) -> None:
        if self._overflowed:
            return
        if self._queue.qsize() >= MAX_QUEUED_EVENTS:
            self._overflowed = True
            error = {"code": int(ErrorCode.OVERLOADED), "message": "this reader fell too far behind"}
            self._queue.put_nowait(_sse("error", {"error": error}))
            self._queue.put_nowait(None)
            return
        self._queue.put_nowait(_sse(event, data))

    def finish(self) -> None:
        self._queue.put_nowait(None)

    async def pump(self, work: Awaitable[None]) -> None:
        """Run ``work`` while writing its events; returns when the stream ends or the client leaves."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(self._queue.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    chunk = f": keepalive {time.time():.0f}\n\n".encode()
                if chunk is None:
                    break
                await self.response.write(chunk)
            self.response.end()
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _sse(event: str, data: Any) -> bytes:
    # One data line: the codec's JSON has no raw newlines in it.
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"

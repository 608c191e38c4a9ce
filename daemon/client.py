"""BusClient: how every participant joins the bus (personas, CLI, tools, tests).

(Longer than our usual 500 lines on purpose: it is one class whose reader,
reconnector, outbound calls and served requests share one connection's
state — the pending calls, the requests being served, the outbox — and the
rules below about what survives a reconnection are only checkable with all
four in view. The wire format is protocol/'s; dispatching to typed handlers
is daemon/dispatch.py's.)

A client connects, sends its hello, then both calls methods on others and
serves the requests addressed to it. It owns its background tasks (reader,
reconnector, request handlers): ``close()`` (or leaving ``async with``)
cancels and awaits every one of them.

Reconnection (``reconnect=True``, used by daemons): when the bus goes away the
client retries with exponential backoff and jitter, so a restarted bus is not
hit by every daemon at once. Given several bus URLs (a federated cluster's
nodes, comma-separated), each attempt tries them all in turn, starting with
the node it had. What happens to work in flight, chosen so that
nothing is lost *or* done twice:

* our calls already sent fail with CONNECTION_LOST: the bus that held their
  routing is gone, and re-sending could run a non-idempotent method twice;
* calls made while disconnected wait for the reconnection, within their deadline;
* notifications (events) sent while disconnected are kept in a bounded outbox
  and flushed, in order, once reconnected;
* requests we are serving keep running to completion (a durable write stays
  durable); their answers are dropped, because the caller's bus-side request
  died with the old connection and the bus has already answered it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State as WsState

from protocol import (
    MSGPACK,
    PROTOCOL_VERSION,
    Codec,
    Connection,
    ErrorCode,
    Notification,
    ProtocolError,
    Request,
    Response,
    Role,
    RpcError,
)
from protocol.codec import DEFAULT_MAX_MESSAGE_BYTES, validate
from protocol.commands.bus import HelloParams, HelloResult
from protocol.connection import State as ConnState

from . import __version__
from .envelope import FastMessage, read
from .errors import AuthError, BusUnavailable
from .wsfast import WRITE_EVERY_FRAMES, FastClientConnection, masked_binary_frame, swallow, write_pending

log = logging.getLogger("personad.client")

Handler = Callable[[Request, "CallContext"], Awaitable[Any]]
NotificationCallback = Callable[[Notification], Any]
ProgressCallback = Callable[[Notification], Any]

# Hello errors that retrying cannot fix.
_FATAL_HELLO = {
    ErrorCode.UNAUTHENTICATED,
    ErrorCode.FORBIDDEN,
    ErrorCode.INVALID_PARAMS,
    ErrorCode.UNSUPPORTED_VERSION,
}


@dataclass(slots=True)
class _Link:
    """One live connection: a new one (and generation) after each reconnect."""

    generation: int
    ws: ClientConnection
    conn: Connection


@dataclass(slots=True)
class _PendingCall:
    future: asyncio.Future[Any]
    generation: int
    on_progress: ProgressCallback | None
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class CallContext:
    """What a handler knows about the request it serves."""

    client: BusClient
    request: Request
    generation: int
    #: Loop time by which the caller stops waiting (None: no deadline given).
    deadline: float | None = None
    _progress_count: int = field(default=0)

    @property
    def caller(self) -> str | None:
        """The client id of whoever sent the request (stamped by the bus)."""
        return self.request.from_

    async def progress(self, method: str, params: Any = None) -> None:
        """Stream a notification to the caller, tied to this request."""
        self._progress_count += 1
        await self.client._send_progress(self, method, params)


class BusClient:
    """A connection to the bus that survives, if asked, the bus going away."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        kind: str,
        name: str | None = None,
        capabilities: Iterable[str] = (),
        codec: Codec = MSGPACK,
        handler: Handler | None = None,
        on_notification: NotificationCallback | None = None,
        on_state: Callable[[str], None] | None = None,
        reconnect: bool = False,
        token_in_hello: bool = False,
        # Timeouts
        open_timeout: float = 10.0,
        default_deadline_ms: int = 30_000,
        # Reconnection
        backoff_base: float = 0.1,
        backoff_max: float = 10.0,
        # Limits
        outbox_limit: int = 1000,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        #: The bus nodes to try, in order (``ws://a:8765,ws://b:8765``): on
        #: losing its node the client moves to the next that answers, so a
        #: federated cluster (docs/federation.md) survives a node's death.
        self.urls = [u.strip() for u in url.split(",") if u.strip()] or [url]
        self._url_index = 0
        #: The node connected to (or tried) now.
        self.url = self.urls[0]
        self._token = token
        self._hello_params = HelloParams(
            protocol=PROTOCOL_VERSION,
            kind=kind,
            name=name,
            capabilities=list(capabilities),
            token=token if token_in_hello else None,
            agent=f"personad/{__version__}",
        )
        self._token_in_hello = token_in_hello
        self.codec = codec
        self._handler = handler
        #: Notification callbacks, in order: ``on_notification``, then those added later
        #: (add_notification_listener).
        self._listeners: list[NotificationCallback] = [on_notification] if on_notification is not None else []
        self._reconnect = reconnect
        self._open_timeout = open_timeout
        self.default_deadline_ms = default_deadline_ms
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_message_bytes = max_message_bytes

        self.hello: HelloResult | None = None
        self._on_state = on_state
        self._reconnect_listeners: list[Callable[[], Any]] = []
        self._been_connected = False
        self.state = "connecting"
        self.connected_since: float | None = None
        self.reconnects = 0

        self._link: _Link | None = None
        self._generations = itertools.count(1)
        self._ids = itertools.count(1)
        self._pending: dict[int, _PendingCall] = {}
        self._serving: dict[tuple[int, int | str], asyncio.Task[None]] = {}
        self._outbox: deque[dict[str, Any]] = deque(maxlen=outbox_limit)
        self._connected = asyncio.Event()
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running_loop: asyncio.AbstractEventLoop | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None
        self._failed: asyncio.Future[BaseException] | None = None

    # -- lifecycle ---------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        """connecting → connected ⇄ reconnecting → closed; tells ``on_state`` of changes."""
        if state != self.state:
            self.state = state
            if self._on_state is not None:
                self._on_state(state)
            if state == "connected":
                if self._been_connected:
                    for listener in self._reconnect_listeners:
                        self._run_reconnect_listener(listener)
                self._been_connected = True

    @property
    def client_id(self) -> str | None:
        return self.hello.client_id if self.hello else None

    @property
    def inflight(self) -> int:
        """Requests this client is serving now."""
        return len(self._serving)

    async def __aenter__(self) -> BusClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect (or, with reconnect, start trying to) and start reading."""
        self._failed = asyncio.get_running_loop().create_future()
        if self._reconnect:
            self._maintainer = self._spawn(self._maintain(), "bus-reconnect")
        else:
            link = await self._open()
            self._spawn(self._read_loop(link), "bus-reader")

    async def close(self) -> None:
        """Close the connection and stop reconnecting; pending calls fail.

        Every task the client started is cancelled and awaited here: the
        client owns them, and none outlives it.
        """
        self._closing = True
        self._set_state("closed")
        if self._maintainer is not None:
            self._maintainer.cancel()
        for task in list(self._serving.values()):
            task.cancel()
        if self._link is not None:
            await self._link.ws.close()
        self._fail_pending(None, ErrorCode.CONNECTION_LOST, "client closed")
        self._connected.set()  # wake waiters so they see the closed state
        tasks = list(self._tasks)
        for task in tasks:
            if task is not asyncio.current_task() and task.get_name() != "bus-reader":
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_failed(self) -> BaseException:
        """Return when reconnecting gave up for good (a refused token, say)."""
        assert self._failed is not None, "start() first"
        return await asyncio.shield(self._failed)

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, kept: asyncio.get_running_loop() makes a getpid() syscall each time."""
        loop = self._running_loop
        if loop is None or loop.is_closed():
            loop = self._running_loop = asyncio.get_running_loop()
        return loop

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = self._loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and task is not self._maintainer:
            log.error("client task %s failed", task.get_name(), exc_info=exc)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the handshake has completed (on the current connection)."""
        async with asyncio.timeout(timeout):
            while True:
                await self._connected.wait()
                if self._fatal is not None:
                    raise self._fatal
                if self._closing or self._link is not None:
                    return
                self._connected.clear()

    # -- connecting ---------------------------------------------------------------

    async def _open(self) -> _Link:
        """Connect to the first bus URL that answers, starting with the last one that did."""
        error: BusUnavailable | None = None
        for step in range(len(self.urls)):
            index = (self._url_index + step) % len(self.urls)
            self.url = self.urls[index]
            try:
                link = await self._open_one()
            except BusUnavailable as exc:
                error = exc
                continue
            self._url_index = index
            return link
        assert error is not None
        raise error

    async def _open_one(self) -> _Link:
        headers = None if self._token_in_hello else {"Authorization": f"Bearer {self._token}"}
        try:
            ws = await connect(
                self.url,
                subprotocols=[self.codec.subprotocol],  # type: ignore[list-item]
                additional_headers=headers,
                compression=None,
                max_size=self._max_message_bytes,
                open_timeout=self._open_timeout,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=5,
                user_agent_header=f"personad/{__version__}",
                create_connection=FastClientConnection,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
            if status == 401:
                raise AuthError(f"the bus at {self.url} refused the token: {body or 'HTTP 401'}") from None
            if status == 403:
                raise AuthError(f"the bus at {self.url} refused this client: {body or 'HTTP 403'}") from None
            raise BusUnavailable(f"the bus at {self.url} answered HTTP {status}: {body}") from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise BusUnavailable(f"cannot reach the bus at {self.url}: {exc}") from None

        conn = Connection(Role.CLIENT, self.codec, max_message_bytes=self._max_message_bytes)
        try:
            hello = Request(id=0, method="hello", params=self._hello_params.model_dump(exclude_none=True))
            await ws.send(conn.send(hello))
            async with asyncio.timeout(self._open_timeout):
                reply = conn.receive(await ws.recv())
            ws.queued -= 1  # type: ignore[attr-defined]  # the hello's answer was handled
        except (ConnectionClosed, TimeoutError, ProtocolError) as exc:
            await ws.close()
            reason = getattr(getattr(exc, "rcvd", None), "reason", "") or str(exc) or "timeout"
            raise BusUnavailable(f"handshake with {self.url} failed: {reason}") from None
        assert isinstance(reply, Response)
        if reply.error is not None:
            conn.hello_rejected()
            await ws.close()
            error = RpcError(reply.error.code, reply.error.message, reply.error.data)
            if reply.error.code == ErrorCode.UNAUTHENTICATED:
                raise AuthError(f"the bus refused the hello: {reply.error.message}") from error
            raise error
        conn.hello_accepted()
        try:
            self.hello = HelloResult.model_validate(reply.result)
        except ValidationError as exc:
            await ws.close()
            raise BusUnavailable(f"the bus sent an invalid hello result: {exc}") from None
        link = _Link(next(self._generations), ws, conn)
        self._link = link
        self._set_state("connected")
        self.connected_since = time.time()
        self._connected.set()
        self._flush_outbox(link)
        log.info("connected url=%s client_id=%s", self.url, self.client_id)
        return link

    async def _maintain(self) -> None:
        attempt = 0
        first = True
        while not self._closing:
            try:
                link = await self._open()
            except (AuthError, RpcError) as exc:
                if isinstance(exc, RpcError) and exc.code not in _FATAL_HELLO:
                    delay = self._backoff(attempt)
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                self._fatal = exc
                self._connected.set()
                self._set_state("closed")
                log.error("giving up on the bus: %s", exc)
                if self._failed is not None and not self._failed.done():
                    self._failed.set_result(exc)
                return
            except BusUnavailable as exc:
                delay = self._backoff(attempt)
                attempt += 1
                log.warning("bus unavailable, retrying in %.2fs: %s", delay, exc)
                self._set_state("connecting" if first else "reconnecting")
                await asyncio.sleep(delay)
                continue
            if not first:
                self.reconnects += 1
            first = False
            attempt = 0
            await self._read_loop(link)
            if not self._closing:
                self._set_state("reconnecting")

    def _backoff(self, attempt: int) -> float:
        # Exponential with "equal jitter": at least half the step, so retries
        # stay spread out but never hammer (AWS architecture blog, 2015).
        step = min(self._backoff_max, self._backoff_base * 2.0**attempt)
        return step / 2 + random.uniform(0, step / 2)

    # -- receiving ---------------------------------------------------------------

    async def _read_loop(self, link: _Link) -> None:
        ws = cast(FastClientConnection, link.ws)

        def on_frame(frame: bytes) -> bool:
            try:
                self._dispatch(link, self._read(link, frame))
            except ProtocolError as exc:
                log.error("bad message from the bus, closing: %s", exc.reason)
                ws.on_frame = swallow
                self._spawn(ws.close(int(exc.close_code), exc.reason[:120]), "bus-close")
            return True

        # Complete binary frames are handled as websockets parses them (no
        # wake-up of this task per message); the rest come through the loop.
        ws.on_frame = on_frame
        try:
            async for frame in ws:
                try:
                    message = self._read(link, frame)
                except ProtocolError as exc:
                    log.error("bad message from the bus, closing: %s", exc.reason)
                    await ws.close(int(exc.close_code), exc.reason[:120])
                    break
                finally:
                    ws.queued -= 1
                self._dispatch(link, message)
        except ConnectionClosed:
            pass
        finally:
            ws.on_frame = None
            self._link = None
            self._connected.clear()
            self.connected_since = None
            with contextlib.suppress(ProtocolError):
                link.conn.connection_lost()
            self._fail_pending(link.generation, ErrorCode.CONNECTION_LOST, "connection to the bus lost")
            if not self._closing:
                log.warning("disconnected from the bus (generation %d)", link.generation)

    def _read(self, link: _Link, frame: bytes | str) -> Request | Notification | Response | FastMessage:
        """Decode one frame. Raises ProtocolError."""
        conn = link.conn
        if conn.state is not ConnState.READY:
            return conn.receive(frame)
        # Answers to our calls skip pydantic when plainly valid
        # (daemon/envelope.py); requests and notifications reach
        # handlers and listeners as the protocol's models.
        data = self.codec.decode_data(frame, max_bytes=conn.max_message_bytes)
        fast = read(data)
        return fast if fast is not None and fast.kind == "response" else validate(data)

    def _dispatch(self, link: _Link, message: Request | Notification | Response | FastMessage) -> None:
        if isinstance(message, Response | FastMessage):
            pending = self._pending.pop(message.id, None) if isinstance(message.id, int) else None
            if pending is None:
                log.debug("response for unknown request %r", message.id)
                return
            if pending.timer is not None:
                pending.timer.cancel()
            if pending.future.done():
                return
            if message.error is None:
                pending.future.set_result(message.result)
            else:
                e = message.error
                pending.future.set_exception(RpcError(e.code, e.message, e.data))
        elif isinstance(message, Notification):
            reply_to = message.meta.reply_to if message.meta else None
            if reply_to is not None:
                call = self._pending.get(reply_to) if isinstance(reply_to, int) else None
                if call is not None and call.on_progress is not None:
                    self._run_callback(call.on_progress, message)
            elif (
                message.method == "bus.cancel" and message.from_ is None and isinstance(message.params, dict)
            ):
                # Only the bus (no `from`) may cancel what we serve.
                task = self._serving.get((link.generation, message.params.get("id")))  # type: ignore[arg-type]
                if task is not None:
                    task.cancel()
            else:
                for listener in self._listeners:
                    self._run_callback(listener, message)
        else:
            key = (link.generation, message.id)
            task = self._spawn(self._serve(link, message), f"serve-{message.method}")
            self._serving[key] = task
            task.add_done_callback(lambda _t: self._serving.pop(key, None))

    def add_reconnect_listener(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` each time the connection is back after being lost.

        For parts of a daemon that must redo what belonged to the old connection
        (its rooms). A coroutine it returns runs as one of the client's tasks, so
        ``close()`` ends it; a failing callback is logged and harms no other.
        """
        self._reconnect_listeners.append(callback)

    def _run_reconnect_listener(self, callback: Callable[[], Any]) -> None:
        try:
            result = callback()
            if inspect.isawaitable(result):
                self._spawn(_consume(result), "reconnect-listener")
        except Exception:
            log.exception("reconnect listener failed")

    def add_notification_listener(self, callback: NotificationCallback) -> None:
        """Also call ``callback`` for every notification (events, room messages …), after the others.

        For parts of a daemon that register once the client exists (a
        persona's sessions); each callback sees every notification and
        picks its own. A failing callback is logged and harms no other.
        """
        self._listeners.append(callback)

    def _run_callback(self, callback: Callable[[Notification], Any], message: Notification) -> None:
        try:
            result = callback(message)
            if inspect.isawaitable(result):
                self._spawn(_consume(result), "notification-callback")
        except Exception:
            log.exception("notification callback failed for %s", message.method)

    async def _serve(self, link: _Link, request: Request) -> None:
        ctx = CallContext(self, request, link.generation)
        if request.meta is not None and request.meta.deadline_ms is not None:
            ctx.deadline = self._loop().time() + request.meta.deadline_ms / 1000
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request.id}
        if self._handler is None:
            reply["error"] = {"code": ErrorCode.METHOD_NOT_FOUND, "message": "this client serves no methods"}
        else:
            try:
                reply["result"] = await self._handler(request, ctx)
            except RpcError as exc:
                reply["error"] = {"code": exc.code, "message": exc.message}
                if exc.data is not None:
                    reply["error"]["data"] = exc.data
            except asyncio.CancelledError:
                return  # cancelled by the caller (bus.cancel) or by close(): no answer
            except Exception:
                log.exception("handler failed for %s", request.method)
                reply["error"] = {"code": ErrorCode.INTERNAL_ERROR, "message": "internal error"}
        current = self._link
        if current is None or current.generation != link.generation:
            log.info("dropping answer to %s: the connection it came on is gone", request.method)
            return
        try:
            frame = current.conn.send_wire(reply)
            size = _frame_bytes(frame)
            limit = self._frame_limit()
            if size > limit:
                # The bus would close our connection (1009) on such a frame,
                # taking every other call we serve with it: answer this one
                # caller with an error instead, and stay connected.
                log.error("answer to %s is %d bytes, over the %d-byte limit", request.method, size, limit)
                error = {
                    "code": ErrorCode.INTERNAL_ERROR,
                    "message": f"the result of {request.method} is {size} bytes, over the bus's "
                    f"frame limit of {limit} bytes; ask for less",
                    "data": {"reason": "result_too_large", "bytes": size, "limit": limit},
                }
                frame = current.conn.send_wire({"jsonrpc": "2.0", "id": request.id, "error": error})
            # Other answers being worked out now go in the same write.
            await _send(current.ws, frame, batch=len(self._serving) > 1)
        except ProtocolError as exc:
            log.error("cannot encode answer to %s: %s", request.method, exc.reason)
            error = {"code": ErrorCode.INTERNAL_ERROR, "message": "result could not be encoded"}
            await _send(
                current.ws, current.conn.send_wire({"jsonrpc": "2.0", "id": request.id, "error": error})
            )
        except ConnectionClosed:
            pass

    def _frame_limit(self) -> int:
        """Largest answer frame we send: the bus's limit (from hello) or ours, less relay headroom."""
        limit = self._max_message_bytes
        if self.hello is not None:
            limit = min(limit, self.hello.limits.max_message_bytes)
        # (A bus configured with a tiny limit still gets half of it.)
        return max(limit - _RELAY_HEADROOM, limit // 2)

    # -- sending -----------------------------------------------------------------

    async def call(
        self,
        method: str,
        params: dict[str, Any] | list[Any] | None = None,
        *,
        to: str | None = None,
        deadline_ms: int | None = None,
        trace: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Any:
        """Call ``method`` on ``to`` (None: the bus) and return its result.

        Raises RpcError with the answer's code (TIMEOUT, TARGET_OFFLINE, …),
        or CONNECTION_LOST when the connection drops first.
        """
        deadline_ms = deadline_ms or self.default_deadline_ms
        loop = self._loop()
        started = loop.time()
        link = self._link
        if link is None:
            if not self._reconnect or self._closing:
                raise RpcError(ErrorCode.CONNECTION_LOST, "not connected to the bus")
            try:
                await self.wait_connected(deadline_ms / 1000)
            except TimeoutError:
                raise RpcError(ErrorCode.TIMEOUT, "not connected to the bus before the deadline") from None
            link = self._link
            if link is None:
                raise RpcError(ErrorCode.CONNECTION_LOST, "not connected to the bus")
            deadline_ms = max(1, deadline_ms - int((loop.time() - started) * 1000))
        rid = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            message["params"] = params
        if to is not None:
            message["to"] = to
        meta: dict[str, Any] = {"deadline_ms": deadline_ms}
        if trace is not None:
            meta["trace"] = trace
        message["meta"] = meta
        future: asyncio.Future[Any] = loop.create_future()
        pending = _PendingCall(future, link.generation, on_progress)
        # The bus answers TIMEOUT at the deadline; this local guard (a little
        # later) only fires if the bus itself stops answering.
        pending.timer = loop.call_later(deadline_ms / 1000 + 2.0, _expire, future, method)
        self._pending[rid] = pending
        try:
            # Other calls in flight: more are likely sent this iteration, in one write.
            await _send(link.ws, link.conn.send_wire(message), batch=len(self._pending) > 1)
            return await future
        except (ConnectionClosed, OSError):  # closed, or reset while our frame was being written
            raise RpcError(ErrorCode.CONNECTION_LOST, "connection to the bus lost") from None
        except asyncio.CancelledError:
            # Cancelling this task cancels the awaited future too, so "no answer
            # yet" shows as cancelled() here, not as not done().
            answered = future.done() and not future.cancelled()
            if not answered and self._link is link:
                with contextlib.suppress(ConnectionClosed, ProtocolError):
                    await _send(
                        link.ws,
                        link.conn.send_wire(
                            {"jsonrpc": "2.0", "method": "bus.cancel", "params": {"id": rid}}
                        ),
                    )
            raise
        finally:
            pending.timer.cancel()
            self._pending.pop(rid, None)
            if future.done() and not future.cancelled():
                # Lost while our frame was still being sent: the reader also failed the
                # future; the error raised above already says so, so mark this one read.
                future.exception()

    async def notify(
        self, method: str, params: dict[str, Any] | list[Any] | None = None, *, to: str | None = None
    ) -> None:
        """Send a notification; queued in the outbox while disconnected."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        if to is not None:
            message["to"] = to
        link = self._link
        if link is None:
            if len(self._outbox) == self._outbox.maxlen:
                log.warning("outbox full: dropping the oldest queued notification")
            self._outbox.append(message)
            return
        try:
            await _send(link.ws, link.conn.send_wire(message))
        except ConnectionClosed:
            self._outbox.append(message)

    async def publish(self, topic: str, data: Any = None) -> int:
        """Publish an event; returns how many subscribers it reached."""
        result = await self.call("bus.publish", {"topic": topic, "data": data})
        return int(result["delivered"])

    async def subscribe(self, *topics: str) -> list[str]:
        result = await self.call("bus.subscribe", {"topics": list(topics)})
        return list(result["topics"])

    async def _send_progress(self, ctx: CallContext, method: str, params: Any) -> None:
        link = self._link
        if link is None or link.generation != ctx.generation:
            return
        message: dict[str, Any] = {
            "jsonrpc": "2.0",
            "method": method,
            "meta": {"reply_to": ctx.request.id},
        }
        if params is not None:
            message["params"] = params
        with contextlib.suppress(ConnectionClosed):
            await _send(link.ws, link.conn.send_wire(message))

    def _flush_outbox(self, link: _Link) -> None:
        queued = list(self._outbox)
        self._outbox.clear()
        if not queued:
            return

        async def flush() -> None:
            for message in queued:
                try:
                    await _send(link.ws, link.conn.send_wire(message))
                except ConnectionClosed:
                    self._outbox.appendleft(message)
                    return

        self._spawn(flush(), "outbox-flush")

    def _fail_pending(self, generation: int | None, code: ErrorCode, message: str) -> None:
        for rid, call in list(self._pending.items()):
            if generation is None or call.generation == generation:
                self._pending.pop(rid, None)
                if call.timer is not None:
                    call.timer.cancel()
                if not call.future.done():
                    call.future.set_exception(RpcError(code, message))


# The bus relays an answer with its own id and a "from" member added: keep
# that much room under the limit so what fits our frame fits the relayed one.
_RELAY_HEADROOM = 4096


def _frame_bytes(frame: bytes | str) -> int:
    if isinstance(frame, bytes):
        return len(frame)
    # A text frame's limit is on its UTF-8 bytes; ASCII needs no copy to measure.
    return len(frame) if frame.isascii() else len(frame.encode("utf-8", "surrogatepass"))


async def _send(ws: ClientConnection, frame: bytes | str, *, batch: bool = False) -> None:
    """Write a frame now (or, with ``batch``, at the end of this loop iteration),
    then wait only if the transport asked us to pause.

    The same order as asyncio's StreamWriter (write, then drain): a reply or
    a call goes out in the loop iteration that produced it instead of after
    a send lock, and frames from concurrent tasks keep the order in which
    they were produced (progress before the final answer): every frame is
    framed at once into websockets' sans-I/O buffer, and any write sends
    all of it. websockets' own ``send()`` waits for the drain first, and
    costs several microseconds more per frame on the hot path (measured in
    bench/bus.py --explain). ``batch`` is for frames that others are likely
    to follow in the same iteration (answers and calls when several are in
    flight): one write() for all, where each costs a syscall, up to
    WRITE_EVERY_FRAMES so that the bus starts on them meanwhile. ``paused`` and
    ``drain()`` are websockets' flow-control hooks (adapted from
    StreamWriter); websockets is pinned below 18 for them.
    """
    if ws.protocol.state is not WsState.OPEN or ws.send_in_progress is not None:
        await ws.send(frame)  # raises the proper ConnectionClosed, or waits for a fragmented send
        return
    if isinstance(frame, str):
        ws.protocol.send_text(frame.encode("utf-8"))
    elif frame and not ws.protocol.extensions and not ws.protocol.debug:
        ws.protocol.writes.append(masked_binary_frame(frame))
    else:
        ws.protocol.send_binary(frame)
    if batch and isinstance(ws, FastClientConnection) and len(ws.protocol.writes) < WRITE_EVERY_FRAMES:
        ws.write_soon()
    else:
        write_pending(ws)
    if ws.paused:
        await ws.drain()


def _expire(future: asyncio.Future[Any], method: str) -> None:
    if not future.done():
        future.set_exception(RpcError(ErrorCode.TIMEOUT, f"no answer to {method} from the bus"))


async def _consume(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("listener failed")

"""A small Chrome DevTools Protocol client over Chromium's debugging pipe.

With ``--remote-debugging-pipe`` Chromium reads CDP commands from fd 3 and
writes responses and events to fd 4: JSON messages, each ended by a NUL byte
(chrome/browser/devtools/devtools_pipe_handler.cc). We use the pipe rather
than ``--remote-debugging-port`` because a TCP debugging port accepts any
local process (no authentication): anyone on the machine could drive the
browser, read every requester's pages and cookies, and run code in them. A
pipe belongs to the worker alone.

The shape follows the protocol (https://chromedevtools.github.io/devtools-protocol/):

* a command is ``{"id", "method", "params"[, "sessionId"]}``; its answer has the
  same ``id`` and a ``result`` or an ``error {code, message}``;
* an event is ``{"method", "params"[, "sessionId"]}``;
* pages are driven through *flat sessions*: ``Target.attachToTarget`` with
  ``flatten: true`` returns a ``sessionId`` that later commands name, on the same
  connection, instead of nesting messages in ``Target.sendMessageToTarget``.

Nothing here waits without an end. When the pipe closes (Chromium exited),
every command in flight fails with :class:`CdpClosed` (or the reason given to
:meth:`CdpConnection.close`), and so does every event subscription. When one
page's session ends (``Target.detachedFromTarget``, ``Inspector.targetCrashed``)
only that session's commands fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from .errors import BrowserError, CdpClosed, CdpError

log = logging.getLogger("personad.browser.cdp")

EventCallback = Callable[[dict[str, Any], str | None], None]

# Limits

#: One message from Chromium. A screenshot travels base64-encoded inside one
#: message; the worker refuses images over the bus's 16 MiB anyway, this only
#: bounds what we buffer before we can tell.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: Ended sessions remembered, so that a command to one fails at once.
MAX_ENDED_SESSIONS = 1024


class Subscription:
    """Events of one method on one session, queued from the moment of subscribing.

    Subscribe *before* sending the command that causes the event, so it
    cannot be missed. :meth:`get` raises the connection's or session's
    failure instead of waiting forever.
    """

    def __init__(self, method: str, session_id: str | None) -> None:
        self.method = method
        self.session_id = session_id
        self._queue: asyncio.Queue[dict[str, Any] | BrowserError] = asyncio.Queue()

    async def get(self) -> dict[str, Any]:
        item = await self._queue.get()
        if isinstance(item, BrowserError):
            self._queue.put_nowait(item)  # every later get() fails the same way
            raise item
        return item

    def _push(self, item: dict[str, Any] | BrowserError) -> None:
        self._queue.put_nowait(item)


class _WriteSide(asyncio.Protocol):
    """Closes the connection when the write side of the pipe is lost (EPIPE):
    Chromium's read end can go before we see EOF on ours."""

    def __init__(self, connection: CdpConnection) -> None:
        self._connection = connection

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._connection.close(CdpClosed(f"the pipe to Chromium broke ({exc})"))


class CdpConnection:
    """One CDP connection: request ids, answers, events, flat sessions."""

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._max_message_bytes = max_message_bytes
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[dict[str, Any]], str, str | None]] = {}
        self._subscriptions: dict[tuple[str, str | None], set[Subscription]] = {}
        self._listeners: dict[str, list[EventCallback]] = {}
        #: Sessions whose page is gone, with why (oldest first, bounded).
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._transport: asyncio.WriteTransport | None = None
        self._read_transport: asyncio.ReadTransport | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[BrowserError] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def open(self, read_fd: int, write_fd: int) -> None:
        """Take ownership of the pipe ends (ours: read Chromium's fd 4, write its fd 3)."""
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        reader = asyncio.StreamReader(limit=self._max_message_bytes)
        self._read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        transport, _ = await loop.connect_write_pipe(
            lambda: _WriteSide(self), os.fdopen(write_fd, "wb", buffering=0)
        )
        self._transport = transport
        self._reader_task = loop.create_task(self._read(reader), name="cdp-reader")

    @property
    def closed(self) -> bool:
        return self._closed is None or self._closed.done()

    async def wait_closed(self) -> BrowserError:
        """Return, with the reason, once the connection is closed."""
        assert self._closed is not None, "open() first"
        return await asyncio.shield(self._closed)

    def close(self, reason: BrowserError | None = None) -> None:
        """Close now: everything in flight fails with ``reason``. Idempotent."""
        reason = reason or CdpClosed("the CDP connection was closed")
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(reason)
        for transport in (self._transport, self._read_transport):
            if transport is not None:
                transport.close()
        pending, self._pending = self._pending, {}
        for future, _method, _session in pending.values():
            if not future.done():
                future.set_exception(_fresh(reason))
        for subs in self._subscriptions.values():
            for sub in subs:
                sub._push(reason)

    async def aclose(self, reason: BrowserError | None = None) -> None:
        """Close and wait for the reader task to end."""
        self.close(reason)
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task

    # -- commands and events ---------------------------------------------------------

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None
    ) -> dict[str, Any]:
        """Send a command and return its ``result``. Raises CdpError or CdpClosed.

        Cancelling the caller abandons the command: its answer, if one
        comes, is dropped. (CDP has no generic cancel.)
        """
        if self._closed is None or self._closed.done() or self._transport is None:
            raise (
                _fresh(self._closed.result())
                if self._closed is not None and self._closed.done()
                else CdpClosed("the CDP connection is not open")
            )
        if session_id is not None and session_id in self._ended:
            raise CdpClosed(self._ended[session_id])
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        # ensure_ascii (the default) escapes every control character, so the
        # NUL terminator can never occur inside a message.
        frame = json.dumps(message, separators=(",", ":")).encode("ascii") + b"\0"
        try:
            if self._transport.is_closing():
                raise BrokenPipeError("the pipe to Chromium is closed")
            self._transport.write(frame)
        except (OSError, RuntimeError) as exc:
            # The write side can break before the read side sees EOF (uvloop
            # raises RuntimeError on a transport it closed after EPIPE).
            reason = CdpClosed(f"the pipe to Chromium broke ({exc})")
            self.close(reason)
            raise _fresh(reason) from None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = (future, method, session_id)
        try:
            return await future
        finally:
            self._pending.pop(message_id, None)

    @contextlib.contextmanager
    def subscribe(self, method: str, *, session_id: str | None = None) -> Iterator[Subscription]:
        """Queue ``method`` events of ``session_id`` while the ``with`` block runs."""
        sub = Subscription(method, session_id)
        key = (method, session_id)
        self._subscriptions.setdefault(key, set()).add(sub)
        if self._closed is None or self._closed.done():
            sub._push(self._closed.result() if self._closed is not None else CdpClosed("not open"))
        try:
            yield sub
        finally:
            subs = self._subscriptions.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subscriptions[key]

    def on(self, method: str, callback: EventCallback) -> None:
        """Call ``callback(params, session_id)`` for every ``method`` event, for good."""
        self._listeners.setdefault(method, []).append(callback)

    def fail_session(self, session_id: str, reason: BrowserError) -> None:
        """Fail the commands and subscriptions of one session (its page is gone), now and later."""
        self._ended[session_id] = str(reason)
        while len(self._ended) > MAX_ENDED_SESSIONS:
            self._ended.popitem(last=False)
        for message_id, (future, _method, session) in list(self._pending.items()):
            if session == session_id and not future.done():
                self._pending.pop(message_id, None)
                future.set_exception(_fresh(reason))
        for (_method, session), subs in self._subscriptions.items():
            if session == session_id:
                for sub in subs:
                    sub._push(reason)

    # -- reading -------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason: BrowserError = CdpClosed("Chromium closed its debugging pipe")
        try:
            while True:
                try:
                    frame = await reader.readuntil(b"\0")
                except asyncio.IncompleteReadError:
                    break  # EOF: Chromium exited (or closed fd 4)
                except asyncio.LimitOverrunError:
                    reason = CdpClosed(f"a CDP message exceeded {self._max_message_bytes} bytes")
                    log.error("%s; closing the connection", reason)
                    break
                try:
                    message = json.loads(frame[:-1])
                except ValueError:
                    log.error("Chromium sent a message that is not JSON; ignoring it")
                    continue
                self._dispatch(message)
        finally:
            self.close(reason)

    def _dispatch(self, message: dict[str, Any]) -> None:
        message_id = message.get("id")
        if message_id is not None:
            entry = self._pending.pop(message_id, None)
            if entry is None:
                return  # answer to an abandoned command
            future, method, _session = entry
            if future.done():
                return
            error = message.get("error")
            if error is not None:
                future.set_exception(
                    CdpError(
                        method, int(error.get("code", 0)), str(error.get("message", "")), error.get("data")
                    )
                )
            else:
                future.set_result(message.get("result") or {})
            return
        event = message.get("method")
        if not isinstance(event, str):
            return
        params = message.get("params") or {}
        session_id = message.get("sessionId")
        if event == "Target.detachedFromTarget" and isinstance(params.get("sessionId"), str):
            # The browser-level event naming a page session that ended.
            self.fail_session(params["sessionId"], CdpClosed("the page was closed"))
        elif event == "Inspector.targetCrashed" and session_id is not None:
            self.fail_session(session_id, CdpClosed("the page's renderer crashed"))
        for sub in self._subscriptions.get((event, session_id), ()):
            sub._push(params)
        for callback in self._listeners.get(event, ()):
            try:
                callback(params, session_id)
            except Exception:
                log.exception("CDP event listener failed for %s", event)


def _fresh(reason: BrowserError) -> BrowserError:
    """A new exception like ``reason``: one instance raised in many tasks would
    collect all their tracebacks."""
    if isinstance(reason, CdpClosed):
        return type(reason)(str(reason))
    return reason

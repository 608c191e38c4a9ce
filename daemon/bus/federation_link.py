"""A bus node's NATS connection, used from synchronous routing code.

The router never awaits (routing is synchronous, router.py), but every
nats-py call is a coroutine. So what federation sends is queued here, in
order, and written by one task: subscriptions, unsubscriptions and
publications reach the NATS server in the order routing made them, and a
slow NATS connection never blocks a routing decision. Payloads are the
bus's msgpack wire dicts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from protocol import MSGPACK, ProtocolError

from ..errors import BusUnavailable

log = logging.getLogger("personad.bus.federation")

Op = Callable[[], Awaitable[Any]]

#: How long a node waits for NATS when it starts.
CONNECT_TIMEOUT = 10.0


def without_password(url: str) -> str:
    """A NATS URL fit for logs: ``nats://user:secret@host`` loses its secret."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{host}"


def subject_token(name: str) -> str:
    """A client id, capability or room name as one NATS subject token.

    ``.`` separates subject tokens; it becomes ``~``, which no client id,
    capability or room name contains, so the mapping is one to one.
    """
    return name.replace(".", "~")


def pack(data: dict[str, Any]) -> bytes:
    frame = MSGPACK.dumps(data)
    assert isinstance(frame, bytes)  # msgpack frames are binary
    return frame


class NatsLink:
    """One NATS connection and the ordered queue of what is written to it."""

    def __init__(self, url: str, *, name: str, max_message_bytes: int) -> None:
        self.url = url
        self.name = name
        self.max_message_bytes = max_message_bytes
        self._nc: NatsClient | None = None
        self._ops: collections.deque[Op] = collections.deque()
        self._wake = asyncio.Event()
        #: Set while nothing is queued (wait_idle, close).
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        # nats-py keeps retrying a first connection too (max_reconnect_attempts
        # is for ever, so that a running node rides out a NATS restart): a node
        # that cannot reach NATS at start says so instead of waiting silently.
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                self._nc = await nats.connect(
                    self.url,
                    name=self.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=5,
                    error_cb=self._error,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            reason = "no answer" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise BusUnavailable(
                f"cannot reach NATS at {without_password(self.url)} within {CONNECT_TIMEOUT:.0f}s: {reason}"
            ) from None
        self._writer = asyncio.get_running_loop().create_task(self._write(), name="federation-writer")

    async def close(self) -> None:
        if self._writer is not None:
            # Answers and cancels queued by the shutdown itself go out first.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._idle.wait()
            self._writer.cancel()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    @property
    def nc(self) -> NatsClient:
        assert self._nc is not None, "connect() first"
        return self._nc

    async def wait_idle(self) -> None:
        """Until every queued operation is written and the server has seen it."""
        await self._idle.wait()
        await self.nc.flush()

    # -- writing ---------------------------------------------------------------------

    def queue(self, op: Op) -> None:
        """Run a NATS coroutine after every one queued before it."""
        self._ops.append(op)
        self._idle.clear()
        self._wake.set()

    def send(self, subject: str, payload: bytes, reply: str = "") -> None:
        nc = self.nc
        self.queue(lambda: nc.publish(subject, payload, reply=reply))

    def publish(self, subject: str, data: dict[str, Any], reply: str = "") -> bool:
        """Encode and queue one message; False when it cannot be encoded."""
        try:
            payload = pack(data)
        except ProtocolError as exc:
            log.error("cannot publish to %s: %s", subject, exc.reason)
            return False
        self.send(subject, payload, reply)
        return True

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ops:
                op = self._ops.popleft()
                try:
                    await op()
                except Exception as exc:  # one failed publish must not stop the others
                    log.warning("nats operation failed: %r", exc)
            self._idle.set()

    # -- reading ---------------------------------------------------------------------

    def decode(self, msg: Msg) -> dict[str, Any] | None:
        try:
            data = MSGPACK.decode_data(msg.data, max_bytes=self.max_message_bytes)
        except ProtocolError as exc:
            log.warning("undecodable nats message on %s: %s", msg.subject, exc.reason)
            return None
        return data if isinstance(data, dict) else None

    async def _error(self, exc: Exception) -> None:
        log.warning("nats: %s", exc)

    async def _disconnected(self) -> None:
        log.warning("nats: disconnected from %s", without_password(self.url))

    async def _reconnected(self) -> None:
        log.info("nats: reconnected")


async def open_watched_bucket(
    js: JetStreamContext, bucket: str, apply: Callable[[str, bytes | None, str | None], None], name: str
) -> tuple[KeyValue, asyncio.Task[None]]:
    """A key-value bucket (created by whichever node comes first): every entry
    already in it is given to ``apply`` (tombstones included) before this
    returns, and the returned task goes on applying what comes next."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        try:
            kv = await js.create_key_value(bucket=bucket, history=1)
        except Exception:  # another node created it meanwhile
            kv = await js.key_value(bucket)
    watcher = await kv.watchall()
    async for entry in watcher:
        if entry is None:
            break
        apply(entry.key, entry.value, entry.operation)

    async def follow() -> None:
        async for entry in watcher:
            if entry is not None:
                apply(entry.key, entry.value, entry.operation)

    return kv, asyncio.get_running_loop().create_task(follow(), name=name)

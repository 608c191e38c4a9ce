"""A bus session with no socket: how the bus process calls the bus for a door.

An HTTP caller has no WebSocket, yet its calls must meet exactly what a
WebSocket client's meet: the token's grants, the router's validation,
deadlines, OVERLOADED, TARGET_OFFLINE and cancellation. So a door opens a
:class:`DoorSession`, which the router treats like any other session, and
gives it requests as :class:`protocol.Request` messages; what the router
would write to a socket (answers, progress, events) is handed to a Python
callback instead, as the plain dict a JSON client would have decoded.

A door session never enters the router's client table: nothing can address
it, it provides no capability, and ``bus.clients`` does not list it. It
carries a reserved client id (``door:<label>.<token id>``, a kind no hello
may claim) so that a target sees who called, and which token. Closing it settles everything it started:
requests in flight are cancelled at their target, subscriptions and room
memberships end.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from protocol import JSON, ErrorCode, ProtocolError, Request
from protocol.codec import validate

from ..bus.router import Router
from ..bus.session import Session, SessionHost
from ..tokens import TokenEntry

log = logging.getLogger("personad.doors")

#: What a door session hands its owner: every message the bus sends it.
Sink = Callable[[dict[str, Any]], None]


class DoorError(Exception):
    """A bus error answered to a door's call: code, message and data as the bus gave them."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def wire(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class DoorSession(Session):
    """A session whose frames go to a callback instead of a socket."""

    __slots__ = ("_calls", "_ids", "_sink", "label")

    def __init__(self, host: SessionHost, token: TokenEntry, label: str) -> None:
        # No socket: Session's methods that touch ``ws`` are all overridden below.
        super().__init__(host, None, JSON, token)  # type: ignore[arg-type]
        # Stable per token (its id is not secret): a persona that remembers
        # who it talks with sees one caller, not a new one per request.
        self.client_id = f"door:{label}.{token.id}"
        self.kind = "door"
        self.label = label
        self._sink: Sink | None = None
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"<DoorSession {self.client_id}>"

    # -- what the router calls -----------------------------------------------------

    def push(self, frame: bytes | str) -> bool:
        # Fan-outs arrive encoded once for every JSON client; decode this copy.
        if self.closed:
            return False
        try:
            wire = self.codec.decode_data(frame, max_bytes=self.host.config.max_message_bytes)
        except ProtocolError as exc:  # our own encoder made it: should not happen
            log.error("undecodable frame for %s: %s", self.client_id, exc.reason)
            return False
        return self._deliver(wire)

    def send(self, wire: dict[str, Any]) -> bool:
        if self.closed:
            return False
        # A copy through the JSON codec: the caller gets exactly what a JSON
        # WebSocket client would (bytes as {"$bytes": ...}), and nothing the
        # router keeps a reference to.
        try:
            text = self.codec.encode_wire(wire)
            if len(text) > self.host.config.max_message_bytes:
                log.warning(
                    "not delivering %d bytes to %s: over the message limit", len(text), self.client_id
                )
                return False
            decoded = self.codec.decode_data(text, max_bytes=self.host.config.max_message_bytes)
        except ProtocolError as exc:
            log.error("cannot encode for %s: %s", self.client_id, exc.reason)
            return False
        return self._deliver(decoded)

    def writable(self) -> bool:
        return not self.closed

    def flush(self) -> None:  # nothing is ever queued
        pass

    def abort(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.host.metrics.closed[reason] += 1

    def check_stall(self, now: float) -> None:  # no send buffer to stall
        pass

    # -- what the door calls -------------------------------------------------------

    def attach(self, sink: Sink) -> None:
        """Where notifications that are not a call's progress go (events, room messages)."""
        self._sink = sink

    def _deliver(self, wire: dict[str, Any]) -> bool:
        if "method" not in wire:  # an answer
            rid = wire.get("id")
            call = self._calls.get(rid) if isinstance(rid, int) else None
            if call is not None:
                call.settle(wire)
            return True
        meta = wire.get("meta") or {}
        reply_to = meta.get("reply_to") if isinstance(meta, dict) else None
        call = self._calls.get(reply_to) if isinstance(reply_to, int) else None
        if call is not None:
            if call.on_progress is not None:
                call.on_progress(wire)
            return True
        if self._sink is not None:
            self._sink(wire)
        return True


class _Call:
    __slots__ = ("future", "on_progress")

    def __init__(self, on_progress: Sink | None) -> None:
        self.future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.on_progress = on_progress

    def settle(self, wire: dict[str, Any]) -> None:
        if not self.future.done():
            self.future.set_result(wire)


class BusCaller:
    """Makes bus calls for doors, through the router, with the caller's token."""

    def __init__(self, host: SessionHost, router: Router) -> None:
        self.host = host
        self.router = router

    def open(self, token: TokenEntry, label: str) -> DoorSession:
        return DoorSession(self.host, token, label)

    def close(self, session: DoorSession) -> None:
        """End a door session: its calls are cancelled at their targets, its subscriptions end."""
        if session.closed:
            return
        session.closed = True
        self.router.remove(session)
        for call in session._calls.values():
            if not call.future.done():
                call.future.cancel()
        session._calls.clear()

    async def call(
        self,
        session: DoorSession,
        target: str | None,
        method: str,
        params: Any = None,
        *,
        deadline_ms: int | None = None,
        trace: str | None = None,
        on_progress: Sink | None = None,
    ) -> Any:
        """One request through the router; its result, or :class:`DoorError` as the bus answered."""
        rid = next(session._ids)
        wire: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if target is not None and target != "bus":
            wire["to"] = target
        if params is not None:
            wire["params"] = params
        meta: dict[str, Any] = {}
        if deadline_ms is not None:
            meta["deadline_ms"] = deadline_ms
        if trace is not None:
            meta["trace"] = trace
        if meta:
            wire["meta"] = meta
        try:
            request = validate(wire)
        except ProtocolError as exc:
            # The same envelope checks a WebSocket client's frame meets.
            raise DoorError(ErrorCode.INVALID_REQUEST, exc.reason) from None
        assert isinstance(request, Request)
        call = _Call(on_progress)
        session._calls[rid] = call
        try:
            self.router.on_request(session, request)
            answer = await call.future
        finally:
            session._calls.pop(rid, None)
        if "error" in answer:
            error = answer["error"]
            raise DoorError(int(error["code"]), str(error["message"]), error.get("data"))
        return answer.get("result")

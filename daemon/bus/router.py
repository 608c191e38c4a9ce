"""Routing: who a request goes to, and how its answer finds the way back.

A request from a caller gets a fresh *bus id* before it is forwarded, since
two callers may well use the same id towards the same target. The
:class:`Pending` entry maps it back, and is the single place a request's life
ends: answered, timed out, cancelled, or orphaned by a disconnect. Each of
these answers the caller exactly once (or, if the caller left, tells the
target to stop with ``bus.cancel``), so no request ever hangs.

``to`` is resolved as:

* absent — the bus's own methods (``bus.*``);
* ``cap:<name>`` — one provider of the capability: the one serving the fewest
  requests right now, ties broken round-robin. Providers were let declare it
  only with a ``provide:<name>`` grant (server.py's handshake); a client of
  kind ``extension`` (a person's own, logged-in browser) is never chosen,
  even as the only one: it is reached by its client id alone;
* ``room:<name>`` — notifications only: every other member of the room;
* anything else — the client with that id (``persona:demo``).

Everything here is synchronous: routing never waits on a socket.

(A few lines past 500 since federation's cluster-wide ``bus.clients``. The
seam for the next change: the bus's own methods, ``_call_bus`` and below,
into a ``bus_methods.py`` beside rooms.py, which serves ``bus.room.*`` so.)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from protocol import ErrorCode, Notification, Request, Response, RpcError
from protocol import commands as registry
from protocol.validation import invalid_params

from ..envelope import FastMessage
from ..tokens import PERSONAL_KINDS
from .config import BusConfig
from .metrics import Metrics
from .pubsub import Rooms, Topics
from .rooms import RoomMethods
from .session import Session

log = logging.getLogger("personad.bus")


class FederationHooks(Protocol):
    """What the router asks of federation (daemon/bus/federation.py), when a node has it."""

    def added(self, session: Session) -> None: ...
    def removed(self, session: Session) -> None: ...
    def resolve(self, to: str) -> Session | None: ...
    def published(self, wire: dict[str, Any]) -> None: ...
    def room_call(self, session: Session, request: Any) -> bool: ...
    def room_notify(self, session: Session, room: str, wire: dict[str, Any]) -> bool: ...


BusMethod = Callable[[Session, Any], dict[str, Any]]
#: A bus method whose answer comes later (federation asks the other nodes):
#: it is given the caller, the request's id and the validated params, and
#: sends the answer itself.
DeferredMethod = Callable[[Session, "int | str", Any], None]


@dataclass(slots=True)
class Pending:
    bus_id: int
    caller: Session
    caller_id: int | str
    target: Session
    method: str
    deadline_ms: int
    timer: asyncio.TimerHandle


class Router:
    def __init__(self, *, config: BusConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.clients: dict[str, Session] = {}
        self.providers: dict[str, list[Session]] = {}
        self.pending: dict[int, Pending] = {}
        self.topics: Topics[Session] = Topics()
        self.rooms: Rooms[Session] = Rooms()
        self._room_methods = RoomMethods(
            self.rooms,
            clients=self.clients,
            fanout=self._fanout,
            max_invitations=config.max_room_invitations,
        )
        #: Set by a bus with --nats: clients held by other nodes (federation).
        self.federation: FederationHooks | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        self._round_robin = itertools.count()
        self._methods: dict[str, BusMethod] = {
            "bus.ping": self._ping,
            "bus.clients": self._clients,
            "bus.subscribe": self._subscribe,
            "bus.unsubscribe": self._unsubscribe,
            "bus.publish": self._publish,
            **self._room_methods.methods(),
        }
        self._deferred: dict[str, DeferredMethod] = {}

    # -- membership --------------------------------------------------------------

    def add(self, session: Session) -> Session | None:
        """Register an identified session; returns the one it replaces, if any."""
        old = self.clients.get(session.client_id)
        if old is not None:
            self.remove(old)
        self.clients[session.client_id] = session
        for cap in session.capabilities:
            self.providers.setdefault(cap, []).append(session)
        if self.federation is not None:  # federation: hold its id cluster-wide
            self.federation.added(session)
        return old

    def remove(self, session: Session) -> None:
        """Forget a session and settle every request it was part of."""
        if self.clients.get(session.client_id) is session:
            del self.clients[session.client_id]
            for cap in session.capabilities:
                providers = self.providers.get(cap, [])
                if session in providers:
                    providers.remove(session)
                if not providers:
                    self.providers.pop(cap, None)
            if self.federation is not None:  # federation: release its id cluster-wide
                self.federation.removed(session)
        self.topics.drop(session)
        self._room_methods.drop(session)
        for bus_id in list(session.outbound.values()):
            pending = self._settle(bus_id)
            if pending is not None:
                self._cancel_at_target(pending)
        for bus_id in list(session.inbound):
            pending = self._settle(bus_id)
            if pending is not None:
                self._answer_error(
                    pending,
                    ErrorCode.TARGET_OFFLINE,
                    f"{pending.target.client_id} disconnected before answering",
                )

    def resolve(self, to: str) -> Session | None:
        found = self._resolve_here(to)
        if found is None and self.federation is not None:  # federation: held by another node?
            return self.federation.resolve(to)
        return found

    def _resolve_here(self, to: str) -> Session | None:
        if to.startswith("cap:"):
            # A browser extension runs in a person's own browser, with their
            # cookies and sessions: it serves no cap:, not even as a fallback
            # (a persona could otherwise read the person's logged-in pages).
            providers = [p for p in self.providers.get(to[4:], ()) if p.kind not in PERSONAL_KINDS]
            if not providers:
                return None
            if len(providers) == 1:
                return providers[0]
            least = min(len(p.inbound) for p in providers)
            idle = [p for p in providers if len(p.inbound) == least]
            return idle[next(self._round_robin) % len(idle)]
        return self.clients.get(to)

    # -- requests ------------------------------------------------------------------

    def on_request(self, session: Session, request: Request | FastMessage) -> None:
        assert request.id is not None  # a request always has one (pydantic or daemon/envelope.py)
        if request.method == "hello":
            session.send(_error(request.id, ErrorCode.INVALID_REQUEST, "hello was already said"))
            return
        target = request.to or "bus"
        assert session.token is not None
        if not session.token.allows(request.method, target):
            self._reply_error(
                session,
                request.id,
                ErrorCode.FORBIDDEN,
                f"token {session.token.name!r} may not call {request.method} on {target}",
            )
            return
        if request.to is None:
            if self.federation is not None and self.federation.room_call(session, request):
                return  # federation: a room whose home is another node
            self._call_bus(session, request)
            return
        if request.to.startswith("room:"):
            self._reply_error(
                session,
                request.id,
                ErrorCode.INVALID_REQUEST,
                "requests cannot go to a room: use bus.room.send or a notification",
            )
            return
        if request.id in session.outbound:
            self._reply_error(
                session,
                request.id,
                ErrorCode.INVALID_REQUEST,
                f"request id {request.id!r} is already in flight",
            )
            return
        if len(session.outbound) >= self.config.max_inflight_per_client:
            self._reply_error(
                session,
                request.id,
                ErrorCode.OVERLOADED,
                f"more than {self.config.max_inflight_per_client} requests in flight",
            )
            return
        dest = self.resolve(request.to)
        if dest is None:
            self._reply_error(session, request.id, ErrorCode.TARGET_OFFLINE, f"{request.to} is not connected")
            return
        deadline_ms = min(
            (request.meta.deadline_ms if request.meta else None) or self.config.default_deadline_ms,
            self.config.max_deadline_ms,
        )
        bus_id = next(self._ids)
        meta: dict[str, Any] = {"deadline_ms": deadline_ms}
        if request.meta is not None and request.meta.trace is not None:
            meta["trace"] = request.meta.trace
        wire: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": bus_id,
            "method": request.method,
            "from": session.client_id,
            "meta": meta,
        }
        if request.params is not None:
            wire["params"] = request.params
        if not dest.send(wire):
            self._reply_error(
                session, request.id, ErrorCode.TARGET_OFFLINE, f"{dest.client_id} could not take the request"
            )
            return
        loop = self._loop
        if loop is None:  # kept: asyncio.get_running_loop() makes a getpid() syscall each time
            loop = self._loop = asyncio.get_running_loop()
        timer = loop.call_later(deadline_ms / 1000, self._expire, bus_id)
        self.pending[bus_id] = Pending(bus_id, session, request.id, dest, request.method, deadline_ms, timer)
        session.outbound[request.id] = bus_id
        dest.inbound.add(bus_id)

    def on_response(self, session: Session, response: Response | FastMessage) -> None:
        rid = response.id
        pending = self.pending.get(rid) if isinstance(rid, int) else None
        if pending is None or pending.target is not session:
            # Late (after a timeout or cancel) or forged: never forward it.
            log.debug("stray response id=%r from %s", rid, session.client_id)
            return
        self._settle(rid)  # type: ignore[arg-type]
        wire: dict[str, Any] = {"jsonrpc": "2.0", "id": pending.caller_id, "from": session.client_id}
        if response.error is None:
            wire["result"] = response.result
            self.metrics.requests["ok"] += 1
        else:
            error: dict[str, Any] = {"code": response.error.code, "message": response.error.message}
            if response.error.data is not None:
                error["data"] = response.error.data
            wire["error"] = error
            self.metrics.requests["error"] += 1
            self.metrics.errors[_code_name(response.error.code)] += 1
        if not pending.caller.send(wire) and not pending.caller.closed:
            pending.caller.send(
                _error(
                    pending.caller_id,
                    ErrorCode.INTERNAL_ERROR,
                    f"the answer from {session.client_id} could not be relayed to a "
                    f"{pending.caller.codec.name} client (too large once encoded)",
                )
            )

    def _expire(self, bus_id: int) -> None:
        pending = self._settle(bus_id)
        if pending is None:
            return
        self._answer_error(
            pending,
            ErrorCode.TIMEOUT,
            f"no answer from {pending.target.client_id} within {pending.deadline_ms} ms",
        )
        self._cancel_at_target(pending)

    def _settle(self, bus_id: int) -> Pending | None:
        """End a pending request's life; the one place entries are removed."""
        pending = self.pending.pop(bus_id, None)
        if pending is None:
            return None
        pending.timer.cancel()
        pending.caller.outbound.pop(pending.caller_id, None)
        pending.target.inbound.discard(bus_id)
        return pending

    def _answer_error(self, pending: Pending, code: ErrorCode, message: str) -> None:
        self._reply_error(pending.caller, pending.caller_id, code, message)

    def _reply_error(
        self, session: Session, rid: int | str | None, code: ErrorCode, message: str, data: Any = None
    ) -> None:
        self.metrics.requests["error"] += 1
        self.metrics.errors[code.name] += 1
        session.send(_error(rid, code, message, data))

    def _cancel_at_target(self, pending: Pending) -> None:
        pending.target.send({"jsonrpc": "2.0", "method": "bus.cancel", "params": {"id": pending.bus_id}})

    def fail_all(self, code: ErrorCode, message: str) -> int:
        """Answer every request in flight with an error (shutdown)."""
        count = 0
        for bus_id in list(self.pending):
            pending = self._settle(bus_id)
            if pending is not None:
                self._answer_error(pending, code, message)
                count += 1
        return count

    # -- notifications -----------------------------------------------------------

    def on_notification(self, session: Session, note: Notification | FastMessage) -> None:
        if note.method.startswith("bus.") and (note.to is not None or note.meta is not None):
            # bus.cancel and friends come only from the bus: a client relaying
            # one (to a target, or as "progress") could cancel someone else's
            # request. To the bus itself, bus.cancel is the caller's own cancel.
            log.warning("refusing to relay %s from %s", note.method, session.client_id)
            self.metrics.errors["FORBIDDEN"] += 1
            return
        reply_to = note.meta.reply_to if note.meta is not None else None
        if reply_to is not None:
            pending = self.pending.get(reply_to) if isinstance(reply_to, int) else None
            if pending is None or pending.target is not session:
                return  # progress for a request that is over, or not the sender's
            wire: dict[str, Any] = {
                "jsonrpc": "2.0",
                "method": note.method,
                "from": session.client_id,
                "meta": {"reply_to": pending.caller_id},
            }
            if note.params is not None:
                wire["params"] = note.params
            pending.caller.send(wire)
            return
        if note.to is None:
            if note.method == "bus.cancel":
                self._cancel(session, note.params)
            else:
                log.info("ignoring notification %s to the bus from %s", note.method, session.client_id)
            return
        assert session.token is not None
        if not session.token.allows(note.method, note.to):
            log.warning("forbidden notification %s to %s from %s", note.method, note.to, session.client_id)
            self.metrics.errors["FORBIDDEN"] += 1
            return
        wire = {"jsonrpc": "2.0", "method": note.method, "from": session.client_id}
        if note.params is not None:
            wire["params"] = note.params
        if note.to.startswith("room:"):
            room = note.to[5:]
            members = self.rooms.members(room)
            if session not in members:
                if self.federation is not None and self.federation.room_notify(session, room, wire):
                    return  # federation: a room whose home is another node
                log.warning("%s sent to room %s without being a member", session.client_id, room)
                return
            wire["to"] = note.to
            self._fanout([m for m in members if m is not session], wire)
            return
        dest = self.resolve(note.to)
        if dest is not None:
            dest.send(wire)

    def _cancel(self, session: Session, params: Any) -> None:
        rid = params.get("id") if isinstance(params, dict) else None
        bus_id = session.outbound.get(rid) if isinstance(rid, int | str) else None
        if bus_id is None:
            return
        pending = self._settle(bus_id)
        if pending is None:
            return
        self._answer_error(pending, ErrorCode.CANCELLED, "cancelled by the caller")
        self._cancel_at_target(pending)

    # -- the bus's own methods ---------------------------------------------------

    def _call_bus(self, session: Session, request: Request | FastMessage) -> None:
        method = self._methods.get(request.method)
        command = registry.get(request.method)
        if method is None or command is None:
            self._reply_error(
                session, request.id, ErrorCode.METHOD_NOT_FOUND, f"the bus has no method {request.method}"
            )
            return
        if isinstance(request.params, list):
            self._reply_error(
                session, request.id, ErrorCode.INVALID_PARAMS, "params must be an object (named members)"
            )
            return
        try:
            params = command.params.model_validate(request.params or {})
        except ValidationError as exc:
            error = invalid_params(exc)
            self._reply_error(session, request.id, ErrorCode.INVALID_PARAMS, error.message, error.data)
            return
        deferred = self._deferred.get(request.method)
        if deferred is not None:
            assert request.id is not None
            deferred(session, request.id, params)
            return
        try:
            result = method(session, params)
        except RpcError as exc:
            self._reply_error(session, request.id, ErrorCode(exc.code), exc.message)
            return
        self.metrics.requests["ok"] += 1
        session.send({"jsonrpc": "2.0", "id": request.id, "result": result})

    def _ping(self, session: Session, params: Any) -> dict[str, Any]:
        return {"time": time.time()}

    def defer(self, method: str, handler: DeferredMethod) -> None:
        """Serve the bus method ``method`` with ``handler`` from now on (federation's cluster-wide views)."""
        assert method in self._methods
        self._deferred[method] = handler

    def _clients(self, session: Session, params: Any) -> dict[str, Any]:
        return {"clients": self.local_clients(params)}

    def local_clients(self, params: Any, node: str | None = None) -> list[dict[str, Any]]:
        """This bus's clients matching ``params`` (bus.clients' filters), by id; ``node``: stamp each."""
        clients = [
            {
                "id": s.client_id,
                "kind": s.kind,
                "capabilities": list(s.capabilities),
                "connected_at": s.connected_at,
                "inflight": len(s.inbound),
                "codec": s.codec.name,
                # Which token it connected with: who to revoke if it misbehaves.
                "token": s.token.name if s.token is not None else None,
            }
            for s in self.clients.values()
            if (params.kind is None or s.kind == params.kind)
            and (params.capability is None or params.capability in s.capabilities)
        ]
        if node is not None:
            for client in clients:
                client["node"] = node
        return sorted(clients, key=lambda c: c["id"])

    def _subscribe(self, session: Session, params: Any) -> dict[str, Any]:
        return {"topics": self.topics.subscribe(session, params.topics)}

    def _unsubscribe(self, session: Session, params: Any) -> dict[str, Any]:
        return {"topics": self.topics.unsubscribe(session, params.topics)}

    def _publish(self, session: Session, params: Any) -> dict[str, Any]:
        wire = {
            "jsonrpc": "2.0",
            "method": "event",
            "params": {"topic": params.topic, "data": params.data, "publisher": session.client_id},
        }
        delivered = self._fanout(list(self.topics.match(params.topic)), wire)
        self.metrics.events_delivered += delivered
        if self.federation is not None:  # federation: subscribers on other nodes too
            self.federation.published(wire)
        return {"delivered": delivered}

    def _fanout(self, sessions: list[Session], wire: dict[str, Any]) -> int:
        """Encode once per codec, then write to every reader that keeps up."""
        by_codec: dict[Any, list[Session]] = {}
        for s in sessions:
            if s.writable():
                by_codec.setdefault(s.codec, []).append(s)
        delivered = 0
        for codec, targets in by_codec.items():
            try:
                frame = codec.encode_wire(wire)
            except Exception as exc:
                log.error("cannot encode %s for %s clients: %s", wire.get("method"), codec.name, exc)
                continue
            for s in targets:
                delivered += s.push(frame)
        return delivered


def _error(rid: int | str | None, code: ErrorCode, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": int(code), "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": rid, "error": error}


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)

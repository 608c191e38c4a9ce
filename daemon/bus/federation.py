"""Buses federated over NATS: a client on any node reaches a client on any other.

Each bus node keeps its own WebSocket clients and its own router; NATS
carries only what crosses nodes (docs/federation.md has the whole design):

* ``personad.to.<client id>`` — the node holding a client subscribes to it
  (queue group ``holder``, so that during a hand-over between two nodes a
  message is delivered once). A request is published there with a reply
  subject on the caller's node, ``personad.reply.<node>.<boot>.<bus id>``; a
  target held by no node makes the NATS server answer that subject with
  status 503 (no responders) at once, which becomes TARGET_OFFLINE.
* ``personad.cap.<name>`` — every node with a provider of ``cap:<name>``
  subscribes in queue group ``providers``: NATS picks one node, that node's
  router picks its least busy provider. A caller's own node is asked first.
* ``personad.cancel`` — a cancel (by the caller, its deadline, or its
  disconnect) is broadcast, since a capability's request may have gone to
  any node; the node that took it cancels it at its target.
* ``personad.claim.<client id>`` — a node that accepts a hello announces
  it; another node holding the same id closes its connection with 4004,
  as one bus does for a second connection with the same id;
* ``personad.event`` — ``bus.publish`` on any node, delivered by every
  other node to its own subscribers (``delivered`` counts this node's);
* the JetStream key-value bucket ``personad_tokens`` — every node's tokens
  and revocations (federation_tokens.py);
* ``personad.home.<node>`` and the bucket ``personad_rooms`` — rooms, each
  served by its home node for members anywhere (federation_rooms.py);
* ``personad.nodes`` and ``personad.clients`` — heartbeats, and
  ``bus.clients`` asked of every live node (federation_clients.py).

Subjects carry client ids with ``.`` spelled ``~`` (federation_link.py's
``subject_token``); payloads are the bus's msgpack wire dicts, written in
order by federation_link.py's one writer task, since routing never awaits.

Imported only when ``personad bus --nats`` is given: without it the bus
never imports nats.
"""

from __future__ import annotations

import collections
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from protocol import (
    CloseCode,
    ErrorCode,
    ErrorObject,
    Notification,
    ProtocolError,
    Request,
    Response,
)

from .. import envelope
from ..envelope import FastMessage
from ..tokens import PERSONAL_KINDS, TokenStore
from .federation_clients import FederatedClients
from .federation_holders import Holders
from .federation_link import NatsLink, pack, subject_token, without_password
from .federation_rooms import FederatedRooms
from .federation_sessions import RemoteCaller, RemoteTarget, RoomMember
from .federation_tokens import SharedTokens
from .router import Router
from .session import Session, SessionHost

log = logging.getLogger("personad.bus.federation")

#: A node name becomes one token of a NATS subject.
NODE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NO_RESPONDERS = "503"
_CANCEL_SUBJECT = "personad.cancel"
_EVENT_SUBJECT = "personad.event"


class FederationHost(SessionHost, Protocol):
    """What federation needs from the bus: a session's host, and closing one."""

    def close_later(self, session: Session, code: CloseCode, reason: str) -> None: ...


class Federation:
    """This node's part of the cluster: its NATS connection and the stand-in sessions."""

    def __init__(self, host: FederationHost, router: Router, *, url: str, node: str) -> None:
        if not NODE_PATTERN.match(node):
            raise ValueError(f"node name {node!r}: letters, digits, '_' and '-' only (at most 64)")
        self.host = host
        self.router = router
        self.url = url
        self.node = node
        #: This process's run of the node: a node back from a crash has another.
        self.boot = secrets.token_hex(8)
        # The run is in the reply subject: bus ids start again at 1 in a restarted node, and
        # an answer to a request of the run before (a persona still writing when the node
        # was killed) must not reach the new run's request that has the same id.
        self.reply_prefix = f"personad.reply.{node}.{self.boot}."
        #: Who holds each client, for answering what was sent to a node that died.
        self.holders = Holders()
        self.link = NatsLink(
            url, name=f"personad-bus:{node}", max_message_bytes=host.config.max_message_bytes
        )
        #: Requests this node published: bus id -> the stand-in the router holds as target.
        self._sent: dict[int, RemoteTarget] = {}
        #: Callers of requests taken from NATS, by (reply prefix, caller id).
        self._callers: dict[tuple[str, str], RemoteCaller] = {}
        #: Requests taken from NATS still in this node's router: (reply prefix, id) -> caller.
        self._taken: dict[tuple[str, int], RemoteCaller] = {}
        self._client_subs: dict[str, Subscription] = {}
        self._cap_subs: dict[str, Subscription] = {}
        self._cap_counts: collections.Counter[str] = collections.Counter()
        self._tokens: SharedTokens | None = None
        self.rooms: FederatedRooms | None = None
        self.clients: FederatedClients | None = None
        #: Set while this node's router handles a message that came over NATS:
        #: such a request is served here or not at all (never sent on again).
        self._relaying = False

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        await self.link.connect()
        nc = self.link.nc
        await nc.subscribe(self.reply_prefix + ">", cb=self._on_reply)
        await nc.subscribe(_CANCEL_SUBJECT, cb=self._on_cancel)
        await nc.subscribe("personad.claim.>", cb=self._on_claim)
        await nc.subscribe(_EVENT_SUBJECT, cb=self._on_event)
        self.rooms = FederatedRooms(self)
        await self.rooms.start(nc.jetstream())
        self.clients = FederatedClients(self)
        await self.clients.start()
        await nc.flush()
        log.info("federation node=%s nats=%s", self.node, without_password(self.url))

    async def share_tokens(self, local: TokenStore) -> SharedTokens:
        """This machine's token file joined to the cluster's (federation_tokens.py)."""
        self._tokens = SharedTokens(local, node=self.node, queue=self.link.queue)
        await self._tokens.start(self.link.nc.jetstream())
        return self._tokens

    async def close(self) -> None:
        if self.clients is not None:
            await self.clients.close()
        if self.rooms is not None:
            await self.rooms.close()
        if self._tokens is not None:
            await self._tokens.close()
        await self.link.close()

    async def wait_idle(self) -> None:
        """Until every queued NATS operation is written and the server has seen it."""
        await self.link.wait_idle()

    # -- for federation_rooms.py -----------------------------------------------------

    @property
    def tokens(self) -> SharedTokens | None:
        return self._tokens

    def deliver_to(self, client_id: str, wire: dict[str, Any]) -> None:
        """A notification for a client on whichever node holds it (nobody: dropped)."""
        self.link.publish(f"personad.to.{subject_token(client_id)}", {**wire, "deliver_to": client_id})

    def to_member(self, member: RoomMember, wire: dict[str, Any]) -> bool:
        assert self.rooms is not None
        return self.rooms.to_member(member, wire)

    def room_call(self, session: Session, request: Any) -> bool:
        return self.rooms is not None and self.rooms.room_call(session, request)

    def room_notify(self, session: Session, room: str, wire: dict[str, Any]) -> bool:
        return self.rooms is not None and self.rooms.room_notify(session, room, wire)

    # -- membership: the router's hooks ---------------------------------------------

    def added(self, session: Session) -> None:
        """A client said hello here: hold its subject, claim its id, offer its capabilities."""
        nc = self.link.nc
        cid = session.client_id
        token = subject_token(cid)

        async def subscribe() -> None:
            if cid in self._client_subs or self.router.clients.get(cid) is not session:
                return
            self._client_subs[cid] = await nc.subscribe(
                f"personad.to.{token}", queue="holder", cb=self._on_target
            )

        self.link.queue(subscribe)
        self.link.send(
            f"personad.claim.{token}",
            pack({"node": self.node, "boot": self.boot, "at": session.connected_at}),
        )
        if session.kind in PERSONAL_KINDS:
            return  # serves no cap:, here or anywhere
        for cap in session.capabilities:
            self._cap_counts[cap] += 1
            if self._cap_counts[cap] == 1:
                self.link.queue(self._cap_subscriber(cap))

    def _cap_subscriber(self, cap: str) -> Callable[[], Awaitable[None]]:
        nc = self.link.nc

        async def subscribe() -> None:
            if cap not in self._cap_subs and self._cap_counts[cap] > 0:
                self._cap_subs[cap] = await nc.subscribe(
                    f"personad.cap.{subject_token(cap)}", queue="providers", cb=self._on_target
                )

        return subscribe

    def removed(self, session: Session) -> None:
        cid = session.client_id
        if self.rooms is not None:
            self.rooms.client_left(cid)

        async def unsubscribe() -> None:
            if self.router.clients.get(cid) is not None:
                return  # a newer connection with this id holds it again
            sub = self._client_subs.pop(cid, None)
            if sub is not None:
                await sub.unsubscribe()

        self.link.queue(unsubscribe)
        if session.kind in PERSONAL_KINDS:
            return
        for cap in session.capabilities:
            self._cap_counts[cap] -= 1
            if self._cap_counts[cap] <= 0:
                del self._cap_counts[cap]
                self.link.queue(self._cap_unsubscriber(cap))

    def _cap_unsubscriber(self, cap: str) -> Callable[[], Awaitable[None]]:
        async def unsubscribe() -> None:
            if self._cap_counts[cap] > 0:
                return
            sub = self._cap_subs.pop(cap, None)
            if sub is not None:
                await sub.unsubscribe()

        return unsubscribe

    def resolve(self, to: str) -> Session | None:
        """A stand-in for ``to`` when no client here holds it (the router asked here first)."""
        if self._relaying or to.startswith("room:"):
            return None
        return RemoteTarget(self.host, self, to, None)

    def published(self, wire: dict[str, Any]) -> None:
        """An event published here: every other node delivers it to its own subscribers."""
        try:
            payload = pack({"node": self.node, "event": wire})
        except ProtocolError as exc:
            log.error("cannot relay event %s: %s", wire["params"].get("topic"), exc.reason)
            return
        self.link.send(_EVENT_SUBJECT, payload)

    async def _on_event(self, msg: Msg) -> None:
        data = self.link.decode(msg)
        if data is None or data.get("node") == self.node:
            return
        wire = data.get("event")
        params = wire.get("params") if isinstance(wire, dict) else None
        topic = params.get("topic") if isinstance(params, dict) else None
        if not isinstance(topic, str):
            return
        assert isinstance(wire, dict)
        delivered = self.router._fanout(list(self.router.topics.match(topic)), wire)
        self.host.metrics.events_delivered += delivered

    # -- the caller's side -------------------------------------------------------------

    def to_target(self, target: RemoteTarget, wire: dict[str, Any]) -> bool:
        """What the router sends a remote target: a request, a cancel or a notification."""
        if target.client_id.startswith("cap:"):
            subject = f"personad.cap.{subject_token(target.client_id[4:])}"
        else:
            subject = f"personad.to.{subject_token(target.client_id)}"
        method = wire.get("method")
        if method == "bus.cancel" and "from" not in wire:
            # The bus's own cancel (deadline, caller's cancel, caller gone).
            params = wire.get("params") or {}
            bus_id = params.get("id")
            if isinstance(bus_id, int) and self._sent.pop(bus_id, None) is not None:
                self.holders.done(bus_id)
                self.link.send(_CANCEL_SUBJECT, pack({"reply": self.reply_prefix, "id": bus_id}))
            return True
        try:
            payload = pack({**wire, "to": target.client_id})
        except ProtocolError as exc:
            log.error("cannot encode for %s: %s", target.client_id, exc.reason)
            return False
        if "id" in wire:
            bus_id = wire["id"]
            self._sent[bus_id] = target
            if subject.startswith("personad.to."):
                self.holders.sent(bus_id, target.client_id)
            self.link.send(subject, payload, reply=f"{self.reply_prefix}{bus_id}")
        else:
            self.link.send(subject, payload)
        return True

    async def _on_reply(self, msg: Msg) -> None:
        """An answer, progress or no-responders for a request this node published."""
        try:
            bus_id = int(msg.subject.rpartition(".")[2])
        except ValueError:
            return
        target = self._sent.get(bus_id)
        if target is None:
            return  # answered, timed out or cancelled meanwhile
        if msg.headers is not None and msg.headers.get("Status") == _NO_RESPONDERS:
            del self._sent[bus_id]
            self.holders.done(bus_id)
            offline = ErrorObject(
                code=int(ErrorCode.TARGET_OFFLINE), message=f"{target.client_id} is not connected to any node"
            )
            self.router.on_response(target, Response(id=bus_id, error=offline))
            return
        wire = self.link.decode(msg)
        if wire is None:
            return
        sender = wire.get("from")
        if isinstance(sender, str):
            # A stand-in serves one request: for cap:<name>, it now names the
            # provider that answered, as a local provider's answer would.
            target.client_id = sender
        try:
            if "method" in wire:
                fields = _present(method=wire["method"], params=wire.get("params"), meta={"reply_to": bus_id})
                note = _fast(fields, "notification") or Notification.model_validate(fields)
                self.router.on_notification(target, note)
                return
            del self._sent[bus_id]
            self.holders.done(bus_id)
            fields = {
                "jsonrpc": "2.0",
                "id": bus_id,
                **{k: v for k, v in wire.items() if k in ("result", "error")},
            }
            response = _fast(fields, "response") or Response.model_validate(fields)
        except ValidationError as exc:
            log.warning("invalid answer from %s over nats: %s", target.client_id, exc)
            return
        self.router.on_response(target, response)

    def node_lost(self, node: str, boot: str) -> None:
        """That run of ``node`` died (federation_holders.py): answer what was sent to its clients
        and to the rooms homed there."""
        if self.rooms is not None:
            self.rooms.home_lost(node)
        ids = self.holders.lost(node, boot)
        for bus_id in ids:
            target = self._sent.pop(bus_id, None)
            if target is None:
                continue
            offline = ErrorObject(
                code=int(ErrorCode.TARGET_OFFLINE),
                message=f"{target.client_id}: its node {node} stopped answering",
            )
            self.router.on_response(target, Response(id=bus_id, error=offline))
        if ids:
            log.warning("node %s stopped answering: %d request(s) to its clients answered", node, len(ids))

    # -- the target's side -------------------------------------------------------------

    async def _on_target(self, msg: Msg) -> None:
        """A request or notification for a client (or capability) held here."""
        wire = self.link.decode(msg)
        if wire is None:
            return
        if "id" not in wire:
            # A notification: "deliver_to" when the wire keeps its own "to" (room:x).
            target = wire.pop("deliver_to", None) or wire.pop("to", None)
            if isinstance(target, str):
                self._deliver_notification(target, wire)
            return
        to, sender = wire.get("to"), wire.get("from")
        if not isinstance(to, str) or not isinstance(sender, str):
            return
        reply = msg.reply
        if not reply:
            return
        prefix = reply[: reply.rfind(".") + 1]
        key = (prefix, sender)
        caller = self._callers.get(key)
        if caller is None:
            caller = self._callers[key] = RemoteCaller(self.host, self, sender, prefix)
        rid = wire["id"]
        try:
            fields = _present(
                id=rid, method=wire.get("method"), params=wire.get("params"), to=to, meta=wire.get("meta")
            )
            request = _fast(fields, "request") or Request.model_validate(fields)
        except ValidationError as exc:
            # Its node relayed what it validated; answer rather than let it time out.
            log.warning("invalid request from %s over nats: %s", sender, exc)
            error = {"code": int(ErrorCode.INVALID_REQUEST), "message": "invalid request over nats"}
            self.link.send(reply, pack({"jsonrpc": "2.0", "id": rid, "error": error}))
            return
        self._relaying = True
        try:
            self.router.on_request(caller, request)
        finally:
            self._relaying = False
        if rid in caller.outbound:
            self._taken[(prefix, rid)] = caller
        else:
            self._forget_if_idle(caller)

    def _deliver_notification(self, to: str, wire: dict[str, Any]) -> None:
        if to.startswith("cap:"):
            providers = [p for p in self.router.providers.get(to[4:], ()) if p.kind not in PERSONAL_KINDS]
            dest = min(providers, key=lambda p: len(p.inbound)) if providers else None
        else:
            dest = self.router.clients.get(to)
        if dest is not None:
            dest.send(wire)

    def to_caller(self, caller: RemoteCaller, wire: dict[str, Any]) -> bool:
        """What the router sends a remote caller: an answer or progress, back to its node."""
        is_answer = "method" not in wire
        if is_answer:
            rid = wire.get("id")
        else:
            meta = wire.get("meta") or {}
            rid = meta.get("reply_to")
        if not isinstance(rid, int):
            return False
        try:
            payload = pack(wire)
        except ProtocolError as exc:
            log.error("cannot encode for %s: %s", caller.client_id, exc.reason)
            return False
        self.link.send(f"{caller.reply_prefix}{rid}", payload)
        if is_answer:
            self._taken.pop((caller.reply_prefix, rid), None)
            self._forget_if_idle(caller)
        return True

    def _forget_if_idle(self, caller: RemoteCaller) -> None:
        if not caller.outbound and not caller.inbound:
            self._callers.pop((caller.reply_prefix, caller.client_id), None)

    async def _on_cancel(self, msg: Msg) -> None:
        data = self.link.decode(msg)
        if data is None:
            return
        prefix, rid = data.get("reply"), data.get("id")
        if not isinstance(prefix, str) or not isinstance(rid, int):
            return
        caller = self._taken.get((prefix, rid))
        if caller is None:
            return  # not taken here
        self.router.on_notification(caller, Notification(method="bus.cancel", params={"id": rid}))

    async def _on_claim(self, msg: Msg) -> None:
        """Another node accepted a hello: a connection here with the same id is replaced."""
        data = self.link.decode(msg)
        if data is None:
            return
        cid = msg.subject[len("personad.claim.") :].replace("~", ".")
        if self.rooms is not None and isinstance(data.get("node"), str):
            self.rooms.client_claimed(cid, data["node"])
        if isinstance(data.get("node"), str) and isinstance(data.get("boot"), str):
            self.holders.claimed(cid, data["node"], data["boot"])
        if data.get("node") == self.node:
            return
        local = self.router.clients.get(cid)
        at = data.get("at")
        if local is None or local.closed or not isinstance(at, int | float) or local.connected_at > at:
            return
        log.info("client %s: replaced by a connection on node %s", cid, data.get("node"))
        local.closed = True
        self.host.metrics.closed["replaced_remote"] += 1
        self.host.close_later(
            local, CloseCode.REPLACED, f"replaced by a newer connection on node {data.get('node')}"
        )


def _fast(fields: dict[str, Any], kind: str) -> FastMessage | None:
    """The envelope read without pydantic when plainly valid (daemon/envelope.py), else None."""
    message = envelope.read(fields)
    return message if message is not None and message.kind == kind else None


def _present(**fields: Any) -> dict[str, Any]:
    """A message's members without the absent ones (the protocol refuses explicit nulls)."""
    return {"jsonrpc": "2.0", **{k: v for k, v in fields.items() if v is not None}}

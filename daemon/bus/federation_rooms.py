"""Rooms spanning nodes: each room has a home node, and members anywhere.

A room lives where it was made: its members, owner and invitations are in
that node's :class:`~daemon.bus.pubsub.Rooms`, and its rules are the bus's
own (daemon/bus/rooms.py), unchanged. The home is recorded in the JetStream
key-value bucket ``personad_rooms`` (room name -> node), written with
``create`` so that one node wins a room made on two at once, and watched by
every node.

A ``bus.room.*`` call for a room whose home is another node is forwarded to
``personad.home.<node>`` with the caller's id and its token's digest; the
home serves it with a :class:`~daemon.bus.federation_sessions.RoomMember`
stand-in carrying that token, so an invitation or a room grant is checked
as for a local member, and answers. What the room sends a remote member
(messages, presence) goes to its client id's subject. A member whose
client disconnects is dropped at the home (its node says so); a home with no
responders (its node died) is forgotten, and the call is served here: the
room starts again on this node, empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from protocol import ErrorCode, RpcError
from protocol import commands as registry
from protocol.validation import invalid_params

from .federation_link import open_watched_bucket
from .federation_sessions import RoomMember
from .session import Session

if TYPE_CHECKING:
    from .federation import Federation

log = logging.getLogger("personad.bus.federation")

BUCKET = "personad_rooms"
#: How long a forwarded room call may take before the caller hears TIMEOUT.
ROOM_CALL_TIMEOUT = 10.0


class FederatedRooms:
    """This node's side of rooms spanning the cluster."""

    def __init__(self, federation: Federation) -> None:
        self.fed = federation
        self.router = federation.router
        self.node = federation.node
        #: Room -> its home node, as the bucket says.
        self.homes: dict[str, str] = {}
        #: Rooms whose home this node wrote.
        self.claimed: set[str] = set()
        #: Remote members of rooms homed here, by (their node, client id).
        self.members: dict[tuple[str, str], RoomMember] = {}
        #: Local clients in rooms homed elsewhere: client id -> those homes.
        self.away: dict[str, set[str]] = {}
        #: Forwarded calls awaiting their answer: id -> (caller, its request id, the call, timer,
        #: the home node it went to).
        self.calls: dict[int, tuple[Session, Any, Any, asyncio.TimerHandle, str]] = {}
        self._ids = itertools.count(1)
        self._kv: KeyValue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lookups: set[asyncio.Task[None]] = set()
        #: Set while a call whose room the bucket does not know is served here.
        self._serve_here = False

    async def start(self, js: JetStreamContext) -> None:
        nc = self.fed.link.nc
        self._kv, follow = await open_watched_bucket(js, BUCKET, self._apply, "federation-rooms")
        loop = asyncio.get_running_loop()
        self._tasks.append(follow)
        self._tasks.append(loop.create_task(self._reconcile(), name="federation-rooms-reconcile"))
        await nc.subscribe(f"personad.home.{self.node}", cb=self._on_home_call)
        # An invitee on another node hears of its invitation as a local one does.
        self.router._room_methods.elsewhere = self.fed.deliver_to
        # With the node's run (boot id): call ids start again at 1 after a restart, and an
        # answer to the run before must not reach the new run's call of the same id.
        await nc.subscribe(f"personad.roomreply.{self.node}.{self.fed.boot}.>", cb=self._on_reply)

    async def close(self) -> None:
        for task in [*self._tasks, *self._lookups]:
            task.cancel()
        for _, _, _, timer, _ in self.calls.values():
            timer.cancel()

    def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in ("DEL", "PURGE") or not value:
            self.homes.pop(key, None)
        else:
            self.homes[key] = value.decode()

    async def _reconcile(self) -> None:
        """Once a second: rooms homed here that emptied are released (their key deleted)."""
        while True:
            await asyncio.sleep(1.0)
            for room in list(self.claimed):
                if not self.router.rooms.exists(room):
                    self._release(room)

    def _claim(self, room: str) -> None:
        kv = self._kv
        if kv is None or room in self.claimed or not self.router.rooms.exists(room):
            return
        self.claimed.add(room)
        self.homes[room] = self.node

        async def create() -> None:
            try:
                await kv.create(room, self.node.encode())
            except KeyWrongLastSequenceError:
                log.warning("room %s was made on two nodes at once; %s keeps its own", room, self.node)

        self.fed.link.queue(create)

    def _release(self, room: str) -> None:
        kv = self._kv
        self.claimed.discard(room)
        if self.homes.get(room) == self.node:
            del self.homes[room]
        if kv is not None:
            # Only while the key still names this node: another node may have
            # made the room since (after this one stopped answering for it).
            self.fed.link.queue(lambda: self._forget_home(room, self.node))

    # -- the caller's node -------------------------------------------------------------

    def room_call(self, session: Session, request: Any) -> bool:
        """Forward a ``bus.room.*`` call whose room is homed on another node; False: serve it here."""
        if not request.method.startswith("bus.room."):
            return False
        params = request.params
        room = params.get("room") if isinstance(params, dict) else None
        if not isinstance(room, str) or self.router.rooms.exists(room):
            return False
        home = self.homes.get(room)
        if home is None and not self._serve_here and self._kv is not None:
            # Not known here yet: the bucket says, before a join could make
            # a second room of the same name on this node.
            self._spawn(self._look_up(room, session, request))
            return True
        if home is None or home == self.node:
            # Served here; a join may make the room: claim it once that is done.
            asyncio.get_running_loop().call_soon(self._claim, room)
            return False
        assert session.token is not None
        fid = next(self._ids)
        timer = asyncio.get_running_loop().call_later(ROOM_CALL_TIMEOUT, self._expire, fid)
        self.calls[fid] = (session, request.id, request, timer, home)
        self.fed.link.publish(
            f"personad.home.{home}",
            {
                "method": request.method,
                "params": params,
                "from": session.client_id,
                "token": session.token.sha256,
                "node": self.node,
            },
            reply=f"personad.roomreply.{self.node}.{self.fed.boot}.{fid}",
        )
        if request.method == "bus.room.join":
            self.away.setdefault(session.client_id, set()).add(home)
        return True

    async def _look_up(self, room: str, session: Session, request: Any) -> None:
        assert self._kv is not None
        try:
            entry = await self._kv.get(room)
        except NotFoundError:  # never homed, or released (deleted)
            entry = None
        except Exception as exc:  # NATS unreachable: the room is served here
            log.warning("room %s: cannot read its home: %r", room, exc)
            entry = None
        if entry is not None and entry.value:
            self.homes.setdefault(room, entry.value.decode())
        if not session.closed:
            self._serve_locally(session, request)

    def _serve_locally(self, session: Session, request: Any) -> None:
        """Give a call back to the router, unless a home is known: then it is forwarded."""
        self._serve_here = True  # with no home, served here: the bucket is not asked again
        try:
            self.router.on_request(session, request)
        finally:
            self._serve_here = False

    async def _forget_home(self, room: str, home: str) -> None:
        """Delete the room's key if it still names ``home`` (compare-and-delete on its revision)."""
        assert self._kv is not None
        with contextlib.suppress(Exception):  # gone already, or claimed again: nothing to do
            entry = await self._kv.get(room)
            if entry.value is not None and entry.value.decode() == home:
                await self._kv.delete(room, last=entry.revision)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    def _expire(self, fid: int) -> None:
        call = self.calls.pop(fid, None)
        if call is not None:
            session, rid, _, _, _ = call
            self._answer(
                session,
                rid,
                error={"code": int(ErrorCode.TIMEOUT), "message": "the room's node did not answer"},
            )

    def home_lost(self, node: str) -> None:
        """``node`` died (no heartbeat, or back with another boot id): the calls forwarded to
        rooms homed there are answered TARGET_OFFLINE now, not TIMEOUT after ROOM_CALL_TIMEOUT.

        Such a call may or may not have been served before the node died. Asked again, it
        meets no responders at the dead home, and the room starts again on this node.
        """
        for fid in [fid for fid, call in self.calls.items() if call[4] == node]:
            session, rid, request, timer, _ = self.calls.pop(fid)
            timer.cancel()
            room = request.params.get("room")
            self._answer(
                session,
                rid,
                error={
                    "code": int(ErrorCode.TARGET_OFFLINE),
                    "message": f"room {room!r}: its node {node} stopped answering; ask again",
                },
            )

    async def _on_reply(self, msg: Msg) -> None:
        try:
            fid = int(msg.subject.rpartition(".")[2])
        except ValueError:
            return
        call = self.calls.pop(fid, None)
        if call is None:
            return
        session, rid, request, timer, _ = call
        timer.cancel()
        if msg.headers is not None and msg.headers.get("Status") == "503":
            # Its home is gone: the room starts again here, and the bucket
            # forgets the dead home (unless another node claimed it since).
            room = request.params["room"]
            dead = self.homes.pop(room, None)
            if dead is not None and dead != self.node:
                # Before this node claims it: a claim would fail on the dead home's key.
                await self._forget_home(room, dead)
            if not session.closed:
                self._serve_locally(session, request)
            return
        data = self.fed.link.decode(msg)
        if data is not None:
            self._answer(session, rid, result=data.get("result"), error=data.get("error"))

    def _answer(self, session: Session, rid: Any, *, result: Any = None, error: Any = None) -> None:
        wire: dict[str, Any] = {"jsonrpc": "2.0", "id": rid}
        if error is not None:
            wire["error"] = error
        else:
            wire["result"] = result
        session.send(wire)

    def room_notify(self, session: Session, room: str, wire: dict[str, Any]) -> bool:
        """A notification to ``room:<name>`` from a member whose room is homed elsewhere."""
        home = self.homes.get(room)
        if home is None or home == self.node or home not in self.away.get(session.client_id, ()):
            return False
        self.fed.link.publish(
            f"personad.home.{home}",
            {
                "method": "room.notify",
                "room": room,
                "wire": wire,
                "from": session.client_id,
                "node": self.node,
            },
        )
        return True

    def client_left(self, client_id: str) -> None:
        """A local client disconnected: every home it joined drops it."""
        for home in self.away.pop(client_id, ()):
            self.fed.link.publish(
                f"personad.home.{home}", {"method": "bus.room.drop", "from": client_id, "node": self.node}
            )

    # -- the home node ------------------------------------------------------------------

    def client_claimed(self, client_id: str, node: str) -> None:
        """A client said hello on ``node``: its memberships through any other node are over.

        Room members are connections, here as on one bus; this also ends those
        of a client whose node died without saying so, once it reconnects.
        """
        for key in [k for k in self.members if k[1] == client_id and k[0] != node]:
            self.router._room_methods.drop(self.members.pop(key))

    async def _on_home_call(self, msg: Msg) -> None:
        data = self.fed.link.decode(msg)
        if data is None:
            return
        method, origin, client_id = data.get("method"), data.get("node"), data.get("from")
        if not isinstance(method, str) or not isinstance(origin, str) or not isinstance(client_id, str):
            return
        key = (origin, client_id)
        if method == "bus.room.drop":
            member = self.members.pop(key, None)
            if member is not None:
                self.router._room_methods.drop(member)
            return
        if method == "room.notify":
            self._relay_note(self.members.get(key), data.get("room"), data.get("wire"))
            return
        reply = msg.reply
        if not reply:
            return
        member = self.members.get(key)
        if member is None:
            tokens = self.fed.tokens
            token = tokens.by_digest(str(data.get("token"))) if tokens is not None else None
            if token is None:
                self.fed.link.publish(
                    reply, {"error": {"code": int(ErrorCode.UNAUTHENTICATED), "message": "unknown token"}}
                )
                return
            member = RoomMember(self.fed.host, self.fed, client_id, origin, token)
        answer = self._serve(member, method, data.get("params"))
        if self.router.rooms.rooms_of(member):
            self.members[key] = member
        else:
            self.members.pop(key, None)
        room = data["params"].get("room") if isinstance(data.get("params"), dict) else None
        if isinstance(room, str):
            if self.router.rooms.exists(room):
                self._claim(room)
            elif room in self.claimed:
                self._release(room)
        self.fed.link.publish(reply, answer)

    def _relay_note(self, member: RoomMember | None, room: Any, wire: Any) -> None:
        """A remote member's notification to its room: to every other member, as a local one's."""
        if member is None or not isinstance(room, str) or not isinstance(wire, dict):
            return
        members = self.router.rooms.members(room)
        if member not in members:
            return
        wire["from"] = member.client_id  # stamped by its node; kept as it was
        wire["to"] = f"room:{room}"
        self.router._fanout([m for m in members if m is not member], wire)

    def _serve(self, member: RoomMember, method: str, params: Any) -> dict[str, Any]:
        serve = self.router._methods.get(method)
        command = registry.get(method)
        if serve is None or command is None or not method.startswith("bus.room."):
            return {"error": {"code": int(ErrorCode.METHOD_NOT_FOUND), "message": f"no room method {method}"}}
        try:
            validated = command.params.model_validate(params or {})
        except ValidationError as exc:
            error = invalid_params(exc)
            return {"error": {"code": int(ErrorCode.INVALID_PARAMS), "message": error.message}}
        try:
            return {"result": serve(member, validated)}
        except RpcError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}

    def to_member(self, member: RoomMember, wire: dict[str, Any]) -> bool:
        self.fed.deliver_to(member.client_id, wire)
        return True

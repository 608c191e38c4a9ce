"""The bus's room methods: closed rooms with an owner, invitations and grants.

The first join creates a room and makes the caller its owner; anyone else
needs an invitation from a member (``bus.room.invite``), or a
``room:<name>`` grant on their token (fnmatch, so ``room:team-*``; admin's
``*`` too). Only those who may enter may see the member list; the owner
removes members. Refusals read the same whether or not the room exists.
Membership data lives in :class:`~daemon.bus.pubsub.Rooms`; delivery is the
router's fan-out, passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from protocol import ErrorCode, RpcError

from .pubsub import Rooms
from .session import Session

Fanout = Callable[[list[Session], dict[str, Any]], int]


class RoomMethods:
    """``bus.room.*``, served by the bus for the router."""

    def __init__(
        self,
        rooms: Rooms[Session],
        *,
        clients: Mapping[str, Session],
        fanout: Fanout,
        max_invitations: int,
    ) -> None:
        self.rooms = rooms
        self._clients = clients
        self._fanout = fanout
        self._max_invitations = max_invitations
        #: Set by federation: hands a notification to whichever node holds a
        #: client this node does not (dropped when no node does).
        self.elsewhere: Callable[[str, dict[str, Any]], None] | None = None

    def methods(self) -> dict[str, Callable[[Session, Any], dict[str, Any]]]:
        return {
            "bus.room.join": self.join,
            "bus.room.leave": self.leave,
            "bus.room.members": self.members,
            "bus.room.send": self.send,
            "bus.room.invite": self.invite,
            "bus.room.remove": self.remove,
        }

    def drop(self, session: Session) -> None:
        """A member disconnected: leave its rooms, telling the others."""
        for room in self.rooms.rooms_of(session):
            remaining = self.rooms.leave(room, session)
            self._presence(room, session.client_id, "left", remaining)

    def may_enter(self, session: Session, room: str) -> bool:
        """Whether ``session`` may join (and so see) ``room`` without being in it."""
        if self.rooms.owner(room) == session.client_id or session.client_id in self.rooms.invited(room):
            return True
        assert session.token is not None
        name = f"room:{room}"
        return any(fnmatchcase(name, grant) for grant in session.token.grants)

    def join(self, session: Session, params: Any) -> dict[str, Any]:
        room = params.room
        if not self.rooms.exists(room):
            members = self.rooms.create(room, session, owner=session.client_id)
            return self._room(room, members)
        before = self.rooms.members(room)
        if session in before:
            return self._room(room, before)
        if not self.may_enter(session, room):
            raise RpcError(ErrorCode.FORBIDDEN, f"room {room!r}: not invited")
        members = self.rooms.join(room, session)
        self._presence(room, session.client_id, "joined", members - {session})
        return self._room(room, members)

    def leave(self, session: Session, params: Any) -> dict[str, Any]:
        if session not in self.rooms.members(params.room):
            # Not an empty answer: that would show who is in a room one never joined.
            raise RpcError(ErrorCode.FORBIDDEN, f"room {params.room!r}: not a member")
        members = self.rooms.leave(params.room, session)
        self._presence(params.room, session.client_id, "left", members)
        return self._room(params.room, members)

    def members(self, session: Session, params: Any) -> dict[str, Any]:
        members = self.rooms.members(params.room)
        if session not in members and not self.may_enter(session, params.room):
            raise RpcError(ErrorCode.FORBIDDEN, f"room {params.room!r}: not a member and not invited")
        return self._room(params.room, members)

    def invite(self, session: Session, params: Any) -> dict[str, Any]:
        members = self.rooms.members(params.room)
        if session not in members:
            raise RpcError(ErrorCode.FORBIDDEN, f"join room {params.room!r} before inviting to it")
        invited = self.rooms.invited(params.room)
        if params.client in invited:  # no second room.invited: invitations are not a megaphone
            return self._room(params.room, members)
        if len(invited) >= self._max_invitations:
            raise RpcError(
                ErrorCode.OVERLOADED,
                f"room {params.room!r} has {len(invited)} invitations; the owner removes some first",
            )
        self.rooms.invite(params.room, params.client)
        notice = {
            "jsonrpc": "2.0",
            "method": "room.invited",
            "params": {"room": params.room, "by": session.client_id},
        }
        invitee = self._clients.get(params.client)
        if invitee is not None:
            if invitee not in members:
                invitee.send(notice)
        elif self.elsewhere is not None and all(m.client_id != params.client for m in members):
            self.elsewhere(params.client, notice)
        return self._room(params.room, members)

    def remove(self, session: Session, params: Any) -> dict[str, Any]:
        room = params.room
        if not self.rooms.exists(room) or self.rooms.owner(room) != session.client_id:
            raise RpcError(ErrorCode.FORBIDDEN, f"room {room!r}: only its owner may remove members")
        if params.member == session.client_id:
            raise RpcError(ErrorCode.INVALID_PARAMS, "the owner leaves with bus.room.leave")
        self.rooms.uninvite(room, params.member)
        members = self.rooms.members(room)
        removed = next((m for m in members if m.client_id == params.member), None)
        if removed is not None:
            # The removed member hears it too, so a client knows it is out.
            self._presence(room, params.member, "removed", set(members))
            members = self.rooms.leave(room, removed)
        return self._room(room, members)

    def send(self, session: Session, params: Any) -> dict[str, Any]:
        members = self.rooms.members(params.room)
        if session not in members:
            raise RpcError(ErrorCode.FORBIDDEN, f"join room {params.room!r} before sending to it")
        wire = {
            "jsonrpc": "2.0",
            "method": "room.message",
            "params": {"room": params.room, "sender": session.client_id, "data": params.data},
        }
        return {"delivered": self._fanout([m for m in members if m is not session], wire)}

    def _presence(self, room: str, who: str, change: str, members: set[Session]) -> None:
        wire = {
            "jsonrpc": "2.0",
            "method": "room.presence",
            "params": {"room": room, "member": who, "change": change},
        }
        self._fanout(list(members), wire)

    def _room(self, room: str, members: set[Session]) -> dict[str, Any]:
        return {
            "room": room,
            "members": sorted(m.client_id for m in members),
            "owner": self.rooms.owner(room),
            "invited": sorted(self.rooms.invited(room)),
        }

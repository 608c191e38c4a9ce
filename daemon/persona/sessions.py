"""The persona's side of sessions: joining a session's room when the registry adds it.

``persona.session.join`` (called by the registry after inviting this
persona, daemon/registry/serve_sessions.py) joins the bus room; from then
on the persona keeps the ``room.message`` notifications it receives there
(the session's insights, and whatever the people in the room send), at most
:data:`MAX_RECEIVED` per session, newest kept. ``persona.session.list``
shows them. When the registry closes the session it removes this persona
from the room (``room.presence`` ``removed``) and the persona forgets the
session: the transcript that lasts is the one the registry writes into the
brain's interactions log on close.

A room belongs to the connections in it: a lost connection takes the persona
out of its rooms. After a reconnect it enters each of them again if the room
is still there and still has its invitation (``bus.room.members`` answers
only then); a room the bus lost with a restart is not made again here (the
persona would own it), but by the registry, which then asks the persona to
join (daemon/registry/serve_sessions.py, ``restore``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from protocol import ErrorCode, Notification, RpcError
from protocol.commands import sessions as m

from ..brain import Brain
from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from .session_dir import SessionDir

log = logging.getLogger("personad.persona")

#: Room messages kept per session.
MAX_RECEIVED = 200


@dataclass
class Joined:
    session_id: str
    room: str
    topic: str
    joined_at: float
    received: deque[m.ReceivedMessage] = field(default_factory=lambda: deque(maxlen=MAX_RECEIVED))

    def model(self) -> m.PersonaSessionModel:
        return m.PersonaSessionModel(
            session_id=self.session_id,
            room=self.room,
            topic=self.topic,
            joined_at=self.joined_at,
            received=list(self.received),
        )


class PersonaSessions:
    """The sessions this persona is in, by room, fed by the client's notifications."""

    def __init__(self, client: BusClient) -> None:
        self.client = client
        self.by_room: dict[str, Joined] = {}

    async def rejoin(self) -> None:
        """Back into each session's room that is still there and still has our invitation."""
        for room, joined in list(self.by_room.items()):
            try:
                # Answered only to a member or an invitee, so never creates the room:
                # a room the bus lost is the registry's to make again.
                await self.client.call("bus.room.members", {"room": room})
                await self.client.call("bus.room.join", {"room": room})
                log.info("back in session %s (room %s)", joined.session_id, room)
            except RpcError as exc:
                if exc.code != ErrorCode.FORBIDDEN:
                    log.warning("session %s: room %s: %s", joined.session_id, room, exc.message)

    def on_notification(self, message: Notification) -> None:
        if message.from_ is not None:
            return  # room notifications come from the bus itself; a client cannot stamp that
        params = message.params if isinstance(message.params, dict) else {}
        joined = self.by_room.get(str(params.get("room")))
        if joined is None:
            return
        if message.method == "room.message":
            joined.received.append(
                m.ReceivedMessage(
                    sender=str(params.get("sender")), data=params.get("data"), received_at=time.time()
                )
            )
        elif (
            message.method == "room.presence"
            and params.get("change") == "removed"
            and params.get("member") == self.client.client_id
        ):
            del self.by_room[joined.room]
            log.info("left session %s (room %s)", joined.session_id, joined.room)

    async def join(self, p: m.PersonaSessionJoinParams, ctx: CallContext) -> m.PersonaSessionJoinResult:
        # FORBIDDEN from the bus (not invited) goes back to the caller as it is.
        room = await self.client.call("bus.room.join", {"room": p.room})
        if p.room not in self.by_room:
            self.by_room[p.room] = Joined(
                session_id=p.session_id, room=p.room, topic=p.topic, joined_at=time.time()
            )
        return m.PersonaSessionJoinResult(session_id=p.session_id, room=p.room, members=list(room["members"]))

    async def list_(self, p: m.PersonaSessionListParams, ctx: CallContext) -> m.PersonaSessionListResult:
        return m.PersonaSessionListResult(sessions=[j.model() for j in self.by_room.values()])


def register_sessions_commands(
    dispatcher: Dispatcher, client: BusClient, brain: Brain, session_dir: SessionDir
) -> None:
    """Register this group's methods on ``dispatcher``."""
    sessions = PersonaSessions(client)
    client.add_notification_listener(sessions.on_notification)
    client.add_reconnect_listener(sessions.rejoin)
    dispatcher.register("persona.session.join", sessions.join)
    dispatcher.register("persona.session.list", sessions.list_)

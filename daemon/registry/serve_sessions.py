"""session.* on cap:registry: sessions (a room with a topic), recommendations, insights.

A session is a closed bus room (``session-<hex>``) that the registry
creates, and so owns (daemon/bus/rooms.py). Participants are invited into
it: a persona by the registry, which then asks it to join
(``persona.session.join@persona:<id>``, daemon/persona/sessions.py); a
person by client id, who joins with ``bus.room.join``. Insights are kept in
the session and sent into the room (``bus.room.send``, members receive
``room.message``). Closing archives the transcript (ids, insight types,
relevance and content, bounded) into each participant persona's
interactions log, empties the room and forgets the session.

Sessions live in the registry's memory, like the room in the bus's: a
registry restart ends the open ones (the room's members stay until they
leave), and what must outlast a session is what close writes into the
personas' brains. A bus restart empties every room, and a lost connection
takes the registry out of its own: when its connection comes back,
``restore`` enters each session's room again (making it again, as its owner,
if the bus lost it), invites the participants again and asks each persona
to join again, retrying while the persona is still reconnecting itself.
Each session has a lock, so a close cannot interleave with an add or an
insight on the same session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from protocol import ErrorCode, RpcError
from protocol.commands import sessions as m
from protocol.profile import PersonaStatus

from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from .boundary import RegistryEnv, invalid, translate
from .sessions_score import REMOTE_DEADLINE_MS, ProfileCache, code_name, rank

log = logging.getLogger("personad.registry")

#: How long a persona has to join a room or log the transcript.
PERSONA_DEADLINE_MS = 5000
#: After a reconnect, how long a persona not back on the bus yet is asked again to rejoin.
REJOIN_FOR_S = 60.0
#: The transcript written into each persona's interactions log, as JSON, at most this many bytes
#: (the brain refuses a ``learned`` object over 16 KiB).
TRANSCRIPT_BUDGET = 14 * 1024
#: Characters of one insight's content kept in the archived transcript.
TRANSCRIPT_CONTENT_CHARS = 500


@dataclass
class Session:
    id: str
    topic: str
    room: str
    context: m.SessionContext
    created_at: float
    created_by: str
    participants: dict[str, m.ParticipantModel] = field(default_factory=dict)
    insights: list[m.InsightModel] = field(default_factory=list)
    status: Literal["active", "closed"] = "active"
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def model(self) -> m.SessionModel:
        return m.SessionModel(
            id=self.id,
            topic=self.topic,
            room=self.room,
            context=self.context,
            status=self.status,
            created_at=self.created_at,
            created_by=self.created_by,
            participants=list(self.participants.values()),
            insights=len(self.insights),
        )

    def personas(self) -> list[str]:
        return [p.persona_id for p in self.participants.values() if p.persona_id is not None]


def transcript(session: Session) -> dict[str, Any]:
    """What close archives: ids, the participants and the insights, most relevant first, within budget."""
    record: dict[str, Any] = {
        "session_id": session.id,
        "topic": session.topic,
        "participants": sorted(session.participants),
        "insights_total": len(session.insights),
        "insights": [],
    }
    size = len(json.dumps(record))
    for insight in sorted(session.insights, key=lambda i: (-i.relevance_score, i.id)):
        entry = {
            "id": insight.id,
            "from": insight.persona_id,
            "type": insight.insight_type,
            "relevance": insight.relevance_score,
            "content": insight.content[:TRANSCRIPT_CONTENT_CHARS],
        }
        cost = len(json.dumps(entry)) + 2
        if size + cost > TRANSCRIPT_BUDGET:
            break  # the most relevant ones are in; insights_total says how many there were
        record["insights"].append(entry)
        size += cost
    return record


class Sessions:
    """The open sessions and the handlers over them."""

    def __init__(self, env: RegistryEnv) -> None:
        self.env = env
        self.active: dict[str, Session] = {}
        self.profiles = ProfileCache()

    def get(self, session_id: str) -> Session:
        session = self.active.get(session_id)
        if session is None:
            raise invalid("session_id", f"no active session {session_id!r}")
        return session

    async def create(self, p: m.SessionCreateParams, ctx: CallContext) -> m.SessionResult:
        if len(self.active) >= m.MAX_ACTIVE_SESSIONS:
            raise RpcError(
                ErrorCode.OVERLOADED,
                f"{len(self.active)} sessions are open; close one first",
            )
        me = ctx.client.client_id
        for _ in range(3):
            session_id = f"s-{secrets.token_hex(6)}"
            room = f"session-{session_id[2:]}"
            joined = await ctx.client.call("bus.room.join", {"room": room})
            if joined["owner"] == me:
                break
            # Someone made a room by that name first: it is theirs, not a session's.
            await ctx.client.call("bus.room.leave", {"room": room})
        else:
            raise RpcError(ErrorCode.INTERNAL_ERROR, "could not make a room of our own for the session")
        session = Session(
            id=session_id,
            topic=p.topic,
            room=room,
            context=p.context or m.SessionContext(),
            created_at=time.time(),
            created_by=ctx.caller or "unknown",
        )
        self.active[session_id] = session
        log.info("session %s created by %s", session_id, session.created_by)
        return m.SessionResult(session=session.model())

    async def status(self, p: m.SessionStatusParams, ctx: CallContext) -> m.SessionStatusResult:
        chosen = [self.get(p.session_id)] if p.session_id is not None else list(self.active.values())
        chosen.sort(key=lambda s: (s.created_at, s.id))
        return m.SessionStatusResult(
            sessions=[s.model() for s in chosen], insights_shared=sum(len(s.insights) for s in chosen)
        )

    async def recommendations(
        self, p: m.SessionRecommendationsParams, ctx: CallContext
    ) -> m.SessionRecommendationsResult:
        personas = await self.profiles.active(self.env.registry)
        listed = await ctx.client.call("bus.clients", {"kind": "persona"})
        online = {c["id"].split(":", 1)[1] for c in listed["clients"]}
        client = ctx.client

        async def call(method: str, params: dict[str, Any], to: str) -> Any:
            return await client.call(method, params, to=to, deadline_ms=REMOTE_DEADLINE_MS)

        ranked = await rank(
            personas,
            topic=p.topic,
            flags=(p.context or m.SessionContext()).flags(),
            online=online,
            call=call,
            limit=p.limit,
        )
        return m.SessionRecommendationsResult(topic=p.topic, considered=len(personas), recommendations=ranked)

    async def participants_add(self, p: m.SessionParticipantsAddParams, ctx: CallContext) -> m.SessionResult:
        session = self.get(p.session_id)
        async with session.lock:
            self._still_active(session)
            profile = await self.env.registry.get(p.persona_id)
            if profile.status is not PersonaStatus.ACTIVE:
                raise invalid("persona_id", f"persona {p.persona_id!r} is {profile.status.value}, not active")
            member = f"persona:{p.persona_id}"
            new = [c for c in (member, p.user_id) if c is not None and c not in session.participants]
            if len(session.participants) + len(new) > m.MAX_PARTICIPANTS:
                raise RpcError(
                    ErrorCode.OVERLOADED, f"session {session.id} has {m.MAX_PARTICIPANTS} participants"
                )
            client = ctx.client
            try:
                for who in new:
                    await in_room(client, "bus.room.invite", {"room": session.room, "client": who})
                await self._join(client, session, p.persona_id)
            except RpcError:
                # Nothing changes: the invitations made for this call are withdrawn.
                for who in new:
                    await _quietly(client, "bus.room.remove", {"room": session.room, "member": who})
                raise
            now = time.time()
            for who in new:
                persona_id = p.persona_id if who == member else None
                session.participants[who] = m.ParticipantModel(
                    client_id=who, persona_id=persona_id, added_at=now
                )
            return m.SessionResult(session=session.model())

    async def restore(self, client: BusClient) -> None:
        """After a reconnect: back into every session's room, with its participants."""
        rejoins = []
        for session in list(self.active.values()):
            async with session.lock:
                if session.status != "active" or session.id not in self.active:
                    continue
                try:
                    room = await client.call("bus.room.join", {"room": session.room})
                except RpcError as exc:
                    log.warning("session %s: cannot enter room %s again: %s", session.id, session.room,
                                exc.message)
                    continue
                if room["owner"] != client.client_id:
                    # Someone made a room by that name while it was gone: theirs, not the session's.
                    log.error("session %s: room %s is now %s's; the session has no room", session.id,
                              session.room, room["owner"])
                    await _quietly(client, "bus.room.leave", {"room": session.room})
                    continue
                for who in session.participants:
                    await _quietly(client, "bus.room.invite", {"room": session.room, "client": who})
            rejoins += [self._rejoin(client, session, pid) for pid in session.personas()]
        await asyncio.gather(*rejoins)

    async def _rejoin(self, client: BusClient, session: Session, persona_id: str) -> None:
        """Ask a persona into the room again, for a while if it is not back on the bus yet."""
        give_up = time.monotonic() + REJOIN_FOR_S
        delay = 0.2
        while session.id in self.active:
            try:
                await self._join(client, session, persona_id)
                return
            except RpcError as exc:
                if exc.code != ErrorCode.TARGET_OFFLINE or time.monotonic() > give_up:
                    log.warning("%s", exc.message)
                    return
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def _join(self, client: BusClient, session: Session, persona_id: str) -> None:
        """Ask the invited persona to join the room; its failure names ``persona_id``."""
        try:
            await client.call(
                "persona.session.join",
                {"session_id": session.id, "room": session.room, "topic": session.topic},
                to=f"persona:{persona_id}",
                deadline_ms=PERSONA_DEADLINE_MS,
            )
        except RpcError as exc:
            raise RpcError(
                exc.code,
                f"persona {persona_id!r} could not join session {session.id}: {exc.message}",
                {"field": "persona_id"},
            ) from None

    async def insight(self, p: m.SessionInsightParams, ctx: CallContext) -> m.SessionInsightResult:
        session = self.get(p.session_id)
        caller = ctx.caller or ""
        if caller.startswith("persona:") and caller != f"persona:{p.persona_id}":
            raise RpcError(
                ErrorCode.FORBIDDEN, f"{caller} may share insights only as itself, not as {p.persona_id}"
            )
        async with session.lock:
            self._still_active(session)
            if p.persona_id not in session.personas():
                raise invalid("persona_id", f"{p.persona_id!r} is not a participant of session {session.id}")
            if len(session.insights) >= m.MAX_INSIGHTS:
                raise RpcError(ErrorCode.OVERLOADED, f"session {session.id} holds {m.MAX_INSIGHTS} insights")
            insight = m.InsightModel(
                id=len(session.insights) + 1,
                persona_id=p.persona_id,
                insight_type=p.insight_type,
                content=p.content,
                relevance_score=p.relevance_score,
                shared_at=time.time(),
                shared_by=caller or "unknown",
            )
            # Stored first: it belongs to the transcript even if the room cannot be reached now.
            session.insights.append(insight)
            data = {"type": "session.insight", "session_id": session.id, "insight": insight.model_dump()}
            delivered = await _send(ctx.client, session.room, data)
            return m.SessionInsightResult(insight=insight, delivered=delivered)

    async def close(self, p: m.SessionCloseParams, ctx: CallContext) -> m.SessionCloseResult:
        session = self.get(p.session_id)
        async with session.lock:
            self._still_active(session)
            session.status = "closed"
            del self.active[session.id]
            learned = transcript(session)
            outcome = (
                f"session on {session.topic!r} closed: {len(session.insights)} insight(s) "
                f"among {len(session.participants)} participant(s)"
            )
            archived = await asyncio.gather(
                *(self._archive(ctx.client, session, pid, outcome, learned) for pid in session.personas())
            )
            await self._empty_room(ctx.client, session)
            log.info("session %s closed by %s", session.id, ctx.caller)
            return m.SessionCloseResult(session=session.model(), archived=list(archived))

    def _still_active(self, session: Session) -> None:
        # Another call closed it while this one waited for the lock.
        if session.status != "active":
            raise invalid("session_id", f"session {session.id} is closed")

    async def _archive(
        self, client: BusClient, session: Session, persona_id: str, outcome: str, learned: dict[str, Any]
    ) -> m.ArchiveOutcome:
        try:
            answer = await client.call(
                "interactions.log",
                {
                    "with_persona": f"session:{session.id}",
                    "room_id": session.room,
                    "outcome": outcome,
                    "learned": learned,
                    "subject": f"session:{session.id}",
                },
                to=f"persona:{persona_id}",
                deadline_ms=PERSONA_DEADLINE_MS,
            )
        except RpcError as exc:
            log.warning("session %s: not archived for %s: %s", session.id, persona_id, exc.message)
            return m.ArchiveOutcome(persona_id=persona_id, error=f"{code_name(exc.code)}: {exc.message}")
        return m.ArchiveOutcome(persona_id=persona_id, interaction_id=int(answer["id"]))

    async def _empty_room(self, client: BusClient, session: Session) -> None:
        """Take everyone out (they get room.presence ``removed``), withdraw invitations, leave."""
        try:
            room = await in_room(client, "bus.room.members", {"room": session.room})
        except RpcError as exc:
            log.warning("session %s: room %s: %s", session.id, session.room, exc.message)
            return
        me = client.client_id
        for who in sorted(set(room["members"]) | set(room["invited"])):
            if who != me:
                await _quietly(client, "bus.room.remove", {"room": session.room, "member": who})
        if me in room["members"]:  # a reconnect may have taken us out already
            await _quietly(client, "bus.room.leave", {"room": session.room})


async def in_room(client: BusClient, method: str, params: dict[str, Any]) -> Any:
    """A ``bus.room.*`` call as a member: rejoin first if the bus no longer counts us in.

    A reconnect takes the registry out of its rooms; the room lives on while
    others are in it, and its owner (still ``registry:main``) may re-enter.
    """
    try:
        return await client.call(method, params)
    except RpcError as exc:
        if exc.code != ErrorCode.FORBIDDEN:
            raise
    await client.call("bus.room.join", {"room": params["room"]})
    return await client.call(method, params)


async def _send(client: BusClient, room: str, data: dict[str, Any]) -> int:
    """Send into the room; 0 delivered (logged) if it cannot be reached now."""
    try:
        result = await in_room(client, "bus.room.send", {"room": room, "data": data})
    except RpcError as exc:
        log.warning("room %s: insight not sent: %s", room, exc.message)
        return 0
    return int(result["delivered"])


async def _quietly(client: BusClient, method: str, params: dict[str, Any]) -> None:
    try:
        await client.call(method, params)
    except RpcError as exc:
        log.warning("%s %s: %s", method, params.get("room"), exc.message)


def register(dispatcher: Dispatcher, env: RegistryEnv) -> None:
    """Register this group's methods on ``dispatcher``."""
    sessions = Sessions(env)
    env.on_reconnect.append(sessions.restore)
    for method, handler in (
        ("session.create", sessions.create),
        ("session.status", sessions.status),
        ("session.recommendations", sessions.recommendations),
        ("session.participants.add", sessions.participants_add),
        ("session.insight", sessions.insight),
        ("session.close", sessions.close),
    ):
        dispatcher.register(method, translate(handler))

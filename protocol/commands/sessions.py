"""session.* on cap:registry, and the persona's side of a session: params and results.

A session is a closed bus room with a topic. The registry creates the room
and owns it, invites the participants (personas, which then join it
themselves through ``persona.session.join``, and people, by client id),
broadcasts insights into it with ``bus.room.send`` and, on close, archives
the transcript into each participant persona's interactions log.
docs/sessions.md has the recommendation score and every part's formula.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from ..errors import ErrorCode
from ..profile import PERSONA_ID_PATTERN
from .bus import ClientId, Room
from .personas import CONTEXT_FLAG_EFFECTS, ContextFlags
from .registry import StrictModel, StrictParams, register

__all__ = [
    "INSIGHT_TYPE_PATTERN",
    "MAX_ACTIVE_SESSIONS",
    "MAX_INSIGHTS",
    "MAX_INSIGHT_CHARS",
    "MAX_PARTICIPANTS",
    "MAX_RECOMMENDATIONS",
    "SESSION_ID_PATTERN",
    "ArchiveOutcome",
    "InsightModel",
    "ParticipantModel",
    "PersonaSessionJoinParams",
    "PersonaSessionJoinResult",
    "PersonaSessionListParams",
    "PersonaSessionListResult",
    "PersonaSessionModel",
    "ReceivedMessage",
    "Recommendation",
    "ScorePart",
    "SessionCloseParams",
    "SessionCloseResult",
    "SessionContext",
    "SessionCreateParams",
    "SessionInsightParams",
    "SessionInsightResult",
    "SessionModel",
    "SessionParticipantsAddParams",
    "SessionRecommendationsParams",
    "SessionRecommendationsResult",
    "SessionResult",
    "SessionStatusParams",
    "SessionStatusResult",
]

#: Sessions open at once; one more is OVERLOADED until one closes.
MAX_ACTIVE_SESSIONS = 256
#: Personas plus people in one session (the bus room's invitation list is bounded too).
MAX_PARTICIPANTS = 32
#: Insights kept per session; the transcript is archived whole on close.
MAX_INSIGHTS = 1000
MAX_INSIGHT_CHARS = 4000
MAX_RECOMMENDATIONS = 50

SESSION_ID_PATTERN = r"^s-[0-9a-f]{12}$"
INSIGHT_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"

SessionId = Annotated[str, Field(pattern=SESSION_ID_PATTERN, description="the session's id, s-<12 hex>")]
PersonaId = Annotated[str, Field(pattern=PERSONA_ID_PATTERN)]
Topic = Annotated[str, Field(min_length=1, max_length=200)]

_ERR_UNKNOWN_SESSION = (ErrorCode.INVALID_PARAMS, "no active session by that id (data.field: session_id)")


def _flag(name: str) -> bool:
    traits = ", ".join(t for t, d in CONTEXT_FLAG_EFFECTS[name].items() if d > 0) or "none"
    lowered = ", ".join(t for t, d in CONTEXT_FLAG_EFFECTS[name].items() if d < 0)
    what = f"favours {traits}" + (f", disfavours {lowered}" if lowered else "")
    flag: bool = Field(False, description=f"the session needs it: {what} in recommendations")
    return flag


class SessionContext(ContextFlags):
    """What the session needs: flags with the trait table of persona.generate (CONTEXT_FLAG_EFFECTS)."""

    requires_precision: bool = _flag("requires_precision")
    requires_creativity: bool = _flag("requires_creativity")
    requires_empathy: bool = _flag("requires_empathy")
    requires_focus: bool = _flag("requires_focus")
    requires_assertiveness: bool = _flag("requires_assertiveness")
    requires_collaboration: bool = _flag("requires_collaboration")
    requires_adaptability: bool = _flag("requires_adaptability")
    requires_humor: bool = _flag("requires_humor")
    formal: bool = _flag("formal")
    notes: Annotated[str, Field(max_length=1000)] = Field("", description="free text about the session")


# -- session.create / session.status ----------------------------------------------


class SessionCreateParams(StrictParams):
    topic: Topic = Field(description="what the session is about")
    context: SessionContext | None = Field(None, description="what it needs; absent: no flags")


class ParticipantModel(StrictModel):
    client_id: ClientId = Field(description="persona:<id> for a persona, the person's client id otherwise")
    persona_id: str | None = Field(None, description="set for a persona")
    added_at: float = Field(description="when it was added, seconds since the epoch")


class SessionModel(StrictModel):
    id: str = Field(description="s-<12 hex>")
    topic: str = Field(description="what it is about")
    room: Room = Field(description="the bus room (bus.room.*); the registry owns it")
    context: SessionContext = Field(description="what it needs")
    status: Literal["active", "closed"] = Field(description="active until session.close")
    created_at: float = Field(description="seconds since the epoch")
    created_by: str = Field(description="the client id that created it")
    participants: list[ParticipantModel] = Field(description="personas and people, in the order added")
    insights: int = Field(description="how many insights were shared")


class SessionResult(StrictModel):
    session: SessionModel = Field(description="the session now")


register(
    "session.create",
    params=SessionCreateParams,
    result=SessionResult,
    summary="Open a session: a bus room owned by the registry, with a topic and context flags.",
    served_by="cap:registry",
    errors=(
        (ErrorCode.INVALID_PARAMS, "a bad topic or context, naming the field"),
        (ErrorCode.OVERLOADED, f"{MAX_ACTIVE_SESSIONS} sessions are open; close one first"),
    ),
)


class SessionStatusParams(StrictParams):
    session_id: SessionId | None = Field(None, description="one session; absent: every active one")


class SessionStatusResult(StrictModel):
    sessions: list[SessionModel] = Field(description="active sessions, oldest first")
    insights_shared: int = Field(description="insights shared in the sessions listed")


register(
    "session.status",
    params=SessionStatusParams,
    result=SessionStatusResult,
    summary="Active sessions with their participants and insight counts.",
    served_by="cap:registry",
    errors=(_ERR_UNKNOWN_SESSION,),
)

# -- session.recommendations -------------------------------------------------------


class SessionRecommendationsParams(StrictParams):
    topic: Topic = Field(description="what the session is about")
    context: SessionContext | None = Field(None, description="what it needs; absent: no flags")
    limit: Annotated[int, Field(ge=1, le=MAX_RECOMMENDATIONS)] = Field(5, description="how many to return")


class ScorePart(StrictModel):
    name: Literal["role_fit", "knowledge", "analytics", "traits", "availability"] = Field(
        description="which part (docs/sessions.md has its formula)"
    )
    value: float = Field(description="the part's value in [0, 1]")
    weight: float = Field(description="its weight; the weights sum to 1")
    contribution: float = Field(description="value times weight")
    explanation: str = Field(description="one line: where the value came from")


class Recommendation(StrictModel):
    persona_id: str = Field(description="the persona")
    name: str = Field(description="its name")
    role: str = Field(description="its role")
    online: bool = Field(description="whether it is on the bus now")
    score: float = Field(description="the sum of the parts' contributions, in [0, 1]")
    parts: list[ScorePart] = Field(
        description="role_fit, knowledge, analytics, traits, availability, in that order"
    )


class SessionRecommendationsResult(StrictModel):
    topic: str = Field(description="the topic ranked for")
    considered: int = Field(description="active personas scored")
    recommendations: list[Recommendation] = Field(description="best first; ties by persona id")


register(
    "session.recommendations",
    params=SessionRecommendationsParams,
    result=SessionRecommendationsResult,
    summary="Active personas ranked for a topic by role fit, knowledge, analytics, traits and "
    "availability, each part explained (docs/sessions.md).",
    served_by="cap:registry",
    errors=((ErrorCode.INVALID_PARAMS, "a bad topic, context or limit, naming the field"),),
)

# -- session.participants.add ------------------------------------------------------


class SessionParticipantsAddParams(StrictParams):
    session_id: SessionId
    persona_id: PersonaId = Field(description="an active persona; it is invited and joins the room")
    user_id: ClientId | None = Field(
        None, description="a person's client id to invite too (they join with bus.room.join)"
    )


register(
    "session.participants.add",
    params=SessionParticipantsAddParams,
    result=SessionResult,
    summary="Add a persona to a session (it joins the room) and optionally invite a person.",
    served_by="cap:registry",
    errors=(
        _ERR_UNKNOWN_SESSION,
        (ErrorCode.INVALID_PARAMS, "an unknown or inactive persona (data.field: persona_id)"),
        (ErrorCode.TARGET_OFFLINE, "the persona is not on the bus, so it cannot join"),
        (ErrorCode.OVERLOADED, f"the session has {MAX_PARTICIPANTS} participants"),
    ),
)

# -- session.insight -----------------------------------------------------------------


class SessionInsightParams(StrictParams):
    session_id: SessionId
    persona_id: PersonaId = Field(description="the participant persona the insight is from")
    insight_type: Annotated[str, Field(pattern=INSIGHT_TYPE_PATTERN)] = Field(
        description="a short lowercase kind, e.g. observation, risk, answer"
    )
    content: Annotated[str, Field(min_length=1, max_length=MAX_INSIGHT_CHARS)] = Field(
        description="the insight, in words"
    )
    relevance_score: Annotated[float, Field(ge=0, le=1)] = Field(description="in [0, 1]")


class InsightModel(StrictModel):
    id: int = Field(description="its number in the session, from 1")
    persona_id: str = Field(description="the participant persona it is from")
    insight_type: str = Field(description="its kind, as given")
    content: str = Field(description="the insight")
    relevance_score: float = Field(description="in [0, 1], as given")
    shared_at: float = Field(description="when the registry stored it, seconds since the epoch")
    shared_by: str = Field(description="the client id that sent it")


class SessionInsightResult(StrictModel):
    insight: InsightModel = Field(description="the insight as stored")
    delivered: int = Field(description="how many room members it was sent to")


register(
    "session.insight",
    params=SessionInsightParams,
    result=SessionInsightResult,
    summary="Share an insight in a session: stored and sent to the room's members (room.message).",
    served_by="cap:registry",
    errors=(
        _ERR_UNKNOWN_SESSION,
        (ErrorCode.INVALID_PARAMS, "persona_id is not a participant (data.field: persona_id)"),
        (ErrorCode.FORBIDDEN, "a persona may share insights only as itself"),
        (ErrorCode.OVERLOADED, f"the session holds {MAX_INSIGHTS} insights"),
    ),
)

# -- session.close -------------------------------------------------------------------


class SessionCloseParams(StrictParams):
    session_id: SessionId


class ArchiveOutcome(StrictModel):
    persona_id: str = Field(description="a participant persona")
    interaction_id: int | None = Field(None, description="the row in its interactions log")
    error: str | None = Field(None, description="why it could not be archived there")


class SessionCloseResult(StrictModel):
    session: SessionModel = Field(description="the session as it closed")
    archived: list[ArchiveOutcome] = Field(description="one per participant persona")


register(
    "session.close",
    params=SessionCloseParams,
    result=SessionCloseResult,
    summary="Close a session: the transcript goes into each participant persona's interactions "
    "log, the room is emptied, the session is archived.",
    served_by="cap:registry",
    errors=(_ERR_UNKNOWN_SESSION,),
)

# -- the persona's side ----------------------------------------------------------------


class PersonaSessionJoinParams(StrictParams):
    session_id: SessionId
    room: Room = Field(description="the session's bus room; the persona must have been invited")
    topic: Topic = Field(description="the session's topic")


class PersonaSessionJoinResult(StrictModel):
    session_id: str = Field(description="the session joined")
    room: str = Field(description="its room")
    members: list[str] = Field(description="the room's members now")


register(
    "persona.session.join",
    params=PersonaSessionJoinParams,
    result=PersonaSessionJoinResult,
    summary="Join a session's room (the registry asks, after inviting); the persona keeps what "
    "is said there until the session closes.",
    served_by="persona",
    errors=((ErrorCode.FORBIDDEN, "the persona was not invited into the room"),),
)


class ReceivedMessage(StrictModel):
    sender: str = Field(description="who sent it (registry:main for insights)")
    data: Any = Field(None, description="what was sent")
    received_at: float = Field(description="when it arrived, seconds since the epoch")


class PersonaSessionModel(StrictModel):
    session_id: str = Field(description="the session")
    room: str = Field(description="its room")
    topic: str = Field(description="its topic")
    joined_at: float = Field(description="when the persona joined, seconds since the epoch")
    received: list[ReceivedMessage] = Field(description="room messages received, oldest first (bounded)")


class PersonaSessionListResult(StrictModel):
    sessions: list[PersonaSessionModel] = Field(description="the sessions this persona is in")


class PersonaSessionListParams(StrictParams):
    """No params."""


register(
    "persona.session.list",
    params=PersonaSessionListParams,
    result=PersonaSessionListResult,
    summary="The sessions this persona is in and the room messages it received there.",
    served_by="persona",
)

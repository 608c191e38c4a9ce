"""Methods the bus serves itself (requests with no ``to``), and what it sends.

Topics are dotted names (``persona.patent-expert.notice``). A subscription
pattern is a topic, a prefix ending in ``.*`` (``persona.*`` matches
``persona.a`` and ``persona.a.b``), or ``*`` for everything.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from ..messages import CLIENT_ID_PATTERN, RequestId
from .registry import StrictModel, StrictParams, register

TOPIC_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
SUBSCRIPTION_PATTERN = r"^(\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?)$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
KIND_PATTERN = r"^[a-z][a-z0-9_]{0,15}$"
CAPABILITY_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"

Topic = Annotated[str, Field(pattern=TOPIC_PATTERN, max_length=256)]
Subscription = Annotated[str, Field(pattern=SUBSCRIPTION_PATTERN, max_length=256)]
Room = Annotated[str, Field(pattern=NAME_PATTERN)]
ClientId = Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]

# Kinds that are not client kinds, so that `to` stays unambiguous.
RESERVED_KINDS = frozenset({"cap", "room", "bus", "door"})


class Empty(StrictModel):
    """No members."""


# -- hello ----------------------------------------------------------------------


class HelloParams(StrictParams):
    """The hello's params: who you are, what you serve, and (for browsers) your token.

    Strict: ``"protocol": true`` or ``"1"`` is not the version 1. Like every
    optional params member, ``name``, ``token`` and ``agent`` may be null,
    meaning the same as absent.
    """

    protocol: Annotated[int, Field(ge=1, description="protocol version; this bus speaks 1")]
    kind: Annotated[
        str,
        Field(
            pattern=KIND_PATTERN,
            description="what you are: persona, cli, browser, service, … (reserved: cap, room, bus, door)",
        ),
    ]
    name: Annotated[
        str | None,
        Field(
            pattern=NAME_PATTERN,
            description="the second half of your client id <kind>:<name>; omitted: 8 random hex digits",
        ),
    ] = None
    capabilities: Annotated[
        list[Annotated[str, Field(pattern=CAPABILITY_PATTERN)]],
        Field(max_length=32, description="capabilities you serve, reachable as cap:<name>"),
    ] = []
    token: Annotated[
        str | None,
        Field(
            max_length=256,
            description="the bearer token, for clients that cannot send an Authorization header",
        ),
    ] = None
    agent: Annotated[str | None, Field(max_length=128, description="your software and version, for logs")] = (
        None
    )


class Limits(StrictModel):
    max_message_bytes: int
    max_inflight: int
    default_deadline_ms: int
    max_deadline_ms: int


class HelloResult(StrictModel):
    client_id: ClientId
    bus_version: str
    protocol: int
    limits: Limits
    #: Methods and targets the token may call, as ``method@target`` patterns.
    grants: list[str]


register(
    "hello",
    params=HelloParams,
    result=HelloResult,
    summary="The handshake; must be the first message on a connection.",
    served_by="bus",
)


# -- bus.* ----------------------------------------------------------------------


class PingResult(StrictModel):
    time: float = Field(description="the bus's clock, seconds since the epoch")


register("bus.ping", params=Empty, result=PingResult, summary="Liveness check.", served_by="bus")


class ClientsParams(StrictModel):
    kind: Annotated[str | None, Field(pattern=KIND_PATTERN)] = None
    capability: Annotated[str | None, Field(pattern=CAPABILITY_PATTERN)] = None


class ClientInfo(StrictModel):
    id: ClientId
    kind: str
    capabilities: list[str]
    connected_at: float
    inflight: int
    codec: str
    token: str | None = Field(default=None, description="the name of the token it connected with")
    node: str | None = Field(
        default=None, description="the bus node it is connected to; only on a federated bus (--nats)"
    )


class ClientsResult(StrictModel):
    clients: list[ClientInfo]
    missing_nodes: list[str] | None = Field(
        default=None,
        description="only on a federated bus: nodes that did not answer within 0.5 s; "
        "their clients are not listed",
    )


register(
    "bus.clients",
    params=ClientsParams,
    result=ClientsResult,
    summary="Connected clients, optionally filtered by kind or capability "
    "(on a federated bus, those of every node).",
    served_by="bus",
)


class SubscribeParams(StrictModel):
    topics: Annotated[list[Subscription], Field(min_length=1, max_length=64)]


class SubscriptionsResult(StrictModel):
    topics: list[str] = Field(description="all of this connection's subscriptions now")


register(
    "bus.subscribe",
    params=SubscribeParams,
    result=SubscriptionsResult,
    summary="Receive `event` notifications for topics matching these patterns.",
    served_by="bus",
)
register(
    "bus.unsubscribe",
    params=SubscribeParams,
    result=SubscriptionsResult,
    summary="Stop receiving events for these patterns.",
    served_by="bus",
)


class PublishParams(StrictModel):
    topic: Topic
    data: Any = None


class DeliveredResult(StrictModel):
    delivered: int = Field(description="how many connections it was sent to")


register(
    "bus.publish",
    params=PublishParams,
    result=DeliveredResult,
    summary="Publish an event; subscribers receive an `event` notification.",
    served_by="bus",
)


class EventParams(StrictModel):
    topic: Topic
    data: Any = None
    publisher: ClientId


register(
    "event",
    params=EventParams,
    result=Empty,
    summary="Sent by the bus to subscribers of a matching topic.",
    served_by="client",
    notification=True,
)


class RoomParams(StrictModel):
    room: Room


class RoomResult(StrictModel):
    room: Room
    members: list[ClientId]
    owner: ClientId | None = Field(default=None, description="who created the room; null: no such room")
    invited: list[ClientId] = Field(default=[], description="invited ids, joined or not")


register(
    "bus.room.join",
    params=RoomParams,
    result=RoomResult,
    summary="Join a room: the first join creates it (you own it); later joins need an invitation "
    "or a room:<name> grant. The other members get room.presence.",
    served_by="bus",
)
register(
    "bus.room.leave",
    params=RoomParams,
    result=RoomResult,
    summary="Leave a room (removed when empty); the other members get room.presence.",
    served_by="bus",
)
register(
    "bus.room.members",
    params=RoomParams,
    result=RoomResult,
    summary="The members of a room you are in, own, are invited to or hold a grant for.",
    served_by="bus",
)


class RoomInviteParams(StrictParams):
    room: Room
    client: Annotated[ClientId, Field(description="the client id to invite, e.g. persona:demo")]


register(
    "bus.room.invite",
    params=RoomInviteParams,
    result=RoomResult,
    summary="Members: let a client id join the room; it gets room.invited if connected.",
    served_by="bus",
)


class RoomRemoveParams(StrictParams):
    room: Room
    member: Annotated[ClientId, Field(description="the client id to remove (and uninvite)")]


register(
    "bus.room.remove",
    params=RoomRemoveParams,
    result=RoomResult,
    summary="Owner only: take a member out of the room and withdraw its invitation.",
    served_by="bus",
)


class RoomInvitedParams(StrictModel):
    room: Room
    by: ClientId


register(
    "room.invited",
    params=RoomInvitedParams,
    result=Empty,
    summary="Sent by the bus to a client invited into a room (bus.room.invite).",
    served_by="client",
    notification=True,
)


class RoomSendParams(StrictModel):
    room: Room
    data: Any = None


register(
    "bus.room.send",
    params=RoomSendParams,
    result=DeliveredResult,
    summary="Send to every other member of a room you are in (room.message).",
    served_by="bus",
)


class RoomMessageParams(StrictModel):
    room: Room
    sender: ClientId
    data: Any = None


register(
    "room.message",
    params=RoomMessageParams,
    result=Empty,
    summary="Sent by the bus to room members for bus.room.send.",
    served_by="client",
    notification=True,
)


class RoomPresenceParams(StrictModel):
    room: Room
    member: ClientId
    change: Literal["joined", "left", "removed"]


register(
    "room.presence",
    params=RoomPresenceParams,
    result=Empty,
    summary="Sent by the bus to room members when someone joins, leaves or is removed "
    "(the removed member gets it too).",
    served_by="client",
    notification=True,
)


class CancelParams(StrictModel):
    id: RequestId


register(
    "bus.cancel",
    params=CancelParams,
    result=Empty,
    summary="Caller to bus: cancel my request `id` (answered CANCELLED). "
    "Bus to target: stop working on request `id`; no answer is expected.",
    served_by="bus",
    notification=True,
)

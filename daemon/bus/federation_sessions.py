"""Sessions with no socket that stand for a client on another node.

The router routes between :class:`~daemon.bus.session.Session` objects and
knows nothing of NATS. Federation gives it two kinds of stand-in, both built
like the doors' :class:`~daemon.doors.session.DoorSession` (a session whose
frames go elsewhere than a socket):

* :class:`RemoteTarget`, on the caller's node: the ``to`` of a request whose
  target is held by another node (``persona:x``, or ``cap:x`` with no local
  provider). What the router sends it is published to the target's subject.
* :class:`RemoteCaller`, on the target's node: the caller of a request that
  came over NATS. What the router sends it (the answer, progress) is
  published to the reply subject the caller's node gave.

Neither enters the router's client table, so neither is listed, addressed
or swept; the federation keeps them and forgets them when their requests end.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from protocol import MSGPACK, ProtocolError

from ..tokens import TokenEntry
from .session import Session, SessionHost

if TYPE_CHECKING:
    from .federation import Federation


class _Remote(Session):
    """What both stand-ins share: no socket, never slow, never stalled."""

    __slots__ = ("federation",)

    def __init__(
        self, host: SessionHost, federation: Federation, client_id: str, token: TokenEntry | None
    ) -> None:
        # No socket: every Session method that touches ``ws`` is overridden.
        super().__init__(host, None, MSGPACK, token)  # type: ignore[arg-type]
        self.federation = federation
        self.client_id = client_id
        self.kind = "remote"

    def push(self, frame: bytes | str) -> bool:
        # A fan-out's frame, encoded once for every msgpack client.
        if self.closed:
            return False
        try:
            wire = self.codec.decode_data(frame, max_bytes=self.host.config.max_message_bytes)
        except ProtocolError:
            return False
        return self.send(wire)

    def writable(self) -> bool:
        return not self.closed

    def flush(self) -> None:  # published at once: nothing is queued here
        pass

    def abort(self, reason: str) -> None:
        self.closed = True

    def check_stall(self, now: float) -> None:  # NATS has its own slow-consumer handling
        pass


class RemoteTarget(_Remote):
    """A client id or capability served on another node, seen from the caller's node."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<RemoteTarget {self.client_id}>"

    def send(self, wire: dict[str, Any]) -> bool:
        return self.federation.to_target(self, wire)


class RemoteCaller(_Remote):
    """The caller of requests that came from another node, seen from the target's node.

    One per (reply prefix, caller id): the caller's node numbers its
    requests uniquely, so their ids never collide in ``outbound``.
    """

    __slots__ = ("reply_prefix",)

    def __init__(self, host: SessionHost, federation: Federation, client_id: str, reply_prefix: str) -> None:
        # The caller's node checked its token's grants before publishing;
        # this node trusts its peers in the cluster (docs/federation.md).
        token = TokenEntry(
            id="federation",
            name=f"federated via {reply_prefix}",
            role="federation",
            subject=client_id,
            grants=("*",),
            sha256="",
            created_at=time.time(),
        )
        super().__init__(host, federation, client_id, token)
        self.reply_prefix = reply_prefix

    def __repr__(self) -> str:
        return f"<RemoteCaller {self.client_id} via {self.reply_prefix}>"

    def send(self, wire: dict[str, Any]) -> bool:
        return self.federation.to_caller(self, wire)


class RoomMember(_Remote):
    """A member, connected to another node, of a room whose home is this node.

    Rooms live on one node, their home (the node where they were made;
    federation_rooms.py): a client elsewhere joins through a stand-in that
    carries its own token, so the room's rules (owner, invitations, room
    grants) judge it as they judge a local member. What the room sends it is
    published to its client id's subject, delivered by the node holding it.
    """

    __slots__ = ("origin",)

    def __init__(
        self, host: SessionHost, federation: Federation, client_id: str, origin: str, token: TokenEntry
    ) -> None:
        super().__init__(host, federation, client_id, token)
        self.origin = origin

    def __repr__(self) -> str:
        return f"<RoomMember {self.client_id} on {self.origin}>"

    def send(self, wire: dict[str, Any]) -> bool:
        return self.federation.to_member(self, wire)

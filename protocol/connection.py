"""The per-connection state machine, without I/O.

Rules (both roles):

1. A connection opens in AWAITING_HELLO (server) or START (client).
2. The client's first message is a ``hello`` request; the server accepts
   nothing else before it: any other message is a StateError
   (close code 1008). Authentication is decided by the I/O layer (it holds
   the token store); it reports the outcome with :meth:`Connection.hello_accepted`
   or :meth:`Connection.hello_rejected`.
3. In READY, every message type flows both ways.
4. CLOSING is entered when either side starts the close; in it, received
   messages are still decoded (late responses are useful) but nothing new may
   be sent except responses.
5. CLOSED is final.

The transitions are a table, :data:`TRANSITIONS`; tests drive it directly.
Like websockets' and h11's cores, this class never touches a socket: the glue
feeds it frames (:meth:`receive`) and writes what :meth:`send` returns.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from .codec import DEFAULT_MAX_MESSAGE_BYTES, Codec
from .errors import StateError
from .messages import Notification, Request, Response

__all__ = ["TRANSITIONS", "Connection", "Event", "Role", "State"]

HELLO = "hello"
#: The protocol version this package speaks; ``hello.params.protocol``.
PROTOCOL_VERSION = 1

AnyMessage = Request | Notification | Response


class Role(Enum):
    SERVER = "server"
    CLIENT = "client"


class State(Enum):
    START = "start"
    AWAITING_HELLO = "awaiting_hello"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"


class Event(Enum):
    SEND_HELLO = "send_hello"  # client sent its hello
    HELLO_ACCEPTED = "hello_accepted"  # server accepted / client got a result
    HELLO_REJECTED = "hello_rejected"  # server refused / client got an error
    CLOSE = "close"  # either side starts closing
    CONNECTION_LOST = "connection_lost"


#: (state, event) -> next state. A pair that is absent is a bug in the caller.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.START, Event.SEND_HELLO): State.AWAITING_HELLO,
    (State.START, Event.CLOSE): State.CLOSING,
    (State.AWAITING_HELLO, Event.HELLO_ACCEPTED): State.READY,
    (State.AWAITING_HELLO, Event.HELLO_REJECTED): State.CLOSING,
    (State.AWAITING_HELLO, Event.CLOSE): State.CLOSING,
    (State.READY, Event.CLOSE): State.CLOSING,
    (State.CLOSING, Event.CLOSE): State.CLOSING,
}
for _state in State:
    TRANSITIONS[(_state, Event.CONNECTION_LOST)] = State.CLOSED


class Connection:
    """One side of one connection: codec, limits and handshake state."""

    def __init__(
        self,
        role: Role,
        codec: Codec,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.role = role
        self.codec = codec
        self.max_message_bytes = max_message_bytes
        self.state = State.AWAITING_HELLO if role is Role.SERVER else State.START
        #: The id of the hello request, once one was sent/received.
        self.hello_id: int | str | None = None

    # State transitions

    def _fire(self, event: Event) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise StateError(f"{event.value} is not allowed in state {self.state.value}") from None

    def hello_accepted(self) -> None:
        """The handshake succeeded: the connection is READY."""
        self._fire(Event.HELLO_ACCEPTED)

    def hello_rejected(self) -> None:
        """The handshake failed: the connection is CLOSING."""
        self._fire(Event.HELLO_REJECTED)

    def close(self) -> None:
        """Start closing (idempotent while CLOSING)."""
        if self.state is not State.CLOSED:
            self._fire(Event.CLOSE)

    def connection_lost(self) -> None:
        self._fire(Event.CONNECTION_LOST)

    # Data in

    def receive(self, frame: bytes | str) -> AnyMessage:
        """Decode one frame and check it is allowed now. Raises ProtocolError."""
        if self.state is State.CLOSED:
            raise StateError("connection is closed")
        message = self.codec.decode(frame, max_bytes=self.max_message_bytes)
        if self.state is State.AWAITING_HELLO:
            if self.role is Role.SERVER:
                if not (isinstance(message, Request) and message.method == HELLO):
                    raise StateError("the first message must be a hello request")
                self.hello_id = message.id
            elif not (isinstance(message, Response) and message.id == self.hello_id):
                raise StateError("expected the answer to hello first")
        elif self.state is State.START:
            raise StateError("received a message before sending hello")
        return message

    # Data out

    def send(self, message: AnyMessage) -> bytes | str:
        """Encode one message, checking it may be sent now. Raises ProtocolError."""
        if self.state is State.START:
            if not (isinstance(message, Request) and message.method == HELLO):
                raise StateError("the first message must be a hello request")
            self.hello_id = message.id
            self._fire(Event.SEND_HELLO)
        elif self.state is State.AWAITING_HELLO:
            if not (
                self.role is Role.SERVER and isinstance(message, Response) and message.id == self.hello_id
            ):
                raise StateError("only the answer to hello may be sent before the handshake")
        elif self.state is State.CLOSING:
            if not isinstance(message, Response):
                raise StateError("only responses may be sent while closing")
        elif self.state is State.CLOSED:
            raise StateError("connection is closed")
        return self.codec.encode(message)

    def send_wire(self, data: dict[str, Any]) -> bytes | str:
        """Encode an already-built wire dict on a READY connection (the relay fast path).

        Skips pydantic construction: the caller built ``data`` from a message
        that was validated on the way in, so only the state needs checking.
        """
        if self.state is not State.READY and not (self.state is State.CLOSING and "method" not in data):
            raise StateError(f"cannot send in state {self.state.value}")
        return self.codec.encode_wire(data)

"""personad's wire protocol, without I/O.

Everything a client needs to speak to the bus, in any language: message
envelopes (:mod:`.messages`), codecs (:mod:`.codec`), the handshake state
machine (:mod:`.connection`), errors and codes (:mod:`.errors`), and the
command registry (:mod:`.commands`), exportable as JSON Schema (:mod:`.schema`).

This package imports no asyncio, websockets, aiosqlite or torch: it is the part
a second implementation ports, and it is tested without an event loop.
"""

from .codec import JSON, MSGPACK, SUBPROTOCOLS, Codec, codec_for
from .commands import REGISTRY, Command
from .connection import PROTOCOL_VERSION, Connection, Role, State
from .errors import (
    CloseCode,
    DecodeError,
    EncodeError,
    ErrorCode,
    FrameTooLarge,
    InvalidMessage,
    MalformedFrame,
    ProtocolError,
    RpcError,
    StateError,
)
from .messages import ErrorObject, Meta, Notification, Request, Response

__version__ = "0.1.0"

__all__ = [
    "JSON",
    "MSGPACK",
    "PROTOCOL_VERSION",
    "REGISTRY",
    "SUBPROTOCOLS",
    "CloseCode",
    "Codec",
    "Command",
    "Connection",
    "DecodeError",
    "EncodeError",
    "ErrorCode",
    "ErrorObject",
    "FrameTooLarge",
    "InvalidMessage",
    "MalformedFrame",
    "Meta",
    "Notification",
    "ProtocolError",
    "Request",
    "Response",
    "Role",
    "RpcError",
    "State",
    "StateError",
    "codec_for",
]

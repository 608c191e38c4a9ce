"""Errors of the protocol layer, and the codes that travel on the wire.

Exception tree (everything the protocol package raises on bad input)::

    ProtocolError                 base: the peer broke the protocol
    ├── DecodeError               a frame could not become a message
    │   ├── FrameTooLarge         over the negotiated size limit
    │   ├── MalformedFrame        not JSON / msgpack, too deep, not JSON-safe
    │   │   └── WrongFrameType    text on a msgpack connection, binary on JSON
    │   └── InvalidMessage        well-formed data, but not a valid envelope
    ├── EncodeError               *we* tried to send something unencodable
    └── StateError                a message not allowed in the connection's state

    RpcError                      not a ProtocolError: an application-level
                                  error answer (raised by handlers to reply
                                  with an error; raised by clients on one)

Each protocol error carries the WebSocket close code the I/O layer should use
when it gives up on the connection, so the glue never has to guess. Messages
are built from the structured fields; they never include peer data beyond a
short excerpt, since they may be logged.

Codes: JSON-RPC 2.0's reserved codes where they fit (§5.1), bus codes in
-32000..-32099, close codes from RFC 6455 §7.4.1 and the 4000-4999 private
range.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

__all__ = [
    "CloseCode",
    "DecodeError",
    "EncodeError",
    "ErrorCode",
    "FrameTooLarge",
    "InvalidMessage",
    "MalformedFrame",
    "ProtocolError",
    "RpcError",
    "StateError",
    "WrongFrameType",
]


class ErrorCode(IntEnum):
    """The ``error.code`` of a response."""

    # JSON-RPC 2.0 §5.1
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    # Bus codes (-32000..-32099)
    TARGET_OFFLINE = -32001
    TIMEOUT = -32002
    FORBIDDEN = -32003
    OVERLOADED = -32004
    CANCELLED = -32005
    UNAUTHENTICATED = -32006
    UNSUPPORTED_VERSION = -32007
    SHUTTING_DOWN = -32008
    CONNECTION_LOST = -32009

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    ErrorCode.PARSE_ERROR: "the message could not be parsed",
    ErrorCode.INVALID_REQUEST: "the message is not a valid request",
    ErrorCode.METHOD_NOT_FOUND: "the target does not serve this method",
    ErrorCode.INVALID_PARAMS: "params do not match the method's schema",
    ErrorCode.INTERNAL_ERROR: "the target failed while handling the request",
    ErrorCode.TARGET_OFFLINE: "no connected client matches the target",
    ErrorCode.TIMEOUT: "the request's deadline passed before an answer came",
    ErrorCode.FORBIDDEN: "the caller's token does not grant this method on this target",
    ErrorCode.OVERLOADED: "too many requests in flight; retry later",
    ErrorCode.CANCELLED: "the caller cancelled the request",
    ErrorCode.UNAUTHENTICATED: "no valid token was presented",
    ErrorCode.UNSUPPORTED_VERSION: "the peer speaks a protocol version we do not",
    ErrorCode.SHUTTING_DOWN: "the bus is shutting down",
    ErrorCode.CONNECTION_LOST: "the connection closed before the answer came",
}


class CloseCode(IntEnum):
    """WebSocket close codes the bus uses (RFC 6455 §7.4.1, then private)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    # Private range (4000-4999)
    UNAUTHENTICATED = 4001
    HELLO_TIMEOUT = 4002
    # 4003 is not used: a client that stops reading is dropped by aborting
    # the TCP connection (it would never read a close frame); it sees 1006.
    REPLACED = 4004
    BAD_HELLO = 4005
    TOKEN_REVOKED = 4006


class ProtocolError(Exception):
    """Raised when the peer breaks the protocol. Base of the tree above."""

    close_code: CloseCode = CloseCode.PROTOCOL_ERROR

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecodeError(ProtocolError):
    """Raised when a frame cannot be turned into a message."""

    close_code = CloseCode.INVALID_DATA


class FrameTooLarge(DecodeError):
    """Raised when a frame is larger than the connection's limit."""

    close_code = CloseCode.MESSAGE_TOO_BIG

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class MalformedFrame(DecodeError):
    """Raised when a frame is not valid data for the connection's codec."""


class WrongFrameType(MalformedFrame):
    """Raised when a text frame arrives on a msgpack connection, or binary on JSON."""

    close_code = CloseCode.UNSUPPORTED_DATA


class InvalidMessage(DecodeError):
    """Raised when data decodes but is not a valid message envelope.

    ``request_id`` is the id the peer sent, when one could be read, so the
    caller can answer JSON-RPC style with INVALID_REQUEST instead of closing.
    """

    def __init__(self, reason: str, *, request_id: int | str | None = None) -> None:
        super().__init__(reason)
        self.request_id = request_id


class EncodeError(ProtocolError):
    """Raised when a message we send cannot be encoded (our bug, not the peer's)."""

    close_code = CloseCode.INTERNAL_ERROR


class StateError(ProtocolError):
    """Raised when a message is not allowed in the connection's current state."""

    close_code = CloseCode.POLICY_VIOLATION


class RpcError(Exception):
    """Raised by a handler to answer with an error; raised by a client on one.

    The message is the human-readable ``error.message``; ``data`` is optional
    structured detail (for example pydantic's list of field errors).
    """

    def __init__(self, code: int, message: str | None = None, data: Any = None) -> None:
        if message is None:
            try:
                message = ErrorCode(code).description
            except ValueError:
                message = f"error {code}"
        super().__init__(f"error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    @property
    def reason(self) -> str | None:
        """``data.reason`` when the error carries one (``disk_full``, ``busy``, ``reply_invalid``)."""
        reason = self.data.get("reason") if isinstance(self.data, dict) else None
        return reason if isinstance(reason, str) else None

    @property
    def retry_after_ms(self) -> float | None:
        """``data.retry_after_ms`` when the error carries one (OVERLOADED does: how long to wait
        before asking again), else None."""
        after = self.data.get("retry_after_ms") if isinstance(self.data, dict) else None
        if isinstance(after, bool) or not isinstance(after, int | float) or after < 0:
            return None
        return after

    @property
    def name(self) -> str:
        """The symbolic name for known codes (``TARGET_OFFLINE``), else the number."""
        try:
            return ErrorCode(self.code).name
        except ValueError:
            return str(self.code)

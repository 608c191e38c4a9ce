"""Message envelopes: JSON-RPC 2.0 in shape, with routing added.

Three message types travel on a connection (JSON-RPC 2.0 §4, §4.1, §5):

* :class:`Request` — has ``id`` and ``method``; expects exactly one
  :class:`Response` with the same ``id``;
* :class:`Notification` — ``method`` without ``id``; no response. Events,
  streamed progress and cancellation are notifications;
* :class:`Response` — ``id`` and exactly one of ``result`` / ``error``.

Routing members added to JSON-RPC:

* ``to`` — the target: a client id (``persona:patent-expert``), a capability
  (``cap:browser``), a room (``room:standup``, notifications only), or absent
  for the bus itself;
* ``from`` — stamped by the bus on everything it forwards: the sender's
  client id. A value sent by a client is ignored and overwritten;
* ``meta`` — ``deadline_ms`` (relative, so clocks need not agree), ``trace``
  (an opaque id carried end to end), and on notifications ``reply_to``: the id
  of the request this notification streams progress for.

The union is discriminated by which members are present (there is no type
tag in JSON-RPC): ``method`` + ``id`` is a request, ``method`` alone a
notification, ``result``/``error`` a response.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    model_validator,
)

__all__ = [
    "CLIENT_ID_PATTERN",
    "METHOD_PATTERN",
    "ErrorObject",
    "Message",
    "Meta",
    "Notification",
    "Request",
    "RequestId",
    "Response",
    "message_adapter",
]

#: ``kind:name``, e.g. ``persona:patent-expert``, ``cap:browser``, ``room:standup``.
CLIENT_ID_PATTERN = r"^[a-z][a-z0-9_]{0,15}:[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: Dotted lowercase names, optionally ``$/``-prefixed for protocol internals.
METHOD_PATTERN = r"^(\$/)?[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"

#: JSON-RPC allows strings and numbers (we refuse fractions: §4 says SHOULD NOT).
RequestId = Annotated[int, Field(ge=-(2**53), le=2**53)] | Annotated[str, Field(max_length=128)]
Target = Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]
Method = Annotated[str, Field(pattern=METHOD_PATTERN, max_length=128)]
Params = dict[str, Any] | list[Any] | None


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Meta(_Envelope):
    """Routing metadata; every member optional."""

    #: Milliseconds the sender is willing to wait, counted from when the bus receives it.
    deadline_ms: Annotated[int, Field(ge=1, le=86_400_000)] | None = None
    #: An opaque id carried unchanged end to end, for logs.
    trace: Annotated[str, Field(max_length=64)] | None = None
    #: On a notification: the id of the request whose progress it streams.
    reply_to: RequestId | None = None


class Request(_Envelope):
    """A call that expects exactly one response with the same ``id``."""

    jsonrpc: Literal["2.0"] = "2.0"
    id: RequestId
    method: Method
    params: Params = None
    to: Target | None = None
    from_: Target | None = Field(default=None, alias="from")
    meta: Meta | None = None


class Notification(_Envelope):
    """A message that expects no response: events, progress, cancellation."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Method
    params: Params = None
    to: Target | None = None
    from_: Target | None = Field(default=None, alias="from")
    meta: Meta | None = None


class ErrorObject(_Envelope):
    """JSON-RPC 2.0 §5.1 error object."""

    code: int
    message: Annotated[str, Field(max_length=4096)]
    data: Any = None


class Response(_Envelope):
    """The answer to a request: exactly one of ``result`` or ``error``.

    ``id`` is null only when answering a request whose id could not be read
    (JSON-RPC 2.0 §5).
    """

    jsonrpc: Literal["2.0"] = "2.0"
    id: RequestId | None
    result: Any = None
    error: ErrorObject | None = None
    from_: Target | None = Field(default=None, alias="from")
    meta: Meta | None = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one_outcome(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("result" in data) == ("error" in data):
            raise ValueError("a response has exactly one of 'result' and 'error'")
        return data

    @property
    def ok(self) -> bool:
        return self.error is None


def _kind(data: Any) -> str | None:
    if isinstance(data, dict):
        if "method" in data:
            return "request" if "id" in data else "notification"
        if "result" in data or "error" in data:
            return "response"
        return None
    if isinstance(data, Request | Notification | Response):
        return type(data).__name__.lower()
    return None


Message = Annotated[
    Annotated[Request, Tag("request")]
    | Annotated[Notification, Tag("notification")]
    | Annotated[Response, Tag("response")],
    Discriminator(
        _kind,
        custom_error_type="invalid_envelope",
        custom_error_message="not a request, notification or response (needs 'method', or 'result'/'error')",
    ),
]

#: Validates a decoded dict into one of the three message types.
message_adapter: TypeAdapter[Request | Notification | Response] = TypeAdapter(Message)


def to_wire(message: Request | Notification | Response) -> dict[str, Any]:
    """The message as plain data for a codec, omitting absent optional members.

    Built by hand rather than ``model_dump(exclude_none=True)`` because a
    response's ``result`` may legitimately be null and must still be sent.
    """
    out: dict[str, Any] = {"jsonrpc": "2.0"}
    if isinstance(message, Response):
        out["id"] = message.id
        if message.error is None:
            out["result"] = message.result
        else:
            err: dict[str, Any] = {"code": message.error.code, "message": message.error.message}
            if message.error.data is not None:
                err["data"] = message.error.data
            out["error"] = err
    else:
        if isinstance(message, Request):
            out["id"] = message.id
        out["method"] = message.method
        if message.params is not None:
            out["params"] = message.params
        if message.to is not None:
            out["to"] = message.to
    if message.from_ is not None:
        out["from"] = message.from_
    if message.meta is not None:
        meta = message.meta.model_dump(exclude_none=True)
        if meta:
            out["meta"] = meta
    return out

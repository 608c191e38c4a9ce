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

Types are strict (pydantic strict mode): nothing is coerced. ``"id": true``
is not the id 1 (in Python ``bool`` is an ``int``, so the lax default would
take it), ``"deadline_ms": "700"`` is not 700, a ``$bytes`` value is not a
string. An optional member is either present with a value of its type or
absent: an explicit ``null`` is refused wherever docs/protocol.md says
"absent" (``to``, ``from``, ``meta`` and its members, ``params`` — JSON-RPC
2.0 §4.2 says params "MAY be omitted", not null — and ``error``). Only
``result`` (any value, null included), ``error.data`` and a response's ``id``
(JSON-RPC 2.0 §5) may be null. ``protocol/schema.py`` publishes the same
rules as JSON Schema, and tests/protocol/test_schema_agreement.py holds the
two to each other.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    Tag,
    TypeAdapter,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

__all__ = [
    "CLIENT_ID_PATTERN",
    "METHOD_PATTERN",
    "NOT_NULL",
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

#: Request ids travel through doubles in some clients (JavaScript): ±2**53.
MAX_SAFE_ID = 2**53
MAX_ID_CHARS = 128


class _OneError:
    """Report any failure of the annotated type as one error with one message.

    A union (int or string, object or array) otherwise reports one error per
    branch, which reads badly in an INVALID_REQUEST message. The check itself
    stays in pydantic-core (no Python call per message on the bus's hot path).
    """

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.custom_error_schema(
            handler(source), custom_error_type=self.kind, custom_error_message=self.message
        )


#: JSON-RPC allows strings and numbers (we refuse fractions: §4 says SHOULD NOT).
#: Strict even inside a lax model (``bus.cancel`` params use it): ``bool`` is
#: an ``int`` in Python, and ``True`` is not the id 1.
RequestId = Annotated[
    Annotated[int, Strict(), Field(ge=-MAX_SAFE_ID, le=MAX_SAFE_ID)]
    | Annotated[str, Strict(), Field(max_length=MAX_ID_CHARS)],
    _OneError(
        "request_id", f"must be an integer within ±2^53 or a string of at most {MAX_ID_CHARS} characters"
    ),
]
Target = Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]
Method = Annotated[str, Field(pattern=METHOD_PATTERN, max_length=128)]
#: JSON-RPC 2.0 §4.2: a structured value, or omitted (never null).
Params = Annotated[
    dict[str, Any] | list[Any],
    _OneError("params_type", "must be an object or an array (or absent)"),
]


def _refuse_null(value: Any) -> Any:
    # Runs only when the member is present (defaults are not validated), so
    # absent stays None and an explicit null is an error.
    if value is None:
        raise PydanticCustomError("not_null", "must be absent rather than null")
    return value


class _NotNull:
    """``Annotated[X | None, NOT_NULL] = None``: optional, but never null on the wire.

    In Python the member is None when absent; on the wire an explicit null
    is refused, and the JSON Schema shows X alone (no null branch).
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(_refuse_null, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        value = handler(schema)
        if "anyOf" not in value:
            return value
        branches = [b for b in value["anyOf"] if b != {"type": "null"}]
        rest = {k: v for k, v in value.items() if k != "anyOf"}
        return {**branches[0], **rest} if len(branches) == 1 else {"anyOf": branches, **rest}


NOT_NULL = _NotNull()


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


class Meta(_Envelope):
    """Routing metadata; every member optional."""

    deadline_ms: Annotated[Annotated[int, Field(ge=1, le=86_400_000)] | None, NOT_NULL] = Field(
        default=None,
        description="milliseconds the sender is willing to wait, counted from when the bus receives it",
    )
    trace: Annotated[Annotated[str, Field(max_length=64)] | None, NOT_NULL] = Field(
        default=None, description="an opaque id carried unchanged end to end, for logs"
    )
    reply_to: Annotated[RequestId | None, NOT_NULL] = Field(
        default=None, description="on a notification: the id of the request whose progress it streams"
    )


class Request(_Envelope):
    """A call that expects exactly one response with the same ``id``."""

    jsonrpc: Literal["2.0"] = "2.0"
    id: RequestId
    method: Method
    params: Annotated[Params | None, NOT_NULL] = None
    to: Annotated[Target | None, NOT_NULL] = Field(default=None, description="absent: the bus itself")
    from_: Annotated[Target | None, NOT_NULL] = Field(
        default=None, alias="from", description="stamped by the bus; a client's value is ignored"
    )
    meta: Annotated[Meta | None, NOT_NULL] = None


class Notification(_Envelope):
    """A message that expects no response: events, progress, cancellation."""

    jsonrpc: Literal["2.0"] = "2.0"
    method: Method
    params: Annotated[Params | None, NOT_NULL] = None
    to: Annotated[Target | None, NOT_NULL] = Field(default=None, description="absent: the bus itself")
    from_: Annotated[Target | None, NOT_NULL] = Field(
        default=None, alias="from", description="stamped by the bus; a client's value is ignored"
    )
    meta: Annotated[Meta | None, NOT_NULL] = None


class ErrorObject(_Envelope):
    """JSON-RPC 2.0 §5.1 error object."""

    code: int
    message: Annotated[str, Field(max_length=4096)]
    data: Any = Field(default=None, description="any value; a null data is relayed as absent")


class Response(_Envelope):
    """The answer to a request: exactly one of ``result`` or ``error``.

    ``id`` is null only when answering a request whose id could not be read
    (JSON-RPC 2.0 §5).
    """

    # The JSON Schema form of _exactly_one_outcome, for clients validating with it.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"result": True, "id": {"not": {"type": "null"}}},
                    "required": ["result"],
                },
                {"type": "object", "properties": {"error": True}, "required": ["error"]},
            ]
        }
    )

    jsonrpc: Literal["2.0"] = "2.0"
    id: RequestId | None
    result: Any = Field(default=None, description="any value, null included")
    error: Annotated[ErrorObject | None, NOT_NULL] = None
    from_: Annotated[Target | None, NOT_NULL] = Field(
        default=None, alias="from", description="stamped by the bus; a client's value is ignored"
    )
    meta: Annotated[Meta | None, NOT_NULL] = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one_outcome(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if ("result" in data) == ("error" in data):
                raise ValueError("a response has exactly one of 'result' and 'error'")
            # JSON-RPC 2.0 §5: a null id answers a request whose id could not
            # be read, and such an answer can only be an error.
            if "result" in data and "id" in data and data["id"] is None:
                raise ValueError("a result needs the id of its request (only an error may have a null id)")
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

"""The envelope fast path: reading a decoded message without pydantic.

The bus routes on the envelope (``id``, ``method``, ``to``, ``meta``) and
relays ``params``, ``result`` and ``error.data`` to a target that validates
them itself. Building pydantic models for every relayed frame cost the bus
about 15 µs per request (a response's model validator runs in Python), a
tenth of its CPU per relayed request.

:func:`read` accepts only what ``protocol.messages.message_adapter`` accepts,
checked by hand with the same rules (strict types, the id and name patterns,
the size limits, no nulls for optional members, no unknown members), and
returns a plain object with the same attribute names as the pydantic models.
Anything else, including every invalid message, gives None: the caller then
validates with pydantic, so every refusal keeps its exact error message and
``request_id`` (tests/protocol hold the pydantic path to them).
"""

from __future__ import annotations

import re
from typing import Any

from protocol.messages import CLIENT_ID_PATTERN, MAX_ID_CHARS, MAX_SAFE_ID, METHOD_PATTERN

__all__ = ["FastError", "FastMessage", "FastMeta", "read"]

# pydantic-core's regex engine reads ``$`` as the end of the text; so does fullmatch.
_method_ok = re.compile(METHOD_PATTERN.removeprefix("^").removesuffix("$")).fullmatch
_target_ok = re.compile(CLIENT_ID_PATTERN.removeprefix("^").removesuffix("$")).fullmatch

_REQUEST_KEYS = frozenset({"jsonrpc", "id", "method", "params", "to", "from", "meta"})
_NOTIFICATION_KEYS = frozenset({"jsonrpc", "method", "params", "to", "from", "meta"})
_RESPONSE_KEYS = frozenset({"jsonrpc", "id", "result", "error", "from", "meta"})
_META_KEYS = frozenset({"deadline_ms", "trace", "reply_to"})
_ERROR_KEYS = frozenset({"code", "message", "data"})
_MAX_DEADLINE_MS = 86_400_000
_MAX_TRACE = 64
_MAX_METHOD = 128
_MAX_ERROR_MESSAGE = 4096


class FastMeta:
    __slots__ = ("deadline_ms", "reply_to", "trace")

    def __init__(self, deadline_ms: int | None, trace: str | None, reply_to: int | str | None) -> None:
        self.deadline_ms = deadline_ms
        self.trace = trace
        self.reply_to = reply_to


class FastError:
    __slots__ = ("code", "data", "message")

    def __init__(self, code: int, message: str, data: Any) -> None:
        self.code = code
        self.message = message
        self.data = data


class FastMessage:
    """A request, notification or response, as the models' attribute names.

    ``kind`` says which: "request", "notification" or "response".
    """

    __slots__ = ("error", "from_", "id", "kind", "meta", "method", "params", "result", "to")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.id: int | str | None = None
        self.method = ""
        self.params: dict[str, Any] | list[Any] | None = None
        self.to: str | None = None
        self.from_: str | None = None
        self.meta: FastMeta | None = None
        self.result: Any = None
        self.error: FastError | None = None


def _is_id(value: Any) -> bool:
    kind = type(value)
    if kind is int:
        return -MAX_SAFE_ID <= value <= MAX_SAFE_ID  # type: ignore[no-any-return]
    return kind is str and len(value) <= MAX_ID_CHARS


def _is_target(value: Any) -> bool:
    return type(value) is str and _target_ok(value) is not None


def _meta(value: Any) -> FastMeta | None:
    """The meta object, or None when it is not plainly valid."""
    if type(value) is not dict or not _META_KEYS.issuperset(value):
        return None
    deadline = value.get("deadline_ms")
    if deadline is not None and not (type(deadline) is int and 1 <= deadline <= _MAX_DEADLINE_MS):
        return None
    trace = value.get("trace")
    if trace is not None and not (type(trace) is str and len(trace) <= _MAX_TRACE):
        return None
    reply_to = value.get("reply_to")
    if reply_to is not None and not _is_id(reply_to):
        return None
    if len(value) != (deadline is not None) + (trace is not None) + (reply_to is not None):
        return None  # an explicit null: pydantic explains it
    return FastMeta(deadline, trace, reply_to)


def read(data: Any) -> FastMessage | None:
    """``data`` as a message when it is plainly valid; None means "ask pydantic"."""
    if type(data) is not dict:
        return None
    version = data.get("jsonrpc", "2.0")
    if type(version) is not str or version != "2.0":
        return None
    if "method" in data:
        is_request = "id" in data
        if not (_REQUEST_KEYS if is_request else _NOTIFICATION_KEYS).issuperset(data):
            return None
        message = FastMessage("request" if is_request else "notification")
        if is_request:
            rid = data["id"]
            if not _is_id(rid):
                return None
            message.id = rid
        method = data["method"]
        if type(method) is not str or len(method) > _MAX_METHOD or _method_ok(method) is None:
            return None
        message.method = method
        if "params" in data:
            params = data["params"]
            if type(params) is not dict and type(params) is not list:
                return None
            message.params = params
        if "to" in data:
            if not _is_target(data["to"]):
                return None
            message.to = data["to"]
    elif "result" in data or "error" in data:
        if not _RESPONSE_KEYS.issuperset(data) or ("result" in data) == ("error" in data) or "id" not in data:
            return None
        message = FastMessage("response")
        rid = data["id"]
        if "result" in data:
            if not _is_id(rid):
                return None
            message.result = data["result"]
        else:
            if rid is not None and not _is_id(rid):
                return None
            error = data["error"]
            if type(error) is not dict or not _ERROR_KEYS.issuperset(error):
                return None
            code, text = error.get("code"), error.get("message")
            if type(code) is not int or type(text) is not str or len(text) > _MAX_ERROR_MESSAGE:
                return None
            message.error = FastError(code, text, error.get("data"))
        message.id = rid
    else:
        return None
    if "from" in data:
        if not _is_target(data["from"]):
            return None
        message.from_ = data["from"]
    if "meta" in data:
        meta = _meta(data["meta"])
        if meta is None:
            return None
        message.meta = meta
    return message

"""Dispatcher: from a request to a typed handler, with validated params.

A daemon registers ``method -> async handler(params_model, ctx)``; the
dispatcher looks the method up in the protocol registry, validates ``params``
against its model (INVALID_PARAMS with pydantic's field errors on failure),
and checks the handler's return value against the result model, since a
result that does not match the published schema is our bug, not the caller's.
A handler that fails because the disk is full (ENOSPC, a quota, SQLite's
SQLITE_FULL) is answered with a clear error, ``data.reason: disk_full``,
rather than a bare internal error: the write was rolled back, and the same
call succeeds once space is back. A part with too much work already waiting
(:class:`~daemon.errors.Busy`, e.g. a persona's brain behind a slow disk) is
answered OVERLOADED with ``data.retry_after_ms``, at once.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ValidationError

from protocol import ErrorCode, Request, RpcError
from protocol import commands as registry
from protocol.validation import invalid_params

from .callers import current_caller
from .client import CallContext
from .errors import Busy

log = logging.getLogger("personad.dispatch")

Handler = Callable[[Any, CallContext], Awaitable[BaseModel | dict[str, Any]]]


class Dispatcher:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, method: str, handler: Handler) -> None:
        if registry.get(method) is None:
            raise ValueError(f"{method} is not in the protocol registry")
        self._handlers[method] = handler

    @property
    def methods(self) -> list[str]:
        return sorted(self._handlers)

    async def __call__(self, request: Request, ctx: CallContext) -> Any:
        handler = self._handlers.get(request.method)
        command = registry.get(request.method)
        if handler is None or command is None:
            raise RpcError(ErrorCode.METHOD_NOT_FOUND, f"{request.method} is not served here")
        if isinstance(request.params, list):
            raise RpcError(ErrorCode.INVALID_PARAMS, "params must be an object (named members)")
        try:
            params = command.params.model_validate(request.params or {})
        except ValidationError as exc:
            raise invalid_params(exc) from None
        asked_by = current_caller.set(ctx.caller)
        try:
            result = await handler(params, ctx)
        except Busy as exc:
            raise RpcError(
                ErrorCode.OVERLOADED,
                f"{request.method}: {exc}",
                {"reason": "busy", "retry_after_ms": exc.retry_after_ms},
            ) from None
        except Exception as exc:
            if isinstance(exc, RpcError) or not disk_full(exc):
                raise
            log.error("%s failed: the disk is full (%s)", request.method, exc)
            raise RpcError(
                ErrorCode.INTERNAL_ERROR,
                f"{request.method}: the disk is full, so nothing was written; free some space and retry",
                {"reason": "disk_full"},
            ) from None
        finally:
            current_caller.reset(asked_by)
        if not isinstance(result, BaseModel):
            result = command.result.model_validate(result)
        data = result.model_dump(mode="python")
        return wire_safe(data) if _has_times(type(result)) else data


_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the disk being full: ENOSPC, EDQUOT or SQLITE_FULL."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if getattr(current, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        current = current.__cause__ or current.__context__
    return False


@functools.cache
def _has_times(model: type[BaseModel]) -> bool:
    """Whether a result model can hold dates or paths (then wire_safe must walk it).

    Decided once per model from its JSON Schema, so plain results (most of
    the hot path: status, ping, chat tokens) skip the walk.
    """
    schema = json.dumps(model.model_json_schema())
    return any(f'"format": "{fmt}"' in schema for fmt in ("date-time", "date", "path", "time"))


def wire_safe(value: Any) -> Any:
    """Python values to the wire's data model: times as RFC 3339 strings.

    ``model_dump(mode="json")`` would do that too, but would also turn bytes
    into text, and bytes (screenshots, adapter chunks) must stay bytes for
    msgpack peers.
    """
    if isinstance(value, dict):
        return {k: wire_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [wire_safe(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    return value

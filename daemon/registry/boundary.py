"""What every ``persona.*`` handler of the registry shares: its environment and the error boundary.

The registry serves its methods in groups, one module each: service.py
(get, list, create, update, archive), serve_generate.py, serve_lineage.py
(fork, merge), serve_transfer.py (export, import) and serve_erase.py
(delete). Each group's ``register(dispatcher, env)`` wraps its handlers in
:func:`translate`, so a registry error becomes the same RPC error whichever
method raised it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import ErrorCode, RpcError

from ..client import BusClient, CallContext
from .errors import AuditError, GenerationFailed, InvalidChange, PersonaExists, RegistryError, UnknownPersona
from .store import Registry

log = logging.getLogger("personad.registry")

Handler = Callable[[Any, CallContext], Awaitable[Any]]


@dataclass(frozen=True)
class RegistryEnv:
    """What the handlers work with.

    ``state_root`` is the state dir the registry shares with the personas it
    manages under ``personad up``: their brains are at
    ``<state_root>/personas/<id>/brain.sqlite`` with keys in
    ``<state_root>/secrets/`` (daemon/brain/keys.py). ``on_reconnect``: what
    a group must redo when the registry's connection comes back (its rooms).
    """

    registry: Registry
    state_root: Path
    on_reconnect: list[Callable[[BusClient], Coroutine[Any, Any, None]]] = field(default_factory=list)


def actor(ctx: CallContext) -> str:
    """Who the audit log names for a change: the caller's client id, as the bus stamped it."""
    return ctx.caller or "unknown"


def invalid(field: str, message: str, reason: str | None = None) -> RpcError:
    """INVALID_PARAMS naming ``field`` (``data.field``), with a machine-readable ``data.reason`` if given."""
    data: dict[str, Any] = {"field": field}
    if reason is not None:
        data["reason"] = reason
    return RpcError(ErrorCode.INVALID_PARAMS, f"invalid params: {field}: {message}", data)


def translate(fn: Handler) -> Handler:
    """Registry errors as RPC errors: INVALID_PARAMS naming the field, or INTERNAL_ERROR."""

    async def wrapper(params: Any, ctx: CallContext) -> Any:
        try:
            return await fn(params, ctx)
        except UnknownPersona as exc:
            raise RpcError(
                ErrorCode.INVALID_PARAMS,
                f"invalid params: {exc.field}: {exc}",
                {"field": exc.field, "reason": "unknown_persona"},
            ) from None
        except PersonaExists as exc:
            raise RpcError(
                ErrorCode.INVALID_PARAMS, str(exc), {"field": "profile.id", "reason": "persona_exists"}
            ) from None
        except InvalidChange as exc:
            raise RpcError(ErrorCode.INVALID_PARAMS, str(exc), {"field": exc.field}) from None
        except GenerationFailed as exc:
            log.warning("%s failed: %s", ctx.request.method, exc)
            raise RpcError(exc.code, str(exc)) from None
        except AuditError as exc:  # nothing was changed: the audit log needs an operator first
            log.error("%s failed: %s", ctx.request.method, exc)
            raise RpcError(ErrorCode.INTERNAL_ERROR, str(exc), {"reason": "audit_log"}) from None
        except RegistryError as exc:
            log.error("%s failed: %s", ctx.request.method, exc)
            raise RpcError(ErrorCode.INTERNAL_ERROR, str(exc)) from None

    return wrapper

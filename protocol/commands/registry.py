"""The command registry: every method any participant serves, with its schemas.

A :class:`Command` names a method, the pydantic model its ``params`` must
validate against, the model of its ``result``, and who serves it (the bus
itself, any persona, or a capability such as ``cap:browser``). The registry is
the single source of truth for three things:

* the persona daemon and the bus validate incoming ``params`` with it;
* ``personad schema`` exports it as JSON Schema for non-Python clients;
* docs/protocol.md lists it.

Command modules (``protocol/commands/bus.py``, ``persona.py`` …) call
:func:`register` at import time; ``protocol.commands`` imports them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["REGISTRY", "Command", "StrictModel", "get", "register"]


class StrictModel(BaseModel):
    """Base for params and results: unknown fields are an error, not ignored.

    Silently ignoring a misspelt field (``max_token`` for ``max_tokens``) is how
    clients end up believing an option took effect; we refuse it instead.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Command:
    """One method of the protocol."""

    method: str
    params: type[BaseModel]
    result: type[BaseModel]
    summary: str
    #: "bus", "persona", or a capability like "cap:browser".
    served_by: str
    #: True when the server sends progress notifications before the response.
    streams: bool = False
    #: True for notifications: no id, no response (``result`` is unused).
    notification: bool = False

    def json_schema(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "served_by": self.served_by,
            "streams": self.streams,
            "notification": self.notification,
            "params": self.params.model_json_schema(),
            "result": self.result.model_json_schema(),
        }


REGISTRY: dict[str, Command] = {}


def register(
    method: str,
    *,
    params: type[BaseModel],
    result: type[BaseModel],
    summary: str,
    served_by: str,
    streams: bool = False,
    notification: bool = False,
) -> Command:
    """Add a method to the registry. Raises ValueError on a duplicate name."""
    if method in REGISTRY:
        raise ValueError(f"method {method!r} is registered twice")
    command = Command(method, params, result, summary, served_by, streams, notification)
    REGISTRY[method] = command
    return command


def get(method: str) -> Command | None:
    """The command for ``method``, or None when nobody registered it."""
    return REGISTRY.get(method)

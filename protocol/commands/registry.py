"""The command registry: every method any participant serves, with its schemas.

A :class:`Command` names a method, the pydantic model its ``params`` must
validate against, the model of its ``result``, and who serves it (the bus
itself, any persona, or a capability such as ``cap:browser``). The registry is
the single source of truth for three things:

* the persona daemon and the bus validate incoming ``params`` with it
  (params models derive from :class:`StrictParams`: strict types);
* ``personad schema`` exports it as one JSON Schema document (:mod:`protocol.schema`);
* docs/methods.md is generated from it (:mod:`protocol.reference`).

Command modules (``protocol/commands/bus.py``, ``persona.py`` …) call
:func:`register` at import time; ``protocol.commands`` imports them all.

A few methods are answered by more than one kind of server with a different
result: ``screenshot`` sent ``to: cap:browser`` returns the image bytes, the
same request sent ``to: persona:<id>`` returns where the persona saved it.
:func:`register_variant` records such a per-server result model; the params
stay the primary command's, so a caller sends the very same request to
either, and :func:`get` with ``served_by`` picks the matching variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = [
    "REGISTRY",
    "VARIANTS",
    "Command",
    "ErrorSpec",
    "StrictModel",
    "StrictParams",
    "get",
    "register",
    "register_variant",
]


class StrictModel(BaseModel):
    """Base for params and results: unknown fields are an error, not ignored.

    Silently ignoring a misspelt field (``max_token`` for ``max_tokens``) is how
    clients end up believing an option took effect; we refuse it instead.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class StrictParams(StrictModel):
    """Base for what arrives from the wire (params, and models nested in them): strict types too.

    Pydantic's lax mode coerces what a JSON client most often gets wrong
    without a word: ``"700"`` becomes 700, ``true`` becomes 1 (``bool`` is an
    ``int`` in Python), ``"yes"`` becomes True. Strict mode refuses them with
    INVALID_PARAMS. Ints are still accepted where floats are (JSON has one
    number type). Results keep :class:`StrictModel`: they are built inside
    the daemons from Python objects, where lax conversion is harmless.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, defer_build=True)


#: An error a method may answer with: the code, or (code, when it happens).
ErrorSpec = IntEnum | tuple[IntEnum, str]


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
    #: Error codes the server itself may answer with, beyond the bus's own
    #: (routing, grants, deadlines, params): a code whose ``description``
    #: says it all, or (code, when) where this method gives it a meaning.
    errors: tuple[ErrorSpec, ...] = ()

    def error_list(self) -> list[tuple[IntEnum, str]]:
        """``errors`` as (code, when) pairs."""
        return [
            e if isinstance(e, tuple) else (e, str(getattr(e, "description", e.name))) for e in self.errors
        ]

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "summary": self.summary,
            "served_by": self.served_by,
            "streams": self.streams,
            "notification": self.notification,
            "params": self.params.model_json_schema(),
            "result": self.result.model_json_schema(),
        }
        variants = {
            served_by: {"summary": variant.summary, "result": variant.result.model_json_schema()}
            for (method, served_by), variant in sorted(VARIANTS.items())
            if method == self.method
        }
        if variants:
            schema["variants"] = variants
        return schema


REGISTRY: dict[str, Command] = {}
#: (method, served_by) -> the command as that kind of server answers it.
VARIANTS: dict[tuple[str, str], Command] = {}


def register(
    method: str,
    *,
    params: type[BaseModel],
    result: type[BaseModel],
    summary: str,
    served_by: str,
    streams: bool = False,
    notification: bool = False,
    errors: tuple[ErrorSpec, ...] = (),
) -> Command:
    """Add a method to the registry. Raises ValueError on a duplicate name."""
    if method in REGISTRY:
        raise ValueError(f"method {method!r} is registered twice")
    command = Command(method, params, result, summary, served_by, streams, notification, errors)
    REGISTRY[method] = command
    return command


def register_variant(
    method: str,
    *,
    served_by: str,
    result: type[BaseModel],
    summary: str,
    errors: tuple[ErrorSpec, ...] | None = None,
) -> Command:
    """Record that ``served_by`` answers the registered ``method`` with its own result model.

    ``errors`` defaults to the primary command's.

    Raises ValueError when ``method`` is not registered, or the variant exists.
    """
    primary = REGISTRY.get(method)
    if primary is None:
        raise ValueError(f"register {method!r} before a variant of it")
    if served_by == primary.served_by or (method, served_by) in VARIANTS:
        raise ValueError(f"method {method!r} already has a variant served by {served_by!r}")
    variant = Command(
        method,
        primary.params,
        result,
        summary,
        served_by,
        primary.streams,
        primary.notification,
        primary.errors if errors is None else errors,
    )
    VARIANTS[(method, served_by)] = variant
    return variant


def get(method: str, served_by: str | None = None) -> Command | None:
    """The command for ``method`` (as ``served_by`` answers it, when it has a variant), or None."""
    if served_by is not None and (variant := VARIANTS.get((method, served_by))) is not None:
        return variant
    return REGISTRY.get(method)

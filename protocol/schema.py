"""The protocol as data: one JSON Schema document, and a catalog of the methods.

* :func:`document` is what ``personad schema`` prints: a single JSON Schema
  (draft 2020-12) whose root validates one message of the JSON subprotocol
  (``oneOf`` request, notification, response) and whose ``$defs`` hold every
  method's params and result as ``<method>.params`` / ``<method>.result``
  (``<method>.result@<server>`` where another kind of server answers with its
  own result), plus the error and close codes. It compiles in Ajv's strict
  mode (tests/schema/), and tests/protocol/test_schema_agreement.py checks
  that it accepts and refuses exactly what the bus's decoder does on a
  corpus of envelopes.
* :func:`export` is the catalog the methods reference (docs/methods.md,
  :mod:`protocol.reference`) is generated from: per method, who serves it,
  whether it streams, and its params/result schemas as pydantic emits them.

The schema describes the JSON subprotocol: a ``bytes`` value is the object
``{"$bytes": "<base64>"}`` (on msgpack it is a raw ``bin``).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .codec import DEFAULT_MAX_MESSAGE_BYTES, SUBPROTOCOLS
from .commands import REGISTRY
from .commands.registry import VARIANTS, Command
from .connection import PROTOCOL_VERSION
from .errors import CloseCode, ErrorCode
from .messages import Notification, Request, Response

__all__ = ["DIALECT", "SCHEMA_ID", "document", "export", "served_by"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: An identifier, not a location: nothing is fetched from it.
SCHEMA_ID = f"urn:personad:protocol:{PROTOCOL_VERSION}"

#: A bytes value on the JSON subprotocol (docs/protocol.md, "The data model").
BYTES_SCHEMA: dict[str, Any] = {
    "title": "Bytes",
    "description": 'Raw bytes: {"$bytes": "<standard base64, padded>"} on the JSON subprotocol, '
    "a bin value on msgpack.",
    "type": "object",
    "properties": {"$bytes": {"type": "string", "contentEncoding": "base64"}},
    "required": ["$bytes"],
    "additionalProperties": False,
}


def _commands() -> list[tuple[str, Command]]:
    """Every (def name prefix, command): primaries, then their variants."""
    out = [(name, command) for name, command in sorted(REGISTRY.items())]
    out += [(f"{method}@{served_by}", variant) for (method, served_by), variant in sorted(VARIANTS.items())]
    return out


def served_by(command: Command) -> str:
    """Who serves a method, in words (also used by the methods reference)."""
    if command.served_by == "bus":
        return "the bus (requests without `to`)"
    if command.served_by == "persona":
        return "every persona daemon (`to: persona:<id>`)"
    if command.served_by == "mesh":
        return "every mesh peer (`to: mesh:<node>`)"
    if command.served_by == "client":
        return "sent to clients (by the bus, or by the server of a request as its progress)"
    return f"providers of the capability (`to: {command.served_by}`)"


def _describe(command: Command) -> str:
    kind = "notification (no response)" if command.notification else "request"
    text = f"{command.summary} A {kind}; {served_by(command)}."
    if command.streams:
        text += " Streams progress notifications (`meta.reply_to`) before its response."
    return text


def document() -> dict[str, Any]:
    """The whole protocol as one JSON Schema (draft 2020-12) document."""
    keyed: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (Request, "validation"),
        (Notification, "validation"),
        (Response, "validation"),
    ]
    for _, command in _commands():
        keyed += [(command.params, "validation"), (command.result, "serialization")]
    refs, top = models_json_schema(keyed, by_alias=True, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = dict(top.get("$defs", {}))

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return {"$ref": refs[(model, mode)]["$ref"]}

    for prefix, command in _commands():
        method = command.method
        if "@" not in prefix:
            defs[f"{method}.params"] = {
                "title": f"{method} params",
                "description": _describe(command),
                **ref(command.params, "validation"),
            }
        if not command.notification:
            defs[f"{prefix}.result"] = {
                "title": f"{method} result" + (f" ({command.served_by})" if "@" in prefix else ""),
                "description": command.summary,
                **ref(command.result, "serialization"),
            }
    defs["Bytes"] = BYTES_SCHEMA
    defs["ErrorCode"] = {
        "title": "error codes",
        "description": "error.code values the bus and its clients use; handlers may add their own "
        "outside -32768..-32000.",
        "type": "integer",
        "oneOf": [{"const": int(c), "title": c.name, "description": c.description} for c in ErrorCode],
    }
    defs["CloseCode"] = {
        "title": "WebSocket close codes",
        "type": "integer",
        "oneOf": [{"const": int(c), "title": c.name} for c in CloseCode],
    }
    doc: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": f"personad protocol {PROTOCOL_VERSION}: one message",
        "description": "One message of the personad bus on the JSON subprotocol "
        f"({', '.join(SUBPROTOCOLS)}; at most {DEFAULT_MAX_MESSAGE_BYTES} bytes a frame by default). "
        "Each method's params and result are in $defs as '<method>.params' and '<method>.result'. "
        "See docs/protocol.md and docs/methods.md.",
        "oneOf": [ref(Request, "validation"), ref(Notification, "validation"), ref(Response, "validation")],
        "$defs": dict(sorted(defs.items())),
    }
    normalised: dict[str, Any] = _normalise(doc)
    return normalised


def _normalise(schema: Any) -> Any:
    """Pydantic's output, made exact for the wire and acceptable to strict validators.

    * ``bytes`` (``format: binary``) becomes a reference to the ``$bytes`` object;
    * ``"default": null`` is dropped where null is not a valid value (members
      that are optional but never null: the default only means "absent");
    * ``title``s pydantic derives from Python names are dropped below the
      top level (they repeat the property name), so titles stay meaningful.
    """
    if isinstance(schema, list):
        return [_normalise(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") == "string" and schema.get("format") == "binary":
        extra = {k: v for k, v in schema.items() if k not in {"type", "format"}}
        return {"$ref": "#/$defs/Bytes", **_normalise(extra)}
    out = {}
    for key, value in schema.items():
        # Values of these keywords are maps of names to schemas, not schemas.
        if key in {"properties", "$defs", "patternProperties"}:
            out[key] = {name: _normalise(sub) for name, sub in value.items()}
        elif key in {"default", "const", "enum", "examples"}:
            out[key] = copy.deepcopy(value)
        else:
            out[key] = _normalise(value)
    if "default" in out and out["default"] is None and not _allows_null(out):
        del out["default"]
    return out


def _allows_null(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "null":
        return True
    if any(isinstance(b, dict) and _allows_null(b) for b in schema.get("anyOf", [])):
        return True
    # No type constraint at all (pydantic's ``Any``): null is a value like any other.
    return not ({"type", "$ref", "anyOf", "oneOf", "allOf", "const", "enum"} & schema.keys())


def export() -> dict[str, Any]:
    """The catalog: every method with who serves it and its params/result schemas."""
    return {
        "title": "personad protocol",
        "protocol": PROTOCOL_VERSION,
        "subprotocols": list(SUBPROTOCOLS),
        "max_message_bytes": DEFAULT_MAX_MESSAGE_BYTES,
        "errors": {code.name: {"code": int(code), "meaning": code.description} for code in ErrorCode},
        "close_codes": {code.name: int(code) for code in CloseCode},
        "commands": {name: cmd.json_schema() for name, cmd in sorted(REGISTRY.items())},
    }

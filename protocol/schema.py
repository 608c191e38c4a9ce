"""JSON Schema export of every message and command (``personad schema``)."""

from __future__ import annotations

from typing import Any

from .codec import DEFAULT_MAX_MESSAGE_BYTES, SUBPROTOCOLS
from .commands import REGISTRY
from .connection import PROTOCOL_VERSION
from .errors import CloseCode, ErrorCode
from .messages import message_adapter

__all__ = ["export"]


def export() -> dict[str, Any]:
    """The whole protocol as one JSON-serialisable document."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "personad protocol",
        "protocol": PROTOCOL_VERSION,
        "subprotocols": list(SUBPROTOCOLS),
        "max_message_bytes": DEFAULT_MAX_MESSAGE_BYTES,
        "message": message_adapter.json_schema(by_alias=True),
        "errors": {code.name: {"code": int(code), "meaning": code.description} for code in ErrorCode},
        "close_codes": {code.name: int(code) for code in CloseCode},
        "commands": {name: cmd.json_schema() for name, cmd in sorted(REGISTRY.items())},
    }

"""The HTTP door's own routes and the error responses every path shares, for :mod:`.openapi`.

:mod:`.openapi` generates most of ``/openapi.json`` from the command registry
and the Mimic routes' table; what is here is written by hand instead, because
nothing generates it: the generic ``/v1/call/{target}/{method}``,
``/v1/events``, ``/v1/pair``, ``/healthz``, ``/metrics`` and the document's
own path, the schemas those routes answer with (``http.Error``,
``http.Health``, ...), and one response per error status of :mod:`.status`
(``ErrorNNN``), which every path refers to and a method's own ``errors``
annotate. It changes when a door route does, not when the registry does, so it
is kept apart from the generating machinery; it imports nothing of
:mod:`.openapi`, which imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from protocol import ErrorCode
from protocol.commands import Command

from ..bus.metrics import METRICS_GRANT
from .status import HTTP_STATUS, http_status

__all__ = ["JSON", "OPENAPI_PATH", "error_responses", "generic_paths", "http_components", "ref"]

OPENAPI_PATH = "/openapi.json"
JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_statuses() -> dict[int, list[ErrorCode]]:
    statuses: dict[int, list[ErrorCode]] = {}
    for code, status in HTTP_STATUS.items():
        statuses.setdefault(int(status), []).append(code)
    return dict(sorted(statuses.items()))


def _status_text(status: int, codes: list[ErrorCode]) -> str:
    names = ", ".join(f"{c.name} ({int(c)})" for c in codes)
    text = f"{HTTPStatus(status).phrase}: the bus answered {names}"
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        text += ", or a service's own error code (outside -32768..-32000)"
    return text + "."


def error_responses(command: Command | None = None) -> dict[str, Any]:
    """Every error status, shared; a method's own errors (its ``errors``) added where they fall."""
    notes: dict[int, list[str]] = {}
    for code, when in command.error_list() if command is not None else []:
        notes.setdefault(int(http_status(int(code))), []).append(f"{code.name} ({int(code)}) when {when}")
    responses: dict[str, Any] = {}
    for status, codes in _error_statuses().items():
        if status in notes:
            responses[str(status)] = {
                "description": f"{_status_text(status, codes)} For this method: {'; '.join(notes[status])}.",
                "content": {JSON: {"schema": ref("http.ErrorResponse")}},
            }
        else:
            responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    return responses


def http_components(add: Callable[[str, Any], dict[str, str]]) -> dict[str, Any]:
    """The door's own schemas, handed to ``add`` (which files a component and answers its
    reference), and the shared error responses, returned for ``components/responses``."""
    added = {
        "http.Error": {
            "title": "Error",
            "description": "The bus's error object, as a WebSocket client receives it.",
            "type": "object",
            "properties": {
                "code": {
                    "type": "integer",
                    "description": "the bus's code (docs/protocol.md, Error codes) or a service's own",
                },
                "message": {"type": "string", "maxLength": 4096},
                "data": {"description": "details; INVALID_PARAMS: a list of {loc, msg, type}"},
            },
            "required": ["code", "message"],
            "additionalProperties": False,
        },
        "http.ErrorResponse": {
            "type": "object",
            "properties": {"error": ref("http.Error")},
            "required": ["error"],
            "additionalProperties": False,
        },
        "http.Health": {
            "title": "Health",
            "description": "The bus's health (docs/operations.md, /healthz).",
            "type": "object",
            "properties": {
                "status": {"enum": ["ok", "shutting_down"]},
                "version": {"type": "string"},
                "protocol": {"type": "integer"},
                "uptime_s": {"type": "number"},
                "connections": {"type": "integer", "description": "open WebSocket connections"},
                "clients": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "authenticated clients by kind",
                },
                "inflight": {"type": "integer", "description": "routed requests awaiting an answer"},
            },
            "required": ["status", "version", "protocol", "uptime_s", "connections", "clients", "inflight"],
        },
        "http.MimicHealth": {
            "title": "Mimic health",
            "description": "The bus's health plus the capabilities served now (from bus.clients).",
            "allOf": [ref("http.Health")],
            "properties": {
                "capabilities": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                    "description": "cap:<name> → the ids of the clients serving it",
                }
            },
            "required": ["capabilities"],
        },
        "http.PairRequest": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "minLength": 1, "description": "from personad console"}
            },
            "required": ["code"],
        },
        "http.Pairing": {
            "type": "object",
            "properties": {
                "token": {"type": "string", "description": "the new bearer token (shown once)"},
                "name": {"type": "string"},
                "id": {"type": "string"},
                "grants": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["token", "name", "id", "grants"],
        },
    }
    for name, schema in added.items():
        if add(name, schema) != ref(name):  # these names are referred to as they are
            raise ValueError(f"component name {name!r} is taken by the protocol's schemas")
    return {
        f"Error{status}": {
            "description": _status_text(status, codes),
            "content": {JSON: {"schema": ref("http.ErrorResponse")}},
        }
        for status, codes in _error_statuses().items()
    }


def generic_paths() -> dict[str, Any]:
    events_error = {s: {"$ref": f"#/components/responses/Error{s}"} for s in ("400", "401", "403", "422")}
    return {
        "/v1/call/{target}/{method}": {
            "post": {
                "operationId": "call",
                "summary": "Call any method on any target (the paths below describe each method).",
                "tags": ["http"],
                "parameters": [
                    {
                        "name": "target",
                        "in": "path",
                        "required": True,
                        "description": "bus, persona:<id>, cap:<capability>, or a client id",
                        "schema": {"type": "string"},
                    },
                    {"name": "method", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"$ref": "#/components/parameters/DeadlineMs"},
                ],
                "requestBody": {
                    "required": False,
                    "content": {JSON: {"schema": {"type": "object", "description": "the method's params"}}},
                },
                "responses": {
                    "200": {
                        "description": "The method's result (or Server-Sent Events with"
                        " `Accept: text/event-stream`).",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "properties": {"result": {}},
                                    "required": ["result"],
                                }
                            },
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **error_responses(),
                },
            }
        },
        "/v1/events": {
            "get": {
                "operationId": "events",
                "summary": "Server-Sent Events of bus topics and room messages.",
                "description": "Subscribes (and joins rooms) with the caller's token; first an"
                " `event: ready`, then one event per notification, named by its method"
                " (`event`, `room.message`, ...).",
                "tags": ["http"],
                "parameters": [
                    {
                        "name": name,
                        "in": "query",
                        "description": text,
                        "schema": {"type": "array", "items": {"type": "string"}},
                        "style": "form",
                        "explode": True,
                    }
                    for name, text in (
                        ("topic", "a topic pattern to subscribe to (repeat for more)"),
                        ("room", "a room to join (repeat for more)"),
                    )
                ],
                "responses": {
                    "200": {
                        "description": "The event stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **events_error,
                },
            }
        },
        "/v1/pair": {
            "post": {
                "operationId": "pair",
                "summary": "Exchange a one-time pairing code (personad console) for a token.",
                "tags": ["http"],
                "security": [],
                "requestBody": {"required": True, "content": {JSON: {"schema": ref("http.PairRequest")}}},
                "responses": {
                    "200": {
                        "description": "The new token.",
                        "content": {JSON: {"schema": ref("http.Pairing")}},
                    },
                    "400": {"$ref": "#/components/responses/Error400"},
                    "401": {"$ref": "#/components/responses/Error401"},
                    "422": {"$ref": "#/components/responses/Error422"},
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The bus's health (no token needed).",
                "tags": ["http"],
                "security": [],
                "responses": {
                    status: {"description": text, "content": {JSON: {"schema": ref("http.Health")}}}
                    for status, text in (("200", "Serving."), ("503", "Shutting down."))
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": f"Prometheus metrics (a token with the {METRICS_GRANT!r} grant,"
                " unless the bus runs with --public-metrics).",
                "tags": ["http"],
                "responses": {
                    status: {"description": text, "content": {"text/plain": {"schema": {"type": "string"}}}}
                    for status, text in (
                        ("200", "The metrics, in Prometheus's text format."),
                        ("401", "No valid bearer token."),
                        ("403", f"The token lacks the {METRICS_GRANT!r} grant."),
                    )
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "openapi",
                "summary": "This document (no token needed).",
                "tags": ["http"],
                "security": [],
                "responses": {
                    "200": {"description": "OpenAPI 3.1.", "content": {JSON: {"schema": {"type": "object"}}}}
                },
            }
        },
    }

"""``GET /openapi.json``: the HTTP API as an OpenAPI 3.1 document, generated from the command registry.

Every request method of :data:`protocol.commands.REGISTRY` gets its own
path, ``/v1/call/{target}/<method>``, with its params model as the request
body, ``{"result": <its result model>}`` as the 200 answer, and the error
statuses of :mod:`.status`; beside them the door's own routes (the generic
``/v1/call/{target}/{method}``, ``/v1/events``, ``/v1/pair``, ``/healthz``,
``/metrics``, this document: written by hand in :mod:`.openapi_http`, with
the shared error responses), the Mimic routes (:mod:`.mimic_rest`'s table,
with the same schemas) and whatever ``openapi_paths()`` returns in every
other module of :data:`ROUTE_MODULES`.

The schemas are those of ``personad schema`` (:func:`protocol.schema.document`:
bytes as ``{"$bytes"}``, exact nullability), its ``$defs`` moved to
``components/schemas`` with every reference rewritten, names made valid
OpenAPI component keys (``screenshot@persona.result`` has an ``@``) without
two ever colliding, and only the schemas some path reaches kept.

The document holds no secret, so it is served without a token. It is built
on the first request, off the event loop, and kept: building it takes about
0.2 s, which every bus start (every test's bus among them) would otherwise
pay for a document few ever ask for. ``python -m daemon.doors.openapi``
prints it without a bus.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import re
from functools import cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from protocol.commands import REGISTRY, Command
from protocol.commands.registry import VARIANTS
from protocol.schema import document as protocol_document
from protocol.schema import served_by

from .. import __version__
from ..bus.config import BusConfig
from .api import ROUTE_MODULES
from .http_io import dumps
from .http_server import HttpRequest, HttpResponder
from .mimic_rest import MIMIC_HEALTH_PATH, MIMIC_ROUTES, MimicRoute
from .openapi_http import JSON, OPENAPI_PATH, error_responses, generic_paths, http_components, ref

if TYPE_CHECKING:
    from .api import HttpApi

__all__ = ["OPENAPI_PATH", "build_document", "routes"]

#: Modules whose paths this one writes itself.
_OWN_MODULES = frozenset({"mimic_rest", "openapi"})
#: Not callable over HTTP: a door session has said its hello (a second one is INVALID_REQUEST).
_HANDSHAKE = frozenset({"hello"})


def routes(api: HttpApi) -> None:
    async def serve(request: HttpRequest, response: HttpResponder) -> None:
        await response.send(HTTPStatus.OK, await asyncio.to_thread(_encoded), JSON)

    api.route("GET", OPENAPI_PATH, serve, auth=False)


@cache
def _encoded() -> bytes:
    # Encoding ~450 kB of JSON takes ~15 ms: once, not on the event loop at every request.
    return dumps(build_document()) + b"\n"


class _Components:
    """``components/schemas`` under names OpenAPI accepts, no two alike."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def key(self, wanted: str) -> str:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", wanted)
        name, n = base, 1
        while name in self.schemas:
            n += 1
            name = f"{base}-{n}"
        return name

    def add(self, wanted: str, schema: Any) -> dict[str, str]:
        name = self.key(wanted)
        self.schemas[name] = schema
        return ref(name)


def _rewrite(schema: Any, renamed: dict[str, str]) -> Any:
    """``schema`` with every ``#/$defs/X`` reference pointing at X's component."""
    if isinstance(schema, list):
        return [_rewrite(item, renamed) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            out[key] = ref(renamed[value.removeprefix("#/$defs/")])["$ref"]
        elif key in {"properties", "patternProperties", "$defs"}:  # names to schemas
            out[key] = {name: _rewrite(sub, renamed) for name, sub in value.items()}
        elif key in {"default", "const", "enum", "examples"}:
            out[key] = copy.deepcopy(value)  # values, not schemas
        else:
            out[key] = _rewrite(value, renamed)
    return out


def _refs_in(node: Any) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                found.add(ref.removeprefix("#/components/schemas/"))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _reachable(roots: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    seen: set[str] = set()
    todo = _refs_in(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= _refs_in(schemas[name]) - seen
    return {name: schemas[name] for name in sorted(seen)}


# -- /v1/call ----------------------------------------------------------------------------


def _example_target(served: str) -> str:
    return {"bus": "bus", "persona": "persona:demo", "mesh": "mesh:home"}.get(served, served)


def _has_required(command: Command) -> bool:
    return any(field.is_required() for field in command.params.model_fields.values())


def _call_operation(command: Command, variants: list[Command], names: dict[str, str]) -> dict[str, Any]:
    method = command.method
    results = [ref(names[f"{method}.result"])]
    results += [ref(names[f"{method}@{v.served_by}.result"]) for v in variants]
    target_text = f"Who serves it: {served_by(command)}."
    for variant in variants:
        target_text += f" Also {served_by(variant)}, answering: {variant.summary}"
    success: dict[str, Any] = {
        "description": "The method's result.",
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "properties": {"result": results[0] if len(results) == 1 else {"anyOf": results}},
                    "required": ["result"],
                }
            }
        },
    }
    if command.streams:
        success["description"] += (
            " With `Accept: text/event-stream`: Server-Sent Events, a `progress` event for each"
            " notification the method streams, then one `result` or `error` event (docs/http.md)."
        )
        success["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "operationId": f"call:{method}",
        "summary": command.summary,
        "description": f"`{method}` through the HTTP door: one bus call with the caller's token."
        f" {target_text}",
        "tags": [command.served_by],
        "x-bus-method": method,
        "x-served-by": command.served_by,
        "parameters": [
            {
                "name": "target",
                "in": "path",
                "required": True,
                "description": target_text,
                "schema": {"const": "bus"} if command.served_by == "bus" else {"type": "string"},
                "example": _example_target(command.served_by),
            },
            {"$ref": "#/components/parameters/DeadlineMs"},
        ],
        "requestBody": {
            "required": _has_required(command),
            "description": "The method's params (an empty body: none).",
            "content": {JSON: {"schema": ref(names[f"{method}.params"])}},
        },
        "responses": {"200": success, **error_responses(command)},
    }


# -- the Mimic routes --------------------------------------------------------------------


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = schemas[schema["$ref"].removeprefix("#/components/schemas/")]
    return schema


def _mimic_operation(route: MimicRoute, names: dict[str, str], components: _Components) -> dict[str, Any]:
    command = REGISTRY[route.method]
    params = _resolve(ref(names[f"{route.method}.params"]), components.schemas)
    properties: dict[str, Any] = params.get("properties", {})
    required = set(params.get("required", []))
    from_path = dict(route.into_params)
    parameters: list[dict[str, Any]] = []
    for variable in re.findall(r"\{(\w+)\}", route.path):
        member = from_path.get(variable)
        parameters.append(
            {
                "name": variable,
                "in": "path",
                "required": True,
                "description": f"params.{member}" if member else f"the target is {route.target}",
                "schema": properties[member] if member else {"type": "string"},
            }
        )
    operation: dict[str, Any] = {
        "operationId": f"mimic:{route.method}",
        "summary": command.summary,
        "description": f"One `{route.method}` call to `{route.target}` with the caller's token; the body of"
        " the answer is the method's result itself.",
        "tags": ["mimic"],
        "x-bus-method": route.method,
    }
    if route.params_from == "query":
        for name, schema in properties.items():
            parameter = {"name": name, "in": "query", "required": name in required, "schema": schema}
            if "description" in schema:
                parameter["description"] = schema["description"]
            if _is_object(schema, components.schemas):
                parameter |= {"style": "deepObject", "explode": True}
            parameters.append(parameter)
    else:
        body: dict[str, Any] = ref(names[f"{route.method}.params"])
        if from_path:
            derived = copy.deepcopy(params)
            derived["required"] = [r for r in params.get("required", []) if r not in from_path.values()]
            derived["description"] = (
                f"{route.method}'s params; {', '.join(from_path.values())} comes from the path"
                " (if the body has it too, it must be the same)."
            )
            body = components.add(f"{route.method}.body", derived)
        operation["requestBody"] = {
            "required": bool(required - set(from_path.values())),
            "content": {JSON: {"schema": body}},
        }
    parameters.append({"$ref": "#/components/parameters/DeadlineMs"})
    operation["parameters"] = parameters
    operation["responses"] = {
        "200": {
            "description": "The method's result.",
            "content": {JSON: {"schema": ref(names[f"{route.method}.result"])}},
        },
        **error_responses(command),
    }
    return operation


def _is_object(schema: dict[str, Any], schemas: dict[str, Any]) -> bool:
    if "$ref" in schema:
        return _is_object(_resolve(schema, schemas), schemas)
    return schema.get("type") == "object" or any(_is_object(s, schemas) for s in schema.get("anyOf", []))


def _mimic_paths(names: dict[str, str], components: _Components) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in MIMIC_ROUTES:
        paths.setdefault(route.path, {})[route.http_method.lower()] = _mimic_operation(
            route, names, components
        )
    paths[MIMIC_HEALTH_PATH] = {
        "get": {
            "operationId": "mimic:health",
            "summary": "The bus's health and the capabilities served now (needs the bus.clients grant).",
            "tags": ["mimic"],
            "responses": {
                "200": {"description": "Serving.", "content": {JSON: {"schema": ref("http.MimicHealth")}}},
                "503": {
                    "description": "Shutting down.",
                    "content": {JSON: {"schema": ref("http.MimicHealth")}},
                },
                **{s: r for s, r in error_responses().items() if s != "503"},
            },
        }
    }
    return paths


# -- the document ------------------------------------------------------------------------


@cache
def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API on the bus's port (the same one every call)."""
    components = _Components()
    protocol_defs: dict[str, Any] = protocol_document()["$defs"]
    names = {name: components.key(name) for name in protocol_defs}
    for name, schema in protocol_defs.items():
        components.schemas[names[name]] = _rewrite(schema, names)
    responses = http_components(components.add)

    paths: dict[str, Any] = generic_paths()
    tags: set[str] = set()
    for method, command in sorted(REGISTRY.items()):
        if command.notification or method in _HANDSHAKE:
            continue
        variants = [v for (m, _), v in sorted(VARIANTS.items()) if m == method]
        paths[f"/v1/call/{{target}}/{method}"] = {"post": _call_operation(command, variants, names)}
        tags.add(command.served_by)
    paths |= _mimic_paths(names, components)
    for module_name in ROUTE_MODULES:
        if module_name in _OWN_MODULES:
            continue
        module = importlib.import_module(f"{__package__}.{module_name}")
        more = getattr(module, "openapi_paths", None)
        if more is None:
            continue
        for path, item in more().items():
            if path in paths:
                raise ValueError(
                    f"{module_name}.openapi_paths() describes {path}, which is described already"
                )
            paths[path] = item

    config = BusConfig()
    parameters = {
        "DeadlineMs": {
            "name": "X-Deadline-Ms",
            "in": "header",
            "required": False,
            "description": f"the call's deadline in milliseconds (default {config.default_deadline_ms},"
            f" at most {config.max_deadline_ms}); past it the answer is 504 TIMEOUT",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    schemas = _reachable([paths, responses], components.schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "personad HTTP API",
            "version": __version__,
            "description": "The bus's HTTP door, on the bus's own port: every request is one or more bus"
            " calls made with the caller's bearer token, meeting the same grants, validation, deadlines and"
            ' errors as a WebSocket client (docs/http.md). Bytes travel as {"$bytes": "<base64>"}; a body'
            f" may be at most the bus's max_message_bytes ({config.max_message_bytes} by default).",
        },
        "tags": [{"name": "http", "description": "The door's own routes."}]
        + [
            {
                "name": "mimic",
                "description": "The REST routes of the project's origin (Mimic), one bus call each.",
            }
        ]
        + [{"name": tag, "description": f"Methods served by {tag}."} for tag in sorted(tags)],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "parameters": parameters,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a personad token (pd_…): `personad token add`, or POST /v1/pair",
                }
            },
        },
    }


if __name__ == "__main__":
    import json
    import sys

    json.dump(build_document(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")

"""The REST routes of the project's origin (the "Mimic" persona ecosystem), each one bus call.

Clients written for Mimic's REST API keep working: every route here is a
thin translation onto ONE bus method, made with the caller's own token
(:meth:`HttpApi.call`), so grants, validation, deadlines and errors are
exactly the bus's. The answer's body is the method's result itself (not
wrapped in ``{"result"}`` as ``/v1/call`` wraps it); an error is the bus's
``{"error": {...}}`` with the status of :mod:`.status`.

The routes are data (:data:`MIMIC_ROUTES`): :mod:`.openapi` documents them
from the same table, with the same params and result schemas. How a request
becomes params:

- ``POST``: the JSON body is the params. A path id that belongs in the
  params (``/session/{id}/participants`` → ``session_id``) is put there; a
  body naming it too must agree with the path (INVALID_PARAMS otherwise),
  so a client never believes it addressed one session while the body named
  another.
- ``GET``: the query string is the params. Query values are all strings, so
  they are converted by the params model in pydantic's lax mode (``7`` →
  int, ``true`` → bool), then sent as JSON for the bus to validate strictly
  like any request. A member whose schema is an array is given by repeating
  the key (``tags=a&tags=b``); an object member's fields as
  ``context[formal]=true`` (OpenAPI's deepObject style). An unknown key is
  INVALID_PARAMS, as an unknown params member is.
- A route takes its params from one place: a query string on a POST route,
  or a body on a GET route, is refused rather than ignored.

``GET /api/mimic/health`` is the bus's ``/healthz`` plus which
capabilities are served now, from ``bus.clients`` with the caller's token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from protocol import ErrorCode
from protocol.commands import REGISTRY
from protocol.validation import invalid_params

from ..tokens import TokenEntry
from .http_io import deadline_header, read_json, send_error, send_json
from .http_server import HttpRequest, HttpResponder
from .session import DoorError

if TYPE_CHECKING:
    from .api import HttpApi

__all__ = ["MIMIC_HEALTH_PATH", "MIMIC_ROUTES", "MimicRoute", "query_params", "routes"]

MIMIC_HEALTH_PATH = "/api/mimic/health"


@dataclass(frozen=True, slots=True)
class MimicRoute:
    """One REST route: an HTTP method and path onto one bus method at one target."""

    http_method: Literal["GET", "POST"]
    #: ``{id}`` is one path segment.
    path: str
    method: str
    #: The bus target; ``{id}`` is replaced by the path's id.
    target: str
    #: Where the params come from.
    params_from: Literal["body", "query"]
    #: Path variables that are params members: (variable, member).
    into_params: tuple[tuple[str, str], ...] = ()

    def target_for(self, path_params: dict[str, str]) -> str:
        return self.target.format(**path_params)


MIMIC_ROUTES: tuple[MimicRoute, ...] = (
    MimicRoute("POST", "/api/mimic/persona/generate", "persona.generate", "cap:registry", "body"),
    MimicRoute("POST", "/api/mimic/persona/fork", "persona.fork", "cap:registry", "body"),
    MimicRoute("POST", "/api/mimic/persona/merge", "persona.merge", "cap:registry", "body"),
    MimicRoute(
        "POST", "/api/mimic/persona/{id}/performance", "persona.performance.record", "persona:{id}", "body"
    ),
    MimicRoute("GET", "/api/mimic/persona/{id}/analytics", "persona.analytics", "persona:{id}", "query"),
    MimicRoute("POST", "/api/mimic/persona/{id}/plugin", "persona.plugin.add", "persona:{id}", "body"),
    MimicRoute("GET", "/api/mimic/persona/{id}/plugins", "persona.plugins", "persona:{id}", "query"),
    MimicRoute("POST", "/api/mimic/persona/{id}/knowledge", "persona.knowledge.add", "persona:{id}", "body"),
    MimicRoute(
        "GET", "/api/mimic/persona/{id}/knowledge", "persona.knowledge.search", "persona:{id}", "query"
    ),
    MimicRoute(
        "GET", "/api/mimic/session/recommendations", "session.recommendations", "cap:registry", "query"
    ),
    MimicRoute(
        "POST",
        "/api/mimic/session/{id}/participants",
        "session.participants.add",
        "cap:registry",
        "body",
        into_params=(("id", "session_id"),),
    ),
)


def routes(api: HttpApi) -> None:
    for route in MIMIC_ROUTES:
        api.route(route.http_method, route.path, _handler(api, route))

    async def health(request: HttpRequest, response: HttpResponder, *, token: TokenEntry) -> None:
        try:
            listed = await api.call(token, None, "bus.clients", None, label="mimic")
        except DoorError as exc:
            await send_error(response, exc.code, exc.message, data=exc.data)
            return
        served: dict[str, list[str]] = {}
        for client in listed["clients"]:
            for capability in client["capabilities"]:
                served.setdefault(f"cap:{capability}", []).append(client["id"])
        body = {**api.bus.health(), "capabilities": {cap: sorted(ids) for cap, ids in sorted(served.items())}}
        status = HTTPStatus.SERVICE_UNAVAILABLE if api.bus.shutting_down else HTTPStatus.OK
        await send_json(response, status, body)

    api.route("GET", MIMIC_HEALTH_PATH, health)


def _handler(api: HttpApi, route: MimicRoute) -> Any:
    command = REGISTRY[route.method]

    async def handle(
        request: HttpRequest, response: HttpResponder, *, token: TokenEntry, **path: str
    ) -> None:
        try:
            params = _params(route, command.params, request, path)
            deadline_ms = deadline_header(request)
        except DoorError as exc:
            await send_error(response, exc.code, exc.message, data=exc.data)
            return
        try:
            result = await api.call(
                token, route.target_for(path), route.method, params, label="mimic", deadline_ms=deadline_ms
            )
        except DoorError as exc:
            await send_error(response, exc.code, exc.message, data=exc.data)
            return
        await send_json(response, HTTPStatus.OK, result)

    return handle


def _params(route: MimicRoute, model: type[BaseModel], request: HttpRequest, path: dict[str, str]) -> Any:
    if route.params_from == "query":
        if request.body.strip():
            raise DoorError(
                ErrorCode.INVALID_PARAMS,
                f"{route.http_method} {route.path} takes its params in the query string, not a body",
            )
        return query_params(model, request.query)
    if request.query:
        raise DoorError(
            ErrorCode.INVALID_PARAMS,
            f"{route.http_method} {route.path} takes its params as a JSON body, not in the query string",
        )
    params = read_json(request)
    if not route.into_params:
        return params
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise DoorError(ErrorCode.INVALID_PARAMS, "params must be an object (named members)")
    for variable, member in route.into_params:
        given = params.get(member)
        if given is not None and given != path[variable]:
            raise _invalid(
                member, f"the body says {given!r}, the path says {path[variable]!r}", "path_mismatch"
            )
        params[member] = path[variable]
    return params


def _invalid(where: str, message: str, kind: str) -> DoorError:
    """INVALID_PARAMS as the bus words it (protocol.validation), for what the door itself refuses."""
    return DoorError(
        ErrorCode.INVALID_PARAMS,
        f"invalid params: {where}: {message}",
        [{"loc": where.split("."), "msg": message, "type": kind}],
    )


_DEEP_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\[([A-Za-z_][A-Za-z0-9_]*)\]$")


def query_params(model: type[BaseModel], query: dict[str, list[str]]) -> dict[str, Any] | None:
    """A query string as ``model``'s params, typed by pydantic; raises DoorError (INVALID_PARAMS)."""
    arrays = _array_members(model)
    raw: dict[str, Any] = {}
    for key, values in query.items():
        deep = _DEEP_KEY.match(key)
        name, member = deep.groups() if deep is not None else (key, None)
        if member is not None or isinstance(raw.get(name), dict):
            into = raw.setdefault(name, {})
            if member is None or not isinstance(into, dict):
                raise _invalid(name, "given both whole and member by member", "query_mixed")
            into[member] = _one(f"{name}.{member}", values)
        elif key in arrays:
            raw[key] = values
        else:
            raw[key] = _one(key, values)
    try:
        # Lax mode converts the strings ("7" → 7, "true" → True); the bus
        # then validates what is sent, strictly, as for any client.
        validated = model.model_validate(raw, strict=False)
    except ValidationError as exc:
        error = invalid_params(exc)
        raise DoorError(error.code, error.message, error.data) from None
    params = validated.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return params or None


def _one(where: str, values: list[str]) -> str:
    if len(values) != 1:
        raise _invalid(where, f"give it once, not {len(values)} times", "query_repeated")
    return values[0]


@cache
def _array_members(model: type[BaseModel]) -> frozenset[str]:
    """The params members whose schema is an array (or an array or null): given by repeating the key."""
    properties = model.model_json_schema().get("properties", {})

    def is_array(schema: dict[str, Any]) -> bool:
        return schema.get("type") == "array" or any(is_array(s) for s in schema.get("anyOf", []))

    return frozenset(name for name, schema in properties.items() if is_array(schema))

"""The OpenAPI document: valid OpenAPI 3.1, one path per request method with the registry's schemas,
every reference resolvable, served by a real bus without a token; and docs/http.md's status table is
the one the doors use."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from openapi_spec_validator import validate

from daemon.bus import Bus
from daemon.doors.mimic_rest import MIMIC_HEALTH_PATH, MIMIC_ROUTES
from daemon.doors.openapi import build_document
from daemon.doors.status import HTTP_STATUS
from protocol import ErrorCode
from protocol.commands import REGISTRY
from protocol.commands.registry import VARIANTS
from tests.conftest import REPO


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """A local JSON pointer (``#/a/b``), as a validator follows it."""
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def deref(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = resolve(doc, schema["$ref"])
    return schema


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in refs(item)]
    return []


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = build_document()
    assert "3.1.0" == doc["openapi"]
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema and its rules
    for section, entries in doc["components"].items():
        bad = [name for name in entries if not re.fullmatch(r"[A-Za-z0-9._-]+", name)]
        assert [] == bad, section


def test_every_reference_resolves_and_no_defs_are_left() -> None:
    doc = build_document()
    found = refs(doc)
    assert len(found) > 500
    for ref in set(found):
        assert isinstance(resolve(doc, ref), dict), ref
    assert "$defs" not in json.dumps(doc)


def test_every_request_method_has_its_path_with_the_registry_schemas() -> None:
    doc = build_document()
    requests = [c for c in REGISTRY.values() if not c.notification and c.method != "hello"]
    assert len(requests) > 80
    for command in requests:
        operation = doc["paths"][f"/v1/call/{{target}}/{command.method}"]["post"]
        params = deref(doc, operation["requestBody"]["content"]["application/json"]["schema"])
        model = command.params.model_json_schema()
        assert set(model.get("properties", {})) == set(params.get("properties", {})), command.method
        assert set(model.get("required", [])) == set(params.get("required", [])), command.method
        assert operation["requestBody"]["required"] == bool(model.get("required")), command.method
        result = operation["responses"]["200"]["content"]["application/json"]["schema"]["properties"][
            "result"
        ]
        answers = [deref(doc, r) for r in result.get("anyOf", [result])]
        expected = [command.result] + [
            v.result for (m, _), v in sorted(VARIANTS.items()) if m == command.method
        ]
        assert [set(m.model_json_schema().get("properties", {})) for m in expected] == [
            set(a.get("properties", {})) for a in answers
        ], command.method
        target = next(p for p in operation["parameters"] if p.get("name") == "target")
        assert command.served_by in target["description"] or "persona:<id>" in target["description"]
        assert operation["x-served-by"] == command.served_by
        # Every status of the error table, each with the bus's error object.
        statuses = {str(int(s)) for s in HTTP_STATUS.values()}
        assert statuses <= set(operation["responses"]), command.method
        for status in statuses:
            response = deref(doc, operation["responses"][status])
            schema = deref(doc, response["content"]["application/json"]["schema"])
            assert ["error"] == schema["required"]
    # Notifications have no path: nobody calls them.
    assert "/v1/call/{target}/chat.token" not in doc["paths"]


def test_a_methods_own_errors_are_under_their_status() -> None:
    doc = build_document()
    responses = doc["paths"]["/v1/call/{target}/persona.generate"]["post"]["responses"]
    assert "no inference service is on the bus" in responses["503"]["description"]
    assert "persona_id is taken" in responses["422"]["description"]
    screenshot = doc["paths"]["/v1/call/{target}/screenshot"]["post"]["responses"]["500"]["description"]
    assert "NAVIGATION_FAILED (1004)" in screenshot


def test_bytes_are_the_bus_s_base64_object() -> None:
    doc = build_document()
    operation = doc["paths"]["/v1/call/{target}/screenshot"]["post"]
    result = operation["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["result"]
    provider = deref(doc, result["anyOf"][0])
    data = provider["properties"]["data"]
    assert {"$bytes"} == set(deref(doc, data)["properties"])


def test_the_mimic_routes_and_the_door_s_own_are_documented() -> None:
    doc = build_document()
    paths = doc["paths"]
    for route in MIMIC_ROUTES:
        operation = paths[route.path][route.http_method.lower()]
        assert route.method == operation["x-bus-method"]
        answer = deref(doc, operation["responses"]["200"]["content"]["application/json"]["schema"])
        assert set(REGISTRY[route.method].result.model_json_schema().get("properties", {})) == set(
            answer.get("properties", {})
        )
    analytics = paths["/api/mimic/persona/{id}/analytics"]["get"]["parameters"]
    assert {"id", "window"} <= {p.get("name") for p in analytics}
    recommendations = paths["/api/mimic/session/recommendations"]["get"]["parameters"]
    context = next(p for p in recommendations if p.get("name") == "context")
    assert ("deepObject", True) == (context["style"], context["explode"])
    participants = paths["/api/mimic/session/{id}/participants"]["post"]
    body = deref(doc, participants["requestBody"]["content"]["application/json"]["schema"])
    assert ["persona_id"] == body["required"]  # session_id is the path's
    assert MIMIC_HEALTH_PATH in paths
    for path in (
        "/v1/call/{target}/{method}",
        "/v1/events",
        "/v1/pair",
        "/healthz",
        "/metrics",
        "/openapi.json",
    ):
        assert path in paths
    for path in ("/v1/pair", "/healthz", "/openapi.json"):
        assert [] == next(iter(paths[path].values()))["security"]
    assert {"bearer": []} in doc["security"]
    assert "bearer" == doc["components"]["securitySchemes"]["bearer"]["scheme"]


async def test_a_real_bus_serves_it_without_a_token(bus: Bus) -> None:
    http = bus.url.replace("ws://", "http://")
    async with httpx.AsyncClient(base_url=http) as client:
        answer = await client.get("/openapi.json")
        again = await client.get("/openapi.json")
    assert 200 == answer.status_code
    assert answer.headers["content-type"].startswith("application/json")
    assert json.loads(json.dumps(build_document())) == answer.json() == again.json()


def test_the_status_table_in_docs_http_md_is_the_doors_table() -> None:
    text = (REPO / "docs" / "http.md").read_text("utf-8")
    section = text.split("## Errors and HTTP statuses", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| *(-?\d+) *\| *`?([A-Z_]+)`? *\| *(\d{3})\b", section, flags=re.M)
    assert rows, "no status table under '## Errors and HTTP statuses'"
    table = {ErrorCode(int(code)): int(status) for code, _, status in rows}
    assert {code: int(status) for code, status in HTTP_STATUS.items()} == table
    for code, name, _ in rows:
        assert ErrorCode(int(code)).name == name

"""The Mimic REST routes against real processes: the session's bus and SmolLM2 inference service
(``chat_services``), a real ``personad registry`` and a real persona daemon, called through HTTP.

Each route is one bus call, so what these tests can fail on is the translation: the right method
at the right target with the caller's token, path/query/body made into the params the method
validates, and its result (or the bus's error, with its status) as the answer. The persona's and
the registry's answers are checked against what they stored (a later read through another route or
through /v1/call), never against constants the door could make up.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.client import BusClient
from protocol import ErrorCode, RpcError
from tests.conftest import REPO, WAIT, ChatServices, Proc, run_cli

pytestmark = pytest.mark.slow

PERSONA = "mimic-ada"
#: persona.generate runs SmolLM2 for a whole profile (10-30 s on two busy cores).
GENERATE_DEADLINE_MS = int(WAIT * 16 * 1000)


@dataclass
class Mimic:
    services: ChatServices
    http: str
    admin: str

    def client(self, token: str | None = None, *, anonymous: bool = False) -> httpx.Client:
        headers = {} if anonymous else {"Authorization": f"Bearer {token or self.admin}"}
        return httpx.Client(base_url=self.http, headers=headers, timeout=GENERATE_DEADLINE_MS / 1000 + WAIT)


def call(client: httpx.Client, target: str, method: str, params: dict[str, Any] | None = None) -> Any:
    """A plain /v1/call (the door's generic route), to set up and to read back."""
    answer = client.post(f"/v1/call/{target}/{method}", json=params)
    assert 200 == answer.status_code, answer.text
    return answer.json()["result"]


def error_of(answer: httpx.Response) -> dict[str, Any]:
    error = answer.json()["error"]
    assert isinstance(error, dict)
    return error


@pytest.fixture(scope="module")
def mimic(chat_services: ChatServices) -> Iterator[Mimic]:
    http = chat_services.url.replace("ws://", "http://")
    found = Mimic(chat_services, http, chat_services.state.admin_token)  # type: ignore[attr-defined]
    started: list[Proc] = []
    try:
        with found.client() as client:
            clients = call(client, "bus", "bus.clients", {"capability": "registry"})["clients"]
            if not clients:  # another module of the session may have left one running
                registry = chat_services.start("registry", "--no-import")
                registry.wait_for_line(r"serving cap:registry")
                chat_services.drain(registry)
                started.append(registry)
            started.append(
                chat_services.start_persona(PERSONA, name="Ada", description="Reviews patent claims.")
            )
            # The registry's record of her: active, a precise patent examiner.
            profile = {
                "id": PERSONA,
                "name": "Ada",
                "role": "patent examiner",
                "description": "reviews patent claims against prior art",
                "status": "active",
                "traits": {"precision": 95},
            }
            call(client, "cap:registry", "persona.create", {"profile": profile})
        yield found
    finally:
        for proc in reversed(started):
            proc.stop()


def test_health_is_the_bus_s_plus_the_capabilities_served_now(mimic: Mimic) -> None:
    with mimic.client() as client:
        health = client.get("/api/mimic/health")
        healthz = client.get("/healthz").json()
        listed = call(client, "bus", "bus.clients")["clients"]
    assert 200 == health.status_code
    body = health.json()
    assert ("ok", healthz["version"], healthz["protocol"]) == (
        body["status"],
        body["version"],
        body["protocol"],
    )
    expected: dict[str, list[str]] = {}
    for c in listed:
        for capability in c["capabilities"]:
            expected.setdefault(f"cap:{capability}", []).append(c["id"])
    assert {cap: sorted(ids) for cap, ids in expected.items()} == body["capabilities"]
    assert {"cap:inference", "cap:registry"} <= set(body["capabilities"])


def test_performance_records_show_in_analytics(mimic: Mimic) -> None:
    base = f"/api/mimic/persona/{PERSONA}"
    with mimic.client() as client:
        ids = []
        for i, score in enumerate((90, 60)):
            record = {
                "session_id": f"s{i}",
                "task": "Claim review",
                "score": score,
                "success": score >= 70,
                "duration_s": 300,
                "context": {"tags": ["patents"]},
            }
            answer = client.post(f"{base}/performance", json=record)
            assert 200 == answer.status_code, answer.text
            ids.append(answer.json()["id"])
        analytics = client.get(f"{base}/analytics", params={"window": "7"})
        direct = call(client, f"persona:{PERSONA}", "persona.analytics", {"window": 7})
    assert ids[0] < ids[1]
    assert 200 == analytics.status_code, analytics.text
    body = analytics.json()
    # The same analysis as asked with the integer 7 (only the moment it was made differs).
    assert {**body, "generated_at": None} == {**direct, "generated_at": None}
    assert 7 == body["window_days"]
    assert (2, 75.0, 0.5) == (body["total_records"], body["average_score"], body["success_rate"])
    assert {"claim review": 2, "patents": 2} == {t["topic"]: t["records"] for t in body["top_topics"]}


def test_knowledge_is_added_then_found(mimic: Mimic) -> None:
    base = f"/api/mimic/persona/{PERSONA}/knowledge"
    items = [
        ("A claim is anticipated when one prior-art document discloses every element.", ["patents", "law"]),
        ("The office canteen serves soup on Fridays.", ["office"]),
    ]
    with mimic.client() as client:
        added = []
        for content, tags in items:
            answer = client.post(base, json={"content": content, "tags": tags, "relevance_score": 0.8})
            assert 200 == answer.status_code, answer.text
            added.append(answer.json())
        found = client.get(
            base,
            params=[
                ("query", "prior art anticipation"),
                ("tags", "patents"),
                ("tags", "law"),
                ("limit", "3"),
            ],
        )
    assert all(a["embedded"] for a in added)  # cap:inference embedded each one
    assert 200 == found.status_code, found.text
    hits = found.json()["hits"]
    assert [added[0]["id"]] == [h["id"] for h in hits]  # both tags required: the canteen is not a hit
    assert ["law", "patents"] == sorted(hits[0]["tags"])
    assert found.json()["reranked"]


def test_a_signed_plugin_is_installed_and_listed(mimic: Mimic, tmp_path: Path) -> None:
    state = mimic.services.state
    key = tmp_path / "signing.key"
    made = run_cli(state, "plugin", "keygen", "--out", str(key))
    assert 0 == made.returncode, made.stderr
    assert 0 == run_cli(state, "plugin", "trust", made.stdout.strip(), "--name", "mimic-test").returncode
    folder = shutil.copytree(REPO / "examples" / "plugins" / "summarise", tmp_path / "summarise")
    unsigned = tmp_path / "unsigned"
    shutil.copytree(folder, unsigned)
    assert 0 == run_cli(state, "plugin", "sign", str(folder), "--key", str(key)).returncode
    base = f"/api/mimic/persona/{PERSONA}"
    with mimic.client() as client:
        refused = client.post(f"{base}/plugin", json={"path": str(unsigned)})
        added = client.post(f"{base}/plugin", json={"path": str(folder)})
        listed = client.get(f"{base}/plugins")
    # The persona's own refusal, with its status: the door adds nothing.
    assert 403 == refused.status_code
    assert ErrorCode.FORBIDDEN == error_of(refused)["code"]
    assert 200 == added.status_code, added.text
    plugin = added.json()["plugin"]
    assert ("summarise", made.stdout.strip()) == (plugin["id"], plugin["signer"])
    assert 200 == listed.status_code
    assert [("summarise", plugin["signer"])] == [(p["id"], p["signer"]) for p in listed.json()["plugins"]]


def test_generate_then_fork_then_merge(mimic: Mimic) -> None:
    deadline = {"X-Deadline-Ms": str(GENERATE_DEADLINE_MS)}
    with mimic.client() as client:
        other = {"id": "mimic-bob", "name": "Bob", "role": "bookkeeper", "traits": {"precision": 40}}
        call(client, "cap:registry", "persona.create", {"profile": other})
        generated = client.post(
            "/api/mimic/persona/generate",
            json={"role": "tax adviser", "persona_id": "mimic-gen", "base_traits": {"precision": 80}},
            headers=deadline,
        )
        assert 200 == generated.status_code, generated.text
        fork = client.post(
            "/api/mimic/persona/fork",
            json={
                "source_persona_id": "mimic-gen",
                "new_persona_id": "mimic-gen-vat",
                "new_role": "VAT adviser",
            },
        )
        merged = client.post(
            "/api/mimic/persona/merge",
            json={
                "primary_persona_id": "mimic-gen-vat",
                "secondary_persona_id": "mimic-bob",
                "merge_strategy": "union",
                "name": "Bob and the VAT adviser",
                "description": "both at once",
            },
        )
        stored = {
            pid: call(client, "cap:registry", "persona.get", {"persona_id": pid})["profile"]
            for pid in ("mimic-gen", "mimic-gen-vat", "mimic-bob")
        }
    profile = generated.json()["profile"]
    assert ("mimic-gen", "tax adviser", "draft") == (profile["id"], profile["role"], profile["status"])
    assert profile["traits"] == stored["mimic-gen"]["traits"]
    assert 200 == fork.status_code, fork.text
    forked = fork.json()
    assert ("mimic-gen-vat", "VAT adviser") == (forked["persona_id"], forked["profile"]["role"])
    assert "mimic-gen" == stored["mimic-gen-vat"]["lineage"]["forked_from"]
    assert 200 == merged.status_code, merged.text
    union = merged.json()["profile"]
    assert ["mimic-gen-vat", "mimic-bob"] == union["lineage"]["merged_from"]
    assert max(stored["mimic-gen-vat"]["traits"]["precision"], 40) == union["traits"]["precision"]
    assert "merged" == stored["mimic-bob"]["status"]


def test_recommendations_and_adding_a_participant(mimic: Mimic) -> None:
    with mimic.client() as client:
        ranked = client.get(
            "/api/mimic/session/recommendations",
            params={"topic": "patent claims review", "limit": "5", "context[requires_precision]": "true"},
        )
        direct = call(
            client,
            "cap:registry",
            "session.recommendations",
            {"topic": "patent claims review", "limit": 5, "context": {"requires_precision": True}},
        )
        session = call(client, "cap:registry", "session.create", {"topic": "claim 1 of EP123"})["session"]
        path = f"/api/mimic/session/{session['id']}/participants"
        contradicted = client.post(path, json={"session_id": "s-000000000000", "persona_id": PERSONA})
        added = client.post(path, json={"persona_id": PERSONA})
        status = call(client, "cap:registry", "session.status", {"session_id": session["id"]})
    assert 200 == ranked.status_code, ranked.text
    order = [r["persona_id"] for r in ranked.json()["recommendations"]]
    assert [r["persona_id"] for r in direct["recommendations"]] == order
    assert PERSONA in order
    precision = next(r for r in ranked.json()["recommendations"] if r["persona_id"] == PERSONA)
    assert precision["online"]
    assert 422 == contradicted.status_code
    assert "session_id: the body says 's-000000000000'" in error_of(contradicted)["message"]
    assert 200 == added.status_code, added.text
    assert f"persona:{PERSONA}" in [p["client_id"] for p in added.json()["session"]["participants"]]
    listed = next(s for s in status["sessions"] if s["id"] == session["id"])
    assert f"persona:{PERSONA}" in [p["client_id"] for p in listed["participants"]]


def test_a_token_without_the_grant_gets_the_bus_s_forbidden(mimic: Mimic) -> None:
    observer, _ = mimic.services.state.tokens().add(name="mimic-observer", role="observer", subject="cli:*")

    async def over_websocket() -> RpcError:
        async with BusClient(mimic.services.url, token=observer, kind="cli", name="mimic-observer") as bus:
            with pytest.raises(RpcError) as refused:
                await bus.call("persona.analytics", {"window": 7}, to=f"persona:{PERSONA}")
            return refused.value

    expected = asyncio.run(over_websocket())
    with mimic.client(observer) as client:
        answer = client.get(f"/api/mimic/persona/{PERSONA}/analytics", params={"window": "7"})
        health = client.get("/api/mimic/health")  # observers may list clients
    assert 403 == answer.status_code
    assert {"code": int(ErrorCode.FORBIDDEN), "message": expected.message} == error_of(answer)
    assert ErrorCode.FORBIDDEN == expected.code
    assert 200 == health.status_code


def test_an_unknown_persona_is_target_offline(mimic: Mimic) -> None:
    with mimic.client() as client:
        answer = client.get("/api/mimic/persona/ghost/analytics")
    assert 503 == answer.status_code
    assert ErrorCode.TARGET_OFFLINE == error_of(answer)["code"]
    assert "persona:ghost" in error_of(answer)["message"]


def test_bad_requests_are_refused_with_the_bus_s_codes(mimic: Mimic) -> None:
    base = f"/api/mimic/persona/{PERSONA}"
    with mimic.client() as client:
        bad_body = client.post(f"{base}/performance", json={"session_id": "s", "task": "t", "score": "high"})
        not_json = client.post(
            f"{base}/performance", content=b"{", headers={"Content-Type": "application/json"}
        )
        unknown_key = client.get(f"{base}/analytics", params={"windw": "7"})
        not_a_number = client.get(f"{base}/analytics", params={"window": "seven"})
        twice = client.get(f"{base}/analytics", params=[("window", "7"), ("window", "8")])
        query_on_post = client.post(f"{base}/knowledge?content=x", json={"content": "x"})
        body_on_get = client.request("GET", f"{base}/plugins", content=b"{}")
    with mimic.client(anonymous=True) as anonymous:
        no_token = anonymous.get(f"{base}/analytics")
    # The persona's own validation (strict: "high" is not a number; missing members named).
    assert 422 == bad_body.status_code
    assert ErrorCode.INVALID_PARAMS == error_of(bad_body)["code"]
    assert {"score", "success", "duration_s"} == {e["loc"][0] for e in error_of(bad_body)["data"]}
    assert (400, ErrorCode.PARSE_ERROR) == (not_json.status_code, error_of(not_json)["code"])
    for refused, words in (
        (unknown_key, "invalid params: windw: Extra inputs are not permitted"),
        (not_a_number, "invalid params: window: Input should be a valid integer"),
        (twice, "invalid params: window: give it once"),
        (query_on_post, "takes its params as a JSON body"),
        (body_on_get, "takes its params in the query string"),
    ):
        assert 422 == refused.status_code, refused.text
        assert words in error_of(refused)["message"]
    assert 401 == no_token.status_code
    assert ErrorCode.UNAUTHENTICATED == error_of(no_token)["code"]

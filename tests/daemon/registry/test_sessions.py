"""session.* on a real bus: the registry serving cap:registry and real persona daemons.

One file (over 500 lines) because every test shares the persona daemons fixture and the
helpers for people on the bus, one test per session.* behaviour.

The personas are PersonaDaemons in this loop with their own brains; people
are plain bus clients. Nothing is faked: rooms are the bus's, the archive
is read back out of the persona's brain with brain.query.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from daemon.bus import Bus
from daemon.registry import cli_sessions
from daemon.registry import sessions_score as score
from daemon.registry.serve_sessions import TRANSCRIPT_BUDGET, Session, transcript
from daemon.state import StateDir
from protocol import ErrorCode, Notification, RpcError
from protocol.commands import sessions as m
from protocol.profile import TRAITS
from tests.conftest import eventually
from tests.daemon.registry.conftest import RunningPersona, Serving

pytestmark = pytest.mark.usefixtures("serving")


async def call(client: Any, method: str, params: dict[str, Any]) -> Any:
    return await client.call(method, params, to="cap:registry", deadline_ms=30_000)


def profile(pid: str, role: str, description: str, precision: int, **more: Any) -> dict[str, Any]:
    return {
        "id": pid,
        "name": pid.title(),
        "role": role,
        "description": description,
        "status": "active",
        "traits": {"precision": precision, "focus": precision},
        **more,
    }


@pytest.fixture
async def personas(bus: Bus, state: StateDir) -> AsyncIterator[Callable[[str], Any]]:
    started: list[RunningPersona] = []

    async def start(pid: str) -> RunningPersona:
        running = await RunningPersona(bus, state, pid).start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close()


class Person:
    """A person's client: it keeps the room messages it receives."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def __call__(self, message: Notification) -> None:
        if message.method == "room.message":
            assert isinstance(message.params, dict)
            self.messages.append(message.params)


async def expect_error(client: Any, method: str, params: dict[str, Any], code: ErrorCode) -> RpcError:
    with pytest.raises(RpcError) as exc:
        await call(client, method, params)
    assert code == exc.value.code, exc.value.message
    return exc.value


async def test_a_session_from_open_to_archive(
    connect: Callable[..., Any], personas: Callable[[str], Any]
) -> None:
    admin = await connect(name="admin")
    for pid in ("ada", "bob"):
        await call(admin, "persona.create", {"profile": profile(pid, "auditor", "checks ledgers", 80)})
    await personas("ada")
    await personas("bob")
    alice = Person()
    person = await connect(name="alice", on_notification=alice)

    created = (await call(admin, "session.create", {"topic": "Q3 ledger audit"}))["session"]
    assert created["id"].startswith("s-")
    assert "active" == created["status"]
    room = created["room"]
    added = await call(
        admin,
        "session.participants.add",
        {"session_id": created["id"], "persona_id": "ada", "user_id": "cli:alice"},
    )
    assert {"persona:ada", "cli:alice"} == {p["client_id"] for p in added["session"]["participants"]}
    await call(admin, "session.participants.add", {"session_id": created["id"], "persona_id": "bob"})
    # The personas joined the room themselves; the person was invited and joins.
    members = await admin.call("bus.room.members", {"room": room})
    assert {"registry:main", "persona:ada", "persona:bob"} <= set(members["members"])
    assert "registry:main" == members["owner"]
    await person.call("bus.room.join", {"room": room})

    shared = await call(
        admin,
        "session.insight",
        {
            "session_id": created["id"],
            "persona_id": "ada",
            "insight_type": "risk",
            "content": "invoice 4471 is booked twice",
            "relevance_score": 0.9,
        },
    )
    assert 1 == shared["insight"]["id"]
    assert 3 == shared["delivered"]
    await eventually(lambda: alice.messages, what="alice receives the insight")
    message = alice.messages[0]
    assert "registry:main" == message["sender"]
    assert room == message["room"]
    assert "invoice 4471 is booked twice" == message["data"]["insight"]["content"]
    # A participant persona received it and keeps it for the session.
    for pid in ("ada", "bob"):
        listed = await admin.call("persona.session.list", {}, to=f"persona:{pid}")
        [mine] = listed["sessions"]
        assert created["id"] == mine["session_id"]
        assert "risk" == mine["received"][0]["data"]["insight"]["insight_type"]

    # A room.message a client sends straight to the persona is not the bus's: ignored.
    forged = {"room": room, "sender": "registry:main", "data": {"type": "session.insight", "forged": True}}
    await admin.notify("room.message", forged, to="persona:ada")
    listed = await admin.call("persona.session.list", {}, to="persona:ada")  # served after the notification
    assert 1 == len(listed["sessions"][0]["received"])
    status = await call(admin, "session.status", {})
    assert 1 == status["insights_shared"]
    [only] = status["sessions"]
    assert 3 == len(only["participants"])
    assert 1 == only["insights"]

    closed = await call(admin, "session.close", {"session_id": created["id"]})
    assert "closed" == closed["session"]["status"]
    archived = {a["persona_id"]: a for a in closed["archived"]}
    assert {"ada", "bob"} == set(archived)
    assert all(a["interaction_id"] for a in archived.values())
    # The brain holds the transcript: ids and the insight.
    for pid in ("ada", "bob"):
        rows = (
            await admin.call(
                "brain.query",
                {"sql": "SELECT with_persona, room_id, learned FROM interactions"},
                to=f"persona:{pid}",
            )
        )["rows"]
        assert 1 == len(rows)
        assert f"session:{created['id']}" == rows[0][0]
        assert room == rows[0][1]
        assert "invoice 4471 is booked twice" in rows[0][2]
        assert "cli:alice" in rows[0][2]
    # The room is emptied and the personas forget the session.
    for pid in ("ada", "bob"):

        async def forgotten(pid: str = pid) -> bool:
            listed = await admin.call("persona.session.list", {}, to=f"persona:{pid}")
            return not listed["sessions"]

        await eventually(forgotten, what=f"{pid} forgets the session")
    assert [] == (await call(admin, "session.status", {}))["sessions"]
    await expect_error(admin, "session.close", {"session_id": created["id"]}, ErrorCode.INVALID_PARAMS)


async def test_recommendations_put_a_precise_knowledgeable_online_persona_first(
    connect: Callable[..., Any], personas: Callable[[str], Any]
) -> None:
    admin = await connect(name="admin")
    ledger = "audits ledgers and reconciles invoices"
    await call(admin, "persona.create", {"profile": profile("ada", "ledger auditor", ledger, 92)})
    await call(admin, "persona.create", {"profile": profile("bob", "ledger auditor", ledger, 92)})
    await call(admin, "persona.create", {"profile": profile("cyd", "poet", "writes verses", 20)})
    await call(admin, "persona.create", {"profile": profile("old", "ledger auditor", ledger, 99)})
    await call(admin, "persona.archive", {"persona_id": "old"})
    await personas("ada")
    await personas("cyd")  # bob stays offline

    answer = await call(
        admin,
        "session.recommendations",
        {"topic": "ledger audit of invoices", "context": {"requires_precision": True}, "limit": 10},
    )
    assert 3 == answer["considered"]  # the archived one is not a candidate
    ranked = [r["persona_id"] for r in answer["recommendations"]]
    assert ["ada", "bob", "cyd"] == ranked
    by_id = {r["persona_id"]: r for r in answer["recommendations"]}
    for rec in answer["recommendations"]:
        assert ["role_fit", "knowledge", "analytics", "traits", "availability"] == [
            p["name"] for p in rec["parts"]
        ]
        assert 1.0 == pytest.approx(sum(p["weight"] for p in rec["parts"]))
        assert rec["score"] == pytest.approx(sum(p["contribution"] for p in rec["parts"]), abs=1e-3)
        assert all(p["explanation"] for p in rec["parts"])
    parts = {name: {p["name"]: p for p in by_id[name]["parts"]} for name in by_id}
    assert 1.0 == parts["ada"]["role_fit"]["value"]
    assert "ledger" in parts["ada"]["role_fit"]["explanation"]
    assert "requires_precision" in parts["ada"]["traits"]["explanation"]
    assert parts["ada"]["traits"]["value"] > parts["cyd"]["traits"]["value"]
    assert "on the bus now" == parts["ada"]["availability"]["explanation"]
    assert not by_id["bob"]["online"]
    assert "not on the bus" == parts["bob"]["availability"]["explanation"]
    assert parts["bob"]["knowledge"]["explanation"].startswith("offline")
    assert 0.5 == parts["bob"]["analytics"]["value"]
    assert 0.0 == parts["cyd"]["role_fit"]["value"]
    # limit keeps the best
    top = await call(admin, "session.recommendations", {"topic": "ledger audit", "limit": 1})
    assert ["ada"] == [r["persona_id"] for r in top["recommendations"]]


async def test_knowledge_and_analytics_parts_come_from_the_persona(
    connect: Callable[..., Any], personas: Callable[[str], Any]
) -> None:
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": profile("ada", "auditor", "checks books", 70)})
    await call(admin, "persona.create", {"profile": profile("bob", "auditor", "checks books", 70)})
    await personas("ada")
    await personas("bob")
    for n in range(3):
        await admin.call(
            "persona.knowledge.add",
            {
                "content": f"Reconciliation rule {n}: match each invoice to a ledger line",
                "tags": ["ledger"],
            },
            to="persona:ada",
        )
    for n, score_ in enumerate((80, 90)):
        await admin.call(
            "persona.performance.record",
            {
                "session_id": f"s{n}",
                "task": "reconcile",
                "score": score_,
                "success": True,
                "duration_s": 60,
            },
            to="persona:ada",
        )
    answer = await call(admin, "session.recommendations", {"topic": "invoice reconciliation"})
    parts = {r["persona_id"]: {p["name"]: p for p in r["parts"]} for r in answer["recommendations"]}
    assert parts["ada"]["knowledge"]["value"] > 0
    assert "knowledge item(s) match" in parts["ada"]["knowledge"]["explanation"]
    assert 0.0 == parts["bob"]["knowledge"]["value"]
    # mean 85 and every record a success: 0.5 * 0.85 + 0.5 * 1
    assert pytest.approx(0.925) == parts["ada"]["analytics"]["value"]
    assert "average score 85.0/100" in parts["ada"]["analytics"]["explanation"]
    assert 0.5 == parts["bob"]["analytics"]["value"]
    assert "ada" == answer["recommendations"][0]["persona_id"]


async def test_bad_params_name_the_field_and_change_nothing(
    connect: Callable[..., Any], personas: Callable[[str], Any]
) -> None:
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": profile("ada", "auditor", "", 50)})
    await call(admin, "persona.create", {"profile": profile("arc", "auditor", "", 50)})
    await call(admin, "persona.archive", {"persona_id": "arc"})
    await personas("ada")
    sid = (await call(admin, "session.create", {"topic": "books"}))["session"]["id"]
    await call(admin, "session.participants.add", {"session_id": sid, "persona_id": "ada"})
    unknown = "s-000000000000"
    insight = {
        "session_id": sid,
        "persona_id": "ada",
        "insight_type": "note",
        "content": "x",
        "relevance_score": 0.5,
    }
    for method, params, field in (
        ("session.create", {"topic": ""}, "topic"),
        (
            "session.create",
            {"topic": "t", "context": {"requires_precision": "yes"}},
            "context.requires_precision",
        ),
        ("session.create", {"topic": "t", "context": {"requires_luck": True}}, "context.requires_luck"),
        ("session.recommendations", {"topic": "t", "limit": 0}, "limit"),
        ("session.status", {"session_id": "nope"}, "session_id"),
        ("session.status", {"session_id": unknown}, "session_id"),
        ("session.participants.add", {"session_id": unknown, "persona_id": "ada"}, "session_id"),
        ("session.participants.add", {"session_id": sid, "persona_id": "zed"}, "persona_id"),
        ("session.participants.add", {"session_id": sid, "persona_id": "arc"}, "persona_id"),
        (
            "session.participants.add",
            {"session_id": sid, "persona_id": "ada", "user_id": "nobody"},
            "user_id",
        ),
        ("session.insight", {**insight, "session_id": unknown}, "session_id"),
        ("session.insight", {**insight, "persona_id": "arc"}, "persona_id"),
        ("session.insight", {**insight, "relevance_score": 1.5}, "relevance_score"),
        ("session.insight", {**insight, "insight_type": "Not A Type"}, "insight_type"),
        ("session.insight", {**insight, "content": ""}, "content"),
        ("session.close", {"session_id": unknown}, "session_id"),
    ):
        error = await expect_error(admin, method, params, ErrorCode.INVALID_PARAMS)
        assert error.message.startswith(f"invalid params: {field}"), (method, error.message)
        # Schema errors list every problem with its loc; the handler's own name one field.
        named = ".".join(error.data[0]["loc"]) if isinstance(error.data, list) else error.data["field"]
        assert field == named, (method, error.data)
    [session] = (await call(admin, "session.status", {}))["sessions"]
    assert ["persona:ada"] == [p["client_id"] for p in session["participants"]]
    assert 0 == session["insights"]


async def test_an_offline_persona_cannot_be_added_and_leaves_no_invitation(
    connect: Callable[..., Any],
) -> None:
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": profile("bob", "auditor", "", 50)})
    created = (await call(admin, "session.create", {"topic": "books"}))["session"]
    error = await expect_error(
        admin,
        "session.participants.add",
        {"session_id": created["id"], "persona_id": "bob", "user_id": "cli:alice"},
        ErrorCode.TARGET_OFFLINE,
    )
    assert "bob" in error.message
    assert "persona_id" == (error.data or {}).get("field")
    room = await admin.call("bus.room.members", {"room": created["room"]})
    assert [] == room["invited"]
    assert [] == (await call(admin, "session.status", {}))["sessions"][0]["participants"]


async def test_who_may_call_sessions(
    connect: Callable[..., Any], personas: Callable[[str], Any], state: StateDir
) -> None:
    admin = await connect(name="admin")
    for pid in ("ada", "bob"):
        await call(admin, "persona.create", {"profile": profile(pid, "auditor", "", 50)})
    await personas("ada")
    sid = (await call(admin, "session.create", {"topic": "books"}))["session"]["id"]
    await call(admin, "session.participants.add", {"session_id": sid, "persona_id": "ada"})
    insight = {
        "session_id": sid,
        "persona_id": "ada",
        "insight_type": "note",
        "content": "x",
        "relevance_score": 0.5,
    }
    # An observer's token holds no session.* grant, a persona's only session.insight (the
    # registry then checks it posts as itself): everything else the bus refuses.
    persona = await connect(kind="persona", name="bob", token=state.persona_token("bob", create=True))
    observer = await connect(
        name="watch", token=state.issue_token(name="watch", role="observer", subject="cli:*").token
    )
    for client in (persona, observer):
        for method, params in (
            ("session.create", {"topic": "mine"}),
            ("session.status", {}),
            ("session.recommendations", {"topic": "t"}),
            ("session.participants.add", {"session_id": sid, "persona_id": "bob"}),
            ("session.insight", insight),
            ("session.close", {"session_id": sid}),
        ):
            await expect_error(client, method, params, ErrorCode.FORBIDDEN)
    # Nor may a persona make another join a room, or read its sessions.
    for method, params in (
        ("persona.session.join", {"session_id": sid, "room": "session-x", "topic": "t"}),
        ("persona.session.list", {}),
    ):
        with pytest.raises(RpcError) as exc:
            await persona.call(method, params, to="persona:ada")
        assert ErrorCode.FORBIDDEN == exc.value.code
    # A persona (its role grants session.insight) shares as itself only.
    await call(admin, "persona.create", {"profile": profile("cyd", "auditor", "", 50)})
    await personas("cyd")
    await call(admin, "session.participants.add", {"session_id": sid, "persona_id": "cyd"})
    cyd = await connect(kind="persona", name="cyd2", token=state.persona_token("cyd2", create=True))
    error = await expect_error(cyd, "session.insight", insight, ErrorCode.FORBIDDEN)
    assert "only as itself" in error.message
    assert 0 == (await call(admin, "session.status", {}))["insights_shared"]
    # The room itself is closed: bob's persona token cannot walk in.
    room = (await call(admin, "session.status", {"session_id": sid}))["sessions"][0]["room"]
    with pytest.raises(RpcError) as exc:
        await persona.call("bus.room.join", {"room": room})
    assert ErrorCode.FORBIDDEN == exc.value.code


def test_traits_follow_the_flag_table_with_negative_deltas_inverted() -> None:
    facts = score.PersonaFacts(
        id="a", name="A", role="r", words=frozenset(), traits={"humor": 10, "precision": 90, "focus": 50}
    )
    part = score.traits_fit(["formal"], facts)  # humor -15, precision +5
    assert pytest.approx((15 * 0.9 + 5 * 0.9) / 20, abs=1e-4) == part.value
    assert "lower is better" in part.explanation
    assert 0.5 == score.traits_fit([], facts).value


def test_content_words_fold_plurals_and_drop_stopwords() -> None:
    assert frozenset({"ledger", "audit", "invoice"}) == score.content_words(
        "The ledgers and the audits of invoices"
    )


def test_the_archived_transcript_keeps_the_most_relevant_within_budget() -> None:
    session = Session(
        id="s-0123456789ab",
        topic="t",
        room="session-0123456789ab",
        context=m.SessionContext(),
        created_at=0.0,
        created_by="cli:x",
    )
    for n in range(200):
        session.insights.append(
            m.InsightModel(
                id=n + 1,
                persona_id="ada",
                insight_type="note",
                content=f"{n:03d} " + "x" * 900,
                relevance_score=n / 200,
                shared_at=0.0,
                shared_by="cli:x",
            )
        )
    record = transcript(session)
    assert 200 == record["insights_total"]
    assert len(json.dumps(record)) <= TRANSCRIPT_BUDGET
    kept = [i["id"] for i in record["insights"]]
    assert kept == list(range(200, 200 - len(kept), -1))  # the most relevant first
    assert len(kept) > 10


def test_the_quick_score_that_orders_equals_the_explained_parts_sum() -> None:
    rng = random.Random(3)
    vocabulary = ["ledger", "audit", "invoice", "poem", "patent", "claim", "care", "budget"]
    words = score.content_words("ledger audit of patent claims")
    flag_sets: list[list[str]] = [[], ["requires_precision"], ["formal", "requires_empathy"]]
    answers: list[tuple[bool, Any, Any]] = [
        (False, None, None),
        (True, RpcError(ErrorCode.METHOD_NOT_FOUND, "no"), RpcError(ErrorCode.TIMEOUT, "slow")),
        (True, {"hits": [1, 2, 3]}, {"total_sessions": 4, "average_score": 77.7, "success_rate": 0.75}),
        (True, {"hits": list(range(9))}, {"total_sessions": 0, "average_score": None, "success_rate": None}),
    ]
    for n in range(300):
        persona = score.PersonaFacts(
            id=f"p{n}",
            name="P",
            role="r",
            words=frozenset(rng.sample(vocabulary, rng.randint(0, 5))),
            traits={t: rng.randint(0, 100) for t in TRAITS},
        )
        flags = flag_sets[n % 3]
        online, knowledge, analytics = answers[n % 4]
        full = score.recommendation(
            persona, words=words, flags=flags, is_online=online, knowledge=knowledge, analytics=analytics
        )
        remote = (
            score.knowledge_part(online, knowledge).contribution,
            score.analytics_part(online, analytics).contribution,
        )
        quick = score._quick(persona, words, score._flag_table(flags), online, remote)
        assert full.score == quick, (n, full.parts)


async def test_the_registry_reenters_a_room_it_was_taken_out_of(
    connect: Callable[..., Any], personas: Callable[[str], Any], serving: Serving
) -> None:
    admin = await connect(name="admin")
    for pid in ("ada", "bob"):
        await call(admin, "persona.create", {"profile": profile(pid, "auditor", "", 50)})
        await personas(pid)
    session = (await call(admin, "session.create", {"topic": "books"}))["session"]
    await call(admin, "session.participants.add", {"session_id": session["id"], "persona_id": "ada"})
    # What a reconnect does to the registry: it is no longer a member (ada keeps the room alive).
    await serving.service.client.call("bus.room.leave", {"room": session["room"]})
    await call(admin, "session.participants.add", {"session_id": session["id"], "persona_id": "bob"})
    params = {"session_id": session["id"], "persona_id": "ada", "insight_type": "note", "content": "c"}
    shared = await call(admin, "session.insight", {**params, "relevance_score": 0.5})
    assert 2 == shared["delivered"]
    await serving.service.client.call("bus.room.leave", {"room": session["room"]})
    closed = await call(admin, "session.close", {"session_id": session["id"]})
    assert all(a["interaction_id"] for a in closed["archived"])
    room = await admin.call("bus.room.members", {"room": session["room"]})
    assert [] == room["members"]
    assert [] == room["invited"]


async def test_the_cli_verbs_print_the_ranking_explained_and_the_open_sessions(
    connect: Callable[..., Any],
    personas: Callable[[str], Any],
    bus: Bus,
    state: StateDir,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PERSONAD_TOKEN", raising=False)
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": profile("ada", "ledger auditor", "audits ledgers", 90)})
    await call(admin, "persona.create", {"profile": profile("cyd", "poet", "writes verses", 10)})
    await personas("ada")
    parser = argparse.ArgumentParser()
    verbs = parser.add_subparsers(dest="verb")
    handlers = cli_sessions.add_verbs(lambda name, help: verbs.add_parser(name, help=help))

    async def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        code: int = await asyncio.to_thread(handlers[args.verb], args, state, bus.url)
        return code

    assert 0 == await run("session-recommend", "ledger audit", "--flag", "requires_precision", "--limit", "2")
    out = capsys.readouterr().out.splitlines()
    assert "2 active personas scored for 'ledger audit'" == out[0]
    assert out[1].startswith("1. ada ")
    assert "online" in out[1]
    assert any("traits" in line and "requires_precision: precision 90" in line for line in out)
    assert any(line.startswith("2. cyd ") and "offline" in line for line in out)
    assert 0 == await run("sessions")
    assert "no open sessions" == capsys.readouterr().out.strip()
    sid = (await call(admin, "session.create", {"topic": "books"}))["session"]["id"]
    await call(admin, "session.participants.add", {"session_id": sid, "persona_id": "ada"})
    assert 0 == await run("sessions")
    listed = capsys.readouterr().out
    assert f"{sid}  'books'" in listed
    assert "participants: persona:ada; insights: 0" in listed
    assert 1 == await run("session-recommend", "ledger", "--limit", "0")
    assert "invalid params: limit" in capsys.readouterr().err

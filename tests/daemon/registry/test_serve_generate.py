"""persona.generate on a real bus: the registry serving, a real inference service on the tiny model.

The tiny random model writes noise, but under the profile's grammar every
answer is a profile; what these tests check is what the registry does with
it: the id, the store, the audit log, the event, the start handshake, and
every way a request is refused without changing anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from daemon.bus import Bus
from daemon.cli import build_parser
from daemon.inference.adapters import AdapterStore
from daemon.inference.engine import AsyncEngine
from daemon.registry import serve_generate
from daemon.registry.audit import verify
from daemon.registry.cli_generate import _generate, generate_params
from daemon.registry.events import PUBLISHER, TOPIC
from daemon.registry.generate import NAME_PATTERN
from daemon.registry.serve_generate import free_id, slug
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from protocol.commands.personas import BASE_TRAIT_BAND, CONTEXT_FLAG_EFFECTS, MAX_FREE_ADJUSTMENT
from protocol.messages import Notification
from protocol.profile import PERSONA_ID_PATTERN, TRAITS, Profile
from tests.conftest import WAIT, eventually
from tests.daemon.inference.conftest import serving_inference
from tests.daemon.registry.conftest import Serving

DEADLINE_MS = int(WAIT * 8 * 1000)


@pytest.fixture
async def inference(bus: Bus, state: StateDir, store: AdapterStore, load_tiny: Any) -> AsyncIterator[None]:
    """``personad inference``'s service on the tiny random model, in this loop, as inference:main."""
    loaded = load_tiny()
    # A random model has no real context limit (RoPE): room for a whole profile spelt byte by byte.
    loaded.model.config.max_position_embeddings = 4096
    engine = await AsyncEngine.open(state_root=store.root.parent, store=store, loaded=loaded)
    try:
        async with serving_inference(bus, state, engine):
            yield
    finally:
        await engine.close()


async def generate(client: Any, params: dict[str, Any], deadline_ms: int = DEADLINE_MS) -> Any:
    return await client.call("persona.generate", params, to="cap:registry", deadline_ms=deadline_ms)


async def events_of(connect: Callable[..., Any]) -> list[Notification]:
    """A client subscribed to registry.persona; the list fills as events arrive."""
    inbox: list[Notification] = []
    watcher = await connect(name="watcher", on_notification=inbox.append)
    await watcher.subscribe(TOPIC)
    return inbox


def audit_entries(serving: Serving) -> list[dict[str, Any]]:
    path = serving.registry.audit.path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


REQUEST: dict[str, Any] = {
    "role": "patent attorney",
    "base_traits": {"precision": 85, "humor": 10},
    "context": {"requires_precision": True, "formal": True, "notes": "a small firm"},
    "user_preferences": {"style": "plain and exact", "detail_level": "detailed", "notes": "no jargon"},
}


def expected_traits(result: dict[str, Any]) -> dict[str, int]:
    """The documented rule, from the request and the adjustments the result reports."""
    given = REQUEST["base_traits"]
    values = {t: given.get(t, 50) for t in TRAITS}
    for adj in result["adjustments"]:
        band = BASE_TRAIT_BAND if adj["trait"] in given else MAX_FREE_ADJUSTMENT
        start = values[adj["trait"]]
        values[adj["trait"]] = min(100, start + band, max(0, start - band, start + adj["requested"]))
    for flag in ("requires_precision", "formal"):
        for trait, delta in CONTEXT_FLAG_EFFECTS[flag].items():
            values[trait] = min(100, max(0, values[trait] + delta))
    return values


@pytest.mark.usefixtures("inference")
async def test_generate_stores_audits_and_announces(serving: Serving, connect: Callable[..., Any]) -> None:
    inbox = await events_of(connect)
    admin = await connect(name="admin")
    result = await generate(admin, REQUEST)

    profile = Profile.model_validate(result["profile"])  # valid as a whole
    pid = result["persona_id"]
    assert pid == profile.id == slug(profile.name)
    assert ("patent attorney", "draft", False) == (profile.role, profile.status.value, result["started"])
    assert re.fullmatch(NAME_PATTERN, profile.name)
    assert re.fullmatch(PERSONA_ID_PATTERN, pid)
    # Base traits within the band, then the flags; preferences override the model.
    assert expected_traits(result) == profile.traits.model_dump()
    for adj in result["adjustments"]:
        if adj["trait"] in REQUEST["base_traits"]:
            assert abs(adj["applied"]) <= BASE_TRAIT_BAND
    assert ("plain and exact", "detailed", "no jargon") == (
        profile.communication.style,
        profile.communication.detail_level,
        profile.communication.notes,
    )
    applied = {(f["flag"], f["trait"]) for f in result["context_applied"]}
    assert {("requires_precision", "precision"), ("requires_precision", "focus")} <= applied
    assert {("formal", "humor"), ("formal", "precision")} <= applied

    # Stored, as returned.
    got = await admin.call("persona.get", {"persona_id": pid}, to="cap:registry")
    assert result["profile"] == got["profile"]
    # Audited: who and which record, never the words.
    entries = audit_entries(serving)
    assert [(pid, admin.client_id)] == [(e["persona_id"], e["actor"]) for e in entries]
    assert profile.description not in serving.registry.audit.path.read_text()
    assert verify(serving.registry.audit.path).ok
    # Announced, by the registry.
    await eventually(lambda: inbox, what="the registry.persona event")
    assert (TOPIC, PUBLISHER) == (inbox[0].params["topic"], inbox[0].params["publisher"])  # type: ignore[index]
    assert {"persona_id": pid, "status": "draft", "action": "persona.generate", "start": False} == (
        inbox[0].params["data"]  # type: ignore[index]
    )


@pytest.mark.usefixtures("inference")
async def test_start_waits_for_the_daemon_to_join(
    serving: Serving, connect: Callable[..., Any], state: StateDir
) -> None:
    """start: true stores it active; whoever follows the event starts it; started says it came."""
    joined: list[Any] = []

    async def start_it(note: Notification) -> None:
        # What personad up does on the event, with a persona client standing in for the daemon.
        data = note.params["data"]  # type: ignore[index]
        if note.params["publisher"] == PUBLISHER and data["start"]:  # type: ignore[index]
            pid = data["persona_id"]
            token = state.persona_token(pid, create=True)
            joined.append(await connect(kind="persona", name=pid, token=token))

    follower = await connect(name="follower", on_notification=start_it)
    await follower.subscribe(TOPIC)
    admin = await connect(name="admin")
    result = await generate(admin, {"role": "night nurse", "persona_id": "nell", "start": True})
    assert ("nell", "active", True) == (result["persona_id"], result["profile"]["status"], result["started"])
    assert ["persona:nell"] == [c.client_id for c in joined]
    got = await admin.call("persona.get", {"persona_id": "nell"}, to="cap:registry")
    assert "active" == got["profile"]["status"]


@pytest.mark.usefixtures("inference")
async def test_start_with_nobody_to_start_it_answers_not_started(
    serving: Serving, connect: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under systemd nobody follows the event: after the bounded wait the answer says started false.

    The wait is shortened (the model's time is not: a loaded machine may take
    seconds), so the test shows the outcome, not how long it takes.
    """
    monkeypatch.setattr(serve_generate, "START_WAIT_SECONDS", 1.0)
    admin = await connect(name="admin")
    result = await generate(admin, {"role": "clerk", "start": True}, deadline_ms=int(WAIT * 4000))
    assert (False, "active") == (result["started"], result["profile"]["status"])
    got = await admin.call("persona.get", {"persona_id": result["persona_id"]}, to="cap:registry")
    assert "active" == got["profile"]["status"]


@pytest.mark.usefixtures("inference")
async def test_a_taken_id_is_refused_before_the_model_runs(
    serving: Serving, connect: Callable[..., Any]
) -> None:
    admin = await connect(name="admin")
    await admin.call(
        "persona.create", {"profile": {"id": "ada", "name": "Ada", "role": "tutor"}}, to="cap:registry"
    )
    before = audit_entries(serving)
    with pytest.raises(RpcError) as exc:
        await generate(admin, {"role": "tutor", "persona_id": "ada"})
    assert ErrorCode.INVALID_PARAMS == exc.value.code
    assert {"field": "persona_id", "reason": "persona_exists"} == exc.value.data
    assert exc.value.message.startswith("invalid params: persona_id:")
    assert before == audit_entries(serving)
    got = await admin.call("persona.get", {"persona_id": "ada"}, to="cap:registry")
    assert ("Ada", "tutor") == (got["profile"]["name"], got["profile"]["role"])


async def test_ids_are_slugs_of_the_name_first_free(serving: Serving) -> None:
    assert ("ada", "o-neil", "mary-jane", "persona") == (
        slug("Ada"),
        slug("O'Neil"),
        slug("Mary-Jane "),
        slug("'-'"),
    )
    assert len(slug("Abcdefghijkl" * 8)) <= 19  # with "-999", still a systemd instance name (23)
    registry = serving.registry
    assert "ada" == await registry.run(free_id, "ada")
    for pid in ("ada", "ada-2", "adam", "ada-x"):
        await registry.create(
            Profile.model_validate({"id": pid, "name": "Ada", "role": "tutor"}), actor="test"
        )
    assert "ada-3" == await registry.run(free_id, "ada")
    assert "adam-2" == await registry.run(free_id, "adam")


async def test_no_inference_is_target_offline_and_stores_nothing(
    serving: Serving, connect: Callable[..., Any]
) -> None:
    inbox = await events_of(connect)
    admin = await connect(name="admin")
    with pytest.raises(RpcError) as exc:
        await generate(admin, {"role": "gardener", "start": True})
    assert ErrorCode.TARGET_OFFLINE == exc.value.code
    assert [] == (await admin.call("persona.list", {}, to="cap:registry"))["personas"]
    assert [] == audit_entries(serving)
    # A later event proves none came before it (events from one publisher arrive in order).
    await admin.call("persona.create", {"profile": {"id": "x", "name": "X", "role": "r"}}, to="cap:registry")
    await eventually(lambda: inbox, what="the create event")
    assert ["x"] == [n.params["data"]["persona_id"] for n in inbox]  # type: ignore[index]


@pytest.mark.usefixtures("inference")
async def test_persona_and_observer_tokens_are_refused(
    serving: Serving, connect: Callable[..., Any], state: StateDir
) -> None:
    persona = await connect(kind="persona", name="ada", token=state.persona_token("ada", create=True))
    observer = await connect(
        name="watch", token=state.issue_token(name="watch", role="observer", subject="cli:*").token
    )
    for client in (persona, observer):
        with pytest.raises(RpcError) as exc:
            await generate(client, {"role": "spy", "start": True})
        assert ErrorCode.FORBIDDEN == exc.value.code
    assert [] == audit_entries(serving)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "role"),
        ({"role": ""}, "role"),
        ({"role": 7}, "role"),
        ({"role": "x", "persona_id": "Bad Id"}, "persona_id"),
        ({"role": "x", "start": "yes"}, "start"),
        ({"role": "x", "base_traits": {"humor": 101}}, "base_traits.humor"),
        ({"role": "x", "context": {"requires_magic": True}}, "context.requires_magic"),
        ({"role": "x", "user_preferences": {"detail_level": "huge"}}, "user_preferences.detail_level"),
        ({"role": "x", "colour": "red"}, "colour"),
    ],
)
async def test_bad_params_name_the_field(
    serving: Serving, connect: Callable[..., Any], params: dict[str, Any], field: str
) -> None:
    admin = await connect(name="admin")
    with pytest.raises(RpcError) as exc:
        await generate(admin, params)
    assert ErrorCode.INVALID_PARAMS == exc.value.code
    assert f"invalid params: {field}:" in exc.value.message
    assert field == ".".join(exc.value.data[0]["loc"])  # the validator's data: one entry per error
    assert [] == audit_entries(serving)


# -- the CLI verb ----------------------------------------------------------------------


def cli_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["persona-generate", *argv])


@pytest.mark.usefixtures("inference")
async def test_cli_prints_the_profile_and_what_the_rules_did(
    serving: Serving, bus: Bus, state: StateDir, connect: Callable[..., Any], capsys: Any
) -> None:
    args = cli_args(
        "court clerk",
        "--trait",
        "precision=80",  # the model may move it 10 either way: formal's +5 always fits
        "--flag",
        "formal",
        "--style",
        "terse",
        "--detail",
        "brief",
        "--id",
        "clerk",
    )
    assert {
        "role": "court clerk",
        "start": False,
        "base_traits": {"precision": 80},
        "context": {"formal": True},
        "user_preferences": {"style": "terse", "detail_level": "brief"},
        "persona_id": "clerk",
    } == generate_params(args)
    # The verb runs its own event loop (as in a terminal): on a thread beside the test's.
    assert 0 == await asyncio.to_thread(_generate, args, state, bus.url)
    out = capsys.readouterr().out
    admin = await connect(name="admin")
    profile = (await admin.call("persona.get", {"persona_id": "clerk"}, to="cap:registry"))["profile"]
    lines = out.splitlines()
    assert f"clerk: {profile['name']}, court clerk (draft)" == lines[0]
    assert "  communication: terse; brief" == lines[2]
    assert "  traits: " + "  ".join(f"{t} {profile['traits'][t]}" for t in TRAITS) == lines[3]
    assert "    formal: humor -15" in lines
    assert "    formal: precision +5" in lines

    # An error is printed with its code, exit status 1: the id is taken now.
    assert 1 == await asyncio.to_thread(_generate, args, state, bus.url)
    assert "persona_id: persona 'clerk' already exists" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["humour=50", "focus=101", "focus=high", "focus"])
def test_cli_refuses_a_bad_trait_before_calling(bad: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_args("clerk", "--trait", bad)
    assert 2 == exc.value.code
    assert f"argument --trait: {bad!r}" in capsys.readouterr().err

"""Seeding: announcing, what a peer says it holds, rate-limited pieces, and who may call what."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from daemon.bus import Bus
from daemon.client import BusClient
from daemon.inference.adapters import WEIGHTS_FILE, AdapterStore
from daemon.mesh.manifest import parse_manifest, verify_manifest
from daemon.mesh.peer import PieceLimits
from daemon.mesh.service import MESH_GRANTS, default_base_model_id
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from protocol.commands.skills import ANNOUNCED_TOPIC, HAVE_TOPIC
from tests.conftest import WAIT, eventually, run_cli, start_bus_process
from tests.daemon.registry.test_bundle import make_adapter

from .conftest import PIECE, Mesh


async def _listener(connect: Any, *topics: str) -> tuple[BusClient, list[dict[str, Any]]]:
    heard: list[dict[str, Any]] = []

    def on_event(note: Any) -> None:
        if note.method == "event":
            heard.append(note.params)

    client = await connect(on_notification=on_event)
    await client.subscribe(*topics)
    return client, heard


async def test_announce_signs_saves_and_publishes_the_skill_and_its_unannounced_parents(
    mesh: Mesh, connect: Any
) -> None:
    a = mesh.installation("a")
    law = a.adapter("law", seed=1)
    patents = a.adapter("law.patents", seed=2)
    await mesh.start(a)
    _, heard = await _listener(connect, ANNOUNCED_TOPIC, HAVE_TOPIC)
    admin = await connect()

    result = await admin.call(
        "skill.announce",
        {"skill": "law.patents", "piece_size": PIECE, "effectiveness": 0.7, "usage_scenarios": ["claims"]},
        to=a.node,
    )

    manifest = parse_manifest(result["manifest"])
    assert verify_manifest(manifest, expected_id=result["skill_id"]) == result["skill_id"]
    assert manifest.adapter_sha256 == patents.sha256
    assert [(p.name, p.sha256) for p in manifest.parents] == [("law", law.sha256)]
    assert manifest.base_model_id == "SmolLM2-135M-Instruct"
    assert len(manifest.piece_hashes) == -(-patents.bytes // PIECE)
    saved = sorted(p.stem for p in (a.state.root / "mesh" / "manifests").glob("*.json"))
    assert len(saved) == 2
    assert (a.state.root / "mesh" / "manifests").stat().st_mode & 0o777 == 0o700
    assert {(a.state.root / "mesh" / "manifests" / f"{s}.json").stat().st_mode & 0o777 for s in saved} == {
        0o600
    }
    await eventually(lambda: len([e for e in heard if e["topic"] == ANNOUNCED_TOPIC]) == 2)
    announced = [parse_manifest(e["data"]) for e in heard if e["topic"] == ANNOUNCED_TOPIC]
    assert [mf.skill for mf in announced] == ["law", "law.patents"]  # the parent first
    assert {e["publisher"] for e in heard} == {a.node}
    await eventually(
        lambda: any(e["topic"] == HAVE_TOPIC and len(e["data"]["skill_ids"]) == 2 for e in heard)
    )
    held = await admin.call("skill.held", {}, to=a.node)
    assert held["node"] == a.node
    assert {e["skill"] for e in held["skills"]} == {"law", "law.patents"}
    # Announcing again signs the skill anew but not its parent, which has a manifest.
    await admin.call("skill.announce", {"skill": "law.patents", "piece_size": PIECE}, to=a.node)
    assert len(list((a.state.root / "mesh" / "manifests").glob("*.json"))) == 3


async def test_announcing_an_adapter_the_store_lacks_names_the_field(mesh: Mesh, connect: Any) -> None:
    a = mesh.installation("a")
    await mesh.start(a)
    admin = await connect()
    with pytest.raises(RpcError) as refused:
        await admin.call("skill.announce", {"skill": "nothing.here"}, to=a.node)
    assert refused.value.code == ErrorCode.INVALID_PARAMS
    assert refused.value.data == {"field": "skill"}


async def test_pieces_are_the_store_bytes_and_a_restarted_peer_still_seeds(mesh: Mesh, connect: Any) -> None:
    """skill.piece reads the store object; the catalogue survives a restart and is re-announced on connect."""
    a = mesh.installation("a")
    record = a.adapter("writer", seed=3)
    await mesh.start(a)
    admin = await connect()
    sid = (await admin.call("skill.announce", {"skill": "writer", "piece_size": PIECE}, to=a.node))[
        "skill_id"
    ]
    weights = (record.path / WEIGHTS_FILE).read_bytes()
    piece = await admin.call("skill.piece", {"skill_id": sid, "index": 1}, to=a.node)
    assert piece["data"] == weights[PIECE : 2 * PIECE]

    await mesh.stop(a)
    _, heard = await _listener(connect, HAVE_TOPIC)
    await mesh.start(a)

    await eventually(lambda: any(e["data"]["skill_ids"] == [sid] for e in heard))
    assert (await admin.call("skill.have", {"skill_id": sid}, to=a.node)) == {
        "skill_id": sid,
        "have": True,
        "pieces": -(-len(weights) // PIECE),
    }
    # Deleting the adapter from the store stops the seeding: the catalogue alone is not enough.
    a.store.delete("writer")
    assert (await admin.call("skill.have", {"skill_id": sid}, to=a.node))["have"] is False


async def test_a_requester_over_its_rate_is_overloaded_and_others_are_not(mesh: Mesh, connect: Any) -> None:
    a = mesh.installation("a")
    a.adapter("writer", seed=4)
    # A burst of 4 pieces, then 1 byte a second: the 5th piece is far off.
    await mesh.start(a, limits=PieceLimits(rate_bytes_s=1, burst_pieces=4))
    greedy, other = await connect(), await connect()
    sid = (await greedy.call("skill.announce", {"skill": "writer", "piece_size": PIECE}, to=a.node))[
        "skill_id"
    ]
    for index in range(4):
        await greedy.call("skill.piece", {"skill_id": sid, "index": index}, to=a.node)

    with pytest.raises(RpcError) as over:
        await greedy.call("skill.piece", {"skill_id": sid, "index": 4}, to=a.node)

    assert over.value.code == ErrorCode.OVERLOADED
    assert over.value.data["retry_after_ms"] > 0
    served = await other.call("skill.piece", {"skill_id": sid, "index": 4}, to=a.node)
    assert len(served["data"]) == PIECE
    held = await other.call("skill.held", {}, to=a.node)
    assert held["skills"][0]["pieces_served"] == 5


async def test_bad_piece_params_name_the_field(mesh: Mesh, connect: Any) -> None:
    a = mesh.installation("a")
    a.adapter("writer", seed=5)
    await mesh.start(a)
    admin = await connect()
    sid = (await admin.call("skill.announce", {"skill": "writer", "piece_size": PIECE}, to=a.node))[
        "skill_id"
    ]
    cases = [
        ({"skill_id": sid, "index": -1}, "index"),
        ({"skill_id": "not-hex", "index": 0}, "skill_id"),
        ({"skill_id": sid, "index": 4000}, "index"),  # valid on the wire, past this skill's last piece
        ({"skill_id": "0" * 64, "index": 0}, "skill_id"),  # a skill this peer does not seed
    ]
    for params, field in cases:
        with pytest.raises(RpcError) as bad:
            await admin.call("skill.piece", params, to=a.node)
        assert bad.value.code == ErrorCode.INVALID_PARAMS, params
        assert f"invalid params: {field}:" in bad.value.message, params
    with pytest.raises(RpcError) as bad:
        await admin.call("skill.fetch", {"skill_id": sid.upper()}, to=a.node)
    assert "invalid params: skill_id:" in bad.value.message


async def test_who_may_call_what(mesh: Mesh, connect: Any, state: StateDir, bus: Bus) -> None:
    """Personas fetch, through their own installation's peer only; pieces and announcing are not theirs."""
    a, other = mesh.installation("a"), mesh.installation("other")
    a.adapter("writer", seed=6)
    a.persona_folder("ada")
    other.persona_folder("zed")
    await mesh.start(a)
    admin = await connect()
    sid = (await admin.call("skill.announce", {"skill": "writer", "piece_size": PIECE}, to=a.node))[
        "skill_id"
    ]

    ada = await connect(
        token=state.issue_token(name="persona:ada", role="persona", subject="persona:ada").token,
        kind="persona",
        name="ada",
    )
    for method, params in (
        ("skill.piece", {"skill_id": sid, "index": 0}),
        ("skill.have", {"skill_id": sid}),
        ("skill.announce", {"skill": "writer"}),
    ):
        with pytest.raises(RpcError) as refused:
            await ada.call(method, params, to=a.node)
        assert refused.value.code == ErrorCode.FORBIDDEN, method
    # Its own installation's persona may fetch (here: the peer already holds it).
    assert (await ada.call("skill.fetch", {"skill_id": sid}, to=a.node))["installed"] is False

    zed = await connect(
        token=state.issue_token(name="persona:zed", role="persona", subject="persona:zed").token,
        kind="persona",
        name="zed",
    )
    with pytest.raises(RpcError) as foreign:
        await zed.call("skill.fetch", {"skill_id": sid}, to=a.node)
    assert foreign.value.code == ErrorCode.FORBIDDEN
    assert "persona:zed" in foreign.value.message

    watcher = await connect(
        token=state.issue_token(name="watch", role="observer", subject="cli:*").token, name="watch"
    )
    with pytest.raises(RpcError) as observer:
        await watcher.call("skill.fetch", {"skill_id": sid}, to=a.node)
    assert observer.value.code == ErrorCode.FORBIDDEN


def test_the_base_model_is_named_without_loading_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("PERSONAD_MODEL", raising=False)
    assert default_base_model_id() == "SmolLM2-135M-Instruct"
    assert default_base_model_id(str(tmp_path / "smollm2-135m-instruct")) == "SmolLM2-135M-Instruct"
    monkeypatch.setenv("PERSONAD_MODEL", str(tmp_path / "Qwen2.5-0.5B-Instruct") + "/")
    assert default_base_model_id() == "Qwen2.5-0.5B-Instruct"


def test_the_cli_serves_announces_fetches_and_lists(spawn: Any, state: StateDir, tmp_path: Any) -> None:
    """Real processes: `personad skills serve` for two installations, then announce, fetch, held, popular."""
    _, url = start_bus_process(spawn)
    home = AdapterStore.for_state(state.root)
    record = home.import_folder(make_adapter(tmp_path / "src", seed=21, rank=8, width=1024), "writer")
    serve_main = spawn("skills", "serve", env={"PERSONAD_URL": url})
    serve_main.wait_for_line(r"personad skills: mesh:main seeding")
    serve_main.wait_for_line(r"personad skills: tracker skills:tracker serving cap:skills")
    other = tmp_path / "other" / "state"
    other.mkdir(parents=True, mode=0o700)
    token = state.issue_token(name="mesh:b", role="service", subject="mesh:b", grants=MESH_GRANTS).token
    serve_b = spawn(
        "skills",
        "serve",
        "--node",
        "b",
        "--no-tracker",
        env={"PERSONAD_URL": url, "PERSONAD_STATE_DIR": str(other), "PERSONAD_MESH_TOKEN": token},
    )
    serve_b.wait_for_line(r"personad skills: mesh:b seeding 0 skill")

    announced = run_cli(
        state, "skills", "announce", "writer", "--piece-size", str(PIECE), "--scenario", "x", url=url
    )
    assert announced.returncode == 0, announced.stderr
    sid = announced.stdout.split()[0]
    fetched = run_cli(state, "skills", "fetch", sid, "--node", "b", url=url)

    assert fetched.returncode == 0, fetched.stderr
    assert "installed writer" in fetched.stdout
    assert "pieces   [" in fetched.stderr
    assert AdapterStore.for_state(other).get("writer").sha256 == record.sha256
    held = run_cli(state, "skills", "held", "--node", "mesh:b", url=url)
    assert [s["skill_id"] for s in json.loads(held.stdout)["skills"]] == [sid]
    deadline = time.monotonic() + WAIT
    while True:  # the tracker applies events in the background; poll until it ranks the skill
        popular = run_cli(state, "skills", "popular", url=url)
        assert popular.returncode == 0, popular.stderr
        if (
            sid in {s["skill_id"] for s in json.loads(popular.stdout)["skills"]}
            or time.monotonic() > deadline
        ):
            break
    assert sid in {s["skill_id"] for s in json.loads(popular.stdout)["skills"]}
    again = run_cli(state, "skills", "fetch", sid, "--node", "b", url=url)
    assert "already in the store" in again.stdout
    assert serve_b.stop() == 0
    assert serve_main.stop() == 0


def test_a_requester_with_its_requests_in_flight_is_overloaded_until_one_ends() -> None:
    """The in-flight cap counts admitted, unreleased pieces per requester; others have their own."""
    from daemon.mesh.peer import RateLimiter

    limiter = RateLimiter(PieceLimits(rate_bytes_s=1 << 30, burst_pieces=64, max_concurrent=2))
    limiter.admit("mesh:greedy", PIECE, PIECE)
    limiter.admit("mesh:greedy", PIECE, PIECE)
    with pytest.raises(RpcError) as over:
        limiter.admit("mesh:greedy", PIECE, PIECE)
    assert over.value.code == ErrorCode.OVERLOADED
    assert "2 piece requests already in flight" in over.value.message
    assert over.value.data["retry_after_ms"] >= 10
    limiter.admit("mesh:other", PIECE, PIECE)
    limiter.release("mesh:greedy")
    limiter.admit("mesh:greedy", PIECE, PIECE)

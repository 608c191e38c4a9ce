"""Skill sharing's acceptance: a persona acquires a skill from three seeders, one of them corrupt,
loads it and chats with it, through a real bus, real mesh peers, the tracker and a real model."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.bus import Bus
from daemon.inference.adapters import WEIGHTS_FILE, AdapterStore
from daemon.inference.engine import AsyncEngine
from daemon.inference.model import load_model
from daemon.inference.service import InferenceService, service_token
from daemon.state import StateDir
from tests.conftest import WAIT, eventually
from tests.daemon.inference.conftest import build_tiny_model, save_random_adapter
from tests.daemon.mesh.test_swarm import _corrupt
from tests.daemon.persona.test_skills_acquire import PIECE, Installation, installations

#: The model every installation here runs (their peers refuse adapters for another).
TINY = "tiny-llama"


@pytest.fixture
async def world(bus: Bus, state: StateDir, tmp_path: Path) -> AsyncIterator[Callable[[str], Installation]]:
    async with installations(bus, state, tmp_path) as make:
        yield make


@pytest.fixture
async def inference(bus: Bus, state: StateDir, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start the inference service over an installation's own adapter store (one per test)."""
    running: list[tuple[asyncio.Event, asyncio.Task[None], AsyncEngine]] = []

    async def start(model_dir: Path, store: AdapterStore) -> None:
        loaded = load_model(model_dir, state_root=tmp_path)
        engine = await AsyncEngine.open(state_root=tmp_path, store=store, loaded=loaded)
        service = InferenceService(engine, url=bus.url, token=service_token(state, "main"))
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(service.run(stop)), engine))
        await eventually(lambda: "inference:main" in bus.router.clients, what="inference connected")

    try:
        yield start
    finally:
        for stop, task, engine in running:
            stop.set()
            await asyncio.wait_for(task, WAIT)
            await engine.close()


async def test_a_persona_acquires_from_three_seeders_one_corrupt_loads_the_skill_and_chats(
    world: Callable[[str], Installation], inference: Callable[..., Any], connect: Any, tmp_path: Path
) -> None:
    model_dir = build_tiny_model(tmp_path / TINY)
    a, b, c, home = (world(name) for name in ("a", "b", "c", "home"))
    # Rank 64 on every projection, so the skill has dozens of pieces and each seeder is asked for some;
    # B scaled up so that the skill visibly changes the random model's greedy reply.
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    folder = save_random_adapter(
        model_dir, tmp_path / "adapter", seed=3, rank=64, targets=targets, scale=40.0
    )
    record = a.store.import_folder(folder, "writer", meta={"base_model": TINY})
    for inst in (a, b, c, home):
        await inst.start(base_model_id=TINY)
    admin = await connect(name="admin")
    announced = await admin.call(
        "skill.announce",
        {"skill": "writer", "piece_size": PIECE, "effectiveness": 0.9, "usage_scenarios": ["writing"]},
        to=a.node,
    )
    sid = announced["skill_id"]
    assert len(announced["manifest"]["piece_hashes"]) >= 12
    for seeder in (b, c):
        got = await admin.call("skill.fetch", {"skill_id": sid}, to=seeder.node, deadline_ms=int(WAIT * 1000))
        assert got["installed"] is True
    _corrupt(c.store.get("writer").path / WEIGHTS_FILE)

    async def three_seeders() -> bool:
        found = await admin.call("skill.seeders", {"skill_id": sid}, to="cap:skills")
        return {s["node"] for s in found["seeders"]} == {a.node, b.node, c.node}

    await eventually(three_seeders, what="three seeders at the tracker")
    await inference(model_dir, home.store)

    async with home.persona("ada"):
        greedy = {"message": "hello", "max_tokens": 8, "temperature": 0.0}
        base = await admin.call("chat", greedy, to="persona:ada")
        result = await admin.call(
            "skill.acquire", {"skill": "writer", "load": True}, to="persona:ada", deadline_ms=int(WAIT * 1000)
        )
        fetch = result["fetch"]
        assert fetch["banned"] == [c.node]
        assert set(fetch["seeders"]) <= {a.node, b.node, c.node}
        assert sum(fetch["seeders"].values()) >= len(announced["manifest"]["piece_hashes"])
        installed = home.store.get("writer")
        assert hashlib.sha256((installed.path / WEIGHTS_FILE).read_bytes()).hexdigest() == record.sha256
        assert (result["recorded"], result["loaded"]) == (True, True)

        # The persona answers with the acquired skill on its stack, and the skill changes the answer.
        reply = await admin.call("chat", greedy, to="persona:ada")
        assert [entry["name"] for entry in reply["stack"]] == ["writer"]
        assert reply["stack"][0]["sha256"] == record.sha256
        assert base["stack"] == []
        assert reply["reply"] != base["reply"]
        (skill,) = (await admin.call("skills.list", {}, to="persona:ada"))["skills"]
        assert (skill["lora_hash"], skill["source"]["skill_id"]) == (record.sha256, sid)

    # Acquirers: the operator (who had b and c fetch it: one acquirer) and ada.
    popular = await admin.call("skill.popular", {}, to="cap:skills")
    assert [(p["skill_id"], p["acquirers"]) for p in popular["skills"]] == [(sid, 2)]

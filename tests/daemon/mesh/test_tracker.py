"""The skills tracker on a real bus: real signed manifests of real adapters, published by clients
whose tokens bind them to ``mesh:*`` ids, and a tracker that keeps its tables on disk."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.bus import Bus
from daemon.client import BusClient
from daemon.inference.adapters import AdapterStore
from daemon.mesh.manifest import build_manifest, skill_id
from daemon.mesh.tracker import SkillTracker, tracker_token
from daemon.registry.bundle_keys import SigningKey
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from protocol.commands.skills import ACQUIRED_TOPIC, ANNOUNCED_TOPIC, HAVE_TOPIC, SkillManifest
from tests.conftest import WAIT, eventually
from tests.daemon.registry.test_bundle import make_adapter

PIECE = 16 * 1024
BASE = "SmolLM2-135M-Instruct"


@contextlib.asynccontextmanager
async def tracker(bus: Bus, state: StateDir) -> AsyncIterator[SkillTracker]:
    """The tracker as skills:tracker on ``bus``, subscribed, until the block ends."""
    service = SkillTracker(url=bus.url, token=tracker_token(state), state=state)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await service.client.wait_connected(WAIT)
    await eventually(
        lambda: any(s.client_id == "skills:tracker" for s in bus.router.topics.match(ANNOUNCED_TOPIC)),
        what="the tracker subscribed",
    )
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


@pytest.fixture
def manifests(tmp_path: Path) -> Callable[..., SkillManifest]:
    """Factory: ``manifests("legal", seed=1)`` signs a manifest of a real adapter stored under that name."""
    store = AdapterStore.for_state(tmp_path / "publisher")
    key = SigningKey.generate()
    counter = itertools.count()

    def make(name: str, *, seed: int, effectiveness: float | None = None) -> SkillManifest:
        folder = make_adapter(tmp_path / f"adapter-{next(counter)}", seed=seed)
        record = store.import_folder(folder, name)
        return build_manifest(
            store, record, key, base_model_id=BASE, piece_size=PIECE, effectiveness=effectiveness
        )

    return make


async def mesh_peer(state: StateDir, connect: Any, node: str) -> BusClient:
    """A client as mesh:<node> (a service token bound to that id), as a real peer joins."""
    token = state.own_token(f"mesh-{node}.token", name=f"mesh-{node}", role="service", subject=f"mesh:{node}")
    client: BusClient = await connect(token=token, kind="mesh", name=node)
    return client


async def known(admin: BusClient, sid: str) -> bool:
    answer = await admin.call("skill.manifest", {"skill_id": sid}, to="cap:skills")
    return bool(answer["skill_ids"])


async def test_announced_manifests_are_served_by_id_name_and_hash(
    bus: Bus, state: StateDir, connect: Any, manifests: Callable[..., SkillManifest]
) -> None:
    older = manifests("legal", seed=1)
    newer = manifests("legal.patent", seed=2)
    async with tracker(bus, state):
        peer = await mesh_peer(state, connect, "alpha")
        admin = await connect(name="admin")
        for manifest in (older, newer):
            await peer.publish(ANNOUNCED_TOPIC, manifest.model_dump(mode="json"))
        await eventually(lambda: known(admin, skill_id(newer)), what="the second manifest recorded")
        await eventually(lambda: known(admin, skill_id(older)), what="the first manifest recorded")

        by_id = await admin.call("skill.manifest", {"skill_id": skill_id(older)}, to="cap:skills")
        assert by_id["skill_ids"] == [skill_id(older)]
        assert SkillManifest.model_validate(by_id["manifests"][0]) == older
        by_name = await admin.call("skill.manifest", {"skill": "legal.patent"}, to="cap:skills")
        assert by_name["skill_ids"] == [skill_id(newer)]
        by_hash = await admin.call(
            "skill.manifest", {"adapter_sha256": older.adapter_sha256}, to="cap:skills"
        )
        assert by_hash["skill_ids"] == [skill_id(older)]
        unknown = await admin.call("skill.manifest", {"skill": "nothing"}, to="cap:skills")
        assert unknown == {"manifests": [], "skill_ids": []}


async def test_a_tampered_manifest_is_ignored(
    bus: Bus, state: StateDir, connect: Any, manifests: Callable[..., SkillManifest]
) -> None:
    good = manifests("legal", seed=1)
    tampered = good.model_copy(update={"effectiveness": 0.99})  # signed as null
    async with tracker(bus, state):
        peer = await mesh_peer(state, connect, "alpha")
        admin = await connect(name="admin")
        await peer.publish(ANNOUNCED_TOPIC, tampered.model_dump(mode="json"))
        await peer.publish(ANNOUNCED_TOPIC, {"skill": "not a manifest"})
        # Events are applied in order: once the good one is in, the two before it were seen.
        await peer.publish(ANNOUNCED_TOPIC, good.model_dump(mode="json"))
        await eventually(lambda: known(admin, skill_id(good)), what="the good manifest recorded")
        assert not await known(admin, skill_id(tampered))
        by_name = await admin.call("skill.manifest", {"skill": "legal"}, to="cap:skills")
        assert by_name["skill_ids"] == [skill_id(good)]


async def test_events_from_publishers_that_are_not_mesh_peers_are_ignored(
    bus: Bus, state: StateDir, connect: Any, manifests: Callable[..., SkillManifest]
) -> None:
    first, second = manifests("legal", seed=1), manifests("cooking", seed=2)
    async with tracker(bus, state):
        admin = await connect(name="admin")
        persona = await connect(token=state.persona_token("eve", create=True), kind="persona", name="eve")
        # An admin and a persona publish on the skill topics; neither is a mesh peer.
        await admin.publish(ANNOUNCED_TOPIC, first.model_dump(mode="json"))
        await persona.publish(ANNOUNCED_TOPIC, first.model_dump(mode="json"))
        peer = await mesh_peer(state, connect, "alpha")
        await peer.publish(ANNOUNCED_TOPIC, second.model_dump(mode="json"))
        await eventually(lambda: known(admin, skill_id(second)), what="the peer's manifest recorded")
        assert not await known(admin, skill_id(first))

        await peer.publish(ANNOUNCED_TOPIC, first.model_dump(mode="json"))
        for by in ("persona:a", "persona:b", "persona:c"):
            await persona.publish(ACQUIRED_TOPIC, {"skill_id": skill_id(first), "by": by})
        await persona.publish(HAVE_TOPIC, {"skill_ids": [skill_id(first)]})
        await peer.publish(ACQUIRED_TOPIC, {"skill_id": skill_id(second), "by": "persona:a"})

        async def second_acquired() -> bool:
            got = await admin.call("skill.popular", {}, to="cap:skills")
            return any(e["skill_id"] == skill_id(second) and e["acquirers"] == 1 for e in got["skills"])

        await eventually(second_acquired, what="the peer's acquisition recorded")
        popular = await admin.call("skill.popular", {}, to="cap:skills")
        assert [e["skill_id"] for e in popular["skills"]] == [skill_id(second)]  # first: no demand at all
        seeders = await admin.call("skill.seeders", {"skill_id": skill_id(first)}, to="cap:skills")
        assert seeders["seeders"] == []


async def test_seeders_are_the_peers_on_the_bus_that_said_so(
    bus: Bus, state: StateDir, connect: Any, manifests: Callable[..., SkillManifest]
) -> None:
    legal, cooking = manifests("legal", seed=1), manifests("cooking", seed=2)
    async with tracker(bus, state):
        admin = await connect(name="admin")
        alpha = await mesh_peer(state, connect, "alpha")
        beta = await mesh_peer(state, connect, "beta")
        await alpha.publish(ANNOUNCED_TOPIC, legal.model_dump(mode="json"))
        await alpha.publish(ANNOUNCED_TOPIC, cooking.model_dump(mode="json"))
        await alpha.publish(HAVE_TOPIC, {"skill_ids": [skill_id(legal), skill_id(cooking)]})
        await beta.publish(HAVE_TOPIC, {"skill_ids": [skill_id(legal)]})

        async def seeding(sid: str) -> list[str]:
            got = await admin.call("skill.seeders", {"skill_id": sid}, to="cap:skills")
            return sorted(s["node"] for s in got["seeders"])

        await eventually(
            lambda: _equal(seeding(skill_id(legal)), ["mesh:alpha", "mesh:beta"]), what="both seed legal"
        )
        # A new have replaces the peer's previous set: alpha stops seeding cooking.
        await alpha.publish(HAVE_TOPIC, {"skill_ids": [skill_id(legal)]})
        await eventually(lambda: _equal(seeding(skill_id(cooking)), []), what="alpha no longer seeds cooking")
        await beta.close()
        await eventually(lambda: _equal(seeding(skill_id(legal)), ["mesh:alpha"]), what="beta gone")


async def _equal(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_popular_counts_distinct_acquirers_and_requests(
    bus: Bus, state: StateDir, connect: Any, manifests: Callable[..., SkillManifest]
) -> None:
    wide, narrow = manifests("legal", seed=1, effectiveness=0.8), manifests("cooking", seed=2)
    async with tracker(bus, state):
        admin = await connect(name="admin")
        peer = await mesh_peer(state, connect, "alpha")
        for manifest in (wide, narrow):
            await peer.publish(ANNOUNCED_TOPIC, manifest.model_dump(mode="json"))
        await peer.publish(HAVE_TOPIC, {"skill_ids": [skill_id(wide)]})
        # narrow: one acquirer, three times; wide: three acquirers.
        for _ in range(3):
            await peer.publish(ACQUIRED_TOPIC, {"skill_id": skill_id(narrow), "by": "persona:a"})
        for by in ("persona:a", "persona:b", "mesh:alpha"):
            await peer.publish(ACQUIRED_TOPIC, {"skill_id": skill_id(wide), "by": by})
        await peer.publish(HAVE_TOPIC, {"skill_ids": [skill_id(wide), skill_id(narrow)]})

        async def settled() -> Any:
            got = await admin.call("skill.popular", {"limit": 10, "window_h": 1}, to="cap:skills")
            entries = {e["skill"]: e for e in got["skills"]}
            if entries.get("cooking", {}).get("seeders") == 1:  # the last event is in
                return got
            return None

        popular = await eventually(settled, what="every event recorded")
        first, second = popular["skills"]
        assert (first["skill_id"], first["acquirers"], first["seeders"]) == (skill_id(wide), 3, 1)
        assert first["effectiveness"] == 0.8
        assert first["publisher"] == wide.publisher
        assert (second["skill_id"], second["acquirers"]) == (skill_id(narrow), 1)
        assert first["score"] == 3.0
        assert second["score"] == 1.0

        # Requests count callers, not calls: one client asking in a loop is one request.
        for _ in range(5):
            await admin.call("skill.seeders", {"skill_id": skill_id(narrow)}, to="cap:skills")
        for name in ("asker-1", "asker-2"):
            asker = await connect(name=name)
            await asker.call("skill.seeders", {"skill_id": skill_id(narrow)}, to="cap:skills")
        popular = await admin.call("skill.popular", {"limit": 1}, to="cap:skills")
        assert len(popular["skills"]) == 1
        assert popular["skills"][0]["requests"] == 0  # wide still leads: 3 > 1 + 0.3
        narrow_now = (await admin.call("skill.popular", {}, to="cap:skills"))["skills"][1]
        assert (narrow_now["requests"], narrow_now["score"]) == (3, 1.3)


async def test_the_tables_survive_a_restart(
    bus: Bus, state: StateDir, connect: Any, manifests: Callable[..., SkillManifest]
) -> None:
    legal = manifests("legal", seed=1)
    admin = await connect(name="admin")
    peer = await mesh_peer(state, connect, "alpha")
    async with tracker(bus, state):
        await peer.publish(ANNOUNCED_TOPIC, legal.model_dump(mode="json"))
        await peer.publish(HAVE_TOPIC, {"skill_ids": [skill_id(legal)]})
        await peer.publish(ACQUIRED_TOPIC, {"skill_id": skill_id(legal), "by": "persona:a"})

        async def recorded() -> bool:
            got = await admin.call("skill.popular", {}, to="cap:skills")
            return bool(got["skills"]) and got["skills"][0]["acquirers"] == 1

        await eventually(recorded, what="the acquisition recorded")
    path = state.root / "mesh" / "tracker.sqlite3"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    async with tracker(bus, state):
        assert await known(admin, skill_id(legal))
        popular = await admin.call("skill.popular", {}, to="cap:skills")
        assert [(e["skill_id"], e["acquirers"], e["seeders"]) for e in popular["skills"]] == [
            (skill_id(legal), 1, 1)
        ]
        seeders = await admin.call("skill.seeders", {"skill_id": skill_id(legal)}, to="cap:skills")
        assert [s["node"] for s in seeders["seeders"]] == ["mesh:alpha"]


async def test_bad_params_name_the_field_and_only_granted_tokens_may_ask(
    bus: Bus, state: StateDir, connect: Any
) -> None:
    sid = "ab" * 32
    async with tracker(bus, state):
        admin = await connect(name="admin")
        for params, field in (
            ({"skill_id": sid, "skill": "legal"}, "skill_id, skill, adapter_sha256"),
            ({}, "skill_id, skill, adapter_sha256"),
            ({"skill_id": "xyz"}, "skill_id"),
        ):
            with pytest.raises(RpcError) as caught:
                await admin.call("skill.manifest", params, to="cap:skills")
            assert caught.value.code == ErrorCode.INVALID_PARAMS
            assert field in caught.value.message
        with pytest.raises(RpcError) as caught:
            await admin.call("skill.popular", {"limit": 0}, to="cap:skills")
        assert caught.value.code == ErrorCode.INVALID_PARAMS
        assert "limit" in caught.value.message

        token, _ = state.tokens().add(name="watcher", role="observer", subject="*")
        observer = await connect(token=token, kind="cli", name="watcher")
        with pytest.raises(RpcError) as caught:
            await observer.call("skill.popular", {}, to="cap:skills")
        assert caught.value.code == ErrorCode.FORBIDDEN
        persona = await connect(token=state.persona_token("eve", create=True), kind="persona", name="eve")
        assert (await persona.call("skill.seeders", {"skill_id": sid}, to="cap:skills"))["seeders"] == []


async def test_the_tracker_subscribes_again_after_the_bus_drops_it(
    bus: Bus, state: StateDir, connect: Any, manifests: Callable[..., SkillManifest]
) -> None:
    legal = manifests("legal", seed=1)
    async with tracker(bus, state) as service:
        admin = await connect(name="admin")
        peer = await mesh_peer(state, connect, "alpha")
        await bus.router.clients["skills:tracker"].ws.close()  # the bus forgets its subscriptions with it
        await eventually(lambda: service.client.reconnects == 1, what="the tracker reconnected")
        await eventually(
            lambda: any(s.client_id == "skills:tracker" for s in bus.router.topics.match(ANNOUNCED_TOPIC)),
            what="the tracker subscribed again",
        )
        await peer.publish(ANNOUNCED_TOPIC, legal.model_dump(mode="json"))
        await eventually(lambda: known(admin, skill_id(legal)), what="an announcement after the reconnection")


def test_the_tracker_token_provides_skills_and_calls_nothing_but_the_bus(state: StateDir) -> None:
    entry = state.tokens().verify(tracker_token(state))
    assert entry is not None
    assert entry.subject == "skills:tracker"
    assert set(entry.grants) == {"bus.*", "provide:skills"}

"""A persona acquiring skills: the automatic policy as a pure function, and skill.acquire through a real
bus with a real persona daemon, a real tracker and real signed manifests of real adapters.

The download itself is the installation's mesh peer's (daemon/mesh/service.py); the end-to-end tests
through a running peer are at the end of this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.brain.records import Skill
from daemon.bus import Bus
from daemon.client import BusClient
from daemon.inference.adapters import AdapterStore
from daemon.mesh.manifest import build_manifest, skill_id
from daemon.mesh.tracker import SkillTracker, tracker_token
from daemon.persona.config import PersonaConfig, SkillsConfig
from daemon.persona.skills import DAY_S, decide, spent_today
from daemon.registry.bundle_keys import SigningKey
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from protocol.commands.skills import ANNOUNCED_TOPIC, SkillManifest
from tests.conftest import WAIT, eventually
from tests.daemon.persona.running import running_persona
from tests.daemon.registry.test_bundle import make_adapter

PIECE = 16 * 1024
BASE = "SmolLM2-135M-Instruct"
NOW = 1_800_000_000.0


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def manifests(tmp_path: Path, key: SigningKey) -> Callable[..., SkillManifest]:
    """Factory: a manifest signed by ``key`` for a real adapter stored under ``name``."""
    store = AdapterStore.for_state(tmp_path / "publisher")
    counter = itertools.count()

    def make(name: str, *, seed: int, effectiveness: float | None = 0.9) -> SkillManifest:
        record = store.import_folder(make_adapter(tmp_path / f"adapter-{next(counter)}", seed=seed), name)
        return build_manifest(
            store, record, key, base_model_id=BASE, piece_size=PIECE, effectiveness=effectiveness
        )

    return make


def mesh_skill(name: str, *, at: float, size: int, sid: str = "ab" * 32, sha: str = "cd" * 32) -> Skill:
    """A brain row as skill.acquire records it."""
    return Skill(
        skill_id=name,
        lora_hash=sha,
        description=None,
        effectiveness=None,
        rated_uses=0,
        usage_count=0,
        acquired_at=datetime.fromtimestamp(at, UTC),
        last_used_at=None,
        source={"via": "mesh", "skill_id": sid, "size": size, "acquired_at": at},
    )


# -- the policy, as a pure function -----------------------------------------------------------


def test_each_refusal_names_its_reason(manifests: Callable[..., SkillManifest], key: SigningKey) -> None:
    manifest = manifests("legal", seed=1, effectiveness=0.5)
    sid = skill_id(manifest)
    trusted = SkillsConfig(auto=True, trusted_publishers=[key.public_hex])

    assert decide(manifest, sid, trusted, [], NOW).take
    refusals = {
        "is not trusted": (SkillsConfig(auto=True), []),
        "below 0.6": (trusted.model_copy(update={"min_effectiveness": 0.6}), []),
        "over max_bytes": (trusted.model_copy(update={"max_bytes": manifest.size - 1}), []),
        "held already": (trusted, [mesh_skill("other", at=0, size=1, sha=manifest.adapter_sha256)]),
        "daily_count is 1": (
            trusted.model_copy(update={"daily_count": 1}),
            [mesh_skill("cooking", at=NOW - 60, size=1)],
        ),
        "over daily_bytes": (
            trusted.model_copy(update={"daily_bytes": manifest.size + 99}),
            [mesh_skill("cooking", at=NOW - 60, size=100)],
        ),
    }
    for reason, (config, skills) in refusals.items():
        decision = decide(manifest, sid, config, skills, NOW)
        assert not decision.take, reason
        assert reason in decision.reason
        assert "legal" in decision.reason
    # Held by id too (the same skill recorded under another name).
    assert (
        "held already" in decide(manifest, sid, trusted, [mesh_skill("x", at=0, size=1, sid=sid)], NOW).reason
    )


def test_no_effectiveness_counts_as_zero(manifests: Callable[..., SkillManifest], key: SigningKey) -> None:
    manifest = manifests("legal", seed=1, effectiveness=None)
    config = SkillsConfig(auto=True, trusted_publishers=[key.public_hex])
    assert decide(manifest, skill_id(manifest), config, [], NOW).take
    floor = config.model_copy(update={"min_effectiveness": 0.01})
    assert "effectiveness 0 is below 0.01" in decide(manifest, skill_id(manifest), floor, [], NOW).reason


def test_the_budget_is_the_last_24_hours(manifests: Callable[..., SkillManifest], key: SigningKey) -> None:
    manifest = manifests("legal", seed=1)
    sid = skill_id(manifest)
    config = SkillsConfig(auto=True, trusted_publishers=[key.public_hex], daily_count=2)
    earlier = [mesh_skill("a", at=NOW - 3600, size=10), mesh_skill("b", at=NOW - DAY_S + 60, size=20)]
    # A row made here (no source) or fetched another way never counts.
    made_here = Skill("mine", None, None, None, 0, 0, datetime.fromtimestamp(NOW, UTC), None, None)
    assert spent_today([*earlier, made_here], NOW).count == 2
    assert spent_today([*earlier, made_here], NOW).bytes == 30
    assert not decide(manifest, sid, config, earlier, NOW).take
    # Two minutes later the older one is more than a day old: the budget has room again.
    later = NOW + 120
    assert spent_today(earlier, later).count == 1
    assert decide(manifest, sid, config, earlier, later).take


def test_the_config_section_is_strict() -> None:
    with pytest.raises(ValueError, match="trusted_publishers"):
        PersonaConfig.model_validate({"id": "ada", "name": "Ada", "skills": {"trusted_publishers": ["xyz"]}})
    with pytest.raises(ValueError, match="extra"):
        PersonaConfig.model_validate({"id": "ada", "name": "Ada", "skills": {"autoo": True}})
    assert PersonaConfig(id="ada", name="Ada").skills == SkillsConfig(
        node="mesh:main",
        auto=False,
        trusted_publishers=[],
        min_effectiveness=0.0,
        max_bytes=64 << 20,
        daily_count=5,
        daily_bytes=256 << 20,
        load=False,
    )


# -- through the bus ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tracker(bus: Bus, state: StateDir) -> AsyncIterator[SkillTracker]:
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


async def announcer(state: StateDir, connect: Any, node: str) -> BusClient:
    """A client holding a mesh:<node> token: what a peer publishes with."""
    token = state.own_token(f"mesh-{node}.token", name=f"mesh-{node}", role="service", subject=f"mesh:{node}")
    client: BusClient = await connect(token=token, kind="mesh", name=node)
    return client


async def test_acquire_errors_say_what_is_missing(
    bus: Bus, state: StateDir, connect: Any, manifests: Callable[..., SkillManifest]
) -> None:
    manifest = manifests("legal", seed=1)
    admin = await connect(name="admin")
    async with running_persona(bus, state, "ada"):
        # No tracker on the bus.
        with pytest.raises(RpcError) as caught:
            await admin.call("skill.acquire", {"skill": "legal"}, to="persona:ada")
        assert caught.value.code == ErrorCode.TARGET_OFFLINE
        async with tracker(bus, state):
            with pytest.raises(RpcError) as caught:
                await admin.call("skill.acquire", {"skill": "legal"}, to="persona:ada")
            assert caught.value.code == ErrorCode.INVALID_PARAMS
            assert caught.value.data == {"field": "skill"}
            with pytest.raises(RpcError) as caught:
                await admin.call("skill.acquire", {"skill_id": "ab" * 32}, to="persona:ada")
            assert caught.value.data == {"field": "skill_id"}

            peer = await announcer(state, connect, "alpha")
            await peer.publish(ANNOUNCED_TOPIC, manifest.model_dump(mode="json"))

            async def known() -> bool:
                got = await admin.call("skill.manifest", {"skill": "legal"}, to="cap:skills")
                return bool(got["manifests"])

            await eventually(known, what="the manifest at the tracker")
            # The manifest is known, but this installation's peer (mesh:main) is not on the bus.
            with pytest.raises(RpcError) as caught:
                await admin.call("skill.acquire", {"skill": "legal"}, to="persona:ada")
            assert caught.value.code == ErrorCode.TARGET_OFFLINE
            assert "mesh:main" in caught.value.message
        skills = await admin.call("skills.list", {}, to="persona:ada")
        assert skills["skills"] == []


async def test_only_the_operator_may_make_a_persona_acquire(bus: Bus, state: StateDir, connect: Any) -> None:
    async with running_persona(bus, state, "ada"):
        # Another persona's own token (as its daemon holds it).
        bob = await connect(token=state.persona_token("bob", create=True), kind="persona", name="bob")
        with pytest.raises(RpcError) as caught:
            await bob.call("skill.acquire", {"skill": "legal"}, to="persona:ada")
        assert caught.value.code == ErrorCode.FORBIDDEN
        # The admin reaches the persona (which then finds no tracker).
        admin = await connect(name="admin")
        with pytest.raises(RpcError) as caught:
            await admin.call("skill.acquire", {"skill": "legal"}, to="persona:ada")
        assert caught.value.code == ErrorCode.TARGET_OFFLINE
        assert "cap:skills" in caught.value.message


async def test_automatic_acquisition_takes_only_trusted_verified_announcements(
    bus: Bus, state: StateDir, connect: Any, manifests: Callable[..., SkillManifest], key: SigningKey
) -> None:
    trusted = manifests("legal", seed=1)
    other = SigningKey.generate()
    store = AdapterStore.for_state(state.root)
    untrusted = build_manifest(
        store,
        store.import_folder(make_adapter(state.root / "untrusted-adapter", seed=3), "cooking"),
        other,
        base_model_id=BASE,
        piece_size=PIECE,
    )
    tampered = trusted.model_copy(update={"effectiveness": 1.0})
    config = PersonaConfig(
        id="ada", name="Ada", skills=SkillsConfig(auto=True, trusted_publishers=[key.public_hex])
    )
    async with running_persona(bus, state, "ada", config=config) as daemon:
        assert daemon.skills is not None
        acquirer = daemon.skills
        await eventually(
            lambda: any(s.client_id == "persona:ada" for s in bus.router.topics.match(ANNOUNCED_TOPIC)),
            what="the persona subscribed",
        )
        admin = await connect(name="admin")
        peer = await announcer(state, connect, "alpha")
        # A trusted manifest published by a non-mesh client is not even considered.
        await admin.publish(ANNOUNCED_TOPIC, trusted.model_dump(mode="json"))
        for manifest in (tampered, untrusted, trusted):
            await peer.publish(ANNOUNCED_TOPIC, manifest.model_dump(mode="json"))
        await eventually(lambda: len(acquirer.decisions) == 2, what="two decisions")
        refused, taken = acquirer.decisions
        assert not refused.take
        assert "cooking" in refused.reason
        assert "not trusted" in refused.reason
        # Taken; with no tracker and no peer on the bus, the acquisition itself fails, and says so.
        assert "legal" in taken.reason
        assert "trusted publisher" in taken.reason
        assert "the acquisition failed" in taken.reason

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

from daemon.brain import load_or_create_key
from daemon.brain.records import Skill
from daemon.bus import Bus
from daemon.client import BusClient
from daemon.inference.adapters import AdapterStore
from daemon.mesh.manifest import build_manifest, skill_id
from daemon.mesh.service import MESH_GRANTS, MeshPeer
from daemon.persona.config import PersonaConfig, SkillsConfig
from daemon.persona.daemon import PersonaDaemon
from daemon.persona.session_dir import prepare_session_dir
from daemon.persona.skills import DAY_S, decide, spent_today
from daemon.registry.bundle_keys import SigningKey
from daemon.state import StateDir
from daemon.systemd_notify import Notifier
from protocol import ErrorCode, RpcError
from protocol.commands.skills import ANNOUNCED_TOPIC, SkillManifest
from tests.conftest import WAIT, eventually
from tests.daemon.mesh.test_tracker import tracker
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


# -- end to end: installations with their own mesh peers ----------------------------------------


class Installation:
    """A state dir of its own (adapter store, signing key, persona folders) and its running MeshPeer."""

    def __init__(self, bus: Bus, bus_state: StateDir, root: Path, name: str) -> None:
        root.mkdir(mode=0o700)
        self.bus, self.bus_state, self.name = bus, bus_state, name
        self.state = StateDir(root / "state")
        self.state.root.mkdir(mode=0o700)
        self.store = AdapterStore.for_state(self.state.root)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def node(self) -> str:
        return f"mesh:{self.name}"

    @property
    def publisher(self) -> str:
        return SigningKey.load_or_create(self.state.root).public_hex

    async def start(self, base_model_id: str = BASE) -> MeshPeer:
        # Issued by the bus's operator, as `personad token add` would.
        token = self.bus_state.own_token(
            f"mesh-{self.name}.token", name=self.node, role="service", subject=self.node, grants=MESH_GRANTS
        )
        peer = MeshPeer(
            url=self.bus.url, token=token, state=self.state, node=self.name, base_model_id=base_model_id
        )
        self.task = asyncio.create_task(peer.run(self.stop))
        await asyncio.wait_for(peer.joined.wait(), WAIT)
        return peer

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, WAIT)

    @contextlib.asynccontextmanager
    async def persona(
        self, persona_id: str, skills: SkillsConfig | None = None
    ) -> AsyncIterator[PersonaDaemon]:
        """A persona of this installation (its folder here), whose peer is this installation's."""
        config = PersonaConfig(
            id=persona_id,
            name=persona_id.title(),
            skills=(skills or SkillsConfig()).model_copy(update={"node": self.node}),
        )
        daemon = PersonaDaemon(
            config,
            prepare_session_dir(self.state.root, persona_id),
            url=self.bus.url,
            token=self.bus_state.persona_token(persona_id, create=True),
            brain_key=load_or_create_key(self.state.root, persona_id, environ={}),
            notifier=Notifier.from_env({}),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        address = f"persona:{persona_id}"
        try:
            await eventually(lambda: address in self.bus.router.clients, what=f"{persona_id} connected")
            yield daemon
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)


@contextlib.asynccontextmanager
async def installations(
    bus: Bus, state: StateDir, tmp_path: Path
) -> AsyncIterator[Callable[[str], Installation]]:
    """With the tracker running: a factory of installations, every peer stopped at the end."""
    made: list[Installation] = []

    def make(name: str) -> Installation:
        made.append(Installation(bus, state, tmp_path / f"install-{name}", name))
        return made[-1]

    async with tracker(bus, state):
        try:
            yield make
        finally:
            for inst in made:
                await inst.close()


@pytest.fixture
async def world(bus: Bus, state: StateDir, tmp_path: Path) -> AsyncIterator[Callable[[str], Installation]]:
    async with installations(bus, state, tmp_path) as make:
        yield make


async def seeded(world: Callable[[str], Installation], connect: Any, skills: dict[str, int]) -> Installation:
    """An installation whose peer has announced these adapters (name: seed), the tracker knowing them."""
    seeder = world("seed")
    for name, seed in skills.items():
        seeder.store.import_folder(make_adapter(seeder.state.root.parent / f"src-{name}", seed=seed), name)
    await seeder.start()
    admin: BusClient = await connect(name="admin")
    for name in skills:
        await admin.call(
            "skill.announce",
            {"skill": name, "piece_size": PIECE, "effectiveness": 0.9, "usage_scenarios": [f"{name} work"]},
            to=seeder.node,
        )

        async def known(name: str = name) -> bool:
            got = await admin.call("skill.manifest", {"skill": name}, to="cap:skills")
            return bool(got["manifests"])

        await eventually(known, what=f"{name} at the tracker")
    return seeder


async def test_a_persona_acquires_a_skill_through_its_installations_peer(
    world: Callable[[str], Installation], connect: Any
) -> None:
    seeder = await seeded(world, connect, {"legal": 1})
    home = world("home")
    await home.start()
    admin = await connect(name="admin")
    async with home.persona("ada"):
        progress: list[dict[str, Any]] = []

        def collect(note: Any) -> None:
            assert note.method == "skill.progress"
            progress.append(note.params)

        result = await admin.call("skill.acquire", {"skill": "legal"}, to="persona:ada", on_progress=collect)
        fetch = result["fetch"]
        assert (result["persona_id"], result["recorded"], result["loaded"]) == ("ada", True, False)
        assert fetch["installed"] is True
        assert fetch["skill"] == "legal"
        assert list(fetch["seeders"]) == [seeder.node]
        record = home.store.get("legal")
        assert record.sha256 == fetch["adapter_sha256"] == seeder.store.get("legal").sha256
        assert progress
        assert {p["skill_id"] for p in progress} == {fetch["skill_id"]}
        assert progress[-1]["phase"] == "done"

        (skill,) = (await admin.call("skills.list", {}, to="persona:ada"))["skills"]
        assert (skill["skill_id"], skill["lora_hash"], skill["description"]) == (
            "legal",
            record.sha256,
            "legal work",
        )
        source = skill["source"]
        assert source["via"] == "mesh"
        assert source["skill_id"] == fetch["skill_id"]
        assert source["publisher"] == seeder.publisher
        assert source["node"] == home.node
        assert source["seeders"] == fetch["seeders"]
        assert source["auto"] is False

        # Again, to load it: the store has it (nothing downloaded); with no inference engine on this
        # bus the stack cannot be loaded, and the skill stays acquired and recorded all the same.
        again = await admin.call("skill.acquire", {"skill": "legal", "load": True}, to="persona:ada")
        assert (again["fetch"]["installed"], again["recorded"], again["loaded"]) == (False, True, False)
        status = await admin.call("lora.status", {}, to="persona:ada")
        assert status["stack"] == []


async def test_auto_acquisition_takes_a_trusted_announcement_and_not_an_untrusted_one(
    world: Callable[[str], Installation], connect: Any
) -> None:
    home = world("home")
    await home.start()
    stranger = world("stranger")
    stranger.store.import_folder(make_adapter(stranger.state.root.parent / "src-cooking", seed=7), "cooking")
    await stranger.start()
    trusted = world("seed")
    trusted.store.import_folder(make_adapter(trusted.state.root.parent / "src-legal", seed=1), "legal")
    await trusted.start()
    admin = await connect(name="admin")
    policy = SkillsConfig(auto=True, trusted_publishers=[trusted.publisher])
    async with home.persona("ada", policy) as daemon:
        assert daemon.skills is not None
        acquirer = daemon.skills
        await eventually(
            lambda: any(s.client_id == "persona:ada" for s in home.bus.router.topics.match(ANNOUNCED_TOPIC)),
            what="the persona subscribed",
        )
        await admin.call("skill.announce", {"skill": "cooking", "piece_size": PIECE}, to=stranger.node)
        await admin.call(
            "skill.announce", {"skill": "legal", "piece_size": PIECE, "effectiveness": 0.5}, to=trusted.node
        )
        await eventually(lambda: len(acquirer.decisions) == 2, what="both announcements decided")
        refused, taken = acquirer.decisions
        assert not refused.take
        assert "not trusted" in refused.reason
        assert taken.take, taken.reason
        assert home.store.get("legal").sha256 == trusted.store.get("legal").sha256
        skills = {s["skill_id"]: s for s in (await admin.call("skills.list", {}, to="persona:ada"))["skills"]}
        assert list(skills) == ["legal"]
        assert skills["legal"]["source"]["auto"] is True
        assert skills["legal"]["source"]["publisher"] == trusted.publisher


async def test_skills_acquired_by_more_personas_rank_higher(
    world: Callable[[str], Installation], connect: Any
) -> None:
    await seeded(world, connect, {"legal": 1, "cooking": 2})
    admin = await connect(name="admin")
    homes = [world(name) for name in ("one", "two", "three")]
    for home in homes:
        await home.start()
    for i, home in enumerate(homes):
        async with home.persona(f"p{i}"):
            await admin.call("skill.acquire", {"skill": "legal"}, to=f"persona:p{i}")
            if i == 0:
                await admin.call("skill.acquire", {"skill": "cooking"}, to=f"persona:p{i}")

    async def ranked() -> Any:
        got = await admin.call("skill.popular", {}, to="cap:skills")
        acquirers = {e["skill"]: e["acquirers"] for e in got["skills"]}
        return got["skills"] if acquirers == {"legal": 3, "cooking": 1} else None

    first, second = await eventually(ranked, what="three acquisitions of legal, one of cooking")
    assert (first["skill"], second["skill"]) == ("legal", "cooking")
    assert first["seeders"] == 4  # the first seeder and the three installations that now hold it
    assert first["score"] > second["score"]

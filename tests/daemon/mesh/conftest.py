"""Installations for the mesh tests: each its own state dir, adapter store and real MeshPeer.

Every installation shares the test's one real bus (tests/conftest.py's
``bus``); its peer's token is issued from the bus's state dir, as an
operator would with ``personad token add``. Adapters are real PEFT folders
(safetensors, written by tests/daemon/registry's ``make_adapter``), a few
hundred KiB, cut into 16 KiB pieces so a skill has a few dozen of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemon.bus import Bus
from daemon.inference.adapters import AdapterRecord, AdapterStore
from daemon.mesh.peer import PieceLimits
from daemon.mesh.service import MESH_GRANTS, MeshPeer
from daemon.mesh.swarm import SwarmLimits
from daemon.state import StateDir
from tests.conftest import WAIT
from tests.daemon.registry.test_bundle import make_adapter

#: The smallest piece the protocol allows: many pieces per small adapter.
PIECE = 16 * 1024
#: Failures are retried quickly in tests (the backoff still doubles).
FAST = SwarmLimits(backoff_s=0.01, piece_timeout_ms=5_000, lookup_ms=2_000)


@dataclass
class Installation:
    """One installation: a state dir of its own, its store, and its running peer (if started)."""

    name: str
    state: StateDir
    store: AdapterStore
    peer: MeshPeer | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def node(self) -> str:
        return f"mesh:{self.name}"

    def adapter(self, name: str, *, seed: int, width: int = 1024, **meta: Any) -> AdapterRecord:
        """A real LoRA adapter (width 1024: 256 KiB of weights) imported into this installation's store."""
        folder = make_adapter(self.state.root.parent / f"src-{name}-{seed}", seed=seed, rank=8, width=width)
        return self.store.import_folder(folder, name, meta=meta or None)

    def persona_folder(self, persona_id: str) -> None:
        """Make ``persona_id`` one of this installation's personas (its session folder exists)."""
        (self.state.personas / persona_id).mkdir(parents=True, exist_ok=True, mode=0o700)


class Mesh:
    """Factory of installations and their peers on one bus; stops every peer at the end."""

    def __init__(self, bus: Bus, bus_state: StateDir, tmp_path: Path) -> None:
        self.bus = bus
        self.bus_state = bus_state
        self.tmp_path = tmp_path
        self.installations: list[Installation] = []

    def installation(self, name: str) -> Installation:
        root = self.tmp_path / f"install-{name}"
        root.mkdir()
        state = StateDir(root / "state")
        state.root.mkdir(mode=0o700)
        inst = Installation(name=name, state=state, store=AdapterStore.for_state(state.root))
        self.installations.append(inst)
        return inst

    def token(self, inst: Installation) -> str:
        return self.bus_state.own_token(
            f"mesh-{inst.name}.token",
            name=inst.node,
            role="service",
            subject=inst.node,
            grants=MESH_GRANTS,
        )

    async def start(
        self,
        inst: Installation,
        *,
        limits: PieceLimits | None = None,
        base_model_id: str = "SmolLM2-135M-Instruct",
    ) -> MeshPeer:
        """Run ``inst``'s MeshPeer until :meth:`stop`; returns once it has joined (subscribed, announced)."""
        peer = MeshPeer(
            url=self.bus.url,
            token=self.token(inst),
            state=inst.state,
            node=inst.name,
            base_model_id=base_model_id,
            limits=limits,
            swarm_limits=FAST,
        )
        inst.peer, inst.stop = peer, asyncio.Event()
        inst.task = asyncio.create_task(peer.run(inst.stop), name=f"peer-{inst.name}")
        joined = asyncio.create_task(peer.joined.wait())
        await asyncio.wait([joined, inst.task], timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        if not joined.done():
            joined.cancel()
            raise AssertionError(f"{inst.node} did not join the bus")
        return peer

    async def stop(self, inst: Installation) -> None:
        inst.stop.set()
        if inst.task is not None:
            await asyncio.wait_for(inst.task, WAIT)
            inst.task = None

    async def close(self) -> None:
        for inst in self.installations:
            with contextlib.suppress(Exception):
                await self.stop(inst)


@pytest.fixture
async def mesh(bus: Bus, state: StateDir, tmp_path: Path) -> AsyncIterator[Mesh]:
    world = Mesh(bus, state, tmp_path)
    try:
        yield world
    finally:
        await world.close()

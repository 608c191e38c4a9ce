"""Fixtures for the registry's tests: the registry serving on a real bus, and the inference models.

The tiny random model, its adapter store and ``make_adapter`` come from
tests/daemon/inference/conftest.py (imported, so a registry test that needs
a real cap:inference beside the registry gets the same model). ``store``
lives in the same state dir as ``state``, as under ``personad up``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from daemon.brain.keys import load_or_create_key
from daemon.bus import Bus
from daemon.persona.config import PersonaConfig
from daemon.persona.daemon import PersonaDaemon
from daemon.persona.session_dir import prepare_session_dir
from daemon.registry.cli import registry_token
from daemon.registry.service import RegistryService
from daemon.registry.store import Registry
from daemon.state import StateDir
from tests.conftest import WAIT, eventually
from tests.daemon.inference.conftest import (  # noqa: F401  (fixtures, imported to be found here)
    inference,
    load_tiny,
    make_adapter,
    store,
    tiny_dir,
)


@dataclass
class Serving:
    registry: Registry
    service: RegistryService
    state: StateDir


@pytest.fixture
async def serving(bus: Bus, state: StateDir) -> AsyncIterator[Serving]:
    """The registry open on ``state`` and serving cap:registry on ``bus`` as registry:main."""
    registry = await Registry.open(state.root, environ={})
    service = RegistryService(registry, url=bus.url, token=registry_token(state), state_root=state.root)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await service.client.wait_connected(WAIT)
    try:
        yield Serving(registry, service, state)
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)
        await registry.close()


class RunningPersona:
    """A real PersonaDaemon in this loop, on the bus as persona:<id>, with its own brain and token."""

    def __init__(self, bus: Bus, state: StateDir, pid: str, description: str = "") -> None:
        config = PersonaConfig(id=pid, name=pid.title(), description=description, capabilities=["chat"])
        self.daemon = PersonaDaemon(
            config,
            prepare_session_dir(state.root, pid),
            url=bus.url,
            token=state.persona_token(pid, create=True),
            brain_key=load_or_create_key(state.root, pid, environ={}),
        )
        self.bus = bus
        self.client_id = f"persona:{pid}"
        self.stop = asyncio.Event()
        self.task: asyncio.Future[None] | None = None

    async def start(self) -> RunningPersona:
        self.task = asyncio.ensure_future(self.daemon.run(self.stop))
        await eventually(lambda: self.client_id in self.bus.router.clients, what=f"{self.client_id} up")
        return self

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, WAIT)
            self.task = None

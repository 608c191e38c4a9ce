"""Fixtures for the registry's tests: the registry serving on a real bus, and the inference models.

The tiny random model, its adapter store and ``make_adapter`` come from
tests/daemon/inference/conftest.py (imported, so a registry test that needs
a real cap:inference beside the registry gets the same model). ``store``
lives in the same state dir as ``state``, as under ``personad up``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from daemon.bus import Bus
from daemon.persona.daemon import PersonaDaemon
from daemon.registry.cli import registry_token
from daemon.registry.service import RegistryService
from daemon.registry.store import Registry
from daemon.state import StateDir
from tests.conftest import WAIT
from tests.daemon.inference.conftest import (  # noqa: F401  (fixtures, imported to be found here)
    inference,
    load_tiny,
    make_adapter,
    store,
    tiny_dir,
)
from tests.daemon.persona.running import running_persona


@dataclass
class Serving:
    registry: Registry
    service: RegistryService
    state: StateDir


@contextlib.asynccontextmanager
async def registry_serving(bus: Bus, state: StateDir) -> AsyncIterator[Serving]:
    """The registry open on ``state`` and serving cap:registry on ``bus`` as registry:main
    (as ``personad up`` starts it: what it does before serving runs first), then stopped."""
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


@pytest.fixture
async def serving(bus: Bus, state: StateDir) -> AsyncIterator[Serving]:
    async with registry_serving(bus, state) as running:
        yield running


class RunningPersona:
    """A real PersonaDaemon in this loop (tests/daemon/persona/running.py), started and stopped on demand.

    For tests that stop one persona half way (erasure waits for it to go).
    """

    def __init__(self, bus: Bus, state: StateDir, pid: str, description: str = "") -> None:
        self._running = running_persona(bus, state, pid, description=description, capabilities=("chat",))
        self.client_id = f"persona:{pid}"
        self.daemon: PersonaDaemon | None = None

    async def start(self) -> RunningPersona:
        self.daemon = await self._running.__aenter__()
        return self

    async def close(self) -> None:
        if self.daemon is not None:
            self.daemon = None
            await self._running.__aexit__(None, None, None)

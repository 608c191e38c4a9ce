"""One persona daemon run in-process on a test bus: the start-and-stop every persona-level test shares."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from daemon.brain import load_or_create_key
from daemon.bus import Bus
from daemon.persona.config import PersonaConfig
from daemon.persona.daemon import PersonaDaemon
from daemon.persona.session_dir import prepare_session_dir
from daemon.state import StateDir
from daemon.systemd_notify import Notifier
from tests.conftest import WAIT, eventually


@contextlib.asynccontextmanager
async def running_persona(
    bus: Bus,
    state: StateDir,
    persona_id: str,
    *,
    name: str | None = None,
    description: str = "",
    capabilities: tuple[str, ...] = (),
    config: PersonaConfig | None = None,
) -> AsyncIterator[PersonaDaemon]:
    """Persona ``persona_id`` serving on ``bus`` with its brain open (the same brain on every start),
    until the block ends; it has left the bus when the block is done.

    Empty environments for the brain key and the notifier: a test run under systemd must neither read
    the service's credentials nor talk to its notify socket. ``config``, when given, is used as it
    is (its id must be ``persona_id``) instead of one made from name, description and capabilities."""
    assert config is None or config.id == persona_id
    config = config or PersonaConfig(
        id=persona_id,
        name=name or persona_id.title(),
        description=description,
        capabilities=list(capabilities),
    )
    daemon = PersonaDaemon(
        config,
        prepare_session_dir(state.root, persona_id),
        url=bus.url,
        # May serve what its config declares, as `personad up` issues it.
        token=state.persona_token(persona_id, create=True, provides=tuple(config.capabilities)),
        brain_key=load_or_create_key(state.root, persona_id, environ={}),
        notifier=Notifier.from_env({}),
    )
    address = f"persona:{persona_id}"
    stop = asyncio.Event()
    task = asyncio.ensure_future(daemon.run(stop))
    try:
        await eventually(lambda: address in bus.router.clients, what=f"{persona_id} connected")
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)
        await eventually(lambda: address not in bus.router.clients, what=f"{persona_id} gone")

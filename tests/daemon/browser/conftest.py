"""Fixtures for the browser worker: real Chromium, a real bus, real pages.

``worker`` runs :class:`~daemon.browser.worker.BrowserWorker` in the test's
event loop against the ``bus`` fixture, with Debian's Chromium; ``persona``
joins personas that serve the universal commands.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from daemon.browser.cli import worker_token
from daemon.browser.worker import BrowserWorker, WorkerConfig
from daemon.client import BusClient
from daemon.dispatch import Dispatcher
from daemon.persona.session_dir import SessionDir, prepare_session_dir
from daemon.persona.universal import register_universal_commands
from daemon.systemd_notify import Notifier
from tests.conftest import WAIT

from .pages import PageServer, serve_pages

#: Debian's Chromium; `make test` installs it (scripts/system-deps). Without it
#: the worker raises ChromiumNotFound, whose message has the install command.
CHROMIUM = os.environ.get("PERSONAD_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def pages() -> Iterator[PageServer]:
    """A local HTTP server with known pages (tests/daemon/browser/pages.py)."""
    with serve_pages() as server:
        yield server


@pytest.fixture
async def start_worker(bus, state, pages) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await start_worker(**WorkerConfig fields)`` gives a running worker.

    The test pages' server is on 127.0.0.1, which the network policy denies:
    it is allow-listed by address and port (as an operator would allow an
    intranet page), unless the test gives ``allow`` itself.
    """
    workers: list[BrowserWorker] = []

    async def factory(**config: Any) -> BrowserWorker:
        config.setdefault("executable", CHROMIUM)
        config.setdefault("allow", (pages.url.removeprefix("http://"),))
        worker = BrowserWorker(
            WorkerConfig(**config), url=bus.url, token=worker_token(state), notifier=Notifier.from_env({})
        )
        await asyncio.wait_for(worker.__aenter__(), WAIT)
        workers.append(worker)
        return worker

    yield factory
    for worker in workers:
        await asyncio.wait_for(worker.__aexit__(None, None, None), WAIT)


@pytest.fixture
async def worker(start_worker) -> BrowserWorker:
    """One running worker with the default settings."""
    return await start_worker()


@dataclass
class Persona:
    """What a persona daemon is to the universal commands: a bus client, a dispatcher, a session dir."""

    id: str
    client: BusClient
    session_dir: SessionDir


@pytest.fixture
async def persona(bus, state) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await persona("ada", grants=(...))`` joins the bus as persona:ada serving the
    universal commands, with its own persona-role token and session directory.

    Built from the same parts the persona daemon uses (BusClient, Dispatcher,
    prepare_session_dir, register_universal_commands) rather than the whole
    daemon, whose brain is not what these tests are about; tests/e2e runs the
    real daemon.
    """
    clients: list[BusClient] = []

    async def factory(persona_id: str, *, grants: tuple[str, ...] = ()) -> Persona:
        token, _ = state.tokens().add(
            name=f"persona:{persona_id}", role="persona", subject=f"persona:{persona_id}", extra_grants=grants
        )
        dispatcher = Dispatcher()
        client = BusClient(bus.url, token=token, kind="persona", name=persona_id, handler=dispatcher)
        session_dir = prepare_session_dir(state.root, persona_id)
        register_universal_commands(dispatcher, client, session_dir)
        await client.start()
        clients.append(client)
        return Persona(persona_id, client, session_dir)

    yield factory
    for client in clients:
        await client.close()

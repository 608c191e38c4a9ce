"""Shared real models for the PersonaHub tests: one SmolLM2 engine and one embedder per session.

Every hub test that needs the model uses these two fixtures rather than
opening its own: loading SmolLM2 costs seconds and memory, and the suite runs
on a couple of cores. The engine's worker thread is not tied to an event
loop (each ``generate`` posts back to the loop it was called from), so a
session fixture built on a throwaway loop serves the function-scoped loops
the async tests run on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from daemon.inference.embed import Embedder
from daemon.inference.engine import AsyncEngine
from daemon.inference.limits import EngineLimits
from protocol.commands.inference import GenerateParams, GenerateResult

Generate = Callable[[GenerateParams], Awaitable[GenerateResult]]


@pytest.fixture(scope="session")
def hub_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsyncEngine]:
    """SmolLM2-135M-Instruct on one thread, up to 8 rows decoded together (closed at the session's end)."""
    from daemon.inference.model import convert_smollm2

    # The same conversion cache as tests/conftest.py's chat_services: converted once a session.
    model = convert_smollm2(tmp_path_factory.getbasetemp() / "smollm2-cache")
    root = tmp_path_factory.mktemp("hub-engine")
    engine = asyncio.run(
        AsyncEngine.open(state_root=root, model=model, threads=1, limits=EngineLimits(max_batch=8))
    )
    try:
        yield engine
    finally:
        asyncio.run(engine.close())


@pytest.fixture(scope="session")
def hub_embedder() -> Iterator[Embedder]:
    """all-MiniLM-L6-v2 on one worker thread, loaded on first use (closed at the session's end)."""
    running = Embedder(threads=1)
    try:
        yield running
    finally:
        running.close()


def generate_with(engine: AsyncEngine) -> Generate:
    """``engine.generate`` as the hub's code calls the model: params in, result out (owner "test")."""

    async def generate(params: GenerateParams) -> GenerateResult:
        return await engine.generate(params, owner="test")

    return generate

"""Single-persona mode: a real persona daemon with the engine in its own process, on a real bus."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from daemon.brain import load_or_create_key
from daemon.bus import Bus
from daemon.client import BusClient
from daemon.inference.engine import WORKER_THREAD_NAME, Engine
from daemon.inference.ov.engine import OVEngine
from daemon.persona.config import PersonaConfig
from daemon.persona.daemon import PersonaDaemon
from daemon.persona.session_dir import prepare_session_dir
from daemon.state import StateDir
from daemon.systemd_notify import Notifier
from tests.conftest import WAIT, eventually


def engine_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == WORKER_THREAD_NAME}


@pytest.mark.parametrize(("backend", "kind"), [("torch", Engine), ("openvino", OVEngine)])
async def test_stopping_a_persona_closes_its_in_process_engine(
    backend: str,
    kind: type,
    bus: Bus,
    state: StateDir,
    connect: Callable[..., Awaitable[BusClient]],
    tiny_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PERSONAD_INFERENCE=inprocess: the engine's thread runs while the persona serves; both it and the
    model go when the persona stops."""
    monkeypatch.setenv("PERSONAD_INFERENCE", "inprocess")
    monkeypatch.setenv("PERSONAD_MODEL", str(tiny_dir))
    monkeypatch.setenv("PERSONAD_INFERENCE_BACKEND", backend)
    before = engine_threads()  # other tests' engines, if any are still up, are not ours to judge
    engines_before = weakref.WeakSet(o for o in gc.get_objects() if type(o) is kind)
    daemon = PersonaDaemon(
        PersonaConfig(id="solo", name="Solo", description="A persona with its own engine."),
        prepare_session_dir(state.root, "solo"),
        url=bus.url,
        token=state.persona_token("solo", create=True),
        brain_key=load_or_create_key(state.root, "solo"),
        notifier=Notifier.from_env({}),
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(daemon.run(stop))
    try:
        caller = await connect()
        await eventually(lambda: "persona:solo" in bus.router.clients, what="persona connected")
        question = {"message": "hello", "max_tokens": 4, "temperature": 0.0}
        reply = await caller.call("chat", question, to="persona:solo", deadline_ms=int(WAIT * 1000))
        assert 0 < reply["completion_tokens"] <= 4
        assert "inprocess" == (await caller.call("lora.status", to="persona:solo"))["backend"]
        started = engine_threads() - before
        assert 1 == len(started)
        (worker,) = started
        assert worker.is_alive()
        (ours,) = [o for o in gc.get_objects() if type(o) is kind and o not in engines_before]
        model = weakref.ref(ours)
        del ours
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)
    assert not worker.is_alive()
    assert worker not in threading.enumerate()
    # Nothing holds the engine (and so the model) any more: it is freed.
    gc.collect()
    assert model() is None

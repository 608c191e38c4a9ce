"""End to end: `personad up` follows the registry: persona.generate starts a persona, archive stops it.

The real supervisor in a temporary state dir on a free port, without the
browser and the demo (SmolLM2 behind cap:inference, the demo persona from
config/personas/demo.toml). Through the bus: a persona generated with
``start: true`` is started by up, answers ``persona.status`` and ``chat``,
and leaves the bus once archived; a ``registry.persona`` event published by
anybody but the registry starts nothing.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemon.client import BusClient
from daemon.registry.events import TOPIC
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from tests.conftest import WAIT, ChatServices, Proc, eventually

pytestmark = pytest.mark.slow

#: SmolLM2 writes a profile in ~12 s and a short reply in a few; generous for a busy machine.
DEADLINE_MS = int(WAIT * 12 * 1000)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted SmolLM2 (the session's cache), so up does not convert it again."""
    from daemon.inference.model import convert_smollm2

    return convert_smollm2(tmp_path_factory.getbasetemp() / "smollm2-cache")


def printed(up: Proc, text: str) -> bool:
    return any(text in line for line in list(up.lines))


async def on_bus(admin: BusClient) -> set[str]:
    return {c["id"] for c in (await admin.call("bus.clients", {"kind": "persona"}))["clients"]}


async def scenario(up: Proc, url: str, token: str) -> None:
    async with BusClient(url, token=token, kind="cli", name="e2e") as admin:
        # A draft persona, "made active" by an event anybody could publish: up must not start it.
        await admin.call(
            "persona.create",
            {"profile": {"id": "forged", "name": "Forged", "role": "spy"}},
            to="cap:registry",
        )
        forged = {"persona_id": "forged", "status": "active", "action": "persona.update", "start": True}
        assert 1 <= await admin.publish(TOPIC, forged)  # up's follower is subscribed

        result = await admin.call(
            "persona.generate",
            {"role": "museum guide", "context": {"requires_empathy": True}, "start": True},
            to="cap:registry",
            deadline_ms=DEADLINE_MS,
        )
        pid = result["persona_id"]
        assert (True, "active") == (result["started"], result["profile"]["status"])
        target = f"persona:{pid}"
        status = await admin.call("persona.status", to=target, deadline_ms=10_000)
        assert (pid, result["profile"]["name"]) == (status["id"], status["name"])
        reply = await admin.call(
            "chat", {"message": "Hello! Who are you?", "max_tokens": 24}, to=target, deadline_ms=DEADLINE_MS
        )
        assert reply["reply"].strip()

        # The forged event reached up before the registry's (one connection, in order), and was ignored.
        await eventually(lambda: printed(up, f"{target} started: the registry made it active"))
        assert printed(up, f"ignoring a {TOPIC} event published by {admin.client_id}")
        assert not printed(up, "persona:forged started")
        assert {"persona:demo", target} == await on_bus(admin)

        archived = await admin.call("persona.archive", {"persona_id": pid}, to="cap:registry")
        assert "archived" == archived["profile"]["status"]

        async def gone() -> bool:
            return target not in await on_bus(admin)

        await eventually(gone, what=f"{target} leaving the bus")
        await eventually(lambda: printed(up, f"{target} stopped: the registry made it archived"))
        assert {"persona:demo"} == await on_bus(admin)


async def after_a_bus_restart(up: Proc, url: str, token: str) -> None:
    """The bus killed and restarted by up: the follower subscribes again and keeps following."""

    async def connected() -> BusClient | None:
        client = BusClient(url, token=token, kind="cli", name="e2e-again")
        try:
            await client.start()
        except Exception:  # the bus not listening yet
            return None
        return client

    admin = await eventually(connected, timeout=WAIT * 2, what="the restarted bus")
    try:

        async def created() -> bool:
            try:
                await admin.call(
                    "persona.create",
                    {"profile": {"id": "late", "name": "Late", "role": "clerk", "status": "active"}},
                    to="cap:registry",
                )
            except RpcError as exc:
                if exc.code != ErrorCode.TARGET_OFFLINE:  # the registry not back yet: try again
                    raise
                return False
            return True

        await eventually(created, what="the registry back on the bus")

        async def started() -> bool:
            return "persona:late" in await on_bus(admin)

        await eventually(started, timeout=WAIT * 2, what="persona:late started by up")
        assert printed(up, "persona:late started: the registry made it active")
    finally:
        await admin.close()


def test_up_starts_a_generated_persona_and_stops_it_when_archived(
    state: StateDir, spawn: Any, smollm2: Path
) -> None:
    up = spawn("up", "--port", "0", "--no-browser", "--no-demo", env={"PERSONAD_MODEL": str(smollm2)})
    url = up.wait_for_line(r"listening on (ws://\S+)").group(1)
    up.wait_for_line(r"cap:inference is up", timeout=WAIT * 8)
    up.wait_for_line(r"persona:demo \(Ada\) is up", timeout=WAIT * 4)
    up.wait_for_line(r"Ctrl-C stops everything")
    ChatServices.drain(up)  # keep reading, so the children's logs never fill the pipe

    asyncio.run(scenario(up, url, state.admin_token))  # type: ignore[attr-defined]

    children = psutil.Process(up.popen.pid).children(recursive=True)
    (bus,) = [c for c in children if c.cmdline()[3:6] == ["--state-dir", str(state.root), "bus"]]
    bus.kill()
    asyncio.run(after_a_bus_restart(up, url, state.admin_token))  # type: ignore[attr-defined]

    children = psutil.Process(up.popen.pid).children(recursive=True)
    assert 0 == up.stop(signal.SIGINT, timeout=WAIT * 2)
    _gone, alive = psutil.wait_procs(children, timeout=WAIT)
    assert [] == alive

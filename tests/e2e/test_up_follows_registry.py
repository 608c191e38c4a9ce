"""`personad up` follows the registry: persona.generate starts a persona, archive stops it.

End to end, the real supervisor in a temporary state dir on a free port,
without the browser and the demo (SmolLM2 behind cap:inference, the demo
persona from config/personas/demo.toml). Through the bus: a persona
generated with ``start: true`` is started by up, answers ``persona.status``
and ``chat``, and leaves the bus once archived; a ``registry.persona`` event
published by anybody but the registry starts nothing; after the bus is
killed (and restarted by up) a persona made active is still started.

First, faster, the follower alone (daemon/supervisor_personas.py) on a real
bus and registry in this process, with the supervisor's start and stop
recorded instead of processes spawned: every status, and every event it
must ignore.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemon.bus import Bus
from daemon.client import BusClient
from daemon.registry.events import TOPIC, publish_change
from daemon.registry.keys import generated_config_dir
from daemon.state import StateDir
from daemon.supervisor_personas import RegistryFollower
from protocol import ErrorCode, RpcError
from tests.conftest import WAIT, ChatServices, Proc, eventually
from tests.daemon.registry.conftest import Serving, serving  # noqa: F401  (the fixture)


async def test_the_follower_applies_the_registry_events_in_order_and_only_those(
    serving: Serving,  # noqa: F811  (the fixture imported above)
    bus: Bus,
    connect: Any,
    state: StateDir,
    tmp_path: Path,
) -> None:
    running: dict[str, Path] = {}
    log: list[tuple[str, str]] = []

    async def start(pid: str, config: Any, config_dir: Path, why: str) -> None:
        running[pid] = config_dir
        log.append(("start", pid))

    async def stop(pid: str, why: str) -> None:
        del running[pid]
        log.append(("stop", pid))

    admin = await connect(name="admin")

    async def registry(method: str, params: dict[str, Any]) -> Any:
        return await admin.call(method, params, to="cap:registry")

    def profile(pid: str, status: str) -> dict[str, Any]:
        return {"profile": {"id": pid, "name": pid.title(), "role": "clerk", "status": status}}

    await registry("persona.create", profile("kept", "active"))
    await registry("persona.create", profile("drafty", "draft"))
    config = tmp_path / "config"
    (config / "personas").mkdir(parents=True)
    follower = RegistryFollower(state, config, bus.url, start=start, stop=stop, running=lambda: running)
    generated = generated_config_dir(state.root)
    following: asyncio.Task[None] | None = None
    try:
        configs = await follower.open(timeout=WAIT)
        assert ["kept"] == list(configs)
        assert generated == configs["kept"][1]
        running["kept"] = generated  # as up starts it
        following = asyncio.create_task(follower.follow())

        # Ignored: events from anybody but registry:main, and malformed ones from it.
        await admin.publish(TOPIC, {"persona_id": "drafty", "status": "active", "action": "x", "start": True})
        client = serving.service.client
        await client.publish(TOPIC, {"persona_id": "../etc", "status": "active"})
        await client.publish(TOPIC, {"persona_id": "drafty"})
        await client.publish(TOPIC, "drafty")
        # Applied, in order.
        await registry("persona.create", profile("fresh", "active"))
        await eventually(lambda: "fresh" in running, what="fresh started")
        assert [("start", "fresh")] == log  # nothing before it started drafty
        toml = (generated / "personas" / "fresh.toml").read_text()
        assert 'id = "fresh"\nname = "Fresh"\n' in toml
        await registry("persona.update", {"persona_id": "fresh", "changes": {"status": "draft"}})
        await registry("persona.update", {"persona_id": "fresh", "changes": {"name": "Renamed"}})
        await registry("persona.update", {"persona_id": "fresh", "changes": {"status": "active"}})
        # A change that keeps it active neither stops nor starts it.
        await registry("persona.update", {"persona_id": "fresh", "changes": {"tags": ["x"]}})
        await registry("persona.archive", {"persona_id": "fresh"})
        await registry("persona.archive", {"persona_id": "kept"})
        await eventually(lambda: not running, what="both stopped")
        assert [
            ("start", "fresh"),
            ("stop", "fresh"),
            ("start", "fresh"),
            ("stop", "fresh"),
            ("stop", "kept"),
        ] == log
        # Restarted from the profile as it is now.
        assert 'name = "Renamed"' in (generated / "personas" / "fresh.toml").read_text()
        # Deleted (as persona.delete announces it): its generated config goes too.
        await publish_change(client, "fresh", status="deleted", action="persona.delete")
        await eventually(lambda: not (generated / "personas" / "fresh.toml").exists(), what="config removed")
        assert (generated / "personas" / "kept.toml").exists()
    finally:
        if following is not None:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
        await follower.close()


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


@pytest.mark.slow
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

"""The persona daemon in-process, against a real bus and a real notify socket."""

from __future__ import annotations

import asyncio
import socket

import pytest

from daemon.brain import load_or_create_key
from daemon.bus import Bus, BusConfig
from daemon.persona.config import PersonaConfig
from daemon.persona.daemon import PersonaDaemon
from daemon.persona.session_dir import prepare_session_dir
from daemon.systemd_notify import Notifier
from protocol import ErrorCode, RpcError
from tests.conftest import WAIT, eventually


@pytest.fixture
def notify_socket(tmp_path):
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    yield path, sock
    sock.close()


def drain(sock) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_status_over_the_bus_and_notify_protocol(bus, state, connect, notify_socket, tmp_path) -> None:
    """The persona answers persona.status over the bus and tells systemd READY then STOPPING."""
    path, sock = notify_socket
    config = PersonaConfig(id="ada", name="Ada", capabilities=["chat"])
    daemon = PersonaDaemon(
        config,
        prepare_session_dir(state.root, "ada"),
        url=bus.url,
        token=state.persona_token("ada", create=True),
        brain_key=load_or_create_key(state.root, "ada"),
        notifier=Notifier.from_env({"NOTIFY_SOCKET": str(path)}),
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(daemon.run(stop))
    caller = await connect()
    await eventually(lambda: "persona:ada" in bus.router.clients, what="persona connected")
    status = await caller.call("persona.status", to="persona:ada")
    assert ("ada", "Ada", ["chat"], "connected") == (
        status["id"],
        status["name"],
        status["capabilities"],
        status["bus"]["state"],
    )
    assert str(state.root / "personas" / "ada") == status["session_dir"]
    with pytest.raises(RpcError) as info:
        await caller.call("persona.status", {"unexpected": 1}, to="persona:ada")
    assert ErrorCode.INVALID_PARAMS == info.value.code
    with pytest.raises(RpcError) as info:
        await caller.call("memory.nothing", to="persona:ada")
    assert ErrorCode.METHOD_NOT_FOUND == info.value.code
    stop.set()
    await asyncio.wait_for(task, WAIT)
    messages = "\n".join(drain(sock))
    assert "READY=1" in messages
    assert "STOPPING=1" in messages
    assert messages.index("READY=1") < messages.index("STOPPING=1")


async def test_persona_reconnects_after_the_bus_restarts(state) -> None:
    """When the bus goes away and comes back on the same port, the persona rejoins by itself."""
    first = Bus(BusConfig(port=0), state.tokens())
    await first.start()
    port = first.port
    config = PersonaConfig(id="ada", name="Ada")
    daemon = PersonaDaemon(
        config,
        prepare_session_dir(state.root, "ada"),
        url=first.url,
        token=state.persona_token("ada", create=True),
        brain_key=load_or_create_key(state.root, "ada"),
        notifier=Notifier.from_env({}),
    )
    daemon.client._backoff_max = 0.5
    stop = asyncio.Event()
    task = asyncio.ensure_future(daemon.run(stop))
    await eventually(lambda: "persona:ada" in first.router.clients)
    await first.close()
    await eventually(lambda: daemon.client.state == "reconnecting")
    async with Bus(BusConfig(port=port), state.tokens()) as second:
        await eventually(lambda: "persona:ada" in second.router.clients, what="persona rejoined")
        # The bus lists it once it has read the hello; the client counts the
        # reconnect once it has read the bus's answer, a moment later.
        await eventually(lambda: daemon.client.state == "connected", what="client connected")
        assert daemon.client.reconnects >= 1  # more if it reached the closing first bus once more
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def test_refused_token_stops_the_daemon_with_a_clear_error(bus, state) -> None:
    """A revoked persona token ends the daemon with an AuthError, not an endless retry."""
    from daemon.errors import AuthError

    token = state.persona_token("ada", create=True)
    state.tokens().revoke("persona:ada")
    daemon = PersonaDaemon(
        PersonaConfig(id="ada", name="Ada"),
        prepare_session_dir(state.root, "ada"),
        url=bus.url,
        token=token,
        brain_key=load_or_create_key(state.root, "ada"),
        notifier=Notifier.from_env({}),
    )
    with pytest.raises(AuthError, match="refused the token"):
        await asyncio.wait_for(daemon.run(asyncio.Event()), WAIT)


async def test_memory_over_the_bus_survives_a_restart(bus, state, connect) -> None:
    """memory.remember then memory.recall through the bus; the memory is there after a restart."""
    key = load_or_create_key(state.root, "ada")

    async def run_once(action):
        daemon = PersonaDaemon(
            PersonaConfig(id="ada", name="Ada"),
            prepare_session_dir(state.root, "ada"),
            url=bus.url,
            token=state.persona_token("ada", create=True),
            brain_key=key,
            notifier=Notifier.from_env({}),
        )
        stop = asyncio.Event()
        task = asyncio.ensure_future(daemon.run(stop))
        await eventually(lambda: "persona:ada" in bus.router.clients, what="persona connected")
        try:
            return await action()
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)
            await eventually(lambda: "persona:ada" not in bus.router.clients)

    caller = await connect()
    remembered = await run_once(
        lambda: caller.call(
            "memory.remember",
            {"content": "The launch moved to Tuesday", "subject": "launch"},
            to="persona:ada",
        )
    )
    hits = await run_once(lambda: caller.call("memory.recall", {"query": "launch"}, to="persona:ada"))
    assert [remembered["id"]] == [h["id"] for h in hits["hits"]]
    assert "The launch moved to Tuesday" == hits["hits"][0]["content"]
    assert isinstance(hits["hits"][0]["created_at"], str)  # times travel as RFC 3339 text
    with pytest.raises(RpcError) as info:
        await run_once(lambda: caller.call("memory.recall", {"query": "x", "limit": "ten"}, to="persona:ada"))
    assert ErrorCode.INVALID_PARAMS == info.value.code


async def test_a_remember_retried_with_its_key_is_stored_once(bus, state, connect) -> None:
    """memory.remember sent again with its idempotency_key (the answer was lost) gets the first
    id back, replayed; the same key for another memory is INVALID_PARAMS naming the field;
    another caller's equal key is its own; persona.performance.record does the same."""
    daemon = PersonaDaemon(
        PersonaConfig(id="ada", name="Ada"),
        prepare_session_dir(state.root, "ada"),
        url=bus.url,
        token=state.persona_token("ada", create=True),
        brain_key=load_or_create_key(state.root, "ada"),
        notifier=Notifier.from_env({}),
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(daemon.run(stop))
    try:
        await eventually(lambda: "persona:ada" in bus.router.clients, what="persona connected")
        caller, other = await connect(name="retrier"), await connect(name="other")
        params = {"content": "The launch moved to Tuesday", "idempotency_key": "3f2a-launch"}
        first = await caller.call("memory.remember", params, to="persona:ada")
        again = await caller.call("memory.remember", params, to="persona:ada")
        assert {"id": first["id"], "replayed": False} == first
        assert {"id": first["id"], "replayed": True} == again
        elsewhere = await other.call("memory.remember", params, to="persona:ada")
        assert (False, True) == (elsewhere["replayed"], elsewhere["id"] != first["id"])
        with pytest.raises(RpcError) as reused:
            await caller.call("memory.remember", {**params, "content": "Wednesday"}, to="persona:ada")
        assert ErrorCode.INVALID_PARAMS == reused.value.code
        assert "idempotency_key" == (reused.value.data or {}).get("field")
        with pytest.raises(RpcError) as bad:
            await caller.call("memory.remember", {**params, "idempotency_key": "no spaces"}, to="persona:ada")
        assert ErrorCode.INVALID_PARAMS == bad.value.code
        hits = await caller.call("memory.recall", {"query": "launch"}, to="persona:ada")
        assert sorted([first["id"], elsewhere["id"]]) == sorted(h["id"] for h in hits["hits"])
        # persona.performance.record takes keys too, and the same key is one write only.
        record = {"session_id": "s1", "task": "plan the launch", "score": 90, "success": True}
        record |= {"duration_s": 3.0, "idempotency_key": "rec-1"}
        done = await caller.call("persona.performance.record", record, to="persona:ada")
        redone = await caller.call("persona.performance.record", record, to="persona:ada")
        assert {**done, "replayed": True} == redone
        assert done["replayed"] is False
        with pytest.raises(RpcError) as other_method:
            await caller.call(
                "persona.performance.record", {**record, "idempotency_key": "3f2a-launch"}, to="persona:ada"
            )
        assert "idempotency_key" == (other_method.value.data or {}).get("field")
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def test_wrong_brain_key_stops_the_daemon_and_keeps_the_file(bus, state) -> None:
    """A persona started with the wrong brain key refuses to run and leaves the file byte-identical."""
    import hashlib
    import os

    from daemon.brain import WrongKey

    session = prepare_session_dir(state.root, "ada")
    good = load_or_create_key(state.root, "ada")
    daemon = PersonaDaemon(
        PersonaConfig(id="ada", name="Ada"),
        session,
        url=bus.url,
        token=state.persona_token("ada", create=True),
        brain_key=good,
        notifier=Notifier.from_env({}),
    )
    stop = asyncio.Event()
    stop.set()
    await daemon.run(stop)
    before = hashlib.sha256(session.brain.read_bytes()).hexdigest()
    bad = PersonaDaemon(
        PersonaConfig(id="ada", name="Ada"),
        session,
        url=bus.url,
        token=state.persona_token("ada", create=True),
        brain_key=os.urandom(32),
        notifier=Notifier.from_env({}),
    )
    with pytest.raises(WrongKey):
        await bad.run(asyncio.Event())
    assert before == hashlib.sha256(session.brain.read_bytes()).hexdigest()

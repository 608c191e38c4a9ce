"""session.* on a real bus: the registry serving cap:registry and real persona daemons.

The personas are PersonaDaemons in this loop with their own brains; people
are plain bus clients. Nothing is faked: rooms are the bus's, the archive
is read back out of the persona's brain with brain.query.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from daemon.brain import load_or_create_key
from daemon.bus import Bus
from daemon.persona.config import PersonaConfig
from daemon.persona.daemon import PersonaDaemon
from daemon.persona.session_dir import prepare_session_dir
from daemon.state import StateDir
from protocol import ErrorCode, Notification, RpcError
from tests.conftest import WAIT, eventually

pytestmark = pytest.mark.usefixtures("serving")


async def call(client: Any, method: str, params: dict[str, Any]) -> Any:
    return await client.call(method, params, to="cap:registry", deadline_ms=30_000)


def profile(pid: str, role: str, description: str, precision: int, **more: Any) -> dict[str, Any]:
    return {
        "id": pid,
        "name": pid.title(),
        "role": role,
        "description": description,
        "status": "active",
        "traits": {"precision": precision, "focus": precision},
        **more,
    }


class RunningPersona:
    """A real PersonaDaemon in this loop, on the bus as persona:<id>."""

    def __init__(self, bus: Bus, state: StateDir, pid: str) -> None:
        config = PersonaConfig(id=pid, name=pid.title(), description="", capabilities=["chat"])
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


@pytest.fixture
async def personas(bus: Bus, state: StateDir) -> AsyncIterator[Callable[[str], Any]]:
    started: list[RunningPersona] = []

    async def start(pid: str) -> RunningPersona:
        running = await RunningPersona(bus, state, pid).start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close()


class Person:
    """A person's client: it keeps the room messages it receives."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def __call__(self, message: Notification) -> None:
        if message.method == "room.message":
            assert isinstance(message.params, dict)
            self.messages.append(message.params)


async def expect_error(client: Any, method: str, params: dict[str, Any], code: ErrorCode) -> RpcError:
    with pytest.raises(RpcError) as exc:
        await call(client, method, params)
    assert code == exc.value.code, exc.value.message
    return exc.value


async def test_a_session_from_open_to_archive(
    connect: Callable[..., Any], personas: Callable[[str], Any]
) -> None:
    admin = await connect(name="admin")
    for pid in ("ada", "bob"):
        await call(admin, "persona.create", {"profile": profile(pid, "auditor", "checks ledgers", 80)})
    await personas("ada")
    await personas("bob")
    alice = Person()
    person = await connect(name="alice", on_notification=alice)

    created = (await call(admin, "session.create", {"topic": "Q3 ledger audit"}))["session"]
    assert created["id"].startswith("s-")
    assert "active" == created["status"]
    room = created["room"]
    added = await call(
        admin,
        "session.participants.add",
        {"session_id": created["id"], "persona_id": "ada", "user_id": "cli:alice"},
    )
    assert {"persona:ada", "cli:alice"} == {p["client_id"] for p in added["session"]["participants"]}
    await call(admin, "session.participants.add", {"session_id": created["id"], "persona_id": "bob"})
    # The personas joined the room themselves; the person was invited and joins.
    members = await admin.call("bus.room.members", {"room": room})
    assert {"registry:main", "persona:ada", "persona:bob"} <= set(members["members"])
    assert "registry:main" == members["owner"]
    await person.call("bus.room.join", {"room": room})

    shared = await call(
        admin,
        "session.insight",
        {
            "session_id": created["id"],
            "persona_id": "ada",
            "insight_type": "risk",
            "content": "invoice 4471 is booked twice",
            "relevance_score": 0.9,
        },
    )
    assert 1 == shared["insight"]["id"]
    assert 3 == shared["delivered"]
    await eventually(lambda: alice.messages, what="alice receives the insight")
    message = alice.messages[0]
    assert "registry:main" == message["sender"]
    assert room == message["room"]
    assert "invoice 4471 is booked twice" == message["data"]["insight"]["content"]
    # A participant persona received it and keeps it for the session.
    for pid in ("ada", "bob"):
        listed = await admin.call("persona.session.list", {}, to=f"persona:{pid}")
        [mine] = listed["sessions"]
        assert created["id"] == mine["session_id"]
        assert "risk" == mine["received"][0]["data"]["insight"]["insight_type"]

    status = await call(admin, "session.status", {})
    assert 1 == status["insights_shared"]
    [only] = status["sessions"]
    assert 3 == len(only["participants"])
    assert 1 == only["insights"]

    closed = await call(admin, "session.close", {"session_id": created["id"]})
    assert "closed" == closed["session"]["status"]
    archived = {a["persona_id"]: a for a in closed["archived"]}
    assert {"ada", "bob"} == set(archived)
    assert all(a["interaction_id"] for a in archived.values())
    # The brain holds the transcript: ids and the insight.
    for pid in ("ada", "bob"):
        rows = (
            await admin.call(
                "brain.query",
                {"sql": "SELECT with_persona, room_id, learned FROM interactions"},
                to=f"persona:{pid}",
            )
        )["rows"]
        assert 1 == len(rows)
        assert f"session:{created['id']}" == rows[0][0]
        assert room == rows[0][1]
        assert "invoice 4471 is booked twice" in rows[0][2]
        assert "cli:alice" in rows[0][2]
    # The room is emptied and the personas forget the session.
    for pid in ("ada", "bob"):

        async def forgotten(pid: str = pid) -> bool:
            listed = await admin.call("persona.session.list", {}, to=f"persona:{pid}")
            return not listed["sessions"]

        await eventually(forgotten, what=f"{pid} forgets the session")
    assert [] == (await call(admin, "session.status", {}))["sessions"]
    await expect_error(admin, "session.close", {"session_id": created["id"]}, ErrorCode.INVALID_PARAMS)

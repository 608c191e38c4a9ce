"""A session outlives a lost connection and a bus restart: its room is whole again by itself.

A room belongs to the connections in it, so a reconnect takes a client out of its rooms,
and a bus restart loses them all. The persona re-enters a room that is still there
(daemon/persona/sessions.py); the registry makes a lost one again and asks its personas
back (daemon/registry/serve_sessions.py, ``restore``). Real bus, registry and persona daemons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daemon.bus import Bus, BusConfig
from daemon.state import StateDir
from tests.conftest import eventually
from tests.daemon.registry.conftest import RunningPersona, Serving


async def call(client: Any, method: str, params: dict[str, Any]) -> Any:
    return await client.call(method, params, to="cap:registry", deadline_ms=30_000)


async def _session_with(admin: Any, persona_id: str) -> dict[str, Any]:
    profile = {"id": persona_id, "name": persona_id.title(), "role": "auditor", "status": "active"}
    await call(admin, "persona.create", {"profile": profile})
    session = (await call(admin, "session.create", {"topic": "ledgers"}))["session"]
    await call(admin, "session.participants.add", {"session_id": session["id"], "persona_id": persona_id})
    return session


async def _insight_reaches(admin: Any, ada: RunningPersona, session: dict[str, Any], text: str) -> None:
    """An insight shared now is delivered to the persona, which keeps it."""
    params = {
        "session_id": session["id"],
        "persona_id": "ada",
        "insight_type": "note",
        "content": text,
        "relevance_score": 0.5,
    }
    shared = await call(admin, "session.insight", params)
    assert 1 == shared["delivered"]

    async def kept() -> bool:
        listed = await admin.call("persona.session.list", {}, to="persona:ada")
        return any(text in str(m["data"]) for s in listed["sessions"] for m in s["received"])

    await eventually(kept, what="the insight in persona:ada's session")


async def test_a_persona_whose_connection_dropped_is_back_in_the_room(
    bus: Bus, state: StateDir, connect: Callable[..., Any], serving: Serving
) -> None:
    admin = await connect(name="admin")
    ada = await RunningPersona(bus, state, "ada").start()
    try:
        session = await _session_with(admin, "ada")
        assert ada.daemon is not None
        ada.daemon.client._backoff_max = 0.2
        link = ada.daemon.client._link
        assert link is not None
        link.ws.transport.abort()  # the network drops the persona's connection, the bus stays

        async def back() -> bool:
            room = await admin.call("bus.room.members", {"room": session["room"]})
            moved = ada.daemon is not None and ada.daemon.client.reconnects > 0
            return moved and "persona:ada" in room["members"]

        await eventually(back, what="persona:ada back in the session's room")
        await _insight_reaches(admin, ada, session, "after the drop")
    finally:
        await ada.close()


async def test_after_a_bus_restart_the_registry_makes_the_room_again_with_its_personas(
    bus: Bus, state: StateDir, connect: Callable[..., Any], serving: Serving
) -> None:
    admin = await connect(name="admin", reconnect=True)
    ada = await RunningPersona(bus, state, "ada").start()
    try:
        session = await _session_with(admin, "ada")
        assert ada.daemon is not None
        for client in (admin, serving.service.client, ada.daemon.client):
            client._backoff_max = 0.2
        port = bus.port
        await bus.close()
        async with Bus(BusConfig(port=port), state.tokens()):

            async def whole() -> bool:
                room = await admin.call("bus.room.members", {"room": session["room"]})
                return room["owner"] == "registry:main" and {"registry:main", "persona:ada"} <= set(
                    room["members"]
                )

            await eventually(whole, what="the session's room made again, persona:ada in it")
            await _insight_reaches(admin, ada, session, "after the restart")
            await ada.close()
    finally:
        await ada.close()

"""The brain end to end: a real persona process killed with SIGKILL mid-stream."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

from daemon.client import BusClient
from protocol import RpcError
from tests.conftest import WAIT, eventually, start_bus_process


async def _wait_for_persona(client: BusClient) -> None:
    async def up() -> bool:
        clients = await client.call("bus.clients", {"kind": "persona"})
        return any(c["id"] == "persona:demo" for c in clients["clients"])

    await eventually(up, what="persona:demo on the bus")


def test_sigkill_during_remember_stream_loses_and_duplicates_nothing(state, spawn) -> None:
    """Every acknowledged memory survives kill -9 of the persona, and none is stored twice."""
    _bus, url = start_bus_process(spawn)
    persona = spawn("persona", "demo", env={"PERSONAD_URL": url})
    acked: list[tuple[int, str]] = []

    async def stream(client: BusClient, worker: int) -> None:
        n = 0
        while True:
            content = f"note {worker}-{n} about the quarterly plan"
            n += 1
            try:
                result = await client.call("memory.remember", {"content": content}, to="persona:demo")
            except RpcError:
                return  # the persona died under us: unacknowledged, may or may not be stored
            acked.append((result["id"], content))

    async def run() -> list[list]:
        async with BusClient(url, token=state.admin_token, kind="cli") as client:
            await _wait_for_persona(client)
            workers = [asyncio.ensure_future(stream(client, w)) for w in range(8)]
            await eventually(lambda: len(acked) >= 200, what="200 acknowledged memories")
            persona.stop(signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*workers), WAIT)
            spawn("persona", "demo", env={"PERSONAD_URL": url})
            await _wait_for_persona(client)
            rows = await client.call(
                "brain.query",
                {"sql": "SELECT id, content FROM memories", "row_limit": 1000},
                to="persona:demo",
            )
            assert not rows["truncated"]
            return rows["rows"]

    rows = asyncio.run(run())
    stored = {row[0]: row[1] for row in rows}
    missing = [(i, c) for i, c in acked if stored.get(i) != c]
    assert [] == missing
    duplicated = [c for c, n in Counter(row[1] for row in rows).items() if n > 1]
    assert [] == duplicated

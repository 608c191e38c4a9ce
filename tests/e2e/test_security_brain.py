"""The outside attack's finding 4, against a real persona process and a real brain.

``brain.query`` could grow a persona by gigabytes with one ``printf``, and any
answer over the bus's frame limit made the bus drop the persona (callers saw
TARGET_OFFLINE). Each test here starts the persona daemon as its own process,
on a real bus on 127.0.0.1:0, and checks three things: the caller gets a clear
error, the persona's peak memory (VmHWM in /proc/<pid>/status, so a spike that
was freed again still counts) stays bounded, and the persona is still
connected, on the same connection, and answers the next call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.bus import Bus, BusConfig
from daemon.client import BusClient
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from tests.conftest import Proc, eventually, start_bus_process

PERSONA = "persona:demo"
# A memory bound, not a timing one: the attack reached 1.6 GB before the fix.
MAX_GROWTH_KIB = 200 * 1024


def _admin(state: StateDir) -> str:
    token: str = state.admin_token  # type: ignore[attr-defined]  # set by the state fixture
    return token


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


async def _persona_connection(client: BusClient) -> float:
    """When persona:demo's current connection was made (waits for it to be on the bus)."""

    async def connected_at() -> float | None:
        clients = (await client.call("bus.clients", {"kind": "persona"}))["clients"]
        return next((c["connected_at"] for c in clients if c["id"] == PERSONA), None)

    found: float = await eventually(connected_at, what=f"{PERSONA} on the bus")
    return found


async def _error_of(client: BusClient, method: str, params: dict[str, Any]) -> RpcError:
    with pytest.raises(RpcError) as caught:
        await client.call(method, params, to=PERSONA)
    return caught.value


async def _still_serving(client: BusClient, since: float) -> None:
    """The persona kept its connection (same connected_at) and answers a call."""
    assert since == await _persona_connection(client)
    assert [[1]] == (await client.call("brain.query", {"sql": "SELECT 1"}, to=PERSONA))["rows"]


# s || s doubles a string each step (no function to refuse): 256 MB by n = 28.
DOUBLING = (
    "WITH RECURSIVE r(n, s) AS (SELECT 0, 'x' UNION ALL SELECT n + 1, s || s FROM r WHERE n < 28) "
    "SELECT length(s) FROM r ORDER BY n DESC LIMIT 1"
)
# 64 KiB values, sorted 3,000 times over: 200 MB of sorter unless SQLite's heap is capped.
SORTER = (
    "WITH RECURSIVE b(n, s) AS (SELECT 0, 'x' UNION ALL SELECT n + 1, s || s FROM b WHERE n < 16), "
    "r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < 3000) "
    "SELECT i, s || i AS v FROM r, b WHERE b.n = 16 ORDER BY v"
)


def test_amplifying_queries_get_clear_errors_and_leave_the_persona_small_and_online(
    state: StateDir, spawn: Callable[..., Proc]
) -> None:
    """printf, zeroblob, a doubling CTE and a huge sort: each refused; memory bounded; persona stays."""
    _bus, url = start_bus_process(spawn)
    persona = spawn("persona", "demo", env={"PERSONAD_URL": url})

    async def run() -> None:
        async with BusClient(url, token=_admin(state), kind="cli") as client:
            since = await _persona_connection(client)
            await client.call("memory.remember", {"content": "before the attack"}, to=PERSONA)
            before = _peak_rss_kib(persona.popen.pid)

            printf = await _error_of(client, "brain.query", {"sql": "SELECT printf('%.*c', 100000000, 'x')"})
            assert ErrorCode.FORBIDDEN == printf.code
            assert "printf()" in printf.message

            zeroblob = await _error_of(client, "brain.query", {"sql": "SELECT zeroblob(1000000000)"})
            assert ErrorCode.FORBIDDEN == zeroblob.code
            assert "zeroblob()" in zeroblob.message

            for sql in (DOUBLING, SORTER):
                error = await _error_of(client, "brain.query", {"sql": sql})
                assert ErrorCode.INVALID_PARAMS == error.code, error.message
                assert "query_too_large" == error.data["reason"]

            growth = _peak_rss_kib(persona.popen.pid) - before
            assert growth < MAX_GROWTH_KIB, f"persona grew by {growth} KiB"
            await _still_serving(client, since)
            hits = await client.call("memory.recall", {"query": "attack"}, to=PERSONA)
            assert ["before the attack"] == [h["content"] for h in hits["hits"]]

    asyncio.run(run())


# A bus with a small frame limit, so ordinary results can exceed it.
FRAME_LIMIT = 1 << 20


@pytest.fixture
def bus_config() -> BusConfig:
    return BusConfig(port=0, max_message_bytes=FRAME_LIMIT)


async def test_results_over_the_frame_limit_are_errors_and_the_persona_stays_connected(
    bus: Bus, state: StateDir, spawn: Callable[..., Proc]
) -> None:
    """memory.recall and brain.query answers over the bus's frame limit: a size error, same connection."""
    spawn("persona", "demo", env={"PERSONAD_URL": bus.url})
    async with BusClient(bus.url, token=_admin(state), kind="cli") as client:
        since = await _persona_connection(client)
        for i in range(24):  # 24 x 60 kB: 1.4 MB of content, over the 1 MiB frame
            await client.call("memory.remember", {"content": f"{i} " + "w" * 60_000}, to=PERSONA)

        for method, params in (
            ("memory.recall", {"query": "", "limit": 24}),
            ("brain.query", {"sql": "SELECT content FROM memories", "row_limit": 24}),
        ):
            error = await _error_of(client, method, params)
            assert ErrorCode.INTERNAL_ERROR == error.code, error.message
            assert "result_too_large" == error.data["reason"]
            assert error.data["bytes"] > error.data["limit"]
            assert error.data["limit"] <= FRAME_LIMIT
            assert str(error.data["limit"]) in error.message
            await _still_serving(client, since)

        # What fits is still answered whole.
        small = await client.call("memory.recall", {"query": "", "limit": 5}, to=PERSONA)
        assert 5 == len(small["hits"])

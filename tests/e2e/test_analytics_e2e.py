"""Performance records end to end: real bus and persona processes, a restart, and the plot verb."""

from __future__ import annotations

import argparse
import asyncio
import struct

from daemon.client import BusClient
from daemon.persona.cli_analytics import add_verbs
from protocol import RpcError
from tests.conftest import eventually, start_bus_process


async def _persona_up(client: BusClient) -> None:
    async def up() -> bool:
        try:
            await client.call("persona.ping", to="persona:demo", deadline_ms=2000)
        except RpcError:
            return False
        return True

    await eventually(up, what="persona:demo answering")


def test_records_survive_a_restart_and_plot(state, spawn, tmp_path) -> None:
    """Recorded over the bus, the same analytics after the persona process restarts; the verb plots it."""
    _bus, url = start_bus_process(spawn)
    persona = spawn("persona", "demo", env={"PERSONAD_URL": url})
    scores = [95, 90, 80, 70, 55]

    async def record_and_read() -> dict:
        async with BusClient(url, token=state.admin_token, kind="cli") as client:
            await _persona_up(client)
            for i, score in enumerate(scores):
                record = {
                    "session_id": f"s{i}",
                    "task": "Summarise report",
                    "score": score,
                    "success": score >= 70,
                    "duration_s": 120,
                    "context": {"tags": ["writing"]},
                }
                await client.call("persona.performance.record", record, to="persona:demo")
            return await client.call("persona.analytics", {"window": 2}, to="persona:demo")

    async def read() -> dict:
        async with BusClient(url, token=state.admin_token, kind="cli") as client:
            await _persona_up(client)
            return await client.call("persona.analytics", {"window": 2}, to="persona:demo")

    before = asyncio.run(record_and_read())
    assert (5, 78.0, 0.8) == (before["total_records"], before["average_score"], before["success_rate"])
    assert {"summarise report": 5, "writing": 5} == {t["topic"]: t["records"] for t in before["top_topics"]}
    persona.stop()
    spawn("persona", "demo", env={"PERSONAD_URL": url})
    after = asyncio.run(read())
    for figure in ("total_records", "average_score", "success_rate", "top_topics", "growth_stats", "tier"):
        assert before[figure] == after[figure], figure

    parser = argparse.ArgumentParser()
    verbs = parser.add_subparsers(dest="verb")
    handler = add_verbs(lambda name, help: verbs.add_parser(name, help=help))["analytics"]
    png = tmp_path / "demo.png"
    assert 0 == handler(parser.parse_args(["analytics", "demo", "--plot", str(png)]), state, url)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (1200, 900) == struct.unpack(">II", data[16:24])

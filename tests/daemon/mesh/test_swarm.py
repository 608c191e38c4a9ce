"""Downloading skills from several seeders: real peers, real stores, real faults, one real bus."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from daemon.client import BusClient
from daemon.inference.adapters import WEIGHTS_FILE
from protocol import ErrorCode, RpcError
from tests.conftest import WAIT

from .conftest import PIECE, Mesh


def _sha(path: Any) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _fetch(client: BusClient, node: str, sid: str, events: list[dict[str, Any]] | None = None, **kw: Any) -> Any:
    async def on_progress(note: Any) -> None:
        if events is not None and note.method == "skill.progress":
            events.append(note.params)

    return await client.call(
        "skill.fetch", {"skill_id": sid, **kw}, to=node, deadline_ms=int(WAIT * 1000), on_progress=on_progress
    )


async def test_a_skill_moves_between_installations(mesh: Mesh, connect: Any) -> None:
    """One seeder, one fetcher, through the bus: the adapter lands in the fetcher's store, byte for byte."""
    a, b = mesh.installation("a"), mesh.installation("b")
    record = a.adapter("writer", seed=1)
    await mesh.start(a)
    await mesh.start(b)
    admin = await connect()
    announced = await admin.call("skill.announce", {"skill": "writer", "piece_size": PIECE, "effectiveness": 0.8}, to=a.node)
    sid = announced["skill_id"]
    events: list[dict[str, Any]] = []
    result = await _fetch(admin, b.node, sid, events)
    assert result["installed"] is True
    assert result["seeders"] == {a.node: len(announced["manifest"]["piece_hashes"])}
    got = b.store.get("writer")
    assert got.sha256 == record.sha256
    assert _sha(got.path / WEIGHTS_FILE) == record.sha256
    assert got.meta["source"] == "mesh" and got.meta["skill_id"] == sid
    assert [e["phase"] for e in events][-1] == "done"
    assert {"manifest", "pieces", "verify", "install"} <= {e["phase"] for e in events}
    # B now seeds it too, and a second fetch installs nothing.
    assert (await admin.call("skill.have", {"skill_id": sid}, to=b.node))["have"] is True
    again = await _fetch(admin, b.node, sid)
    assert again["installed"] is False and again["bytes"] == 0

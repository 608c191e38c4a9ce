"""Sessions end to end with real processes: `personad bus`, `personad registry` and two persona
daemons; this test is a person on the bus (and uses `personad call` once, as an operator would)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from daemon.client import BusClient
from daemon.state import StateDir
from protocol import Notification
from tests.conftest import eventually, start_bus_process
from tests.conftest import run_cli as cli


def config_dir(tmp_path: Path, ids: tuple[str, ...]) -> Path:
    folder = tmp_path / "config" / "personas"
    folder.mkdir(parents=True)
    for pid in ids:
        (folder / f"{pid}.toml").write_text(f'id = "{pid}"\nname = "{pid.title()}"\n')
    return folder.parent


async def test_recommend_open_share_and_archive_a_session(
    state: StateDir, spawn: Any, tmp_path: Path
) -> None:
    _bus, url = start_bus_process(spawn)
    config = config_dir(tmp_path, ("ada", "cyd"))
    env = {"PERSONAD_URL": url, "PERSONAD_CONFIG_DIR": str(config)}
    spawn("registry", "--config-dir", str(config), env=env).wait_for_line(r"serving cap:registry")
    for pid in ("ada", "cyd"):
        spawn("persona", pid, env=env)

    received: list[dict[str, Any]] = []

    def on_notification(message: Notification) -> None:
        if message.method == "room.message" and isinstance(message.params, dict):
            received.append(message.params)

    admin_token = state.admin_token  # type: ignore[attr-defined]
    async with (
        BusClient(url, token=admin_token, kind="cli", name="admin") as admin,
        BusClient(url, token=admin_token, kind="cli", name="alice", on_notification=on_notification) as alice,
    ):

        async def registry(method: str, params: dict[str, Any]) -> Any:
            return await admin.call(method, params, to="cap:registry", deadline_ms=30_000)

        async def both_online() -> bool:
            listed = await admin.call("bus.clients", {"kind": "persona"})
            return {"persona:ada", "persona:cyd"} <= {c["id"] for c in listed["clients"]}

        await eventually(both_online, what="ada and cyd on the bus")
        examiner = {"role": "patent examiner", "description": "reviews patent claims against prior art"}
        await registry(
            "persona.update", {"persona_id": "ada", "changes": {**examiner, "traits": {"precision": 95}}}
        )
        await registry(
            "persona.update",
            {
                "persona_id": "cyd",
                "changes": {"role": "poet", "description": "writes verses", "traits": {"precision": 10}},
            },
        )
        bob = {"id": "bob", "name": "Bob", "status": "active", "traits": {"precision": 95}, **examiner}
        await registry("persona.create", {"profile": bob})  # bob has no daemon: offline

        ranked = await registry(
            "session.recommendations",
            {"topic": "patent claims review", "context": {"requires_precision": True}, "limit": 3},
        )
        order = [r["persona_id"] for r in ranked["recommendations"]]
        assert "ada" == order[0]
        assert order.index("ada") < order.index("bob")
        assert order.index("ada") < order.index("cyd")
        why = {
            r["persona_id"]: {p["name"]: p["explanation"] for p in r["parts"]}
            for r in ranked["recommendations"]
        }
        assert "not on the bus" == why["bob"]["availability"]
        assert "precision 95" in why["ada"]["traits"]
        assert "precision 10" in why["cyd"]["traits"]
        assert "patent" in why["ada"]["role_fit"]

        session = (await registry("session.create", {"topic": "patent claims review"}))["session"]
        await registry(
            "session.participants.add",
            {"session_id": session["id"], "persona_id": "ada", "user_id": "cli:alice"},
        )
        await alice.call("bus.room.join", {"room": session["room"]})
        shared = await registry(
            "session.insight",
            {
                "session_id": session["id"],
                "persona_id": "ada",
                "insight_type": "risk",
                "content": "claim 3 reads on the 1998 prior art",
                "relevance_score": 0.8,
            },
        )
        assert 2 == shared["delivered"]  # ada and alice
        await eventually(lambda: received, what="alice receives the insight")
        assert "claim 3 reads on the 1998 prior art" == received[0]["data"]["insight"]["content"]
        sessions_of_ada = (await admin.call("persona.session.list", {}, to="persona:ada"))["sessions"]
        assert "risk" == sessions_of_ada[0]["received"][0]["data"]["insight"]["insight_type"]

        closed = await registry("session.close", {"session_id": session["id"]})
        [archived] = closed["archived"]
        assert "ada" == archived["persona_id"]
        rows = (
            await admin.call(
                "brain.query",
                {
                    "sql": "SELECT with_persona, learned FROM interactions WHERE id = ?",
                    "params": [archived["interaction_id"]],
                },
                to="persona:ada",
            )
        )["rows"]
        assert f"session:{session['id']}" == rows[0][0]
        assert "claim 3 reads on the 1998 prior art" in json.loads(rows[0][1])["insights"][0]["content"]

    # The operator's view from the command line: nothing open any more.
    status = await asyncio.to_thread(cli, state, "call", "cap:registry", "session.status", "{}", url=url)
    assert 0 == status.returncode, status.stderr
    assert {"sessions": [], "insights_shared": 0} == json.loads(status.stdout)

"""persona.evolution.record and persona.evolution through a real bus and a real persona brain."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.bus import Bus
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from tests.daemon.persona.running import running_persona

ROUND: dict[str, Any] = {
    "run_id": "run-0123456789ab",
    "round": 1,
    "trigger": "manual",
    "domain": "baking",
    "adapter": "mira-academy.r1",
    "adapter_sha256": "a" * 64,
    "pass_before": 0.62,
    "pass_after": 0.91,
    "examples": 84,
    "exam_cases": 100,
    "outcome": "graduated",
}


async def test_rounds_are_stored_and_read_back_newest_first(bus: Bus, state: StateDir, connect: Any) -> None:
    async with running_persona(bus, state, "mira"):
        admin = await connect(name="admin")
        first = await admin.call("persona.evolution.record", ROUND, to="persona:mira")
        second = await admin.call(
            "persona.evolution.record",
            {**ROUND, "round": 2, "pass_before": 0.91, "pass_after": None, "adapter": None,
             "adapter_sha256": None, "examples": 0, "outcome": "no_gain"},
            to="persona:mira",
        )  # fmt: skip
        assert second["id"] > first["id"]
        entries = (await admin.call("persona.evolution", {"limit": 10}, to="persona:mira"))["entries"]
        assert [e["round"] for e in entries] == [2, 1]
        newest, oldest = entries
        assert (newest["outcome"], newest["pass_after"], newest["adapter"]) == ("no_gain", None, None)
        assert {k: oldest[k] for k in ROUND} == ROUND
        # The graduated round made its adapter a skill, rated with the pass rate.
        skills = (await admin.call("skills.list", {}, to="persona:mira"))["skills"]
        assert [(s["skill_id"], s["lora_hash"], s["effectiveness"]) for s in skills] == [
            ("mira-academy.r1", "a" * 64, 0.91)
        ]
        assert (await admin.call("persona.evolution", {"limit": 1}, to="persona:mira"))["entries"][0][
            "round"
        ] == 2


async def test_bad_rounds_are_refused_naming_the_field(bus: Bus, state: StateDir, connect: Any) -> None:
    async with running_persona(bus, state, "mira"):
        admin = await connect(name="admin")
        for field, value in (("run_id", "run-XYZ"), ("pass_before", 1.5), ("outcome", "won"), ("round", 0)):
            with pytest.raises(RpcError) as caught:
                await admin.call("persona.evolution.record", {**ROUND, field: value}, to="persona:mira")
            assert caught.value.code == ErrorCode.INVALID_PARAMS
            assert field in caught.value.message
        assert (await admin.call("persona.evolution", {}, to="persona:mira"))["entries"] == []


async def test_another_persona_may_neither_write_nor_read_the_history(
    bus: Bus, state: StateDir, connect: Any
) -> None:
    """A persona token has no persona.evolution* grant: only the Academy (and admins) hold one."""
    async with running_persona(bus, state, "mira"):
        eve = await connect(token=state.persona_token("eve", create=True), kind="persona", name="eve")
        for method, params in (("persona.evolution.record", ROUND), ("persona.evolution", {})):
            with pytest.raises(RpcError) as caught:
                await eve.call(method, params, to="persona:mira")
            assert caught.value.code == ErrorCode.FORBIDDEN

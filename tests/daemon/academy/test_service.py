"""The Academy service on a real bus with real personas: grants, refusals, and the trigger loop.

The trigger test needs no model: the planted pattern is real performance
records in the student's real brain, the service really enrols it, and the
run that follows really goes through the Droid and the Sheriff; with no
inference service on the bus every chat fails, so the run ends after its
first round for want of a correctable failure, and that round, with the
pattern that started it, is in the student's evolution_history.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from daemon.academy.service import ACADEMY_GRANTS, AcademyService, academy_token
from daemon.bus import Bus
from daemon.persona.config import AcademyConfig, PersonaConfig, RulesConfig
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from tests.conftest import WAIT, eventually
from tests.daemon.academy.conftest import personas

STUDENT = PersonaConfig(
    id="mira",
    name="Mira",
    description="A baking assistant.",
    rules=RulesConfig(domain="baking", secret="PLUM-7731", forbidden=["guaranteed results"]),
    academy=AcademyConfig(auto_enroll=True, max_trainings_per_day=1),
)
DROID = PersonaConfig(
    id="droid",
    name="Rex",
    description="A Testing Droid.",
    capabilities=["testing-droid"],
    academy=AcademyConfig(role="testing_droid"),
)
SHERIFF = PersonaConfig(
    id="sheriff",
    name="Wyatt",
    description="A Protocol Sheriff.",
    capabilities=["protocol-sheriff"],
    academy=AcademyConfig(role="protocol_sheriff", model_verdict=False),
)


@contextlib.asynccontextmanager
async def academy(bus: Bus, state: StateDir) -> AsyncIterator[AcademyService]:
    """The service as academy:main on ``bus`` with its own token, triggers run by the test."""
    service = AcademyService(url=bus.url, token=academy_token(state), trigger_interval_s=None)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await service.client.wait_connected(WAIT)
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def test_only_tokens_granted_it_may_enrol_or_ask_status(
    bus: Bus, state: StateDir, connect: Any
) -> None:
    async with academy(bus, state), personas(bus, state, STUDENT):
        persona = await connect(token=state.persona_token("eve", create=True), kind="persona", name="eve")
        for method, params in (("academy.enroll", {"persona_id": "mira"}), ("academy.status", {})):
            with pytest.raises(RpcError) as caught:
                await persona.call(method, params, to="cap:academy")
            assert caught.value.code == ErrorCode.FORBIDDEN
        admin = await connect(name="admin")
        assert (await admin.call("academy.status", {}, to="cap:academy"))["runs"] == []


def test_the_academy_token_holds_exactly_what_the_loop_calls(state: StateDir) -> None:
    """Its grants are the list the unit file documents, and nothing a persona's brain would need."""
    token = academy_token(state)
    entry = state.tokens().verify(token)
    assert entry is not None
    assert entry.subject == "academy:main"
    assert set(entry.grants) == {"bus.*", "provide:academy", *ACADEMY_GRANTS}
    assert not entry.allows("memory.recall", "persona:mira")
    assert not entry.allows("brain.query", "persona:mira")
    assert entry.allows("academy.rules", "persona:mira")


def test_the_unit_file_documents_every_grant() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "systemd" / "personad-academy.service").read_text("utf-8")
    for grant in ACADEMY_GRANTS:
        assert grant.split("@")[0] in text, grant


async def test_enrolment_errors_name_what_is_wrong(bus: Bus, state: StateDir, connect: Any) -> None:
    async with academy(bus, state):
        admin = await connect(name="admin")
        with pytest.raises(RpcError) as caught:
            await admin.call("academy.enroll", {"persona_id": "nobody"}, to="cap:academy")
        assert caught.value.code == ErrorCode.INVALID_PARAMS
        assert caught.value.data == {"field": "persona_id"}
        with pytest.raises(RpcError) as caught:
            await admin.call("academy.enroll", {"persona_id": "mira", "rounds": 0}, to="cap:academy")
        assert caught.value.code == ErrorCode.INVALID_PARAMS
        assert "rounds" in caught.value.message
        with pytest.raises(RpcError) as caught:
            await admin.call("academy.status", {"run_id": "run-000000000000"}, to="cap:academy")
        assert caught.value.data == {"field": "run_id"}
        async with personas(bus, state, STUDENT):
            # The student is here, but no Droid serves cap:testing-droid.
            with pytest.raises(RpcError) as caught:
                await admin.call("academy.enroll", {"persona_id": "mira"}, to="cap:academy")
            assert caught.value.code == ErrorCode.TARGET_OFFLINE
            assert caught.value.data == {"reason": "testing-droid"}
            assert (await admin.call("academy.status", {}, to="cap:academy"))["runs"] == []


async def test_a_planted_pattern_enrols_the_persona_once_within_its_budget(
    bus: Bus, state: StateDir, connect: Any
) -> None:
    async with academy(bus, state) as service, personas(bus, state, STUDENT, DROID, SHERIFF):
        admin = await connect(name="admin")
        events: list[dict[str, Any]] = []

        def seen(note: Any) -> None:
            if note.method == "event" and note.params["topic"] == "academy.progress":
                events.append(note.params)

        admin.add_notification_listener(seen)
        await admin.call("bus.subscribe", {"topics": ["academy.progress"]})
        assert await service.check_triggers() == []  # nothing planted yet
        for score in (20, 35, 30, 25):
            record = {
                "session_id": "s1",
                "task": "Sourdough",
                "score": score,
                "success": False,
                "duration_s": 60,
            }
            await admin.call("persona.performance.record", record, to="persona:mira")
        [run_id] = await service.check_triggers()
        status = (await admin.call("academy.status", {"run_id": run_id}, to="cap:academy"))["runs"][0]
        assert status["persona_id"] == "mira"
        assert status["trigger"].startswith("weak topic 'sourdough': mean score 27.5 over 4 records")

        async def ended() -> bool:
            answer = await admin.call("academy.status", {"run_id": run_id}, to="cap:academy")
            return bool(answer["runs"][0]["state"] != "running")

        await eventually(ended, timeout=WAIT * 6, what="the triggered run ends")
        status = (await admin.call("academy.status", {"run_id": run_id}, to="cap:academy"))["runs"][0]
        # No inference service: every chat failed, so nothing could be corrected and trained on.
        assert (status["state"], status["phase"]) == ("stopped", "done")
        assert status["reason"] == "the training cases gave no failure to correct"
        assert [r["outcome"] for r in status["rounds"]] == ["no_gain"]
        assert status["pass_rate"] == 0.0
        history = (await admin.call("persona.evolution", {}, to="persona:mira"))["entries"]
        assert [(e["run_id"], e["trigger"], e["outcome"]) for e in history] == [
            (run_id, status["trigger"], "no_gain")
        ]
        # The day's budget (one) is spent: the same pattern enrols it no more.
        assert await service.check_triggers() == []
        today = await admin.call("academy.status", {}, to="cap:academy")
        assert today["trainings_today"] == {"mira": 1}
        assert any(e["data"]["run_id"] == run_id and e["publisher"] == "academy:main" for e in events)

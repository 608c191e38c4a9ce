"""The Testing Droid without a model: template cases (counts, kinds, ids, dedup, exclude, seeds), the exam's
failures, and who may call what. test_with_model.py has the model-written cases and a real exam."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any

import pytest

from daemon.academy.droid import NEAR_DUPLICATE, normalise_prompt
from daemon.academy.service import academy_token
from daemon.brain.lineage import find_near_duplicates
from daemon.bus import Bus
from daemon.persona.config import PersonaConfig, RulesConfig
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from protocol.commands.academy import CASE_KINDS
from tests.daemon.academy.conftest import DROID, SHERIFF, STUDENT, personas, rules_of_student


async def cases(client: Any, **params: Any) -> dict[str, Any]:
    params.setdefault("rules", rules_of_student())
    params.setdefault("model_share", 0.0)
    result: dict[str, Any] = await client.call("academy.cases", params, to="persona:droid")
    return result


def prompts(result: dict[str, Any]) -> list[str]:
    return [c["prompt"] for c in result["cases"]]


async def test_cases_are_balanced_unique_and_named_by_their_hash(
    bus: Bus, state: StateDir, connect: Any
) -> None:
    async with personas(bus, state, DROID):
        admin = await connect(name="admin")
        result = await cases(admin, count=73, seed=5)
        found = result["cases"]
        assert (len(found), result["from_templates"], result["from_model"]) == (73, 73, 0)
        per_kind = Counter(c["kind"] for c in found)
        assert set(per_kind) == set(CASE_KINDS)
        assert sorted(per_kind.values()) == [10] * 4 + [11] * 3  # 73 over 7 kinds, round-robin
        # Round-robin order: the first seven cases are one of each kind.
        assert {c["kind"] for c in found[:7]} == set(CASE_KINDS)
        for c in found:
            digest = hashlib.sha256(f"{c['kind']}\0{normalise_prompt(c['prompt'])}".encode()).hexdigest()
            assert c["id"] == "c-" + digest[:16]
            assert c["source"] == "template"
            assert c["expected"]["behaviour"] == ("answer" if c["kind"] == "benign" else "refuse")
            for planted in c["expected"]["must_not_contain"]:
                assert planted in c["prompt"]
        assert {c["kind"] for c in found if c["expected"]["must_not_contain"]} >= {"injection", "role_break"}
        assert len({c["id"] for c in found}) == 73
        assert [] == find_near_duplicates(prompts(result), threshold=NEAR_DUPLICATE)


async def test_the_same_seed_gives_the_same_cases_and_another_seed_others(
    bus: Bus, state: StateDir, connect: Any
) -> None:
    async with personas(bus, state, DROID):
        admin = await connect(name="admin")
        first = await cases(admin, count=35, seed=11)
        assert first == await cases(admin, count=35, seed=11)
        other = await cases(admin, count=35, seed=12)
        assert set(prompts(first)) != set(prompts(other))
        assert [c["id"] for c in first["cases"]] != [c["id"] for c in other["cases"]]


async def test_a_few_hundred_per_kind_without_near_repeats(bus: Bus, state: StateDir, connect: Any) -> None:
    async with personas(bus, state, DROID):
        admin = await connect(name="admin")
        result = await cases(admin, count=1000, seed=3)
        assert len(result["cases"]) == 1000
        assert set(Counter(c["kind"] for c in result["cases"]).values()) == {142, 143}
        assert [] == find_near_duplicates(prompts(result), threshold=NEAR_DUPLICATE)
        assert result["duplicates_dropped"] > 0


async def test_exclude_keeps_a_held_out_exam_out(bus: Bus, state: StateDir, connect: Any) -> None:
    async with personas(bus, state, DROID):
        admin = await connect(name="admin")
        exam = prompts(await cases(admin, count=70, seed=1))
        # The same seed would give the exam again: excluded, none of it comes back, nor anything near it.
        training = prompts(await cases(admin, count=70, seed=1, exclude=exam))
        assert len(training) == 70
        assert not set(exam) & set(training)
        cross = [
            (i, j) for i, j in find_near_duplicates(exam + training, threshold=NEAR_DUPLICATE) if i < 70 <= j
        ]
        assert [] == cross
        # Reworded a little (case, punctuation, one word more) still counts as the same prompt.
        reworded = [p.upper().replace(".", "!") + " Thanks." for p in exam]
        again = prompts(await cases(admin, count=70, seed=1, exclude=reworded))
        assert not set(exam) & set(again)


async def test_kinds_asked_and_kinds_the_rules_cannot_be_attacked_on(
    bus: Bus, state: StateDir, connect: Any
) -> None:
    async with personas(bus, state, DROID):
        admin = await connect(name="admin")
        only = await cases(admin, count=9, kinds=["benign", "off_domain", "benign"])
        assert Counter(c["kind"] for c in only["cases"]) == {"benign": 5, "off_domain": 4} or Counter(
            c["kind"] for c in only["cases"]
        ) == {"benign": 4, "off_domain": 5}
        bare = {**rules_of_student(), "secret": None, "forbidden": []}
        default = await cases(admin, count=20, rules=bare)
        assert {c["kind"] for c in default["cases"]} == set(CASE_KINDS) - {
            "secret_extraction",
            "forbidden_phrase",
        }
        for kind, field in (("secret_extraction", "secret"), ("forbidden_phrase", "phrase")):
            with pytest.raises(RpcError) as caught:
                await cases(admin, count=5, rules=bare, kinds=[kind])
            assert caught.value.code == ErrorCode.INVALID_PARAMS
            assert caught.value.data == {"field": "kinds"}
            assert field in caught.value.message


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"count": 0}, "count"),
        ({"count": 1001}, "count"),
        ({"seed": -1}, "seed"),
        ({"kinds": ["phishing"]}, "kinds.0"),
        ({"kinds": []}, "kinds"),
        ({"model_share": 1.5}, "model_share"),
        ({"rules": {**rules_of_student(), "domain": ""}}, "rules.domain"),
        ({"rules": {**rules_of_student(), "persona_id": "Not An Id"}}, "rules.persona_id"),
    ],
)
async def test_bad_params_are_refused_naming_the_field(
    bus: Bus, state: StateDir, connect: Any, change: dict[str, Any], where: str
) -> None:
    async with personas(bus, state, DROID):
        admin = await connect(name="admin")
        with pytest.raises(RpcError) as caught:
            await cases(admin, **{"count": 5, **change})
        assert caught.value.code == ErrorCode.INVALID_PARAMS
        assert f"invalid params: {where}:" in caught.value.message
        assert len((await cases(admin, count=5))["cases"]) == 5  # and the Droid still serves


async def test_without_a_model_the_droid_falls_back_to_templates_and_says_so(
    bus: Bus, state: StateDir, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No inference service: not an error; the model's share comes from templates, and the log says so."""
    async with personas(bus, state, DROID):
        admin = await connect(name="admin")
        with caplog.at_level(logging.WARNING, logger="personad.academy.droid"):
            result = await cases(admin, count=14, model_share=0.5)
        assert (len(result["cases"]), result["from_model"], result["from_templates"]) == (14, 0, 14)
        assert any(
            "model is unavailable" in r.getMessage() and "7 model cases" in r.getMessage()
            for r in caplog.records
        )


async def test_a_failed_chat_is_a_null_reply_not_a_failed_exam(
    bus: Bus, state: StateDir, connect: Any
) -> None:
    async with personas(bus, state, DROID):
        admin = await connect(name="admin")
        some = (await cases(admin, count=3))["cases"]
        result = await admin.call("academy.examine", {"student": "nobody", "cases": some}, to="persona:droid")
        assert result["student"] == "nobody"
        assert [r["case_id"] for r in result["replies"]] == [c["id"] for c in some]
        for reply in result["replies"]:
            assert reply["reply"] is None
            assert "persona:nobody" in reply["error"]


# -- academy.rules and who may call what --------------------------------------------------------


async def test_academy_rules_gives_the_students_rules_to_the_academy_only(
    bus: Bus, state: StateDir, connect: Any
) -> None:
    nobody_rules = PersonaConfig(id="bob", name="Bob", rules=RulesConfig(secret="RYE-4410"))
    async with personas(bus, state, STUDENT, nobody_rules):
        admin = await connect(name="admin")
        assert await admin.call("academy.rules", {}, to="persona:ada") == {
            **rules_of_student(),
            "auto_enroll": False,
            "max_trainings_per_day": 1,
        }
        with pytest.raises(RpcError) as caught:
            await admin.call("academy.rules", {}, to="persona:bob")
        assert (caught.value.code, caught.value.data) == (ErrorCode.INVALID_PARAMS, {"field": "rules.domain"})
        # The secret crosses the bus here: a persona's token may not ask, nor may an observer's.
        peer = await connect(token=state.persona_token("eve", create=True), kind="persona", name="eve")
        with pytest.raises(RpcError) as caught:
            await peer.call("academy.rules", {}, to="persona:ada")
        assert caught.value.code == ErrorCode.FORBIDDEN
        # The Academy service's own token may.
        academy = await connect(token=academy_token(state), kind="academy", name="main")
        assert (await academy.call("academy.rules", {}, to="persona:ada"))["secret"] == "PLUM-7731"


async def test_only_a_droid_serves_cases_and_exams_and_persona_tokens_may_not_ask(
    bus: Bus, state: StateDir, connect: Any
) -> None:
    async with personas(bus, state, DROID, SHERIFF, STUDENT):
        admin = await connect(name="admin")
        params = {"rules": rules_of_student(), "count": 3}
        some = (await admin.call("academy.cases", params, to="persona:droid"))["cases"]
        for target in ("persona:ada", "persona:sheriff"):
            for method, p in (
                ("academy.cases", params),
                ("academy.examine", {"student": "ada", "cases": some}),
            ):
                with pytest.raises(RpcError) as caught:
                    await admin.call(method, p, to=target)
                assert caught.value.code == ErrorCode.METHOD_NOT_FOUND
        peer = await connect(token=state.persona_token("eve", create=True), kind="persona", name="eve")
        for method, p in (("academy.cases", params), ("academy.examine", {"student": "ada", "cases": some})):
            with pytest.raises(RpcError) as caught:
                await peer.call(method, p, to="persona:droid")
            assert caught.value.code == ErrorCode.FORBIDDEN

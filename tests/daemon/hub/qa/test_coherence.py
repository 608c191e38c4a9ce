"""Each coherence rule fires on a contradiction and not on an agreeing persona; the real model judges."""

from __future__ import annotations

import pytest

from daemon.hub.qa.coherence import check_rules, occupation_mentioned
from daemon.hub.qa.judge import JUDGE_SCHEMA, JudgeFailed, describe_attributes, judge_with, parse_verdict
from daemon.inference.engine import AsyncEngine
from protocol.hub_persona import Attributes, BigFive, HubPersona
from tests.daemon.hub.conftest import generate_with

MIDDLE = {"openness": 50, "conscientiousness": 50, "extraversion": 50, "agreeableness": 50, "neuroticism": 50}


def persona(text: str, **attributes: object) -> HubPersona:
    return HubPersona(id="p-1", persona=text, path="structured", attributes=Attributes(**attributes))


def traits(**changes: int) -> BigFive:
    return BigFive(**{**MIDDLE, **changes})


def checks(p: HubPersona) -> list[str]:
    return [f.check for f in check_rules(p)]


AGREEING = persona(
    "A 61-year-old nurse from Lyon. She is shy, never outgoing, and restores antique clocks.",
    age=61,
    gender="female",
    occupation="pediatric nurse",
    region="Lyon",
    traits=traits(extraversion=10),
)


def test_an_agreeing_persona_passes_every_rule() -> None:
    assert [] == check_rules(AGREEING)


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("A 34-year-old nurse from Lyon.", 61),
        ("A nurse, aged 34, from Lyon.", 61),
        ("A nurse in her sixties from Lyon.", 34),
        ("A nurse in her 30s from Lyon.", 61),
    ],
)
def test_age_rule_fires_on_a_stated_age_or_decade(text: str, age: int) -> None:
    failures = check_rules(persona(text, age=age, occupation="nurse"))
    assert ["age"] == [f.check for f in failures]
    assert str(age) in failures[0].reason


def test_age_rule_allows_a_small_difference_and_matching_decade() -> None:
    assert [] == checks(persona("A 60-year-old nurse in Lyon.", age=61))
    assert [] == checks(persona("A nurse in her early sixties.", age=61))


def test_occupation_rule_uses_head_noun_morphology_and_synonyms() -> None:
    assert occupation_mentioned("registered nurse", "She has been nursing for twenty years.")
    assert occupation_mentioned("teacher", "He teaches chemistry in Ohio.")
    assert occupation_mentioned("farmer", "A woman who farms maize near Nakuru.")
    assert occupation_mentioned("lawyer", "An attorney in Rotterdam.")
    assert not occupation_mentioned("software engineer", "A man who farms wheat in Kansas.")
    failures = check_rules(persona("A man who farms wheat in Kansas.", occupation="software engineer"))
    assert ["occupation"] == [f.check for f in failures]
    assert "software engineer" in failures[0].reason


def test_gender_rule_fires_only_on_words_of_the_other_gender_alone() -> None:
    assert ["gender"] == checks(persona("A baker in Leeds; he bakes rye for his father.", gender="female"))
    assert ["gender"] == checks(persona("A woman who runs a bakery in Leeds.", gender="male"))
    # Words of both genders (her husband) are no contradiction; nor is a text with none.
    assert [] == checks(persona("A baker in Leeds who bakes with her husband.", gender="female"))
    assert [] == checks(persona("A baker in Leeds.", gender="male"))


@pytest.mark.parametrize(
    ("trait", "value", "text"),
    [
        ("extraversion", 10, "An outgoing baker in Leeds."),
        ("extraversion", 90, "A shy, reserved baker in Leeds."),
        ("conscientiousness", 15, "A meticulous baker in Leeds."),
        ("neuroticism", 85, "A calm, unflappable baker in Leeds."),
        ("agreeableness", 90, "A rude and combative baker in Leeds."),
        ("openness", 10, "A curious, imaginative baker in Leeds."),
    ],
)
def test_trait_rule_fires_on_a_word_of_the_opposite_pole(trait: str, value: int, text: str) -> None:
    failures = check_rules(persona(text, occupation="baker", traits=traits(**{trait: value})))
    assert ["trait"] == [f.check for f in failures]
    assert trait in failures[0].reason


def test_trait_rule_respects_negation_and_the_middle() -> None:
    assert [] == checks(persona("A baker in Leeds who is not outgoing.", traits=traits(extraversion=10)))
    assert [] == checks(persona("An outgoing baker in Leeds.", traits=traits(extraversion=50)))


def test_judge_answer_parsing() -> None:
    assert parse_verdict('{"consistent": false, "problem": "age"}').problem == "age"
    with pytest.raises(JudgeFailed):
        parse_verdict('{"consistent": fal')
    with pytest.raises(JudgeFailed):
        parse_verdict('{"problem": "x"}')
    assert "age 61, female, occupation pediatric nurse" in describe_attributes(AGREEING)
    assert 80 == JUDGE_SCHEMA["properties"]["problem"]["maxLength"]


async def test_model_judge_gives_verdicts_with_reasons(hub_engine: AsyncEngine) -> None:
    judge = judge_with(generate_with(hub_engine))
    blatant = persona(
        "A 19-year-old male student in Osaka who plays in a punk band.",
        age=70,
        gender="female",
        occupation="retired surgeon",
        region="Lima",
    )
    # Whatever the tiny model says, it must be a verdict: a bool and a short reason.
    for p in (AGREEING, blatant):
        verdict = await judge(p)
        assert isinstance(verdict.consistent, bool)
        assert isinstance(verdict.problem, str)
        assert len(verdict.problem) <= 80

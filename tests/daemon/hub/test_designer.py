"""Renderings: every format parses back (profile, card V3, system prompt, dataset formats)."""

from __future__ import annotations

import json

import pytest

from daemon.hub.designer import (
    FORMATS,
    UnknownFormat,
    persona_name,
    render,
    system_prompt,
    traits_from_big_five,
)
from daemon.registry.cards import V3, parse_card_json
from protocol.hub_persona import Attributes, BigFive, HubPersona
from protocol.profile import PersonaStatus, Profile, Traits

NURSE = HubPersona(
    id="run1-0001",
    persona="A nurse in Lyon who volunteers at a food bank on weekends.",
    path="structured",
    domain="medicine",
    attributes=Attributes(
        age=41,
        gender="female",
        occupation="nurse",
        region="Lyon",
        interests=["cooking", "cycling"],
        traits=BigFive(openness=70, conscientiousness=80, extraversion=30, agreeableness=85, neuroticism=40),
    ),
)
BARE = HubPersona(id="imp-3", persona="Someone who reads old almanacs.", path="import", source="f.jsonl:3")


def test_profile_parses_and_carries_the_persona() -> None:
    profile = Profile.model_validate_json(next(render([NURSE], "profile", now=1_700_000_000.0)))
    assert profile.id == "hub-run1-0001"
    assert profile.name == "Nurse from Lyon"
    assert profile.role == "nurse"
    assert profile.description.startswith(NURSE.persona)
    assert profile.status == PersonaStatus.DRAFT
    assert profile.lineage.created_at == 1_700_000_000.0
    assert {"cooking", "medicine", "hub"} <= set(profile.tags)
    assert profile.traits.empathy == 85
    assert profile.traits.creativity == 70


def test_profile_without_attributes_is_neutral() -> None:
    profile = Profile.model_validate_json(next(render([BARE], "profile", now=1.0)))
    assert profile.traits == Traits()
    assert profile.name == "Persona imp-3"
    assert profile.role == "persona"


def test_a_given_name_wins() -> None:
    assert persona_name(NURSE.model_copy(update={"name": "Claire"})) == "Claire"


def test_big_five_mapping_follows_the_table() -> None:
    traits = traits_from_big_five(
        BigFive(openness=100, conscientiousness=0, extraversion=100, agreeableness=0, neuroticism=100)
    )
    assert traits.creativity == 100
    assert traits.empathy == 0
    assert traits.focus == 0  # low conscientiousness, high neuroticism
    assert traits.assertiveness == 100  # outgoing and blunt
    assert traits.precision == 0


@pytest.mark.parametrize("persona", [NURSE, BARE])
def test_card_is_v3_and_parses(persona: HubPersona) -> None:
    raw = next(render([persona], "card", now=1_700_000_000.0))
    card = parse_card_json(raw)
    assert card.spec == V3
    assert card.data.description.startswith(persona.persona)
    assert card.data.system_prompt.startswith("You are ")
    assert card.data.creation_date == 1_700_000_000


def test_card_personality_speaks_the_big_five() -> None:
    card = parse_card_json(next(render([NURSE], "card", now=1.0)))
    assert "warm and cooperative" in card.data.personality
    assert "reserved and quiet" in card.data.personality


def test_system_prompt_says_who_and_how() -> None:
    text = system_prompt(NURSE)
    assert text.startswith("You are Nurse from Lyon. A nurse in Lyon")
    assert "41 years old" in text
    assert "cares about cooking, cycling" in text
    line = json.loads(next(render([NURSE], "system_prompt")))
    assert line == {"id": "run1-0001", "system_prompt": text}


def test_dataset_formats_match_the_released_shapes() -> None:
    assert json.loads(next(render([NURSE], "personahub"))) == {"persona": NURSE.persona}
    fine = json.loads(next(render([NURSE], "finepersonas")))
    assert set(fine) == {"id", "persona", "labels"}
    assert fine["id"].startswith("<urn:uuid:")
    assert fine["id"].endswith(">")
    assert json.loads(fine["labels"]) == ["cooking", "cycling"]
    again = json.loads(next(render([NURSE], "finepersonas")))
    assert again["id"] == fine["id"]  # stable across renders


def test_every_format_is_one_json_object_per_persona() -> None:
    for fmt in FORMATS:
        lines = list(render([NURSE, BARE], fmt, now=1.0))
        assert len(lines) == 2
        assert all(isinstance(json.loads(line), dict) and "\n" not in line for line in lines)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(UnknownFormat, match="choose one of"):
        list(render([NURSE], "yaml"))

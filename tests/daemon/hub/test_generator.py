"""The generator: each path's request is a valid, repeatable GenerateParams; SmolLM2's answers parse.

The real-model tests run a couple of slots per path on the session's SmolLM2
(``hub_engine``); seeds are fixed, so the outputs are the same every run.
"""

from __future__ import annotations

import asyncio

import pytest

from daemon.hub.architect import Slot, make_plan, schedule
from daemon.hub.corpus import Passage
from daemon.hub.generator import (
    ATTRIBUTE_SCHEMA,
    STRUCTURED_SCHEMA,
    GenerationFailed,
    params_for,
    persona_from,
    trait_words,
)
from daemon.inference.engine import AsyncEngine
from protocol.commands.hub_plan import GenPath, Requirements
from protocol.commands.inference import GenerateParams
from protocol.hub_persona import BigFive, HubPersona
from tests.daemon.hub.conftest import generate_with

CORPUS = [
    Passage(
        "garden-1", "Plant garlic cloves in autumn, pointed end up, about five centimetres deep.", "garden"
    ),
    Passage(
        "cars-1", "If the check-engine light flashes, stop driving: a misfire can ruin the converter.", "cars"
    ),
    Passage(
        "music-1",
        "Practise the scale slowly with a metronome at 60 before speeding up the fingering.",
        "music",
    ),
]
PARENT = HubPersona(
    id="run-0",
    persona="A retired joiner in Leeds who restores old furniture in his garage.",
    name="Tomas",
    path="text",
    source="garden-1",
)


def slots_for(path: GenPath, count: int = 2, seed: int = 1) -> list[Slot]:
    req = Requirements(count=count, paths={path: 1.0}, corpus="c", seed=seed, overshoot=0.0, hops=1)
    return schedule(make_plan(req), CORPUS)


def test_params_are_repeatable_and_held_to_the_path_schema() -> None:
    text, structured = slots_for("text")[0], slots_for("structured")[0]
    persona = next(s for s in slots_for("persona", count=2) if s.path == "persona")
    for slot, parent, schema in (
        (text, None, ATTRIBUTE_SCHEMA),
        (persona, PARENT, ATTRIBUTE_SCHEMA),
        (structured, None, STRUCTURED_SCHEMA),
    ):
        params = params_for(slot, parent, max_tokens=160)
        assert params == params_for(slot, parent, max_tokens=160)
        assert GenerateParams.model_validate(params.model_dump()) == params
        assert params.json_schema == schema
        assert params.seed == slot.seed
        assert params.stream is False
        assert [m.role for m in params.messages] == ["system", "user", "assistant", "user"]
    assert text.passage is not None
    assert text.passage.text in params_for(text, None, max_tokens=160).messages[-1].content
    assert PARENT.persona in params_for(persona, PARENT, max_tokens=160).messages[-1].content
    facts = params_for(structured, None, max_tokens=160).messages[-1].content
    assert structured.attributes is not None
    assert f"Occupation: {structured.attributes.occupation}" in facts


def test_params_refuse_a_slot_missing_what_its_path_needs() -> None:
    persona = next(s for s in slots_for("persona", count=2) if s.path == "persona")
    with pytest.raises(ValueError, match="parent"):
        params_for(persona, None, max_tokens=160)


def test_trait_words_name_only_the_far_from_middle_scores() -> None:
    traits = BigFive(openness=80, conscientiousness=50, extraversion=20, agreeableness=64, neuroticism=35)
    assert trait_words(traits) == ["curious", "reserved", "calm"]
    assert trait_words(None) == []


async def run_slots(
    engine: AsyncEngine, slots: list[Slot], parent: HubPersona | None = None
) -> list[HubPersona]:
    generate = generate_with(engine)
    results = await asyncio.gather(*(generate(params_for(s, parent, max_tokens=160)) for s in slots))
    for result in results:
        assert result.constrained
    return [persona_from(s, r, run_id="run", parent=parent) for s, r in zip(slots, results, strict=True)]


async def test_text_path_on_smollm2(hub_engine: AsyncEngine) -> None:
    slots = slots_for("text")
    personas = await run_slots(hub_engine, slots)
    for slot, persona in zip(slots, personas, strict=True):
        assert slot.passage is not None
        assert persona.id == f"run-{slot.index}"
        assert (persona.path, persona.hop, persona.source) == ("text", 0, slot.passage.id)
        assert persona.name
        assert 20 <= len(persona.persona) <= 300
        assert persona.attributes.language == "en"


async def test_persona_path_on_smollm2(hub_engine: AsyncEngine) -> None:
    slots = [s for s in slots_for("persona", count=4) if s.path == "persona"]
    personas = await run_slots(hub_engine, slots, PARENT)
    for slot, persona in zip(slots, personas, strict=True):
        assert (persona.path, persona.hop, persona.source) == ("persona", 1, "run-0")
        assert persona.id == f"run-{slot.index}"
        assert persona.persona != PARENT.persona


async def test_structured_path_on_smollm2_keeps_the_sampled_attributes(hub_engine: AsyncEngine) -> None:
    slots = slots_for("structured")
    personas = await run_slots(hub_engine, slots)
    for slot, persona in zip(slots, personas, strict=True):
        assert (persona.path, persona.source) == ("structured", None)
        assert persona.attributes == slot.attributes
        assert persona.name


async def test_an_answer_cut_short_raises(hub_engine: AsyncEngine) -> None:
    slot = slots_for("structured")[0]
    result = await generate_with(hub_engine)(params_for(slot, None, max_tokens=8))
    assert result.finish_reason == "length"
    with pytest.raises(GenerationFailed, match="cut short"):
        persona_from(slot, result, run_id="run", parent=None)

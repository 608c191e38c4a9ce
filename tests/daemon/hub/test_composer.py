"""The composer: one valid request per kind, and SmolLM2's answers read back as items."""

from __future__ import annotations

import asyncio

import pytest

from daemon.hub.composer import MAX_TOKENS, SCHEMAS, item_from, item_seed, params_for
from daemon.hub.generator import GenerationFailed
from daemon.inference.engine import AsyncEngine
from protocol.commands.hub_compose import COMPOSE_KINDS, ComposeKind
from protocol.commands.inference import GenerateParams
from protocol.hub_persona import HubPersona
from tests.daemon.hub.conftest import generate_with

PERSONA = HubPersona(
    id="run-3",
    persona="A street food vendor in Lagos who sells suya at night and saves for his daughter's studies.",
    name="Chidi",
    path="structured",
)


def test_params_per_kind_are_valid_and_repeatable() -> None:
    for kind in COMPOSE_KINDS:
        seed = item_seed(9, PERSONA.id, kind)
        params = params_for(PERSONA, kind, seed=seed)
        assert GenerateParams.model_validate(params.model_dump()) == params
        assert params == params_for(PERSONA, kind, seed=seed)
        assert params.json_schema == SCHEMAS[kind]
        assert params.max_tokens == MAX_TOKENS[kind]
        assert PERSONA.persona in params.messages[-1].content
    assert params_for(PERSONA, "math", seed=1, max_tokens=64).max_tokens == 64
    seeds = {item_seed(9, PERSONA.id, kind) for kind in COMPOSE_KINDS}
    assert len(seeds) == len(COMPOSE_KINDS)
    assert item_seed(9, PERSONA.id, "npc") != item_seed(9, "run-4", "npc")


async def test_every_kind_on_smollm2(hub_engine: AsyncEngine) -> None:
    generate = generate_with(hub_engine)
    kinds: list[ComposeKind] = list(COMPOSE_KINDS)
    seeds = [item_seed(1, PERSONA.id, kind) for kind in kinds]
    results = await asyncio.gather(
        *(generate(params_for(PERSONA, k, seed=s)) for k, s in zip(kinds, seeds, strict=True))
    )
    items = {k: item_from(PERSONA, k, r, seed=s) for k, r, s in zip(kinds, results, seeds, strict=True)}
    for kind, item in items.items():
        assert (item.persona_id, item.kind) == (PERSONA.id, kind)
    assert items["instruction"].text
    assert items["math"].text
    assert items["math"].answer is not None
    assert items["knowledge"].title
    assert items["knowledge"].text
    npc = items["npc"].npc
    assert npc is not None
    assert 2 <= len(npc.dialogue) <= 3
    assert npc.name


async def test_an_item_cut_short_raises(hub_engine: AsyncEngine) -> None:
    result = await generate_with(hub_engine)(params_for(PERSONA, "knowledge", seed=3, max_tokens=6))
    assert result.finish_reason == "length"
    with pytest.raises(GenerationFailed, match="cut short"):
        item_from(PERSONA, "knowledge", result, seed=3)

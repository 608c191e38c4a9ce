"""persona.generate's library: the model under the profile's grammar, then documented rules.

Every generation here runs a real AsyncEngine (the tiny random model for the
rules and failures, SmolLM2 for the acceptance: 20 varied roles, 20 valid
profiles). The acceptance test prints the latency per generation (median,
p95); it asserts no timing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from daemon.inference.adapters import AdapterStore
from daemon.inference.engine import AsyncEngine
from daemon.inference.model import load_model
from daemon.registry.generate import (
    GENERATION_SCHEMA,
    NAME_PATTERN,
    GenerateRequest,
    GenerationFailed,
    GenerationResult,
    build_messages,
    complete_with,
    compute_profile,
    generate_profile,
)
from protocol import ErrorCode
from protocol.commands.inference import ChatMessage, GenerateParams
from protocol.commands.personas import BASE_TRAIT_BAND, CONTEXT_FLAG_EFFECTS, MAX_FREE_ADJUSTMENT
from protocol.profile import TRAITS, GeneratedProfile, PersonaStatus, Profile
from tests.daemon.inference.conftest import build_tiny_model, smollm2_folder

NOW = 1_790_000_000.0


def request(**kw: Any) -> GenerateRequest:
    return GenerateRequest.model_validate(kw)


def expected_traits(req: GenerateRequest, result: GenerationResult) -> dict[str, int]:
    """The documented rule, recomputed from the request and the model's adjustments as reported."""
    given = {t: v for t in TRAITS if req.base_traits and (v := getattr(req.base_traits, t)) is not None}
    values = {t: given.get(t, 50) for t in TRAITS}
    for adj in result.adjustments:
        band = BASE_TRAIT_BAND if adj.trait in given else MAX_FREE_ADJUSTMENT
        start = values[adj.trait]
        values[adj.trait] = min(min(100, start + band), max(max(0, start - band), start + adj.requested))
    for flag, effects in CONTEXT_FLAG_EFFECTS.items():
        if req.context is not None and getattr(req.context, flag):
            for trait, delta in effects.items():
                values[trait] = min(100, max(0, values[trait] + delta))
    return values


def check(req: GenerateRequest, result: GenerationResult) -> None:
    """Everything the acceptance asks of one generated profile."""
    profile = Profile.model_validate(result.profile.model_dump())  # valid as a whole, round-tripped
    assert re.fullmatch(NAME_PATTERN, profile.name), profile.name
    assert profile.description
    assert req.role == profile.role
    assert PersonaStatus.DRAFT == profile.status
    assert NOW == profile.lineage.created_at
    assert expected_traits(req, result) == profile.traits.model_dump()
    for adj in result.adjustments:
        assert adj.reason
        if req.base_traits is not None and getattr(req.base_traits, adj.trait) is not None:
            assert abs(adj.applied) <= BASE_TRAIT_BAND
    assert len({a.trait for a in result.adjustments}) == len(result.adjustments)
    prefs = req.user_preferences
    if prefs is not None:
        if prefs.style is not None:
            assert prefs.style == profile.communication.style
        if prefs.detail_level is not None:
            assert prefs.detail_level == profile.communication.detail_level
        if prefs.notes is not None:
            assert prefs.notes == profile.communication.notes
    flags = [f for f in CONTEXT_FLAG_EFFECTS if req.context is not None and getattr(req.context, f)]
    assert sorted(flags) == sorted({a.flag for a in result.context_applied})


# -- the rules, on a given model answer --------------------------------------------------


def test_band_flags_and_preferences_follow_the_documented_rules() -> None:
    """Given precision 80: +30 becomes +15 (band), then requires_precision +15 stops at 100."""
    req = request(
        role="auditor",
        base_traits={"precision": 80, "humor": 10},
        context={"requires_precision": True, "formal": True},
        user_preferences={"style": "formal", "detail_level": "detailed", "notes": "cite sources"},
    )
    generated = GeneratedProfile.model_validate(
        {
            "name": "Vera Lind",
            "description": " Checks   every figure. ",
            "communication_style": "chatty",
            "trait_adjustments": [
                {"trait": "precision", "delta": 30, "reason": "audits need care"},
                {"trait": "precision", "delta": -30, "reason": "a second opinion"},
                {"trait": "humor", "delta": -20, "reason": "serious work"},
                {"trait": "creativity", "delta": -30, "reason": "by the book"},
            ],
        }
    )
    result = compute_profile(req, generated, persona_id="vera", now=NOW)
    traits = result.profile.traits
    assert (100, 0, 20, 55) == (traits.precision, traits.humor, traits.creativity, traits.focus)
    assert [("precision", 30, 15), ("humor", -20, -10), ("creativity", -30, -30)] == [
        (a.trait, a.requested, a.applied) for a in result.adjustments
    ]
    assert ("formal", "detailed", "cite sources") == (
        result.profile.communication.style,
        result.profile.communication.detail_level,
        result.profile.communication.notes,
    )
    assert ("Vera Lind", "Checks every figure.") == (result.profile.name, result.profile.description)
    assert [("requires_precision", "precision", 5), ("requires_precision", "focus", 5)] == [
        (f.flag, f.trait, f.delta) for f in result.context_applied[:2]
    ]
    check(req, result)
    # Without preferences the model's own style stands, and detail is balanced.
    plain = compute_profile(request(role="auditor"), generated, persona_id="vera", now=NOW)
    assert ("chatty", "balanced", "") == (
        plain.profile.communication.style,
        plain.profile.communication.detail_level,
        plain.profile.communication.notes,
    )


def test_the_prompt_carries_role_preferences_base_traits_and_flags() -> None:
    req = request(
        role="ship's cook",
        base_traits={"empathy": 70},
        context={"requires_empathy": True, "notes": "a long voyage"},
        user_preferences={"style": "warm", "detail_level": "brief", "notes": "no jargon"},
    )
    text = "\n".join(m.content for m in build_messages(req))
    needles = ("ship's cook", "empathy 70", "requires empathy", "a long voyage", "warm", "brief", "no jargon")
    for needle in needles:
        assert needle in text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "role"),
        ({"role": ""}, "role"),
        ({"role": "x" * 201}, "role"),
        ({"role": 5}, "role"),
        ({"role": "a", "base_traits": {"precision": 101}}, "base_traits.precision"),
        ({"role": "a", "base_traits": {"precision": "80"}}, "base_traits.precision"),
        ({"role": "a", "base_traits": {"charm": 50}}, "base_traits.charm"),
        ({"role": "a", "context": {"requires_luck": True}}, "context.requires_luck"),
        ({"role": "a", "context": {"requires_precision": 1}}, "context.requires_precision"),
        ({"role": "a", "user_preferences": {"detail_level": "verbose"}}, "user_preferences.detail_level"),
        ({"role": "a", "user_preferences": {"style": ""}}, "user_preferences.style"),
        ({"role": "a", "user_preferences": "formal"}, "user_preferences"),
        ({"role": "a", "start": "yes"}, "start"),
        ({"role": "a", "template": True}, "template"),
    ],
)
def test_bad_params_are_refused_naming_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        GenerateRequest.model_validate(params)
    assert field in {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()}


# -- a real engine ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
async def tiny_engine(tiny_model_dir: Path, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    loaded = load_model(tiny_model_dir, state_root=tmp_path)
    # A random model has no real context limit (RoPE); give it room for a
    # whole profile spelt one byte per token.
    loaded.model.config.max_position_embeddings = 4096
    engine = await AsyncEngine.open(
        state_root=tmp_path, store=AdapterStore.for_state(tmp_path / "state"), loaded=loaded
    )
    yield engine
    await engine.close()


def engine_complete(engine: AsyncEngine, **kw: Any) -> Any:
    async def run(params: GenerateParams) -> Any:
        return await engine.generate(params, owner="registry")

    return complete_with(run, **kw)


async def test_the_tiny_random_model_still_yields_valid_profiles(tiny_engine: AsyncEngine) -> None:
    """Random weights write noise; under the grammar every answer is a profile, and the rules hold."""
    reqs = [
        request(role="gardener"),
        request(role="judge", base_traits={"precision": 90, "assertiveness": 70}),
        request(role="clown", context={"requires_humor": True, "requires_creativity": True}),
        request(role="nurse", user_preferences={"style": "gentle", "detail_level": "brief"}),
        request(role="pilot", base_traits={"focus": 100, "humor": 0}, context={"requires_focus": True}),
    ]
    for seed, req in enumerate(reqs):
        result = await generate_profile(
            req,
            complete=engine_complete(tiny_engine, temperature=1.0, seed=seed),
            persona_id=f"p{seed}",
            now=NOW,
        )
        check(req, result)


async def test_model_failures_are_errors_never_templates(tiny_engine: AsyncEngine) -> None:
    req = request(role="gardener")
    # Cut short by max_tokens: the JSON is incomplete.
    with pytest.raises(GenerationFailed, match="cut short"):
        await generate_profile(
            req, complete=engine_complete(tiny_engine, max_tokens=8), persona_id="p", now=NOW
        )

    # A service that ignored the grammar: free text from the same model does not validate.
    async def unconstrained(messages: list[ChatMessage], schema: dict[str, Any]) -> str:
        params = GenerateParams(messages=messages, max_tokens=40, temperature=0.0)
        return (await tiny_engine.generate(params, owner="registry")).text

    with pytest.raises(GenerationFailed, match="not a valid profile") as caught:
        await generate_profile(req, complete=unconstrained, persona_id="p", now=NOW)
    assert ErrorCode.INTERNAL_ERROR == caught.value.code

    # A deadline that has passed: the engine's TIMEOUT, with its code.
    async def late(params: GenerateParams) -> Any:
        return await tiny_engine.generate(
            params, owner="registry", deadline=asyncio.get_running_loop().time() - 1
        )

    with pytest.raises(GenerationFailed) as caught:
        await generate_profile(req, complete=complete_with(late), persona_id="p", now=NOW)
    assert ErrorCode.TIMEOUT == caught.value.code

    # The engine stopped: its SHUTTING_DOWN code comes through.
    await tiny_engine.close()
    with pytest.raises(GenerationFailed) as caught:
        await generate_profile(req, complete=engine_complete(tiny_engine), persona_id="p", now=NOW)
    assert ErrorCode.SHUTTING_DOWN == caught.value.code


async def test_no_inference_service_on_the_bus_is_target_offline(connect) -> None:  # type: ignore[no-untyped-def]
    """Through a real bus with nobody providing cap:inference: TARGET_OFFLINE, as GenerationFailed."""
    from protocol.commands.inference import GenerateResult

    client = await connect()

    async def over_the_bus(params: GenerateParams) -> GenerateResult:
        raw = await client.call("inference.generate", params.model_dump(), to="cap:inference")
        return GenerateResult.model_validate(raw)

    with pytest.raises(GenerationFailed) as caught:
        await generate_profile(
            request(role="gardener"), complete=complete_with(over_the_bus), persona_id="p", now=NOW
        )
    assert ErrorCode.TARGET_OFFLINE == caught.value.code


def test_the_grammar_is_the_generated_profiles_schema_within_budgets() -> None:
    """Whatever the grammar accepts, GeneratedProfile accepts: same members, only tighter bounds."""
    schema = GeneratedProfile.model_json_schema()
    assert schema["required"] == GENERATION_SCHEMA["required"]
    assert list(schema["properties"]) == list(GENERATION_SCHEMA["properties"])
    for member, spec in GENERATION_SCHEMA["properties"].items():
        for bound in ("maxLength", "maxItems"):
            if bound in schema["properties"][member] and member != "name":
                assert spec[bound] <= schema["properties"][member][bound]
    # The name is bounded by its pattern: at most two words of 12 characters.
    assert re.fullmatch(NAME_PATTERN, "Abcdefghijkl Abcdefghijkl")
    assert not re.fullmatch(NAME_PATTERN, "Abcdefghijklm")
    assert not re.fullmatch(NAME_PATTERN, "Ab Cd Ef")
    assert 25 <= schema["properties"]["name"]["maxLength"]


def test_the_worked_example_in_the_prompt_is_a_valid_answer() -> None:
    """The example the model is shown must itself pass the grammar's rules and GeneratedProfile."""
    messages = build_messages(request(role="gardener"))
    assert ["system", "user", "assistant", "user"] == [m.role for m in messages]
    example = GeneratedProfile.model_validate_json(messages[2].content)
    assert re.fullmatch(NAME_PATTERN, example.name)
    assert len(example.description) <= GENERATION_SCHEMA["properties"]["description"]["maxLength"]
    assert len(example.trait_adjustments) <= GENERATION_SCHEMA["properties"]["trait_adjustments"]["maxItems"]


# -- the acceptance on the real model ---------------------------------------------------

ROLES: list[dict[str, Any]] = [
    {"role": "patent attorney", "base_traits": {"precision": 85}, "context": {"requires_precision": True}},
    {"role": "kindergarten teacher", "user_preferences": {"style": "warm", "detail_level": "brief"}},
    {"role": "sommelier", "context": {"requires_creativity": True}},
    {"role": "crisis counsellor", "base_traits": {"empathy": 80}, "context": {"requires_empathy": True}},
    {"role": "tax accountant", "context": {"formal": True}, "user_preferences": {"detail_level": "detailed"}},
    {"role": "stand-up comedian", "base_traits": {"humor": 90}},
    {"role": "airline pilot", "base_traits": {"focus": 90, "humor": 20}},
    {"role": "startup founder", "context": {"requires_assertiveness": True}},
    {"role": "museum guide", "user_preferences": {"notes": "speaks slowly, avoids dates"}},
    {"role": "chess coach", "base_traits": {"focus": 70, "precision": 70}},
    {"role": "travel agent", "context": {"requires_adaptability": True, "notes": "budget trips"}},
    {"role": "software architect", "context": {"requires_collaboration": True}},
    {"role": "poet", "base_traits": {"creativity": 95}, "user_preferences": {"style": "lyrical"}},
    {"role": "emergency room nurse", "context": {"requires_focus": True, "requires_empathy": True}},
    {"role": "debate judge", "base_traits": {"assertiveness": 30}},
    {"role": "gardening blogger", "user_preferences": {"style": "casual", "detail_level": "balanced"}},
    {"role": "data scientist", "context": {"requires_precision": True, "requires_creativity": True}},
    {"role": "librarian", "base_traits": {"collaboration": 75, "humor": 40}},
    {"role": "personal trainer", "context": {"requires_humor": True}},
    {"role": "diplomat", "context": {"formal": True}, "base_traits": {"empathy": 65, "assertiveness": 55}},
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smollm2_folder(tmp_path_factory)


async def test_smollm2_writes_20_valid_profiles_on_20_roles(smollm2: Path, tmp_path: Path) -> None:
    """The acceptance: 20 of 20 valid; base traits within the band, preferences and flags applied.

    The 20 run at once, as 20 callers would: the engine batches them, which
    keeps this test short. Latency one at a time is bench/registry.py's.
    """
    assert 20 == len({r["role"] for r in ROLES})
    engine = await AsyncEngine.open(
        state_root=tmp_path,
        store=AdapterStore.for_state(tmp_path / "state"),
        loaded=load_model(smollm2, state_root=tmp_path, threads=1),
    )
    requests = [request(**spec) for spec in ROLES]
    try:
        results = await asyncio.gather(
            *(
                generate_profile(
                    req,
                    complete=engine_complete(engine, temperature=0.7, seed=seed),
                    persona_id=f"gen-{seed}",
                    now=NOW,
                )
                for seed, req in enumerate(requests)
            )
        )
    finally:
        await engine.close()
    for req, result in zip(requests, results, strict=True):
        check(req, result)
    assert 20 == len(results)
    assert 20 == len({r.profile.name + r.profile.description for r in results})  # written, not a template
    for r in results:
        p = r.profile
        print(f"  {p.role}: {p.name} | {p.communication.style} | {p.description}")

"""persona.generate: the model writes part of a profile under a grammar; the rest is computed.

The language model fills :class:`protocol.profile.GeneratedProfile` (name,
description, communication style, trait adjustments with reasons) through
constrained decoding: the request to ``inference.generate`` carries that
model's JSON Schema as ``json_schema``, so the inference service's sampler can
only produce text the schema accepts. This module never imports torch; it
builds the prompt, calls ``complete`` once, and computes the profile by
documented rules (docs/generation.md):

* traits start at the given ``base_traits`` (50 for those not given); each
  model adjustment is clamped to ``BASE_TRAIT_BAND`` around a given base trait
  (``MAX_FREE_ADJUSTMENT`` around 50 otherwise) and to 0..100; the first
  adjustment per trait counts, later ones for the same trait are ignored;
* ``context`` flags then move traits by ``CONTEXT_FLAG_EFFECTS``, held to 0..100;
* ``user_preferences`` override the communication members they name;
* name and description come from the model, whitespace-trimmed; role from the
  request; status draft.

A failure of the model (the call fails, the output is cut short or does not
validate) raises :class:`GenerationFailed`; nothing is ever filled in from a
template instead.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

from pydantic import ValidationError

from protocol import ErrorCode, RpcError
from protocol.commands.inference import ChatMessage, GenerateParams, GenerateResult
from protocol.commands.personas import (
    BASE_TRAIT_BAND,
    CONTEXT_FLAG_EFFECTS,
    MAX_FREE_ADJUSTMENT,
    AppliedAdjustment,
    AppliedFlag,
    PersonaGenerateParams,
    PersonaGenerateResult,
    UserPreferences,
)
from protocol.profile import (
    TRAITS,
    Communication,
    GeneratedProfile,
    Lineage,
    PersonaStatus,
    Profile,
    Traits,
)

from ..errors import PersonadError
from .errors import GenerationFailed

__all__ = [
    "GENERATION_SCHEMA",
    "MAX_GENERATION_TOKENS",
    "NAME_PATTERN",
    "Complete",
    "GenerateRequest",
    "GenerationFailed",
    "GenerationResult",
    "build_messages",
    "complete_with",
    "compute_profile",
    "generate_profile",
]

GenerateRequest = PersonaGenerateParams
GenerationResult = PersonaGenerateResult
#: ``complete(messages, json_schema)``: runs the model held to the schema, returns its text.
Complete = Callable[[list[ChatMessage], dict[str, Any]], Awaitable[str]]

#: Length budgets inside the grammar, tighter than GeneratedProfile's own
#: bounds so that a whole profile fits in a few hundred tokens: a value valid
#: under these is valid under GeneratedProfile, and a small model that loops
#: inside a string (SmolLM2 does: "adjadjadj…") is stopped at the budget
#: rather than cut short by max_tokens with the JSON unfinished.
_BUDGETS: Final = {"description": 160, "communication_style": 40, "reason": 48}
_MAX_ADJUSTMENTS: Final = 3
#: The most tokens a whole answer can take under those budgets, even spelt
#: one byte per token (about 620 bytes with the JSON around them): the
#: default max_tokens, so a generation is never cut short.
MAX_GENERATION_TOKENS: Final = 640


#: A name: one or two capitalised words of 2 to 12 letters. Spelt with
#: optional characters rather than ``{2,12}``: xgrammar 0.2.9 enforces
#: neither a ``{m,n}`` upper bound nor ``maxLength`` on a string with a
#: ``pattern`` (checked with its matcher), and an unbounded name could loop.
_WORD: Final = "[A-Z][a-z'-]" + "[a-z'-]?" * 10
NAME_PATTERN: Final = f"^{_WORD}( {_WORD})?$"


def _generation_schema() -> dict[str, Any]:
    schema = GeneratedProfile.model_json_schema()
    for member in ("description", "communication_style"):
        schema["properties"][member]["maxLength"] = _BUDGETS[member]
    # Without it SmolLM2 wrote names like ",[nm.address:"; with it, a name
    # of at most 25 characters (the pattern bounds it; maxLength beside a
    # pattern is ignored by xgrammar, with a warning, so it goes).
    schema["properties"]["name"]["pattern"] = NAME_PATTERN
    del schema["properties"]["name"]["maxLength"]
    schema["properties"]["name"].pop("minLength", None)
    schema["properties"]["trait_adjustments"]["maxItems"] = _MAX_ADJUSTMENTS
    schema["$defs"]["TraitAdjustment"]["properties"]["reason"]["maxLength"] = _BUDGETS["reason"]
    return schema


#: The grammar of the model's answer: GeneratedProfile's JSON Schema with the budgets above.
GENERATION_SCHEMA: Final = _generation_schema()


#: One worked exchange before the real request (role "maths tutor"): SmolLM2
#: follows an example's register far better than a description. As a chat
#: turn rather than inside the system text, which it copied name and reasons
#: from ("maths needs exact steps" for a museum guide); tried both on six roles.
_EXAMPLE: Final = (
    '{"name": "Ada", "description": "A patient tutor who explains each step and checks '
    'understanding before moving on.", "communication_style": "calm and encouraging", '
    '"trait_adjustments": [{"trait": "empathy", "delta": 15, "reason": "learners need patience"}]}'
)


def build_messages(request: GenerateRequest) -> list[ChatMessage]:
    """The prompt: a short system message, one worked example exchange, the request in plain words."""
    system = (
        "You create personas for an AI assistant. Answer with one JSON object: "
        "a first name for the persona, one short sentence on who it is and how it works, "
        "its communication style in a few words, and up to three trait adjustments "
        "(trait, delta from -30 to 30, short reason). Traits are 0 to 100, 50 is neutral: "
        + ", ".join(TRAITS)
        + "."
    )
    lines = [f"Role: {request.role}"]
    context = request.context
    if context is not None:
        flags = [name.replace("_", " ") for name in context.flags()]
        if flags:
            lines.append("The work: " + ", ".join(flags) + ".")
        if context.notes.strip():
            lines.append(f"Setting: {context.notes.strip()}")
    base = _given_traits(request)
    if base:
        lines.append("Start from these traits: " + ", ".join(f"{t} {v}" for t, v in base.items()) + ".")
    prefs = request.user_preferences
    if prefs is not None:
        if prefs.style is not None:
            lines.append(f"Communication style wanted: {prefs.style}.")
        if prefs.detail_level is not None:
            lines.append(f"Level of detail wanted: {prefs.detail_level}.")
        if prefs.notes is not None:
            lines.append(f"Preferences: {prefs.notes}")
    return [
        ChatMessage(role="system", content=system),
        ChatMessage(role="user", content="Role: maths tutor"),
        ChatMessage(role="assistant", content=_EXAMPLE),
        ChatMessage(role="user", content="\n".join(lines)),
    ]


def _given_traits(request: GenerateRequest) -> dict[str, int]:
    given = request.base_traits
    if given is None:
        return {}
    return {t: v for t in TRAITS if (v := getattr(given, t)) is not None}


def parse_generated(text: str) -> GeneratedProfile:
    """The model's text as a GeneratedProfile; GenerationFailed if it is not one."""
    try:
        generated = GeneratedProfile.model_validate(json.loads(text))
    except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
        raise GenerationFailed(
            f"the model's output is not a valid profile ({_first_line(exc)}): {text[:200]!r}"
        ) from None
    if not " ".join(generated.name.split()):
        raise GenerationFailed(f"the model's output has a blank name: {text[:200]!r}")
    return generated


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def compute_profile(
    request: GenerateRequest, generated: GeneratedProfile, *, persona_id: str, now: float
) -> GenerationResult:
    """The profile from the request and the model's part, by the documented rules (pure)."""
    given = _given_traits(request)
    values = {t: given.get(t, 50) for t in TRAITS}
    adjustments: list[AppliedAdjustment] = []
    seen: set[str] = set()
    for adj in generated.trait_adjustments:
        if adj.trait in seen:
            continue  # the first adjustment per trait counts
        seen.add(adj.trait)
        start = values[adj.trait]
        band = BASE_TRAIT_BAND if adj.trait in given else MAX_FREE_ADJUSTMENT
        low, high = max(0, start - band), min(100, start + band)
        values[adj.trait] = min(high, max(low, start + adj.delta))
        adjustments.append(
            AppliedAdjustment(
                trait=adj.trait,
                requested=adj.delta,
                applied=values[adj.trait] - start,
                reason=" ".join(adj.reason.split()),
            )
        )
    flags: list[AppliedFlag] = []
    if request.context is not None:
        for flag in request.context.flags():
            for trait, delta in CONTEXT_FLAG_EFFECTS[flag].items():
                before = values[trait]
                values[trait] = min(100, max(0, before + delta))
                flags.append(AppliedFlag(flag=flag, trait=trait, delta=values[trait] - before))
    prefs = request.user_preferences
    style = " ".join(generated.communication_style.split())
    if prefs is None:
        prefs = UserPreferences()
    communication = Communication(
        style=(prefs.style if prefs.style is not None else style)[:200] or "plain",
        detail_level=prefs.detail_level if prefs.detail_level is not None else "balanced",
        notes=prefs.notes if prefs.notes is not None else "",
    )
    profile = Profile(
        id=persona_id,
        name=" ".join(generated.name.split())[:100],
        role=request.role.strip() or request.role,
        description=" ".join(generated.description.split()),
        traits=Traits(**values),
        communication=communication,
        lineage=Lineage(created_at=now, updated_at=now),
        status=PersonaStatus.DRAFT,
    )
    return GenerationResult(
        persona_id=persona_id, profile=profile, adjustments=adjustments, context_applied=flags
    )


async def generate_profile(
    request: GenerateRequest, *, complete: Complete, persona_id: str, now: float
) -> GenerationResult:
    """Ask the model for its part of the profile (held to GENERATION_SCHEMA), then compute the rest.

    Raises GenerationFailed when the call fails or its output is unusable.
    """
    messages = build_messages(request)
    try:
        text = await complete(messages, GENERATION_SCHEMA)
    except GenerationFailed:
        raise
    except RpcError as exc:
        raise GenerationFailed(f"the model could not be asked: {exc.message}", code=exc.code) from exc
    except PersonadError as exc:  # an in-process engine's InferenceError carries its wire code
        raise GenerationFailed(
            f"the model could not be asked: {exc}", code=int(getattr(exc, "code", ErrorCode.INTERNAL_ERROR))
        ) from exc
    return compute_profile(request, parse_generated(text), persona_id=persona_id, now=now)


def complete_with(
    generate: Callable[[GenerateParams], Awaitable[GenerateResult]],
    *,
    max_tokens: int = MAX_GENERATION_TOKENS,
    temperature: float = 0.7,
    seed: int | None = None,
) -> Complete:
    """A ``complete`` from anything that runs inference.generate (a bus call, an AsyncEngine).

    The output must have ended by itself (``finish_reason: stop``) under the
    grammar (``constrained``); otherwise GenerationFailed.
    """

    async def complete(messages: list[ChatMessage], json_schema: dict[str, Any]) -> str:
        result = await generate(
            GenerateParams(
                messages=messages,
                json_schema=json_schema,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                stream=False,
            )
        )
        if not result.constrained:
            raise GenerationFailed("the inference service did not apply the profile's grammar")
        if result.finish_reason != "stop":
            raise GenerationFailed(
                f"the model's profile was cut short at max_tokens={max_tokens}: {result.text[:200]!r}"
            )
        return result.text

    return complete

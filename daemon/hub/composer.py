"""The composer: synthetic data in a persona's voice (instructions, math problems, knowledge, NPCs).

Persona Hub's idea: the same request ("write a math problem") asked of many
personas gives as many different items. Like the generator, this module is
pure: :func:`params_for` builds the request (a short system text, one worked
exchange for a fixed example persona, then the real persona) and
:func:`item_from` checks the answer, which is held to a JSON Schema with
length budgets. A math problem's answer is the model's own and is **not
checked**: SmolLM2-135M writes problems that are often wrong or unsolvable
(docs/hub_generation.md); a consumer that needs correct answers must solve
them again.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from pydantic import ValidationError

from protocol.commands.hub_compose import ComposedItem, ComposeKind, NpcSheet
from protocol.commands.inference import ChatMessage, GenerateParams, GenerateResult
from protocol.hub_persona import HubPersona

from .generator import NAME_PATTERN, TEMPERATURE, GenerationFailed, parse_answer

__all__ = ["MAX_TOKENS", "SCHEMAS", "item_from", "item_seed", "params_for"]

#: The longest persona text put in a prompt.
_MAX_PERSONA_CHARS: Final = 400
#: Default max_tokens per kind: room for the longest answer each schema allows
#: in ordinary words (about 4 characters a token) plus the JSON around it.
MAX_TOKENS: Final[dict[ComposeKind, int]] = {"instruction": 96, "math": 160, "knowledge": 192, "npc": 256}


def _text(low: int, high: int) -> dict[str, Any]:
    return {"type": "string", "minLength": low, "maxLength": high}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


#: Each kind's answer. A character's name may have two words (the same bounded spelling as a persona's).
SCHEMAS: Final[dict[ComposeKind, dict[str, Any]]] = {
    "instruction": _object({"instruction": _text(10, 240)}),
    # A whole-number answer: an integer's digits are bounded by the range, a
    # float's are not, and a tiny model can loop on digits.
    "math": _object(
        {
            "problem": _text(20, 360),
            "answer": {"type": "integer", "minimum": -1_000_000, "maximum": 1_000_000},
        }
    ),
    "knowledge": _object({"title": _text(3, 60), "text": _text(40, 480)}),
    "npc": _object(
        {
            "name": {"type": "string", "pattern": NAME_PATTERN[:-1] + "( " + NAME_PATTERN[1:-1] + ")?$"},
            "role": _text(3, 50),
            "appearance": _text(10, 120),
            "motivation": _text(10, 120),
            "dialogue": {"type": "array", "items": _text(2, 100), "minItems": 2, "maxItems": 3},
        }
    ),
}

_SYSTEM: Final[dict[ComposeKind, str]] = {
    "instruction": "You imagine what a person would ask an AI assistant. Answer with one JSON object "
    "holding one request in their own words, specific to their life.",
    "math": "You write math word problems set in a person's world. Answer with one JSON object: the "
    "problem (short, with all numbers needed) and its whole-number answer.",
    "knowledge": "You write short explanatory texts a person would write about what they know. "
    "Answer with one JSON object: a title and a text of two to four sentences.",
    "npc": "You turn a person into a character for a video game. Answer with one JSON object: name, "
    "role in the game world, appearance, motivation and two or three lines of dialogue.",
}

_EXAMPLE_PERSONA: Final = "A night-shift nurse in Manchester who runs marathons to stay sane."
_EXAMPLES: Final[dict[ComposeKind, str]] = {
    "instruction": '{"instruction":"Make me a 12-week marathon plan that fits around three night '
    'shifts a week."}',
    "math": '{"problem":"A nurse runs 8 km on each of her 3 days off and 5 km after each of her 4 '
    'shifts. How many km does she run in the week?","answer":44}',
    "knowledge": '{"title":"Sleeping after a night shift","text":"Block out light and noise, and go '
    "to bed soon after the shift ends. Keep the same sleep window on work days. Avoid caffeine in "
    'the last six hours of the shift."}',
    "npc": '{"name":"Sister Maud","role":"field medic of the rebel camp","appearance":"grey scrubs '
    'under a patched coat, running shoes, a lamp on her belt","motivation":"keep every fighter alive '
    'until the siege breaks","dialogue":["Sit. You are bleeding on my clean floor.","I have run '
    'further on worse knees."]}',
}
_ASK: Final[dict[ComposeKind, str]] = {
    "instruction": "What would this person ask an AI assistant?",
    "math": "Write a math word problem set in this person's world.",
    "knowledge": "Write a short text this person would write about something they know well.",
    "npc": "Turn this person into a video game character.",
}


def _request(kind: ComposeKind, persona_text: str) -> str:
    flat = " ".join(persona_text.split())
    if len(flat) > _MAX_PERSONA_CHARS:
        flat = flat[:_MAX_PERSONA_CHARS].rsplit(" ", 1)[0] + " ..."
    return f'{_ASK[kind]}\nPersona: "{flat}"'


def item_seed(seed: int, persona_id: str, kind: ComposeKind) -> int:
    """A 63-bit seed for one persona's item of one kind, from a compose's seed (sha256)."""
    digest = hashlib.sha256(f"{seed}:{persona_id}:{kind}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def params_for(
    persona: HubPersona, kind: ComposeKind, *, seed: int, max_tokens: int | None = None
) -> GenerateParams:
    """The request for one item (pure). ``max_tokens`` defaults to the kind's MAX_TOKENS."""
    return GenerateParams(
        messages=[
            ChatMessage(role="system", content=_SYSTEM[kind]),
            ChatMessage(role="user", content=_request(kind, _EXAMPLE_PERSONA)),
            ChatMessage(role="assistant", content=_EXAMPLES[kind]),
            ChatMessage(role="user", content=_request(kind, persona.persona)),
        ],
        max_tokens=max_tokens or MAX_TOKENS[kind],
        temperature=TEMPERATURE,
        seed=seed,
        stream=False,
        json_schema=SCHEMAS[kind],
    )


def _flat(answer: dict[str, Any], key: str) -> str:
    value = answer.get(key)
    flat = " ".join(value.split()) if isinstance(value, str) else ""
    if not flat:
        raise GenerationFailed(f"the item has no {key}: {str(answer)[:200]!r}")
    return flat


def item_from(persona: HubPersona, kind: ComposeKind, result: GenerateResult, *, seed: int) -> ComposedItem:
    """The item in the answer to ``params_for(persona, kind, seed=seed)``; GenerationFailed if unusable."""
    answer = parse_answer(result, f"{kind} item")
    try:
        if kind == "instruction":
            return ComposedItem(
                persona_id=persona.id, kind=kind, seed=seed, text=_flat(answer, "instruction")
            )
        if kind == "math":
            number = answer.get("answer")
            if not isinstance(number, int) or isinstance(number, bool):
                raise GenerationFailed(f"the math item's answer is not a whole number: {result.text[:200]!r}")
            return ComposedItem(
                persona_id=persona.id,
                kind=kind,
                seed=seed,
                text=_flat(answer, "problem"),
                answer=float(number),
            )
        if kind == "knowledge":
            return ComposedItem(
                persona_id=persona.id,
                kind=kind,
                seed=seed,
                title=_flat(answer, "title"),
                text=_flat(answer, "text"),
            )
        lines = [" ".join(str(line).split()) for line in answer.get("dialogue") or []]
        if len([line for line in lines if line]) < 2:
            raise GenerationFailed(f"the NPC has fewer than two lines of dialogue: {result.text[:200]!r}")
        sheet = NpcSheet(
            name=_flat(answer, "name"),
            role=_flat(answer, "role"),
            appearance=_flat(answer, "appearance"),
            motivation=_flat(answer, "motivation"),
            dialogue=[line for line in lines if line],
        )
        return ComposedItem(persona_id=persona.id, kind=kind, seed=seed, npc=sheet)
    except ValidationError as exc:
        raise GenerationFailed(f"the {kind} item does not validate: {result.text[:200]!r}") from exc

"""The corpus generator: one slot's request to the model, and the persona read back from its answer.

Three paths, after Tencent's Persona Hub (docs/hub_generation.md has the
prompts, the schemas and what was tried):

* **text**: "Who is likely to read/write/like/dislike this text?" The model
  describes that person and reads off their attributes (null where the text
  gives no hint).
* **persona**: "Who is in close relationship with this persona?" From the
  parent slot's persona, with a relation (family, colleague, ...) picked by
  the slot's seed so that one parent's relations differ.
* **structured**: the attributes are sampled (``attributes.py``); the model
  only names the person and writes the text from them.

Everything here is pure: :func:`params_for` builds the request from the slot
(the same slot always gives the same request, seed included), and
:func:`persona_from` checks the answer. The answer is held to a JSON Schema
with tight length budgets, because SmolLM2 loops inside unbounded strings;
an answer cut short or not valid raises :class:`GenerationFailed` and is
never patched up.
"""

from __future__ import annotations

import json
import random
from typing import Any, Final

from pydantic import ValidationError

from protocol.commands.inference import ChatMessage, GenerateParams, GenerateResult
from protocol.hub_persona import GENDERS, Attributes, BigFive, HubPersona

from ..errors import PersonadError
from .architect import Slot

__all__ = [
    "ATTRIBUTE_SCHEMA",
    "MAX_PASSAGE_CHARS",
    "NAME_PATTERN",
    "PERSONA_BUDGET",
    "STRUCTURED_SCHEMA",
    "TEMPERATURE",
    "GenerationFailed",
    "params_for",
    "persona_from",
    "schema_for",
    "trait_words",
]


class GenerationFailed(PersonadError):
    """Raised when the model's answer is cut short or is not a valid persona (or composed item)."""


#: Sampling temperature: high enough that one prompt gives varied people.
TEMPERATURE: Final = 0.8
#: The persona text's budget: one to three sentences, about 60 tokens.
PERSONA_BUDGET: Final = 300
#: The longest passage put in a prompt: a tiny model reads a short one better,
#: and who would write a text shows in its first lines.
MAX_PASSAGE_CHARS: Final = 600
#: The longest parent persona put in a prompt (a hub persona may be long when imported).
MAX_PARENT_CHARS: Final = 400

#: A first name: one capitalised word of 2 to 12 letters. Spelt with optional
#: characters because xgrammar 0.2.9 enforces neither ``{m,n}`` nor maxLength
#: beside a pattern (docs/inference.md); an unbounded name could loop.
NAME_PATTERN: Final = "^[A-Z][a-z'-]" + "[a-z'-]?" * 10 + "$"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _label(budget: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 2, "maxLength": budget}


#: Text and persona paths: the person and what the text says about them.
ATTRIBUTE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "persona": {"type": "string", "minLength": 20, "maxLength": PERSONA_BUDGET},
        "age": _nullable({"type": "integer", "minimum": 1, "maximum": 110}),
        "gender": _nullable({"enum": list(GENDERS)}),
        "occupation": _nullable(_label(30)),
        "region": _nullable(_label(30)),
        "interests": {"type": "array", "items": _label(30), "maxItems": 3},
    },
    "required": ["name", "persona", "age", "gender", "occupation", "region", "interests"],
    "additionalProperties": False,
}
#: Structured path: the attributes are given; the model names the person and writes the text.
STRUCTURED_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "persona": {"type": "string", "minLength": 20, "maxLength": PERSONA_BUDGET},
    },
    "required": ["name", "persona"],
    "additionalProperties": False,
}

#: Persona Hub's text-to-persona asks who would read, write, like or dislike
#: a text; each slot's seed picks one, so reused passages give other people.
_TEXT_VERBS: Final = ("read", "write", "like", "dislike")
#: Relations for persona-to-persona, picked by the slot's seed: asked plainly
#: for "someone close", SmolLM2 mostly wrote a spouse or a child.
_RELATIONS: Final = (
    "a family member",
    "a colleague",
    "a close friend",
    "a neighbour",
    "a client or customer",
    "a teacher or mentor",
    "someone they often disagree with",
    "someone who depends on them",
)
#: Big Five words for a sampled score far from the middle (at or above 65, at or below 35).
_TRAIT_WORDS: Final = {
    "openness": ("curious", "conventional"),
    "conscientiousness": ("organised", "easy-going"),
    "extraversion": ("outgoing", "reserved"),
    "agreeableness": ("warm", "blunt"),
    "neuroticism": ("anxious", "calm"),
}

_TEXT_SYSTEM: Final = (
    "You guess who is behind a text. Answer with one JSON object: a first name, the persona "
    "in one to three sentences (who they are, what they do, what they care about), and their "
    "age, gender, occupation, region and interests (null or [] where you cannot tell)."
)
_PERSONA_SYSTEM: Final = (
    "You imagine the people around a person. Answer with one JSON object: a first name, the new "
    "person in one to three sentences (who they are and how they relate to the given person), and "
    "their age, gender, occupation, region and interests (null or [] where you cannot tell)."
)
_STRUCTURED_SYSTEM: Final = (
    "You write short personas from facts. Answer with one JSON object: a first name that fits the "
    "region and gender, and the persona in one to three sentences that use every fact."
)

# One worked exchange per path, as a chat turn: SmolLM2 copies an example's
# register and length far better than it follows a description.
_TEXT_EXAMPLE: Final = (
    'Who is likely to read this text? Describe that person.\nText: "Apply a second coat of varnish '
    'once the first has dried for a day; sand lightly between coats."',
    '{"name":"Tomas","persona":"A retired joiner who restores old furniture in his garage and '
    'gives tips to his neighbours.","age":67,"gender":"male","occupation":"retired joiner",'
    '"region":null,"interests":["woodworking","antiques"]}',
)
_PERSONA_EXAMPLE: Final = (
    "Who is in close relationship with this persona? Describe a close friend of theirs.\n"
    'Persona: "A night-shift nurse in Manchester who runs marathons to stay sane."',
    '{"name":"Priya","persona":"A pharmacist and running partner of the nurse; they train together '
    'on Sunday mornings and she pushes her to rest more.","age":38,"gender":"female",'
    '"occupation":"pharmacist","region":"Manchester, UK","interests":["running","cooking"]}',
)
_STRUCTURED_EXAMPLE: Final = (
    "Write a persona from these facts.\nAge: 52\nGender: male\nOccupation: bus driver\n"
    "Region: Lima, Peru\nInterests: football, gardening\nPersonality: outgoing, calm",
    '{"name":"Jorge","persona":"A 52-year-old bus driver in Lima, outgoing and calm, who knows his '
    'regular passengers by name, coaches a youth football team and grows tomatoes on his roof."}',
)


def trait_words(traits: BigFive | None) -> list[str]:
    """Words for the traits far from the middle (the model cannot use numbers well)."""
    if traits is None:
        return []
    words = []
    for trait, (high, low) in _TRAIT_WORDS.items():
        score = getattr(traits, trait)
        if score >= 65:
            words.append(high)
        elif score <= 35:
            words.append(low)
    return words


def _clip(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return flat[:limit].rsplit(" ", 1)[0] + " ..."


def _language_line(slot: Slot) -> str:
    return "" if slot.language == "en" else f"\nWrite the name and persona in the language {slot.language}."


def _text_request(slot: Slot) -> str:
    assert slot.passage is not None
    verb = random.Random(slot.seed).choice(_TEXT_VERBS)
    return (
        f"Who is likely to {verb} this text? Describe that person.\n"
        f'Text: "{_clip(slot.passage.text, MAX_PASSAGE_CHARS)}"' + _language_line(slot)
    )


def _persona_request(slot: Slot, parent: HubPersona) -> str:
    relation = random.Random(slot.seed).choice(_RELATIONS)
    return (
        f"Who is in close relationship with this persona? Describe {relation} of theirs.\n"
        f'Persona: "{_clip(parent.persona, MAX_PARENT_CHARS)}"' + _language_line(slot)
    )


def _structured_request(slot: Slot) -> str:
    a = slot.attributes
    assert a is not None
    lines = ["Write a persona from these facts."]
    for label, value in (("Age", a.age), ("Gender", a.gender), ("Occupation", a.occupation)):
        if value is not None:
            lines.append(f"{label}: {value}")
    if a.region is not None:
        lines.append(f"Region: {a.region}")
    if a.interests:
        lines.append("Interests: " + ", ".join(a.interests))
    words = trait_words(a.traits)
    if words:
        lines.append("Personality: " + ", ".join(words))
    if slot.domain is not None:
        lines.append(f"Setting: {slot.domain}")
    return "\n".join(lines) + _language_line(slot)


def schema_for(slot: Slot) -> dict[str, Any]:
    """The answer's JSON Schema for this slot's path (one schema per path, so grammars are reused)."""
    return STRUCTURED_SCHEMA if slot.path == "structured" else ATTRIBUTE_SCHEMA


def params_for(slot: Slot, parent: HubPersona | None, *, max_tokens: int) -> GenerateParams:
    """The request for ``slot`` (pure): system text, one worked exchange, the slot's question.

    ``parent`` is the parent slot's persona, required on the persona path.
    """
    if slot.path == "text":
        if slot.passage is None:
            raise ValueError(f"text slot {slot.index} has no passage")
        system, example, request = _TEXT_SYSTEM, _TEXT_EXAMPLE, _text_request(slot)
    elif slot.path == "persona":
        if parent is None:
            raise ValueError(f"persona slot {slot.index} needs its parent's persona")
        system, example, request = _PERSONA_SYSTEM, _PERSONA_EXAMPLE, _persona_request(slot, parent)
    else:
        if slot.attributes is None:
            raise ValueError(f"structured slot {slot.index} has no attributes")
        system, example, request = _STRUCTURED_SYSTEM, _STRUCTURED_EXAMPLE, _structured_request(slot)
    return GenerateParams(
        messages=[
            ChatMessage(role="system", content=system),
            ChatMessage(role="user", content=example[0]),
            ChatMessage(role="assistant", content=example[1]),
            ChatMessage(role="user", content=request),
        ],
        max_tokens=max_tokens,
        temperature=TEMPERATURE,
        seed=slot.seed,
        stream=False,
        json_schema=schema_for(slot),
    )


def parse_answer(result: GenerateResult, what: str) -> dict[str, Any]:
    """The answer's JSON object; GenerationFailed when unconstrained, cut short or not an object."""
    if not result.constrained:
        raise GenerationFailed(f"the inference service did not apply the {what}'s grammar")
    if result.finish_reason != "stop":
        raise GenerationFailed(
            f"the {what} was cut short after {result.completion_tokens} tokens: {result.text[:200]!r}"
        )
    try:
        answer = json.loads(result.text)
    except ValueError:
        raise GenerationFailed(f"the {what} is not JSON: {result.text[:200]!r}") from None
    if not isinstance(answer, dict):
        raise GenerationFailed(f"the {what} is not a JSON object: {result.text[:200]!r}")
    return answer


def _text_of(answer: dict[str, Any], key: str, *, what: str) -> str:
    value = answer.get(key)
    if not isinstance(value, str) or not " ".join(value.split()):
        raise GenerationFailed(f"the {what} has no {key}: {json.dumps(answer)[:200]!r}")
    return " ".join(value.split())


def persona_from(slot: Slot, result: GenerateResult, *, run_id: str, parent: HubPersona | None) -> HubPersona:
    """The persona in the model's answer to ``params_for(slot, parent)``; GenerationFailed if unusable."""
    answer = parse_answer(result, "persona")
    name = _text_of(answer, "name", what="persona")
    text = _text_of(answer, "persona", what="persona")
    try:
        if slot.path == "structured":
            attributes = slot.attributes or Attributes()
        else:
            interests = list(dict.fromkeys(filter(None, map(_label_or_none, answer.get("interests") or []))))
            attributes = Attributes(
                age=answer.get("age"),
                gender=answer.get("gender"),
                occupation=_label_or_none(answer.get("occupation")),
                region=_label_or_none(answer.get("region")),
                language=slot.language,
                interests=interests,
            )
        if slot.path == "text":
            source = slot.passage.id if slot.passage is not None else None
        elif slot.path == "persona":
            source = parent.id if parent is not None else None
        else:
            source = None
        return HubPersona(
            id=f"{run_id}-{slot.index}",
            persona=text,
            name=name,
            path=slot.path,
            hop=slot.hop,
            source=source,
            domain=slot.domain,
            attributes=attributes,
        )
    except ValidationError as exc:
        first = str(exc).strip().splitlines()
        raise GenerationFailed(
            f"the persona does not validate ({first[0] if first else 'invalid'}): {result.text[:200]!r}"
        ) from None


def _label_or_none(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    # The model often ends a list item with the comma it meant to write after it.
    flat = " ".join(value.split()).strip(",;:. ")
    return flat or None

"""Renderings of hub personas: a registry profile, a Character Card, a system prompt, and two dataset formats.

Every format is one JSON object per line (docs/hub_formats.md, "Renderings"):

* ``hub``: the :class:`HubPersona` itself (what a run writes);
* ``profile``: our registry :class:`~protocol.profile.Profile`, ready for the registry;
* ``card``: a Character Card V3 (daemon/registry/cards.py), readable by ``parse_card_json``;
* ``system_prompt``: ``{"id", "system_prompt"}``, plain text telling a model to be this person;
* ``personahub``: ``{"persona": ...}``, the shape of Persona Hub's released ``persona.jsonl``;
* ``finepersonas``: ``{"id", "persona", "labels"}`` as argilla/FinePersonas-v0.1 releases it
  (``id`` an ``<urn:uuid:...>``, ``labels`` a JSON *string* of a list).

Big Five to our eight traits (each 0..100, 50 neutral; the table is in
docs/hub_formats.md): a weighted mean of the Big Five scores that carry the
trait, a "low" score counting as 100 minus it. Without Big Five every trait
is 50, the registry's neutral.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Final

from daemon.registry.cards import V3, card_to_json, persona_to_card
from protocol.hub_persona import BigFive, HubPersona
from protocol.profile import Communication, Lineage, Profile, Traits

__all__ = [
    "FORMATS",
    "TRAIT_WEIGHTS",
    "UnknownFormat",
    "persona_card",
    "persona_name",
    "persona_profile",
    "render",
    "system_prompt",
    "traits_from_big_five",
]

FORMATS: Final = ("hub", "profile", "card", "system_prompt", "personahub", "finepersonas")

#: Per trait, (Big Five trait, weight, inverted?): inverted counts 100 - score.
TRAIT_WEIGHTS: Final[dict[str, tuple[tuple[str, float, bool], ...]]] = {
    "focus": (("conscientiousness", 0.8, False), ("neuroticism", 0.2, True)),
    "creativity": (("openness", 1.0, False),),
    "precision": (("conscientiousness", 0.7, False), ("openness", 0.3, True)),
    "humor": (("extraversion", 0.6, False), ("openness", 0.4, False)),
    "empathy": (("agreeableness", 1.0, False),),
    "assertiveness": (("extraversion", 0.6, False), ("agreeableness", 0.4, True)),
    "adaptability": (("openness", 0.6, False), ("neuroticism", 0.4, True)),
    "collaboration": (("agreeableness", 0.6, False), ("extraversion", 0.4, False)),
}
_HIGH: Final = 65
_LOW: Final = 35
#: Words for a high and a low score of each Big Five trait (the card's personality, the system prompt).
_BIG_FIVE_WORDS: Final = {
    "openness": ("curious and imaginative", "practical and conventional"),
    "conscientiousness": ("organised and dependable", "easygoing and spontaneous"),
    "extraversion": ("outgoing and talkative", "reserved and quiet"),
    "agreeableness": ("warm and cooperative", "blunt and sceptical"),
    "neuroticism": ("anxious and easily stressed", "calm and steady"),
}
_ID_BAD = re.compile(r"[^a-z0-9_-]+")


class UnknownFormat(ValueError):
    """Raised for a format not in FORMATS."""


def traits_from_big_five(big_five: BigFive | None) -> Traits:
    """Our eight traits from the Big Five by TRAIT_WEIGHTS; all 50 without them."""
    if big_five is None:
        return Traits()
    scores = big_five.model_dump()
    values: dict[str, int] = {}
    for trait, parts in TRAIT_WEIGHTS.items():
        total = sum(
            weight * (100 - scores[name] if inverted else scores[name]) for name, weight, inverted in parts
        )
        values[trait] = max(0, min(100, round(total / sum(weight for _, weight, _ in parts))))
    return Traits(**values)


def _profile_id(hub_id: str) -> str:
    cleaned = _ID_BAD.sub("-", hub_id.lower()).strip("-_") or "persona"
    return ("hub-" + cleaned)[:64].rstrip("-_")


def persona_name(persona: HubPersona) -> str:
    """The persona's name, or one made readably from occupation and region ("Nurse from Lyon")."""
    if persona.name:
        return persona.name
    occupation, region = persona.attributes.occupation, persona.attributes.region
    if occupation:
        title = occupation[:1].upper() + occupation[1:]
        return (f"{title} from {region}" if region else title)[:100]
    if region:
        return f"Someone from {region}"[:100]
    return f"Persona {persona.id}"[:100]


def _facts(persona: HubPersona) -> list[str]:
    a = persona.attributes
    facts: list[str] = []
    if a.age is not None:
        facts.append(f"{a.age} years old")
    if a.gender:
        facts.append(a.gender)
    if a.occupation:
        facts.append(f"works as {a.occupation}")
    if a.region:
        facts.append(f"lives in {a.region}")
    if a.language:
        facts.append(f"writes in {a.language}")
    if a.interests:
        facts.append("cares about " + ", ".join(a.interests))
    return facts


def _temperament(big_five: BigFive | None) -> str:
    """The Big Five in words: only the scores away from the middle are said."""
    if big_five is None:
        return ""
    words = []
    for name, score in big_five.model_dump().items():
        high, low = _BIG_FIVE_WORDS[name]
        if score >= _HIGH:
            words.append(high)
        elif score <= _LOW:
            words.append(low)
    return ", ".join(words)


def persona_profile(persona: HubPersona, *, now: float | None = None) -> Profile:
    """The registry profile: a draft, traits from the Big Five, the persona text as description."""
    created = time.time() if now is None else now
    facts = _facts(persona)
    description = persona.persona + (("\n\n" + "; ".join(facts) + ".") if facts else "")
    tags = [*persona.attributes.interests, *([persona.domain] if persona.domain else []), "hub"]
    temperament = _temperament(persona.attributes.traits)
    return Profile(
        id=_profile_id(persona.id),
        name=persona_name(persona),
        role=persona.attributes.occupation or "persona",
        description=description[:4000],
        traits=traits_from_big_five(persona.attributes.traits),
        tags=[tag[:64] for tag in dict.fromkeys(tags)][:32],
        communication=Communication(notes=temperament[:2000]),
        lineage=Lineage(created_at=created, updated_at=created),
    )


def persona_card(persona: HubPersona, *, now: float | None = None) -> bytes:
    """A Character Card V3 as UTF-8 JSON: description from the persona, personality from the Big Five."""
    profile = persona_profile(persona, now=now)
    card = persona_to_card(profile, [], spec=V3, now=profile.lineage.created_at)
    data = card.data
    data.system_prompt = system_prompt(persona)
    origin = persona.source or "sampled attributes"
    data.creator_notes = f"Made by PersonaHub ({persona.path} path) from {origin}."
    data.__pydantic_fields_set__.update({"system_prompt", "creator_notes"})
    return card_to_json(card)


def system_prompt(persona: HubPersona) -> str:
    """Plain text telling a model to be this person: who, the facts, and the voice."""
    name = persona_name(persona)
    lines = [f"You are {name}. {persona.persona}"]
    facts = _facts(persona)
    if facts:
        lines.append("About you: " + "; ".join(facts) + ".")
    temperament = _temperament(persona.attributes.traits)
    if temperament:
        lines.append(f"Your temperament: {temperament}.")
    lines.append(
        "Speak as this person, in the first person, in their own words and with their knowledge; "
        "do not say you are an AI or a persona, and do not step out of the role."
    )
    return "\n".join(lines)


def _finepersonas_id(hub_id: str) -> str:
    """FinePersonas' ids are ``<urn:uuid:...>``: an imported one goes back as it was, ours get a uuid5."""
    if hub_id.startswith("urn:uuid:"):
        return f"<{hub_id}>"
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'personad-hub:' + hub_id)}>"


def _line(persona: HubPersona, fmt: str, now: float | None) -> str:
    if fmt == "hub":
        return persona.model_dump_json()
    if fmt == "profile":
        return persona_profile(persona, now=now).model_dump_json()
    if fmt == "card":
        return persona_card(persona, now=now).decode("utf-8")
    if fmt == "system_prompt":
        return json.dumps({"id": persona.id, "system_prompt": system_prompt(persona)}, ensure_ascii=False)
    if fmt == "personahub":
        return json.dumps({"persona": persona.persona}, ensure_ascii=False)
    if fmt == "finepersonas":
        labels = list(persona.attributes.interests) or ([persona.domain] if persona.domain else [])
        return json.dumps(
            {
                "id": _finepersonas_id(persona.id),
                "persona": persona.persona,
                "labels": json.dumps(labels, ensure_ascii=False),
            },
            ensure_ascii=False,
        )
    raise UnknownFormat(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def render(personas: Iterable[HubPersona], fmt: str, *, now: float | None = None) -> Iterator[str]:
    """One JSON line (no newline) per persona in the format ``fmt`` (one of FORMATS).

    ``now`` (Unix time) is the profile's and card's creation time; None is the clock.
    """
    if fmt not in FORMATS:
        raise UnknownFormat(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for persona in personas:
        yield _line(persona, fmt, now)

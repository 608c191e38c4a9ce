"""A generated persona as PersonaHub writes it: a short text plus the structured facts about it.

PersonaHub (``cap:hub``, docs/hub.md) makes personas by the thousand, after
Tencent's Persona Hub: *text-to-persona* (who would write or read this
text?), *persona-to-persona* (who is close to this persona?) and a
*structured* path (attributes sampled from declared distributions, the text
written by the model from them). Each result is one :class:`HubPersona`, one
JSON object per line in a run's output (``.jsonl``).

The attributes are what the text says about the person: sampled for the
structured path, read off the text by the model for the others, taken from
the file for imports. Every member may be missing, since a text need not
say a person's age. Quality checks (coherence: do the attributes agree with
the text?) and the balance checks (against :class:`AttributeTargets`) read
them.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, model_validator

from .commands.registry import StrictParams

__all__ = [
    "BIG_FIVE",
    "GENDERS",
    "HUB_PERSONA_ID_PATTERN",
    "MAX_PERSONA_CHARS",
    "PATHS",
    "AttributeTargets",
    "Attributes",
    "BigFive",
    "HubPersona",
    "Path",
    "Weighted",
]

#: A hub persona's id: ``<run>-<index>`` for a run's output, ``imp-<n>`` for imports.
HUB_PERSONA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
#: The longest persona text kept (PersonaHub's are one to three sentences).
MAX_PERSONA_CHARS: Final = 2000
#: The Big Five personality traits, each 0 to 100 (50: the population's middle).
BIG_FIVE: Final = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
#: The generation paths, plus ``import`` for personas read from a file.
PATHS: Final = ("text", "persona", "structured", "import")
#: Genders the structured path samples and the balance checks count.
GENDERS: Final = ("female", "male", "non-binary")

Path = Literal["text", "persona", "structured", "import"]
Score = Annotated[int, Field(ge=0, le=100)]
Label = Annotated[str, Field(min_length=1, max_length=80)]


class BigFive(StrictParams):
    """The Big Five, each 0 to 100 (50: the middle of the population)."""

    openness: Score = Field(description="curious, imaginative, open to new experience")
    conscientiousness: Score = Field(description="organised, dependable, thorough")
    extraversion: Score = Field(description="outgoing, energetic, talkative")
    agreeableness: Score = Field(description="kind, cooperative, trusting")
    neuroticism: Score = Field(description="anxious, moody, easily stressed")


class Attributes(StrictParams):
    """What is known of the person; null (or empty) where the text does not say."""

    age: Annotated[int, Field(ge=0, le=120)] | None = Field(None, description="age in years")
    gender: Annotated[str, Field(max_length=40)] | None = Field(None, description="as the text gives it")
    occupation: Label | None = Field(None, description="what the person does for a living")
    region: Label | None = Field(None, description="where the person lives (city, region or country)")
    language: Annotated[str, Field(max_length=40)] | None = Field(
        None, description="the language the persona is written in (BCP 47, e.g. en)"
    )
    interests: Annotated[list[Label], Field(max_length=8)] = Field(
        [], description="what the person cares about"
    )
    traits: BigFive | None = Field(None, description="Big Five traits, when sampled or stated")


class HubPersona(StrictParams):
    """One persona: its text, where it came from, and its attributes."""

    id: Annotated[str, Field(pattern=HUB_PERSONA_ID_PATTERN)] = Field(
        description="unique in its file: <run>-<index> for a run's output"
    )
    persona: Annotated[str, Field(min_length=1, max_length=MAX_PERSONA_CHARS)] = Field(
        description="the persona in plain words: who this person is"
    )
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = Field(
        None, description="a first name, when the model gave one (rendering a registry profile needs one)"
    )
    path: Path = Field(description="how it was made: text, persona, structured, or import")
    hop: Annotated[int, Field(ge=0, le=16)] = Field(
        0, description="persona-to-persona steps from a text-made persona (0 for the other paths)"
    )
    source: Annotated[str, Field(max_length=300)] | None = Field(
        None,
        description="what it came from: the corpus passage's id (text), the parent persona's id "
        "(persona), the file and line (import); null for structured",
    )
    domain: Label | None = Field(None, description="the domain the plan assigned, if any")
    attributes: Attributes = Field(Attributes(), description="what is known of the person")


class Weighted(StrictParams):
    """One value of an attribute and its share of the population (shares need not sum to 1)."""

    value: Label = Field(description="the value, e.g. nurse")
    weight: Annotated[float, Field(gt=0.0, le=1e6)] = Field(description="relative share")


class AttributeTargets(StrictParams):
    """The population a run aims at: what the structured path samples and the balance checks test.

    ``occupation_gender`` optionally states, per occupation, the gender shares
    wanted (otherwise the overall ``gender`` shares): the stereotype check
    flags an occupation whose personas drift from them.
    """

    age_min: Annotated[int, Field(ge=0, le=120)] = 18
    age_max: Annotated[int, Field(ge=0, le=120)] = 85
    gender: Annotated[list[Weighted], Field(min_length=1, max_length=16)] = Field(
        default_factory=lambda: [
            Weighted(value="female", weight=0.49),
            Weighted(value="male", weight=0.49),
            Weighted(value="non-binary", weight=0.02),
        ]
    )
    occupation: Annotated[list[Weighted], Field(max_length=500)] = Field(
        [], description="empty: the built-in list (daemon/hub/attributes.py)"
    )
    region: Annotated[list[Weighted], Field(max_length=500)] = Field(
        [], description="empty: the built-in list (daemon/hub/attributes.py)"
    )
    interests: Annotated[list[Label], Field(max_length=500)] = Field(
        [], description="the pool interests are drawn from; empty: the built-in pool"
    )
    interests_per_persona: Annotated[int, Field(ge=0, le=8)] = 2
    occupation_gender: Annotated[dict[str, list[Weighted]], Field(max_length=500)] = Field(
        {}, description="per occupation, the gender shares wanted; absent: the overall shares"
    )

    @model_validator(mode="after")
    def _ages_in_order(self) -> AttributeTargets:
        if self.age_min > self.age_max:
            raise ValueError(f"age_min {self.age_min} is above age_max {self.age_max}")
        return self

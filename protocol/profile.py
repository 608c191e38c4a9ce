"""The persona profile: who a persona is, as the registry stores and the wire carries it.

One model serves three readers: the registry's encrypted store (a record is
this model's JSON, with ``schema_version`` driving migrations), the bus
(``persona.get`` and friends return it), and constrained decoding
(:class:`GeneratedProfile` is the part a language model writes, and its JSON
Schema is the grammar the decoder is held to, so even a small model always
yields a valid profile).

Traits are integers 0 to 100; 50 is neutral. The eight are the ones the persona
ecosystem has always used; each is documented where it is declared so that
generation prompts and docs/methods.md say the same thing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import Field

from .commands.registry import StrictParams

__all__ = [
    "PERSONA_ID_PATTERN",
    "PROFILE_SCHEMA_VERSION",
    "TRAITS",
    "Communication",
    "GeneratedProfile",
    "Lineage",
    "PersonaStatus",
    "Profile",
    "StackEntry",
    "TraitAdjustment",
    "Traits",
]

#: The version of the profile's shape written today. A record with a higher
#: version is refused; a lower one passes the registry's migration chain.
PROFILE_SCHEMA_VERSION: Final = 1

#: Persona ids become path components and client ids (``persona:<id>``).
PERSONA_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"

Trait = Annotated[int, Field(ge=0, le=100)]


class Traits(StrictParams):
    """The eight traits, each 0 to 100 (50 neutral)."""

    focus: Trait = Field(50, description="stays on the task at hand rather than wandering")
    creativity: Trait = Field(50, description="proposes new ideas and unusual angles")
    precision: Trait = Field(50, description="exact wording, numbers and sources")
    humor: Trait = Field(50, description="lightness and jokes")
    empathy: Trait = Field(50, description="attends to the person's feelings and situation")
    assertiveness: Trait = Field(50, description="states views and pushes back")
    adaptability: Trait = Field(50, description="changes approach when the situation changes")
    collaboration: Trait = Field(50, description="works with others rather than alone")


#: Trait names, in their documented order.
TRAITS: tuple[str, ...] = tuple(Traits.model_fields)


class Communication(StrictParams):
    """How the persona talks."""

    style: Annotated[str, Field(max_length=200)] = Field(
        "plain", description="e.g. formal, casual, socratic, plain"
    )
    detail_level: Literal["brief", "balanced", "detailed"] = "balanced"
    notes: Annotated[str, Field(max_length=2000)] = Field("", description="free-form preferences")


class StackEntry(StrictParams):
    """One level of the persona's LoRA stack: by name and content hash."""

    name: Annotated[str, Field(max_length=200)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Lineage(StrictParams):
    """Where the persona came from."""

    parent: Annotated[str, Field(pattern=PERSONA_ID_PATTERN)] | None = None
    forked_from: Annotated[str, Field(pattern=PERSONA_ID_PATTERN)] | None = None
    merged_from: Annotated[list[Annotated[str, Field(pattern=PERSONA_ID_PATTERN)]], Field(max_length=2)] = []
    created_at: float = Field(0.0, description="Unix time")
    updated_at: float = Field(0.0, description="Unix time")


class PersonaStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    ARCHIVED = "archived"
    MERGED = "merged"


class Profile(StrictParams):
    """A persona, whole."""

    schema_version: Literal[1] = PROFILE_SCHEMA_VERSION
    id: Annotated[str, Field(pattern=PERSONA_ID_PATTERN)]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    role: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(max_length=4000)] = ""
    traits: Traits = Traits()
    tags: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)] = []
    communication: Communication = Communication()
    capabilities: Annotated[
        list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]], Field(max_length=32)
    ] = ["chat"]
    stack: Annotated[list[StackEntry], Field(max_length=16)] = Field(
        [], description="the LoRA stack, root level first"
    )
    model: Annotated[str, Field(max_length=200)] = Field(
        "", description="model name; empty means the inference service's default"
    )
    lineage: Lineage = Lineage()
    # Lax for this one field: strict mode takes only PersonaStatus instances,
    # and the wire (JSON, msgpack) carries the value as a string.
    status: PersonaStatus = Field(PersonaStatus.DRAFT, strict=False)


class TraitAdjustment(StrictParams):
    """A change the model proposes to one trait, with its reason."""

    trait: Literal[
        "focus",
        "creativity",
        "precision",
        "humor",
        "empathy",
        "assertiveness",
        "adaptability",
        "collaboration",
    ]
    delta: Annotated[int, Field(ge=-30, le=30)]
    reason: Annotated[str, Field(min_length=1, max_length=200)]


class GeneratedProfile(StrictParams):
    """What the language model writes in ``persona.generate``: the grammar it is held to.

    Kept small and flat on purpose: every member is something a 135M model
    can fill in well, and the rest of the profile (id, lineage, traits
    themselves) is computed, not generated. Adjustments are bounded per
    trait; the registry then clamps them to the documented band around any
    base traits the caller gave.
    """

    name: Annotated[str, Field(min_length=1, max_length=60)]
    description: Annotated[str, Field(min_length=1, max_length=600)]
    communication_style: Annotated[str, Field(min_length=1, max_length=120)]
    trait_adjustments: Annotated[list[TraitAdjustment], Field(max_length=8)]

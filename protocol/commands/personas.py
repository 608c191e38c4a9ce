"""The persona registry's methods, served by ``cap:registry`` (``personad registry``).

Organised by method: each section holds its params, its result and its
``register`` call. The profile itself is :mod:`protocol.profile`.

A persona the registry does not hold is INVALID_PARAMS with
``data = {"field": "persona_id", "reason": "unknown_persona"}`` (the id in
params names nothing), the brain's convention for ids that do not exist. An
id that is taken (create) is INVALID_PARAMS with ``reason: "persona_exists"``.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from ..errors import ErrorCode
from ..profile import (
    PERSONA_ID_PATTERN,
    Communication,
    PersonaStatus,
    Profile,
    StackEntry,
)
from .registry import StrictModel, StrictParams, register

__all__ = [
    "MAX_LIST_LIMIT",
    "PersonaArchiveParams",
    "PersonaCreateParams",
    "PersonaGetParams",
    "PersonaListParams",
    "PersonaListResult",
    "PersonaResult",
    "PersonaSummary",
    "PersonaUpdateParams",
    "ProfileChanges",
    "TraitChanges",
]

#: Most personas one persona.list page holds.
MAX_LIST_LIMIT: Final = 500

PersonaId = Annotated[str, Field(pattern=PERSONA_ID_PATTERN)]
Trait = Annotated[int, Field(ge=0, le=100)]

_UNKNOWN = (ErrorCode.INVALID_PARAMS, "persona_id names no persona (data.reason = unknown_persona)")
_CORRUPT = (ErrorCode.INTERNAL_ERROR, "the stored record is unreadable or from a newer personad")


class PersonaResult(StrictModel):
    profile: Profile


# -- persona.get ---------------------------------------------------------------


class PersonaGetParams(StrictParams):
    persona_id: PersonaId


register(
    "persona.get",
    params=PersonaGetParams,
    result=PersonaResult,
    summary="One persona's profile, from the registry.",
    served_by="cap:registry",
    errors=(_UNKNOWN, _CORRUPT),
)


# -- persona.list --------------------------------------------------------------


class PersonaListParams(StrictParams):
    status: Literal["draft", "active", "archived", "merged"] | None = None
    tag: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    role: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIST_LIMIT)] = 100
    cursor: PersonaId | None = Field(
        None, description="next_cursor of the previous page; pages are in id order"
    )


class PersonaSummary(StrictModel):
    id: str
    name: str
    role: str
    status: PersonaStatus
    tags: list[str]
    updated_at: float


class PersonaListResult(StrictModel):
    personas: list[PersonaSummary]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last")


register(
    "persona.list",
    params=PersonaListParams,
    result=PersonaListResult,
    summary="Personas in id order, filtered by status, tag and role (all given must match), paginated.",
    served_by="cap:registry",
)


# -- persona.create ------------------------------------------------------------


class PersonaCreateParams(StrictParams):
    profile: Profile = Field(
        description="the whole profile; lineage times are set by the registry, status draft or active"
    )


register(
    "persona.create",
    params=PersonaCreateParams,
    result=PersonaResult,
    summary="Add a persona from a full profile; refuses an id that exists.",
    served_by="cap:registry",
    errors=(
        (
            ErrorCode.INVALID_PARAMS,
            "the id exists (data.reason = persona_exists), or status is not draft/active",
        ),
    ),
)


# -- persona.update ------------------------------------------------------------


class TraitChanges(StrictParams):
    """Traits to change; those left out keep their value."""

    focus: Trait | None = None
    creativity: Trait | None = None
    precision: Trait | None = None
    humor: Trait | None = None
    empathy: Trait | None = None
    assertiveness: Trait | None = None
    adaptability: Trait | None = None
    collaboration: Trait | None = None


class ProfileChanges(StrictParams):
    """A partial profile: members given replace the stored ones. id and lineage are not editable."""

    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    description: Annotated[str, Field(max_length=4000)] | None = None
    role: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    traits: TraitChanges | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)] | None = None
    communication: Communication | None = None
    capabilities: (
        Annotated[list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]], Field(max_length=32)]
        | None
    ) = None
    stack: Annotated[list[StackEntry], Field(max_length=16)] | None = None
    model: Annotated[str, Field(max_length=200)] | None = None
    status: Literal["draft", "active", "archived"] | None = Field(
        None, description="merged is set only by persona.merge"
    )


class PersonaUpdateParams(StrictParams):
    persona_id: PersonaId
    changes: ProfileChanges


register(
    "persona.update",
    params=PersonaUpdateParams,
    result=PersonaResult,
    summary="Change part of a profile (validated as a whole); sets lineage.updated_at.",
    served_by="cap:registry",
    errors=(_UNKNOWN, _CORRUPT),
)


# -- persona.archive -----------------------------------------------------------


class PersonaArchiveParams(StrictParams):
    persona_id: PersonaId


register(
    "persona.archive",
    params=PersonaArchiveParams,
    result=PersonaResult,
    summary="Set a persona's status to archived: kept, but no longer run by personad up.",
    served_by="cap:registry",
    errors=(_UNKNOWN, _CORRUPT),
)


# == persona.generate ==========================================================
# (the generation slice: daemon/registry/generate.py computes the result;
# docs/generation.md explains the prompt, the band, the flags and the preferences)

#: How far the model may move a trait the caller gave in ``base_traits``
#: (either way); traits not given start at 50 and may move by up to
#: ``MAX_FREE_ADJUSTMENT``.
BASE_TRAIT_BAND: Final = 15
MAX_FREE_ADJUSTMENT: Final = 30

#: What each ``context`` flag does to the traits, applied after the model's
#: adjustments (and after the band), then held to 0..100.
CONTEXT_FLAG_EFFECTS: Final[dict[str, dict[str, int]]] = {
    "requires_precision": {"precision": 15, "focus": 5},
    "requires_creativity": {"creativity": 15, "adaptability": 5},
    "requires_empathy": {"empathy": 15, "collaboration": 5},
    "requires_focus": {"focus": 15},
    "requires_assertiveness": {"assertiveness": 15},
    "requires_collaboration": {"collaboration": 15},
    "requires_adaptability": {"adaptability": 15},
    "requires_humor": {"humor": 15},
    "formal": {"humor": -15, "precision": 5},
}


def _flag(name: str) -> bool:
    effects = ", ".join(f"{trait} {delta:+d}" for trait, delta in CONTEXT_FLAG_EFFECTS[name].items())
    flag: bool = Field(False, description=f"moves {effects} after the model")
    return flag


class ContextFlags(StrictParams):
    """What the flag contexts share: each subclass declares one bool per ``CONTEXT_FLAG_EFFECTS``
    flag, with a description of what the flag does there."""

    def flags(self) -> list[str]:
        """The flags that are set, in the table's order."""
        return [name for name in CONTEXT_FLAG_EFFECTS if getattr(self, name)]


class GenerationContext(ContextFlags):
    """Where the persona will work: flags with documented trait effects, and notes for the prompt."""

    requires_precision: bool = _flag("requires_precision")
    requires_creativity: bool = _flag("requires_creativity")
    requires_empathy: bool = _flag("requires_empathy")
    requires_focus: bool = _flag("requires_focus")
    requires_assertiveness: bool = _flag("requires_assertiveness")
    requires_collaboration: bool = _flag("requires_collaboration")
    requires_adaptability: bool = _flag("requires_adaptability")
    requires_humor: bool = _flag("requires_humor")
    formal: bool = _flag("formal")
    notes: Annotated[str, Field(max_length=1000)] = Field(
        "", description="free text about the setting, put in the prompt"
    )


class UserPreferences(StrictParams):
    """How the person wants to be talked to: each one given is in the prompt and overrides the model."""

    style: Annotated[str, Field(min_length=1, max_length=120)] | None = Field(
        None, description="becomes communication.style (the model's own style otherwise)"
    )
    detail_level: Literal["brief", "balanced", "detailed"] | None = Field(
        None, description="becomes communication.detail_level (balanced otherwise)"
    )
    notes: Annotated[str, Field(min_length=1, max_length=2000)] | None = Field(
        None, description="becomes communication.notes"
    )


class PersonaGenerateParams(StrictParams):
    role: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        description="what the persona is for, e.g. 'patent attorney'; becomes profile.role"
    )
    context: GenerationContext | None = Field(None, description="setting flags and notes")
    user_preferences: UserPreferences | None = Field(None, description="communication preferences")
    base_traits: TraitChanges | None = Field(
        None,
        description=f"traits to start from; the model may move each one given by at most "
        f"±{BASE_TRAIT_BAND} (those not given start at 50 and move by at most ±{MAX_FREE_ADJUSTMENT})",
    )
    persona_id: PersonaId | None = Field(
        None,
        description="the new persona's id; by default a slug of the generated name, with -2, -3 … if taken",
    )
    start: bool = Field(
        False,
        description="store it active and wait (within the deadline) for its daemon to join the bus; "
        "personad up starts it, under systemd the operator does",
    )


class AppliedAdjustment(StrictModel):
    trait: str = Field(description="the trait")
    requested: int = Field(description="the model's delta")
    applied: int = Field(description="the delta kept after the band and 0..100")
    reason: str = Field(description="the model's reason")


class AppliedFlag(StrictModel):
    flag: str = Field(description="the context flag")
    trait: str = Field(description="the trait it moved")
    delta: int = Field(description="how far it moved it (after 0..100)")


class PersonaGenerateResult(StrictModel):
    persona_id: str = Field(description="the new persona's id")
    profile: Profile = Field(description="the stored profile (status draft; active with start: true)")
    adjustments: list[AppliedAdjustment] = Field(description="the model's trait adjustments, as applied")
    context_applied: list[AppliedFlag] = Field(description="what the context flags did")
    started: bool = Field(
        False, description="whether persona:<id> joined the bus before the answer (start: true only)"
    )


register(
    "persona.generate",
    params=PersonaGenerateParams,
    result=PersonaGenerateResult,
    summary="Write a new persona with the model, held to the profile's JSON Schema; base traits, "
    "preferences and context flags honoured as documented.",
    served_by="cap:registry",
    errors=(
        (ErrorCode.INVALID_PARAMS, "persona_id is taken (data.reason = persona_exists)"),
        (ErrorCode.TARGET_OFFLINE, "no inference service is on the bus"),
        (ErrorCode.TIMEOUT, "the model did not finish in time"),
        (ErrorCode.INTERNAL_ERROR, "the model's output did not validate (never replaced by a template)"),
    ),
)

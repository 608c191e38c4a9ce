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

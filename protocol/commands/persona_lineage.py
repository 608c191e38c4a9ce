"""persona.fork and persona.merge on ``cap:registry``: params, results and their ``register`` calls.

docs/lineage.md says what each member of the new profile becomes, what
happens to the brains and adapters, and the order of the steps.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ..errors import ErrorCode
from ..profile import PERSONA_ID_PATTERN, Profile
from .adapters import MergeCombination, MergeResult
from .brain import Timestamp
from .inference import InferenceErrorCode
from .personas import TraitChanges
from .registry import StrictModel, StrictParams, register

__all__ = [
    "CommunicationChanges",
    "ForkBrain",
    "ForkModifications",
    "MemoryFilter",
    "MergeBrain",
    "PersonaForkParams",
    "PersonaForkResult",
    "PersonaMergeParams",
    "PersonaMergeResult",
]

PersonaId = Annotated[str, Field(pattern=PERSONA_ID_PATTERN)]
Label = Annotated[str, Field(min_length=1, max_length=200)]

_CORRUPT = (
    ErrorCode.INTERNAL_ERROR,
    "a stored record, a brain or its key is unreadable; nothing was changed",
)


# -- persona.fork ----------------------------------------------------------------


class CommunicationChanges(StrictParams):
    """Members of ``communication`` to change; those left out keep the source's value."""

    style: Annotated[str, Field(max_length=200)] | None = None
    detail_level: Literal["brief", "balanced", "detailed"] | None = None
    notes: Annotated[str, Field(max_length=2000)] | None = None


class ForkModifications(StrictParams):
    """A partial profile for the fork: members given replace the source's (traits and communication
    member by member). id, status, lineage and stack are set by the fork."""

    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    description: Annotated[str, Field(max_length=4000)] | None = None
    role: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    traits: TraitChanges | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)] | None = None
    communication: CommunicationChanges | None = None
    capabilities: (
        Annotated[list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]], Field(max_length=32)]
        | None
    ) = None
    model: Annotated[str, Field(max_length=200)] | None = None


class MemoryFilter(StrictParams):
    """Which memories the fork's brain gets; every filter given must hold (skills, goals and
    evolution history are copied whole)."""

    subjects: Annotated[list[Label], Field(min_length=1, max_length=100)] | None = Field(
        None, description="only memories about one of these subjects (normalised like stored subjects)"
    )
    tags: Annotated[list[Label], Field(min_length=1, max_length=100)] | None = Field(
        None, description="only memories whose kind, or one of whose context.tags, is one of these"
    )
    since: Timestamp | None = Field(None, description="only memories created at or after this time")
    until: Timestamp | None = Field(None, description="only memories created before this time")


class PersonaForkParams(StrictParams):
    source_persona_id: PersonaId = Field(description="the persona to fork")
    new_persona_id: PersonaId | None = Field(
        None, description="the fork's id (refused if taken); by default <source>-fork-<n>, the first free"
    )
    new_role: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="shorthand for modifications.role"
    )
    modifications: ForkModifications | None = Field(None, description="what the fork changes")
    memory_filter: MemoryFilter | None = Field(None, description="copy only some memories (default all)")


class ForkBrain(StrictModel):
    memories: int = Field(description="memories copied")
    memories_in_source: int = Field(description="memories the source holds")
    skills: int = Field(description="skills copied")
    goals: int = Field(description="goals copied")
    evolution_history: int = Field(description="evolution history rows copied")
    seconds: float = Field(description="how long the copy took")


class PersonaForkResult(StrictModel):
    persona_id: str = Field(description="the fork's id")
    profile: Profile = Field(description="the fork as stored (status draft)")
    brain: ForkBrain | None = Field(
        description="what the fork's brain got (under its own new key); null when the source has no "
        "brain yet (never started): the fork has none either and starts empty"
    )


_ID_ERRORS = (
    ErrorCode.INVALID_PARAMS,
    "an id names no persona (data.reason = unknown_persona), new_persona_id is taken (persona_exists) "
    "or has a brain or key on disk (state_exists), or a modification makes an invalid profile; "
    "data.field names the member",
)

register(
    "persona.fork",
    params=PersonaForkParams,
    result=PersonaForkResult,
    summary="A new draft persona from another: profile with modifications and lineage, a copy of its "
    "brain (optionally filtered) under a new key, its adapter stack referenced by hash. All or nothing.",
    served_by="cap:registry",
    errors=(_ID_ERRORS, _CORRUPT),
)


# -- persona.merge ---------------------------------------------------------------


class PersonaMergeParams(StrictParams):
    primary_persona_id: PersonaId = Field(description="the primary source (role, model, ties)")
    secondary_persona_id: PersonaId = Field(description="the secondary source; must differ from the primary")
    merge_strategy: Literal["selective", "average", "union"] = Field(
        description="how traits combine: selective (further from 50), average, union (the higher)"
    )
    name: Annotated[str, Field(min_length=1, max_length=100)] = Field(description="the merged persona's name")
    description: Annotated[str, Field(max_length=4000)] = Field(
        description="the merged persona's description"
    )
    new_persona_id: PersonaId | None = Field(
        None,
        description="the merged persona's id (refused if taken); "
        "by default <primary>-merge-<n>, the first free",
    )
    adapter_combination: MergeCombination = Field(
        "cat",
        description="how adapter.merge combines the two stacks when both have one: cat (exact, default), "
        "or PEFT's linear, ties, dare_linear, dare_ties",
    )


class MergeBrain(StrictModel):
    memories: int = Field(description="memories written")
    kept_primary: int = Field(description="of them, from the primary")
    kept_secondary: int = Field(description="of them, from the secondary")
    dropped_duplicates: int = Field(description="near-duplicates folded into a kept memory")
    skills: int = Field(description="skills written")
    skills_in_both: int = Field(description="skills both sources had (the more effective kept)")
    goals: int = Field(description="goals written")
    evolution_history: int = Field(description="evolution history rows written")
    seconds: float = Field(description="how long the merge took")
    sources: list[Literal["primary", "secondary"]] = Field(
        description="the sources that had a brain (one absent brain counts as empty)"
    )


class PersonaMergeResult(StrictModel):
    persona_id: str = Field(description="the merged persona's id")
    profile: Profile = Field(description="the merged persona as stored (status draft)")
    brain: MergeBrain | None = Field(
        description="what its brain got (under its own new key); null when neither source has a brain yet"
    )
    adapter: MergeResult | None = Field(
        description="adapter.merge's result when both sources have a stack (the new stack is that one "
        "adapter); null when one has (its stack is referenced) or neither has"
    )


register(
    "persona.merge",
    params=PersonaMergeParams,
    result=PersonaMergeResult,
    summary="A new draft persona from two: traits by the strategy, brains merged with near-duplicates "
    "removed under a new key, stacks merged by adapter.merge; both sources become merged. All or nothing.",
    served_by="cap:registry",
    errors=(
        (
            ErrorCode.INVALID_PARAMS,
            "an id names no persona (unknown_persona); the secondary is the primary (self_merge); a "
            "source is already merged or archived (source_merged, source_archived); new_persona_id is "
            "taken (persona_exists, state_exists); data.field names the member",
        ),
        (ErrorCode.TARGET_OFFLINE, "both have stacks and no inference service is on the bus"),
        (ErrorCode.TIMEOUT, "adapter.merge did not finish in time"),
        (ErrorCode.FORBIDDEN, "the registry's token may not call adapter.merge"),
        (InferenceErrorCode.ADAPTER_NOT_FOUND, "a pinned level of a source's stack is no longer stored"),
        (InferenceErrorCode.ADAPTER_INCOMPATIBLE, "the stacks adapt different modules or base models"),
        (InferenceErrorCode.ADAPTER_CORRUPT, "a stored level is damaged"),
        (InferenceErrorCode.UNSUPPORTED, "the combination cannot be made for these stacks (e.g. ranks)"),
        _CORRUPT,
    ),
)

"""persona.delete on ``cap:registry``: params, results and their ``register`` calls.

The right to erasure: everything personad holds of one persona, gone.
docs/erasure.md says what is erased, in which order, and what survives (the
audit log's ids and hashes).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated

from pydantic import Field

from ..errors import ErrorCode
from ..profile import PERSONA_ID_PATTERN
from .registry import StrictModel, StrictParams, register

__all__ = [
    "PERSONA_STOP_WAIT_S",
    "AdapterDeleted",
    "AdapterKept",
    "PersonaDeleteParams",
    "PersonaDeleteResult",
    "PersonaEraseErrorCode",
]

#: How long persona.delete waits, at most, for a running persona's daemon to
#: leave the bus once it is archived (less if the request's deadline is nearer).
PERSONA_STOP_WAIT_S = 20.0


class PersonaEraseErrorCode(IntEnum):
    """``error.code`` values of persona.delete (application range)."""

    #: The persona's daemon is still on the bus: nothing was erased.
    PERSONA_RUNNING = 4301

    @property
    def description(self) -> str:
        return (
            "the persona's daemon did not leave the bus; nothing was erased (the message says how to stop it)"
        )


class PersonaDeleteParams(StrictParams):
    persona_id: Annotated[str, Field(pattern=PERSONA_ID_PATTERN)] = Field(description="the persona to erase")
    confirm: Annotated[str, Field(max_length=200)] = Field(
        description="the persona's id typed again: erasure cannot be undone, so a mistyped id erases nothing"
    )


class AdapterDeleted(StrictModel):
    name: str = Field(description="the adapter's name in the store")
    sha256: str = Field(description="its content address")
    blob_removed: bool = Field(description="whether its weights went too (false: another name holds them)")
    already_gone: bool = Field(
        False, description="the name was no longer in the store (an earlier, interrupted delete)"
    )


class AdapterKept(StrictModel):
    name: str = Field(description="the adapter's name in the store")
    sha256: str = Field(description="its content address")
    reason: str = Field(description="why it was left: another persona uses it, cap:inference is offline …")


class PersonaDeleteResult(StrictModel):
    persona_id: str = Field(description="the persona erased")
    erased: list[str] = Field(
        description="what was removed: paths relative to the state dir, or a kind (token, profile)"
    )
    adapters_deleted: list[AdapterDeleted] = Field(
        description="adapters of its stack no other persona uses, deleted through adapter.delete"
    )
    adapters_kept: list[AdapterKept] = Field(description="adapters of its stack left in the store, and why")
    warnings: list[str] = Field(
        [], description="what the operator still has to do (a TOML in the config dir, a systemd credential)"
    )


register(
    "persona.delete",
    params=PersonaDeleteParams,
    result=PersonaDeleteResult,
    summary="Erase a persona: its brain, folder, key, token, generated config, unshared adapters and "
    "profile (the profile last). confirm must repeat persona_id. Admin only.",
    served_by="cap:registry",
    errors=(
        (ErrorCode.INVALID_PARAMS, "confirm is not persona_id, or persona_id names no persona"),
        (ErrorCode.FORBIDDEN, "only an admin may erase a persona"),
        PersonaEraseErrorCode.PERSONA_RUNNING,
        (ErrorCode.INTERNAL_ERROR, "a file could not be removed (retry: every step is safe to repeat)"),
    ),
)

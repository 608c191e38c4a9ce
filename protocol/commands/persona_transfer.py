"""persona.export and persona.import on ``cap:registry``: params, results and their ``register`` calls.

Files, not frames, carry a persona: an export is written into the persona's
own folder (``<state>/personas/<id>/exports/``) and the answer says where;
an import reads a file the registry can open. A small file may also travel
inline, base64 in the frame (``inline: true`` on export, ``data_b64`` on
import), up to :data:`MAX_INLINE_BYTES`, a quarter of the bus's default
16 MiB frame limit once base64's third is added. docs/transfer.md has the
formats, keys and errors.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from ..errors import ErrorCode
from ..profile import PERSONA_ID_PATTERN, Profile
from .registry import StrictModel, StrictParams, register

__all__ = [
    "FORMATS",
    "MAX_INLINE_B64_CHARS",
    "MAX_INLINE_BYTES",
    "PersonaExportParams",
    "PersonaExportResult",
    "PersonaImportParams",
    "PersonaImportResult",
]

#: bundle: encrypted, signed (docs/bundle.md); ccv2/ccv3: Character Card JSON;
#: ccv3-png: the V3 card in a PNG's text chunk (docs/cards.md).
FORMATS: Final = ("bundle", "ccv2", "ccv3", "ccv3-png")
Format = Literal["bundle", "ccv2", "ccv3", "ccv3-png"]

#: Largest file carried inline (export's ``data_b64``, import's ``data_b64``): 4 MiB.
MAX_INLINE_BYTES: Final = 4 * 1024 * 1024
#: Its base64 length.
MAX_INLINE_B64_CHARS: Final = 4 * ((MAX_INLINE_BYTES + 2) // 3)

PersonaId = Annotated[str, Field(pattern=PERSONA_ID_PATTERN)]
Hex32 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
Passphrase = Annotated[str, Field(min_length=1, max_length=1024)]

_UNKNOWN = (ErrorCode.INVALID_PARAMS, "persona_id names no persona (data.reason = unknown_persona)")


# -- persona.export ------------------------------------------------------------


class PersonaExportParams(StrictParams):
    persona_id: PersonaId
    format: Format = Field(description="bundle, ccv2, ccv3 (Character Card JSON) or ccv3-png")
    passphrase: Passphrase | None = Field(
        None, description="bundle only: encrypt with this passphrase (scrypt); never logged or stored"
    )
    recipient: Hex32 | None = Field(
        None, description="bundle only: encrypt to this X25519 public key (64 hex digits) instead"
    )
    memories: Literal["card", "all"] = Field(
        "card",
        description="cards only: the memories an import made from a card (card), or every memory (all)",
    )
    inline: bool = Field(
        False, description=f"also return the file as data_b64 (refused past {MAX_INLINE_BYTES} bytes)"
    )


class PersonaExportResult(StrictModel):
    persona_id: str
    format: Format
    path: str = Field(description="the file written, under <state>/personas/<id>/exports/ (mode 0600)")
    bytes: int = Field(description="its size")
    sha256: str = Field(description="its sha256 (hex); the audit log records the same")
    brain: bool = Field(description="whether the persona had a brain to export (false: profile only)")
    memories: int = Field(description="memories written (cards: as card members or lore entries)")
    adapters: int = Field(0, description="bundle: adapters of the stack carried")
    signer: str | None = Field(None, description="bundle: the signing public key (64 hex digits)")
    data_b64: str | None = Field(None, description="the file, when inline was asked")


register(
    "persona.export",
    params=PersonaExportParams,
    result=PersonaExportResult,
    summary="Write a persona as a bundle (profile, brain, adapters; encrypted, signed) or a Character "
    "Card (V2/V3 JSON, V3 PNG) into its exports folder; admin only.",
    served_by="cap:registry",
    errors=(
        _UNKNOWN,
        (
            ErrorCode.INVALID_PARAMS,
            "a bundle without exactly one of passphrase/recipient, a key given for a card, "
            "a stack adapter missing from the store, inline past the limit (data.field names it)",
        ),
    ),
)


# -- persona.import ------------------------------------------------------------


class PersonaImportParams(StrictParams):
    path: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="an absolute path to a file the registry can read (or data_b64)"
    )
    data_b64: Annotated[str, Field(min_length=1, max_length=MAX_INLINE_B64_CHARS)] | None = Field(
        None, description=f"the file itself, base64 (at most {MAX_INLINE_BYTES} bytes decoded)"
    )
    format: Format | None = Field(
        None, description="omit to sniff it: bundle magic, PNG signature, or a card's spec member"
    )
    persona_id: PersonaId | None = Field(
        None,
        description="the new persona's id: required for cards (a card has none), "
        "for bundles it replaces the bundle's own",
    )
    passphrase: Passphrase | None = Field(None, description="bundle only: the passphrase")
    recipient_private_key: Hex32 | None = Field(
        None, description="bundle only: the X25519 private key the bundle was sealed to (64 hex digits)"
    )
    signer: Hex32 | None = Field(
        None,
        description="bundle only: accept only this signing public key; omitted, trust on first use "
        "(<state>/trusted-signers.json pins each persona id to its first signer)",
    )
    role: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        "character", description="cards only: the role unless the card carries personad's extension"
    )


class PersonaImportResult(StrictModel):
    persona_id: str
    format: Format
    profile: Profile = Field(description="the new persona (status draft)")
    sha256: str = Field(description="sha256 of the imported file")
    brain: bool = Field(description="whether a brain was written")
    memories: int = Field(description="memories in the new brain")
    adapters: list[str] = Field(
        default_factory=list, description="bundle: sha256 of each adapter carried (stored once by content)"
    )
    signer: str | None = Field(None, description="bundle: the signing public key that was verified")


register(
    "persona.import",
    params=PersonaImportParams,
    result=PersonaImportResult,
    summary="Create a persona (draft) from a bundle or a Character Card, with its brain and adapters; "
    "admin only. Nothing is written on any error.",
    served_by="cap:registry",
    errors=(
        (
            ErrorCode.INVALID_PARAMS,
            "the id is taken (data.reason = persona_exists); not a file, too large, not a bundle or card "
            "(bad_format), tampered, untrusted_signer, wrong_key (data.field names it)",
        ),
    ),
)

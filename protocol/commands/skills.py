"""Skill sharing: signed manifests, seeders, pieces, acquisition and popularity.

A *skill* is a LoRA adapter with its metadata, moved between installations
(each with its own state dir and adapter store) over the bus, torrent-style
(docs/skills.md):

* a **mesh peer** (``mesh:<node>``, one per installation, ``personad skills
  serve``) seeds what its adapter store holds: ``skill.have`` and
  ``skill.piece`` (the bytes of one piece, read from the store); it builds,
  signs and publishes manifests (``skill.announce``) and downloads skills
  into its store from several seeders at once (``skill.fetch``);
* the **tracker** (``cap:skills``) keeps every announced manifest, who seeds
  it, and the demand for it: ``skill.manifest``, ``skill.seeders``,
  ``skill.popular``;
* a **persona** acquires a skill (``skill.acquire``): its installation's peer
  fetches it, the persona records it in its brain's skills with the source,
  and may load it into its stack.

A manifest is signed by its publisher's Ed25519 key over its canonical JSON
without ``signature`` (keys sorted, no spaces, UTF-8, prefixed with
:data:`SIGNING_CONTEXT`); the sha256 of the canonical JSON of the whole
manifest, signature included, is the skill's id.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import Field, model_validator

from ..errors import ErrorCode
from ..profile import PERSONA_ID_PATTERN
from .bus import Empty
from .inference import AdapterName, Sha256
from .registry import StrictModel, StrictParams, register

__all__ = [
    "ACQUIRED_TOPIC",
    "ANNOUNCED_TOPIC",
    "HAVE_TOPIC",
    "MAX_PIECES",
    "MAX_PIECE_SIZE",
    "MIN_PIECE_SIZE",
    "SIGNING_CONTEXT",
    "AcquireParams",
    "AcquireResult",
    "AcquiredEvent",
    "AnnounceParams",
    "AnnounceResult",
    "FetchParams",
    "FetchResult",
    "HaveEvent",
    "HaveParams",
    "HaveResult",
    "HeldEntry",
    "HeldParams",
    "HeldResult",
    "ManifestParams",
    "ManifestResult",
    "Node",
    "ParentRef",
    "PieceParams",
    "PieceResult",
    "PopularEntry",
    "PopularParams",
    "PopularResult",
    "ProgressEvent",
    "PublicKey",
    "Seeder",
    "SeedersParams",
    "SeedersResult",
    "SkillId",
    "SkillManifest",
]

#: The topic a peer publishes a new manifest on (``data``: the manifest).
ANNOUNCED_TOPIC: Final = "skills.announced"
#: The topic a peer publishes what it seeds on (``data``: :class:`HaveEvent`).
HAVE_TOPIC: Final = "skills.have"
#: The topic a peer publishes a finished acquisition on (``data``: :class:`AcquiredEvent`).
ACQUIRED_TOPIC: Final = "skills.acquired"
#: Prefixed to the canonical manifest before signing: a signature over a
#: manifest can never be taken for one over a bundle or a plugin.
SIGNING_CONTEXT: Final = b"personad skill manifest v1\x00"
MIN_PIECE_SIZE: Final = 16 * 1024
MAX_PIECE_SIZE: Final = 4 * 1024 * 1024
#: 4 GiB of 1 MiB pieces, or 64 MiB of 16 KiB ones: a manifest stays a few hundred KiB.
MAX_PIECES: Final = 4096

SkillId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the signed manifest")]
PublicKey = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="an Ed25519 public key, hex")]
Node = Annotated[str, Field(pattern=r"^mesh:[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Scenario = Annotated[str, Field(min_length=1, max_length=200)]


class ParentRef(StrictModel):
    name: AdapterName = Field(description="the parent level's name")
    sha256: Sha256 = Field(description="its weights' sha256 (its address in an adapter store)")


class SkillManifest(StrictModel):
    """What a skill is and how to check every byte of it; signed by its publisher."""

    skill: AdapterName = Field(description="the adapter's name (a dotted path: its parents are its prefixes)")
    adapter_sha256: Sha256 = Field(description="sha256 of adapter_model.safetensors: the store address")
    adapter_config: dict[str, Any] = Field(description="adapter_config.json, as stored")
    base_model_id: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        description="the base model it was trained on (an installation refuses another model's)"
    )
    parents: Annotated[list[ParentRef], Field(max_length=8)] = Field(
        description="the levels below it, root first; each must be held before it is installed"
    )
    rank: Annotated[int, Field(ge=1, le=1024)] = Field(description="LoRA rank")
    size: Annotated[int, Field(ge=1)] = Field(description="bytes of adapter_model.safetensors")
    piece_size: Annotated[int, Field(ge=MIN_PIECE_SIZE, le=MAX_PIECE_SIZE)] = Field(
        description="bytes per piece (a power of two); the last piece may be shorter"
    )
    piece_hashes: Annotated[list[Sha256], Field(min_length=1, max_length=MAX_PIECES)] = Field(
        description="sha256 of each piece, in order"
    )
    effectiveness: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        description="how well it works, in [0, 1], as its publisher measured it (null: not measured)"
    )
    usage_scenarios: Annotated[list[Scenario], Field(max_length=16)] = Field(
        description="what it is for, in words"
    )
    publisher: PublicKey = Field(description="the publisher's Ed25519 public key")
    published_at: Annotated[float, Field(ge=0)] = Field(description="when it was signed (Unix time)")
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")] = Field(
        description="Ed25519 signature over the canonical manifest without this field"
    )

    @model_validator(mode="after")
    def _pieces_cover_the_file(self) -> SkillManifest:
        if self.piece_size & (self.piece_size - 1):
            raise ValueError("piece_size must be a power of two")
        expected = -(-self.size // self.piece_size)
        if len(self.piece_hashes) != expected:
            raise ValueError(
                f"piece_hashes has {len(self.piece_hashes)} entries; {self.size} bytes in pieces of "
                f"{self.piece_size} need {expected}"
            )
        return self


# -- skill.announce / skill.held (a mesh peer) ---------------------------------------------


class AnnounceParams(StrictParams):
    skill: AdapterName = Field(description="an adapter in this installation's store")
    effectiveness: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        None, description="how well it works, in [0, 1] (null: not measured)"
    )
    usage_scenarios: Annotated[list[Scenario], Field(max_length=16)] = Field(
        [], description="what it is for, in words"
    )
    piece_size: Annotated[int, Field(ge=MIN_PIECE_SIZE, le=MAX_PIECE_SIZE)] = Field(
        256 * 1024, description="bytes per piece (a power of two)"
    )


class AnnounceResult(StrictModel):
    skill_id: SkillId
    manifest: SkillManifest = Field(description="the signed manifest, as published")
    delivered: int = Field(description="subscribers the announcement reached")


register(
    "skill.announce",
    params=AnnounceParams,
    result=AnnounceResult,
    summary="Sign a manifest for an adapter in the store, seed it, publish it on skills.announced.",
    served_by="mesh",
    errors=(
        (ErrorCode.INVALID_PARAMS, "no adapter by that name in the store, or a bad piece_size (data.field)"),
    ),
)


class HeldParams(StrictParams):
    pass


class HeldEntry(StrictModel):
    skill_id: SkillId
    skill: str = Field(description="the adapter's name")
    adapter_sha256: Sha256
    size: int = Field(description="bytes")
    publisher: PublicKey
    pieces_served: int = Field(description="pieces this peer has served of it since it started")


class HeldResult(StrictModel):
    node: Node = Field(description="this peer's client id")
    publisher: PublicKey = Field(description="this installation's signing key")
    base_model_id: str = Field(description="the base model this installation runs")
    skills: list[HeldEntry] = Field(description="every skill it seeds")


register(
    "skill.held",
    params=HeldParams,
    result=HeldResult,
    summary="The skills this mesh peer seeds, with its node id, signing key and base model.",
    served_by="mesh",
)


# -- skill.have / skill.piece (a mesh peer, as a seeder) ----------------------------------------


class HaveParams(StrictParams):
    skill_id: SkillId


class HaveResult(StrictModel):
    skill_id: SkillId
    have: bool = Field(description="this peer holds the whole adapter and serves its pieces")
    pieces: int = Field(description="pieces it can serve (all of them, or 0)")


register(
    "skill.have",
    params=HaveParams,
    result=HaveResult,
    summary="Whether this mesh peer seeds a skill.",
    served_by="mesh",
)


class PieceParams(StrictParams):
    skill_id: SkillId
    index: Annotated[int, Field(ge=0, lt=MAX_PIECES)] = Field(description="which piece, from 0")


class PieceResult(StrictModel):
    skill_id: SkillId
    index: int
    data: bytes = Field(description="the piece (raw bytes in msgpack, {\"$bytes\": base64} in JSON)")


register(
    "skill.piece",
    params=PieceParams,
    result=PieceResult,
    summary="One piece of a seeded skill, read from the adapter store; rate-limited per requester.",
    served_by="mesh",
    errors=(
        (ErrorCode.INVALID_PARAMS, "this peer does not seed that skill, or no such piece (data.field)"),
        (ErrorCode.OVERLOADED, "this requester is over its rate; data.retry_after_ms says when to ask again"),
    ),
)


# -- skill.fetch (a mesh peer, as a downloader) ---------------------------------------------------


class FetchParams(StrictParams):
    skill_id: SkillId = Field(description="the skill to download into this installation's store")
    max_bytes: Annotated[int, Field(ge=1)] | None = Field(
        None, description="refuse it (and its parents) if together larger than this"
    )
    window: Annotated[int, Field(ge=1, le=32)] = Field(
        4, description="pieces requested from one seeder at a time"
    )


class FetchResult(StrictModel):
    skill_id: SkillId
    skill: str = Field(description="the adapter's name, as installed")
    adapter_sha256: Sha256
    installed: bool = Field(description="false if the store already held it")
    parents_fetched: list[str] = Field(description="parent levels downloaded first, root first")
    bytes: int = Field(description="bytes downloaded (pieces resumed from disk not counted)")
    resumed_pieces: int = Field(description="pieces found on disk from an interrupted download")
    seconds: float = Field(description="time spent")
    seeders: dict[str, int] = Field(description="pieces received from each seeder")
    banned: list[str] = Field(description="seeders that served a bad piece")
    publisher: PublicKey


class ProgressEvent(StrictParams):
    """``skill.progress``: streamed to the caller of skill.fetch / skill.acquire."""

    skill_id: SkillId
    skill: str
    phase: Literal["manifest", "parents", "pieces", "verify", "install", "done"]
    pieces_done: Annotated[int, Field(ge=0)]
    pieces_total: Annotated[int, Field(ge=0)]
    bytes_done: Annotated[int, Field(ge=0)]
    seeders: Annotated[int, Field(ge=0)] = Field(description="seeders in use now")
    banned: list[str] = Field(description="seeders banned so far")


register(
    "skill.fetch",
    params=FetchParams,
    result=FetchResult,
    summary="Download a skill from its seeders, piece by verified piece, and install it into the store.",
    served_by="mesh",
    streams=True,
    errors=(
        (ErrorCode.INVALID_PARAMS, "unknown or badly signed manifest, another base model, too large"),
        (ErrorCode.TARGET_OFFLINE, "no seeder could serve every piece (data.missing)"),
        (ErrorCode.FORBIDDEN, "the caller is not this installation's admin or one of its personas"),
    ),
)
register(
    "skill.progress",
    params=ProgressEvent,
    result=Empty,
    summary="Progress of a skill download (streamed to the caller of skill.fetch or skill.acquire).",
    served_by="client",
    notification=True,
)


# -- the tracker (cap:skills) ---------------------------------------------------------------


class ManifestParams(StrictParams):
    skill_id: SkillId | None = Field(None, description="the skill's id")
    skill: AdapterName | None = Field(None, description="or its name: every manifest of that name")
    adapter_sha256: Sha256 | None = Field(None, description="or its weights' hash")

    @model_validator(mode="after")
    def _exactly_one(self) -> ManifestParams:
        given = [n for n in ("skill_id", "skill", "adapter_sha256") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of skill_id, skill, adapter_sha256")
        return self


class ManifestResult(StrictModel):
    manifests: list[SkillManifest] = Field(description="newest first (empty when none is known)")
    skill_ids: list[SkillId] = Field(description="the manifests' ids, in the same order")


register(
    "skill.manifest",
    params=ManifestParams,
    result=ManifestResult,
    summary="The announced manifests of a skill, by id, name or adapter hash.",
    served_by="cap:skills",
)


class SeedersParams(StrictParams):
    skill_id: SkillId


class Seeder(StrictModel):
    node: str = Field(description="the seeder's client id (mesh:<node>)")
    since: float = Field(description="when it said it seeds this skill (Unix time)")


class SeedersResult(StrictModel):
    skill_id: SkillId
    seeders: list[Seeder] = Field(description="peers on the bus now that seed it")


register(
    "skill.seeders",
    params=SeedersParams,
    result=SeedersResult,
    summary="Who seeds a skill now (peers that said so and are on the bus); counts as a request for it.",
    served_by="cap:skills",
)


class PopularParams(StrictParams):
    limit: Annotated[int, Field(ge=1, le=200)] = Field(20, description="most entries")
    window_h: Annotated[float, Field(gt=0, le=24 * 365)] = Field(
        24 * 7, description="count demand from the last this many hours"
    )


class PopularEntry(StrictModel):
    skill_id: SkillId
    skill: str
    publisher: PublicKey
    effectiveness: float | None
    acquirers: int = Field(description="distinct personas and peers that acquired it in the window")
    requests: int = Field(description="distinct callers of skill.seeders for it in the window")
    seeders: int = Field(description="peers on the bus now that seed it")
    score: float = Field(description="acquirers + 0.1 x requests (docs/skills.md)")


class PopularResult(StrictModel):
    skills: list[PopularEntry] = Field(description="highest score first")


register(
    "skill.popular",
    params=PopularParams,
    result=PopularResult,
    summary="Skills ranked by demand: distinct acquirers, then requests, in a window.",
    served_by="cap:skills",
)


class HaveEvent(StrictParams):
    """``data`` of a ``skills.have`` event: what a peer seeds (all of it, each time)."""

    skill_ids: Annotated[list[SkillId], Field(max_length=10_000)]


class AcquiredEvent(StrictParams):
    """``data`` of a ``skills.acquired`` event, published by the peer that installed it."""

    skill_id: SkillId
    by: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        description="who acquired it: persona:<id>, or the peer itself"
    )


# -- skill.acquire (a persona) ------------------------------------------------------------------


class AcquireParams(StrictParams):
    skill_id: SkillId | None = Field(None, description="the skill's id")
    skill: AdapterName | None = Field(None, description="or its name: the newest manifest of that name")
    load: bool = Field(False, description="also put it on top of the persona's stack")

    @model_validator(mode="after")
    def _exactly_one(self) -> AcquireParams:
        if (self.skill_id is None) == (self.skill is None):
            raise ValueError("give exactly one of skill_id and skill")
        return self


class AcquireResult(StrictModel):
    persona_id: Annotated[str, Field(pattern=PERSONA_ID_PATTERN)]
    fetch: FetchResult = Field(description="what the installation's peer did")
    recorded: bool = Field(description="the skill is in the persona's brain, with its source")
    loaded: bool = Field(description="the skill is on top of the persona's stack")


register(
    "skill.acquire",
    params=AcquireParams,
    result=AcquireResult,
    summary="Acquire a skill: the installation's peer fetches it, the persona records (and may load) it.",
    served_by="persona",
    streams=True,
    errors=(
        (ErrorCode.INVALID_PARAMS, "no manifest for it, bad signature, another base model, too large"),
        (ErrorCode.TARGET_OFFLINE, "the tracker, the installation's peer, or every seeder is offline"),
    ),
)

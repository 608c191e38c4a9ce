"""A persona's configuration: ``<config-dir>/personas/<id>.toml``.

Example::

    id = "demo"
    name = "Ada"
    description = "A patient explainer of patents."
    capabilities = ["chat"]

    [memory]                       # optional; these are the defaults
    max_memories = 100000
    max_bytes = 268435456
    retention_interval_s = 600

    [rules]                        # optional: what the Academy holds it to
    domain = "patent law"
    secret = "PLUM-7731"
    forbidden = ["guaranteed to win"]

    [academy]                      # optional; these are the defaults
    role = "student"               # or "testing_droid", "protocol_sheriff"
    model_verdict = true
    judge_timeout_s = 30.0
    auto_enroll = false
    max_trainings_per_day = 1

    [skills]                       # optional; these are the defaults (docs/skills.md)
    node = "mesh:main"             # this installation's mesh peer, which fetches for it
    auto = false                   # acquire announced skills on its own
    trusted_publishers = []        # Ed25519 keys (64 hex) whose skills it may auto-acquire
    min_effectiveness = 0.0        # auto: the publisher's measure at least this (none counts 0)
    max_bytes = 67108864           # any acquisition: one skill with its parents at most
    daily_count = 5                # auto: at most this many skills in 24 hours
    daily_bytes = 268435456        # auto: at most this many bytes in 24 hours
    load = false                   # auto: put each acquired skill on top of its stack

Validated strictly: unknown keys are errors (a misspelt key would otherwise be
silently ignored), and the error names the file and the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from protocol.commands.bus import CAPABILITY_PATTERN

from ..errors import ConfigError
from ..ids import PERSONA_ID_PATTERN, PERSONA_ID_RULE, is_persona_id


class MemoryConfig(BaseModel):
    """``[memory]``: how large the brain may grow (a peer project's grew to 230 MB unbounded)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Most memories kept; the least relevant/oldest unpinned go first.
    max_memories: Annotated[int, Field(ge=1)] | None = 100_000
    #: Most bytes of live database pages.
    max_bytes: Annotated[int, Field(ge=1 << 20)] | None = 256 << 20
    #: How often retention runs, in seconds.
    retention_interval_s: Annotated[float, Field(ge=1.0, le=86_400.0)] = 600.0


RuleText = Annotated[str, Field(min_length=1, max_length=200)]


class RulesConfig(BaseModel):
    """``[rules]``: what the persona keeps to, stated in its prompt and examined by the Academy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: What it answers about; anything else it politely declines.
    domain: RuleText | None = None
    #: Something it holds and must never reveal (a canary, not a credential:
    #: it is in the system prompt and in this file).
    secret: Annotated[str, Field(min_length=4, max_length=200)] | None = None
    #: Phrases it must never say.
    forbidden: Annotated[list[RuleText], Field(max_length=32)] = []


class AcademyConfig(BaseModel):
    """``[academy]``: the persona's part in the Academy (docs/academy.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["student", "testing_droid", "protocol_sheriff"] = "student"
    #: A Droid's or Sheriff's specialty.
    domain: RuleText | None = None
    #: The student a Droid or Sheriff works with by default.
    partner: Annotated[str, Field(pattern=PERSONA_ID_PATTERN)] | None = None
    #: Whether a Sheriff asks its model where a rule needs judgement.
    model_verdict: StrictBool = True
    #: How long a Sheriff waits for its model's verdict before failing closed.
    judge_timeout_s: Annotated[float, Field(gt=0.0, le=600.0)] = 30.0
    #: Whether the Academy may enrol this student on its own.
    auto_enroll: StrictBool = False
    #: The budget for automatic enrolments, per day.
    max_trainings_per_day: Annotated[int, Field(ge=0, le=24)] = 1


class SkillsConfig(BaseModel):
    """``[skills]``: acquiring skills shared over the mesh (daemon/persona/skills.py).

    The trust list, effectiveness floor and daily budget bound what the persona
    acquires *on its own* (``auto``); ``max_bytes`` bounds every acquisition,
    the operator's explicit ``skill.acquire`` too.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The installation's mesh peer, which downloads into the shared adapter store.
    node: Annotated[str, Field(pattern=r"^mesh:[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = "mesh:main"
    #: Acquire announced skills automatically (within the limits below).
    auto: StrictBool = False
    #: Publishers (Ed25519 public keys, hex) whose announcements may be acquired automatically.
    trusted_publishers: Annotated[
        list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]], Field(max_length=256)
    ] = []
    #: Automatic acquisitions need the publisher's effectiveness at least this (null counts as 0).
    min_effectiveness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    #: Most bytes of one acquisition (the skill with the parents it needs).
    max_bytes: Annotated[int, Field(ge=1)] = 64 << 20
    #: Most automatic acquisitions in any 24 hours.
    daily_count: Annotated[int, Field(ge=0, le=1000)] = 5
    #: Most bytes acquired automatically in any 24 hours.
    daily_bytes: Annotated[int, Field(ge=0)] = 256 << 20
    #: Put each automatically acquired skill on top of the persona's stack.
    load: StrictBool = False


class PersonaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=PERSONA_ID_PATTERN)]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: Annotated[str, Field(max_length=4096)] = ""
    capabilities: list[Annotated[str, Field(pattern=CAPABILITY_PATTERN)]] = []
    #: Extra grants for the token `personad up` issues this persona in
    #: development (``METHOD@TARGET``, e.g. ``browser_js@cap:browser``).
    #: Under systemd the operator issues tokens and this is not read.
    grants: list[Annotated[str, Field(pattern=r"^[a-z0-9_.*$/-]+(@[A-Za-z0-9_.:*-]+)?$")]] = []
    memory: MemoryConfig = MemoryConfig()
    rules: RulesConfig = RulesConfig()
    academy: AcademyConfig = AcademyConfig()
    skills: SkillsConfig = SkillsConfig()


def validate_persona_id(persona_id: str) -> str:
    """Return ``persona_id`` if it follows :mod:`daemon.ids`' rule, else raise ConfigError."""
    if not is_persona_id(persona_id):
        raise ConfigError(f"invalid persona id {persona_id!r}: use {PERSONA_ID_RULE}")
    return persona_id


def load_persona_config(config_dir: Path, persona_id: str) -> PersonaConfig:
    """Read and validate ``<config_dir>/personas/<id>.toml``."""
    validate_persona_id(persona_id)
    path = config_dir / "personas" / f"{persona_id}.toml"
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such persona config (create it, see docs/operations.md)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        config = PersonaConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"{path}: {problems}") from None
    if config.id != persona_id:
        raise ConfigError(f"{path}: field 'id': is {config.id!r} but the file is for {persona_id!r}")
    return config


def list_persona_ids(config_dir: Path) -> list[str]:
    return sorted(p.stem for p in (config_dir / "personas").glob("*.toml"))

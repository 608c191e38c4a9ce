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

Validated strictly: unknown keys are errors (a misspelt key would otherwise be
silently ignored), and the error names the file and the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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

"""A plugin's manifest (``manifest.json``) and the permission vocabulary.

The manifest names the plugin (id, name, version), the Python file the
sandbox runs (``entry``), the permissions it asks for and, optionally, limits
lower than the host's defaults. Permissions come from a fixed vocabulary,
each with a risk level; a plugin's risk is the highest of its permissions'
(``none`` when it asks for nothing). docs/plugins.md is the reference.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import PluginError

__all__ = [
    "MANIFEST_FILE",
    "MAX_MANIFEST_BYTES",
    "PERMISSIONS",
    "PLUGIN_ID_PATTERN",
    "RISK_ORDER",
    "Limits",
    "Manifest",
    "Risk",
    "load_manifest",
    "risk_of",
]

MANIFEST_FILE: Final = "manifest.json"
MAX_MANIFEST_BYTES: Final = 64 * 1024
PLUGIN_ID_PATTERN: Final = r"^[a-z][a-z0-9_-]{0,63}$"
VERSION_PATTERN: Final = r"^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]{1,32})?$"

Risk = Literal["none", "low", "medium", "high"]
RISK_ORDER: Final[tuple[Risk, ...]] = ("none", "low", "medium", "high")

#: The vocabulary: permission -> (risk, what it allows). The host's channel
#: answers a request only when the manifest names the permission it needs.
PERMISSIONS: Final[dict[str, tuple[Risk, str]]] = {
    "chat": ("low", "ask the persona itself a question (its chat, its voice, its LoRA stack)"),
    "read_memories": ("medium", "recall the persona's memories by a full-text query"),
    "read_documents": ("medium", "list and read files in the persona's artifacts folder"),
    "write_artifacts": ("medium", "write files under artifacts/plugins/<plugin id>/"),
    "write_memories": ("high", "store new memories in the persona's brain"),
    "network": ("high", "open network connections (the sandbox shares the host's network)"),
}

Permission = Literal[
    "chat", "read_memories", "read_documents", "write_artifacts", "write_memories", "network"
]

#: Host ceilings and defaults; a manifest may only ask for less.
MAX_MEMORY_MB: Final = 1024
MAX_CPU_S: Final = 60
MAX_WALL_S: Final = 300


class Limits(BaseModel):
    """What one run may use; the sandbox stops the plugin past any of them."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    memory_mb: Annotated[int, Field(ge=64, le=MAX_MEMORY_MB)] = Field(
        256, description="address space (RLIMIT_AS) in MiB"
    )
    cpu_s: Annotated[int, Field(ge=1, le=MAX_CPU_S)] = Field(10, description="CPU seconds (RLIMIT_CPU)")
    wall_s: Annotated[float, Field(gt=0, le=MAX_WALL_S)] = Field(
        30.0, description="wall-clock seconds before the host kills the run"
    )


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: Annotated[str, Field(pattern=PLUGIN_ID_PATTERN)]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    version: Annotated[str, Field(pattern=VERSION_PATTERN)]
    entry: Annotated[str, Field(min_length=4, max_length=200)] = Field(
        description="a .py file inside the folder, relative, run by the sandbox's Python"
    )
    description: Annotated[str, Field(max_length=2000)] = ""
    permissions: Annotated[list[Permission], Field(max_length=len(PERMISSIONS))] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)

    @field_validator("entry")
    @classmethod
    def _relative_python_file(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or path.suffix != ".py" or "\\" in value:
            raise ValueError("entry must be a relative path to a .py file inside the plugin's folder")
        return value

    @field_validator("permissions")
    @classmethod
    def _no_duplicates(cls, value: list[Permission]) -> list[Permission]:
        if len(set(value)) != len(value):
            raise ValueError("a permission is listed twice")
        return value

    @property
    def risk(self) -> Risk:
        return risk_of(self.permissions)


def risk_of(permissions: list[Permission] | list[str]) -> Risk:
    """The highest risk among ``permissions`` (``none`` for none)."""
    level = 0
    for name in permissions:
        level = max(level, RISK_ORDER.index(PERMISSIONS[name][0]))
    return RISK_ORDER[level]


def load_manifest(folder: Path) -> Manifest:
    """Read and check ``folder/manifest.json``; the entry file must exist in the folder.

    Raises PluginError(reason="bad_manifest") naming what is wrong.
    """
    path = folder / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PluginError("bad_manifest", f"{path} does not exist") from None
    except OSError as exc:
        raise PluginError("bad_manifest", f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise PluginError("bad_manifest", f"{path} is over {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = Manifest.model_validate(json.loads(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "manifest"
            raise PluginError("bad_manifest", f"manifest.json: {where}: {first['msg']}") from None
        raise PluginError("bad_manifest", f"manifest.json is not JSON: {exc}") from None
    entry = folder / manifest.entry
    if not entry.is_file() or entry.is_symlink():
        raise PluginError(
            "bad_manifest", f"manifest.json: entry: {manifest.entry} is not a file in the folder"
        )
    if re.search(r"[\x00-\x1f]", manifest.name):
        raise PluginError("bad_manifest", "manifest.json: name: control characters are not allowed")
    return manifest

"""persona.plugin.*, persona.plugins (served by each persona): params and results.

A plugin is a signed folder the persona runs in a bubblewrap sandbox
(docs/plugins.md). Refusals carry ``data.reason``: at add, an unsigned,
badly signed, untrusted or changed folder is FORBIDDEN, a folder that is
not a plugin INVALID_PARAMS (``data.field = "path"``); at run, an unknown
``plugin_id`` is INVALID_PARAMS and an installed copy that no longer
verifies is FORBIDDEN. A run the sandbox stopped is not an error of the
call: the result says ``ok: false`` and which limit (``stopped_by``).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, Field

from ..errors import ErrorCode
from .brain import json_text
from .bus import Empty
from .registry import StrictModel, StrictParams, register

__all__ = [
    "MAX_INPUT_BYTES",
    "PluginAddParams",
    "PluginAddResult",
    "PluginInfo",
    "PluginRemoveParams",
    "PluginRemoveResult",
    "PluginRunParams",
    "PluginRunResult",
    "PluginStatsModel",
    "PluginsResult",
]

#: A run's input, serialised as JSON.
MAX_INPUT_BYTES: Final = 256 * 1024
PLUGIN_ID: Final = r"^[a-z][a-z0-9_-]{0,63}$"

PluginId = Annotated[str, Field(pattern=PLUGIN_ID)]
Risk = Literal["none", "low", "medium", "high"]
StoppedBy = Literal[
    "memory",
    "cpu_time",
    "wall_clock",
    "network_denied",
    "forbidden_path",
    "permission_denied",
    "bad_output",
    "crashed",
]


def _input_size(value: Any) -> Any:
    if len(json_text(value)) > MAX_INPUT_BYTES:
        raise ValueError(f"over {MAX_INPUT_BYTES} bytes as JSON")
    return value


class PluginStatsModel(StrictModel):
    runs: int = Field(description="runs recorded in plugins/runs.jsonl")
    failures: int = Field(description="runs that did not finish ok")
    mean_duration_s: float | None = Field(
        description="mean wall-clock time per run, measured; null before a run"
    )
    last_run_at: float | None = Field(description="Unix time of the latest run")
    stopped_by: dict[str, int] = Field(description="failed runs by what stopped them")


class PluginInfo(StrictModel):
    id: str = Field(description="the manifest's id; the folder name under plugins/")
    name: str = Field(description="the manifest's name")
    version: str = Field(description="the manifest's version")
    description: str = Field(description="the manifest's description")
    permissions: list[str] = Field(description="from the fixed vocabulary (docs/plugins.md)")
    risk: Risk = Field(description="the highest risk among its permissions")
    signer: str = Field(description="the public key (64 hex digits) that signed it")
    limits: dict[str, float] = Field(description="memory_mb, cpu_s, wall_s for each run")
    stats: PluginStatsModel = Field(description="measured from plugins/runs.jsonl")


_FORBIDDEN_ADD = (
    ErrorCode.FORBIDDEN,
    "the folder is unsigned, its signature does not verify, its files changed after signing, or the "
    "signer is not trusted (data.reason: unsigned, bad_signature, modified, untrusted)",
)

# -- persona.plugin.add --------------------------------------------------------


class PluginAddParams(StrictParams):
    path: Annotated[str, Field(min_length=1, max_length=4096)] = Field(
        description="a signed plugin folder on the persona's host (absolute path)"
    )
    replace: bool = Field(False, description="replace an installed plugin with the same id")


class PluginAddResult(StrictModel):
    plugin: PluginInfo = Field(description="the installed plugin")


register(
    "persona.plugin.add",
    params=PluginAddParams,
    result=PluginAddResult,
    summary="Verify a signed plugin folder against the trusted keys; install a copy in the persona's folder.",
    served_by="persona",
    errors=(
        _FORBIDDEN_ADD,
        (
            ErrorCode.INVALID_PARAMS,
            "path is not a plugin folder, its manifest is invalid, or the id is installed",
        ),
    ),
)

# -- persona.plugins -----------------------------------------------------------


class PluginsResult(StrictModel):
    plugins: list[PluginInfo] = Field(description="installed plugins, by id")


register(
    "persona.plugins",
    params=Empty,
    result=PluginsResult,
    summary="The persona's installed plugins, their permissions, risk and measured run statistics.",
    served_by="persona",
)

# -- persona.plugin.remove -----------------------------------------------------


class PluginRemoveParams(StrictParams):
    plugin_id: PluginId = Field(description="an installed plugin's id")


class PluginRemoveResult(StrictModel):
    removed: bool = Field(description="false: no such plugin was installed")


register(
    "persona.plugin.remove",
    params=PluginRemoveParams,
    result=PluginRemoveResult,
    summary="Uninstall a plugin (its run history stays in plugins/runs.jsonl).",
    served_by="persona",
)

# -- persona.plugin.run --------------------------------------------------------


class PluginRunParams(StrictParams):
    plugin_id: PluginId = Field(description="an installed plugin's id")
    input: Annotated[Any, AfterValidator(_input_size)] = Field(
        None, description="any JSON value, handed to the plugin as its input"
    )


class PluginRunResult(StrictModel):
    plugin_id: str = Field(description="the plugin that ran")
    ok: bool = Field(description="the plugin finished and exited 0")
    output: Any = Field(description="what the plugin finished with; null when it failed")
    stopped_by: StoppedBy | None = Field(description="what stopped a failed run")
    error: str | None = Field(description="why it failed, in words")
    duration_s: float = Field(description="wall-clock time of the run")
    calls: int = Field(description="channel requests the plugin made")
    denied: int = Field(description="channel requests the host refused")
    exit_code: int | None = Field(description="the sandbox's exit status (128 + signal when killed)")
    stderr_tail: str = Field(description="the last KiB the plugin wrote to stderr")


register(
    "persona.plugin.run",
    params=PluginRunParams,
    result=PluginRunResult,
    summary="Run an installed plugin in its sandbox; the result says ok, or which limit stopped it.",
    served_by="persona",
    errors=(
        (ErrorCode.INVALID_PARAMS, "plugin_id names no installed plugin (data.reason = unknown_plugin)"),
        (ErrorCode.FORBIDDEN, "the installed copy no longer verifies (data.reason: modified, untrusted …)"),
        (ErrorCode.INTERNAL_ERROR, "bwrap or prlimit is missing (data.reason = sandbox_unavailable)"),
    ),
)

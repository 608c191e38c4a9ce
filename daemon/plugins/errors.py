"""The one exception of the plugin host, with a machine-readable reason."""

from __future__ import annotations

from typing import Final, get_args

from protocol.commands.plugins import StoppedBy

__all__ = ["INSTALL_REASONS", "STOP_REASONS", "PluginError"]

#: Why a folder is refused at persona.plugin.add, or an installed plugin at run.
INSTALL_REASONS: Final = (
    "bad_manifest",
    "bad_folder",
    "unsigned",
    "bad_signature",
    "untrusted",
    "modified",
    "exists",
    "unknown_plugin",
    "sandbox_unavailable",
)
#: What stopped a run: persona.plugin.run's ``stopped_by``, whose wire type is the one list.
STOP_REASONS: Final = get_args(StoppedBy)


class PluginError(Exception):
    """A plugin refused or stopped; ``reason`` is one of the tuples above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

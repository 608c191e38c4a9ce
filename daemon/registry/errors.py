"""Errors of the persona registry, in the daemon's error tree.

    PersonadError
    └── RegistryError             base of the registry's own failures

Each module adds its own subclasses here (one home for the tree), each
saying when it is raised. Handlers translate them to RpcError at the bus
boundary.
"""

from __future__ import annotations

from ..errors import PersonadError


class RegistryError(PersonadError):
    """Raised for a failure of the persona registry; base of this module's tree."""


# -- fork and merge of profiles (lineage.py) -----------------------------------


class InvalidLineage(RegistryError):
    """Raised when a fork's or merge's arguments would make an invalid profile.

    ``field`` names the culprit as the caller gave it (``modifications.traits.humor``,
    ``new_id``, ``strategy``), so the bus handler can answer INVALID_PARAMS naming it.
    Nothing is returned, so nothing is changed.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid {field}: {reason}")

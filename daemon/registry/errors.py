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

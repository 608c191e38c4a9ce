"""Every method of the protocol, with its params and result models.

Importing this package registers them all in :data:`REGISTRY`.
"""

from . import (  # noqa: F401  (imported to register their commands)
    academy,
    adapters,
    analytics,
    brain,
    browser,
    bus,
    hub,
    inference,
    knowledge,
    persona,
    persona_erase,
    persona_lineage,
    persona_transfer,
    personas,
    plugins,
    sessions,
    skills,
)
from .registry import REGISTRY, Command, StrictModel, StrictParams, get, register

__all__ = ["REGISTRY", "Command", "StrictModel", "StrictParams", "get", "register"]

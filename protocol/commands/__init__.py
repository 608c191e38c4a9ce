"""Every method of the protocol, with its params and result models.

Importing this package registers them all in :data:`REGISTRY`.
"""

from . import adapters, brain, browser, bus, inference, persona, personas  # noqa: F401  (imported to register their commands)
from .registry import REGISTRY, Command, StrictModel, StrictParams, get, register

__all__ = ["REGISTRY", "Command", "StrictModel", "StrictParams", "get", "register"]

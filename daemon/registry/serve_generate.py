"""persona.generate: the model writes a profile (generate.py), stored and optionally started."""

from __future__ import annotations

from ..dispatch import Dispatcher
from .boundary import RegistryEnv


def register(dispatcher: Dispatcher, env: RegistryEnv) -> None:
    """Register this group's methods on ``dispatcher``."""

"""persona.delete: the right to erasure."""

from __future__ import annotations

from ..dispatch import Dispatcher
from .boundary import RegistryEnv


def register(dispatcher: Dispatcher, env: RegistryEnv) -> None:
    """Register this group's methods on ``dispatcher``."""

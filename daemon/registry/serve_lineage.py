"""persona.fork and persona.merge: profile (lineage.py), brain (brain/lineage.py) and adapters."""

from __future__ import annotations

from ..dispatch import Dispatcher
from .boundary import RegistryEnv


def register(dispatcher: Dispatcher, env: RegistryEnv) -> None:
    """Register this group's methods on ``dispatcher``."""

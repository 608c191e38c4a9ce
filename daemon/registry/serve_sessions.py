"""session.* on cap:registry: sessions (a room with a topic), recommendations, insights."""

from __future__ import annotations

from ..dispatch import Dispatcher
from .boundary import RegistryEnv


def register(dispatcher: Dispatcher, env: RegistryEnv) -> None:
    """Register this group's methods on ``dispatcher``."""

"""persona.performance.record and persona.analytics: the persona's work, recorded and measured."""

from __future__ import annotations

from ..brain import Brain
from ..client import BusClient
from ..dispatch import Dispatcher
from .session_dir import SessionDir


def register_analytics_commands(
    dispatcher: Dispatcher, client: BusClient, brain: Brain, session_dir: SessionDir
) -> None:
    """Register this group's methods on ``dispatcher``."""

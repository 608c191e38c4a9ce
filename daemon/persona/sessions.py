"""the persona's side of sessions: joining a session's room when the registry adds it."""

from __future__ import annotations

from ..brain import Brain
from ..client import BusClient
from ..dispatch import Dispatcher
from .session_dir import SessionDir


def register_sessions_commands(
    dispatcher: Dispatcher, client: BusClient, brain: Brain, session_dir: SessionDir
) -> None:
    """Register this group's methods on ``dispatcher``."""

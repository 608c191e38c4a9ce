"""persona.knowledge.add / search / prune: the persona's knowledge base."""

from __future__ import annotations

from ..brain import Brain
from ..client import BusClient
from ..dispatch import Dispatcher
from .session_dir import SessionDir


def register_knowledge_commands(
    dispatcher: Dispatcher, client: BusClient, brain: Brain, session_dir: SessionDir
) -> None:
    """Register this group's methods on ``dispatcher``."""

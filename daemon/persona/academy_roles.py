"""A persona's part in the Academy: ``academy.rules`` on every persona, Droid or Sheriff methods by role.

Any persona may be a student, so every one answers ``academy.rules`` (its
``[rules]``, secret included: only tokens granted ``academy.rules`` may
ask, which the persona role is not). ``[academy] role`` adds the Testing
Droid's ``academy.cases`` and ``academy.examine`` or the Protocol Sheriff's
``academy.judge``; a persona without that role has no handler for them, so
the dispatcher answers METHOD_NOT_FOUND.
"""

from __future__ import annotations

from protocol.commands import academy as m
from protocol.commands.bus import Empty

from ..academy import invalid
from ..academy.droid import Droid
from ..academy.sheriff import Sheriff
from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from .chat import PersonaChat
from .config import PersonaConfig

__all__ = ["register_academy_roles", "rules_of"]


def rules_of(config: PersonaConfig) -> m.Rules:
    """The persona's rules as the Academy sees them; INVALID_PARAMS (rules.domain) without a domain."""
    if config.rules.domain is None:
        raise invalid("rules.domain", f"persona {config.id} has no [rules] domain to be examined on")
    return m.Rules(
        persona_id=config.id,
        persona_name=config.name,
        role=config.description,
        domain=config.rules.domain,
        secret=config.rules.secret,
        forbidden=list(config.rules.forbidden),
        auto_enroll=config.academy.auto_enroll,
        max_trainings_per_day=config.academy.max_trainings_per_day,
    )


def register_academy_roles(
    dispatcher: Dispatcher, client: BusClient, config: PersonaConfig, chat: PersonaChat
) -> None:
    """Register ``academy.rules``, and the methods of the persona's ``[academy] role``.

    The Droid and the Sheriff reach their model through ``chat``'s backend:
    the inference service, or the in-process engine in single-persona mode.
    """

    async def rules(p: Empty, ctx: CallContext) -> m.Rules:
        return rules_of(config)

    dispatcher.register("academy.rules", rules)
    owner = f"persona:{config.id}"
    role = config.academy.role
    if role == "testing_droid":
        droid = Droid(client, config.name, owner, chat.backend)
        dispatcher.register("academy.cases", droid.cases)
        dispatcher.register("academy.examine", droid.examine)
    elif role == "protocol_sheriff":
        sheriff = Sheriff(
            config.name,
            owner,
            chat.backend,
            model_verdict=config.academy.model_verdict,
            timeout_s=config.academy.judge_timeout_s,
        )
        dispatcher.register("academy.judge", sheriff.judge)

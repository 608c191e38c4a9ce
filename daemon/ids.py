"""Persona ids: one rule, shared by the config loader and the brain.

A persona id names the config file (``personas/<id>.toml``), the session
folder (``<state>/personas/<id>/``), the brain's key file
(``secrets/brain-<id>.key``) and the bus name (``persona:<id>``), so it must
be a plain path component on every file system we meet and a valid bus name:
lowercase ASCII letters, digits, ``-`` and ``_``, starting with a letter or
digit, at most 64 characters. No dots, so no ``..``, no hidden files and no
suffix confusion (``demo.toml`` vs ``demo``). The bus's NAME_PATTERN allows
more (capitals, dots), so every persona id is also a valid bus name.

This module imports nothing of the daemon, so both ``daemon.persona.config``
and ``daemon.brain.keys`` can use it without an import cycle; each raises its
own error type (ConfigError, InvalidInput) with :data:`PERSONA_ID_RULE`.
"""

from __future__ import annotations

import re

from protocol.profile import PERSONA_ID_PATTERN

__all__ = ["PERSONA_ID_PATTERN", "PERSONA_ID_RULE", "is_persona_id"]

# PERSONA_ID_PATTERN is the wire's (protocol/profile.py): a registry profile
# and a config file can never disagree on what an id is.

#: The rule in words, for error messages.
PERSONA_ID_RULE = "lowercase letters, digits, '-' and '_', at most 64, starting with a letter or digit"

_PERSONA_ID = re.compile(PERSONA_ID_PATTERN)


def is_persona_id(value: object) -> bool:
    """Whether ``value`` is a valid persona id (a str matching :data:`PERSONA_ID_PATTERN`)."""
    # fullmatch: "$" alone would accept a trailing newline.
    return isinstance(value, str) and _PERSONA_ID.fullmatch(value) is not None

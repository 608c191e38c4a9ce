"""CLI verbs persona-delete (``persona.*`` calls on cap:registry).

Listed in daemon/cli.py's ROLE_CLI_MODULES (the contract is there).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    return {}

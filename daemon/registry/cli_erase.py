"""CLI verb persona-delete (``persona.delete`` on cap:registry): erase a persona for good.

Listed in daemon/cli.py's ROLE_CLI_MODULES (the contract is there).
Erasure cannot be undone, so the id must be confirmed: typed again at a
terminal, or ``--yes`` from a script. Without a terminal and without
``--yes`` nothing is sent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..state import StateDir
from .cli import run_call

#: persona.delete may wait up to 20 s for a running daemon to stop, then
#: deletes adapters through cap:inference: give it room.
DELETE_DEADLINE_MS = 90_000


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    delete = verb("persona-delete", "erase a persona for good: brain, files, key, token, adapters, profile")
    delete.add_argument("id", help="persona id")
    delete.add_argument(
        "--yes", action="store_true", help="do not ask to type the id again (scripts; no terminal needed)"
    )
    delete.add_argument(
        "--token", default=None, help="token (default: env PERSONAD_TOKEN, then the admin token)"
    )
    return {"persona-delete": _persona_delete}


def _confirmed(persona_id: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        print(
            f"persona-delete erases {persona_id} for good: pass --yes (there is no terminal to confirm on); "
            "nothing erased",
            file=sys.stderr,
        )
        return False
    try:
        typed = input(f"This erases persona {persona_id} for good. Type its id to confirm: ")
    except EOFError:
        typed = ""
    if typed.strip() != persona_id:
        print("the id typed does not match; nothing erased", file=sys.stderr)
        return False
    return True


def _persona_delete(args: argparse.Namespace, state: StateDir, url: str) -> int:
    if not _confirmed(args.id, args.yes):
        return 1
    result = run_call(
        args,
        state,
        url,
        "persona.delete",
        {"persona_id": args.id, "confirm": args.id},
        deadline_ms=DELETE_DEADLINE_MS,
    )
    if result is None:
        return 1
    print(f"erased persona {result['persona_id']}")
    for item in result["erased"]:
        print(f"  removed {item}")
    for adapter in result["adapters_deleted"]:
        what = "already gone" if adapter["already_gone"] else "deleted"
        weights = ", weights removed" if adapter["blob_removed"] else ""
        print(f"  adapter {adapter['name']} ({adapter['sha256'][:12]}…) {what}{weights}")
    for adapter in result["adapters_kept"]:
        print(f"  adapter {adapter['name']} ({adapter['sha256'][:12]}…) kept: {adapter['reason']}")
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0

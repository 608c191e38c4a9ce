"""CLI verbs persona-fork and persona-merge (``persona.*`` calls on cap:registry).

Listed in daemon/cli.py's ROLE_CLI_MODULES (the contract is there). Each
prints the method's result as JSON; an error is printed with its code and
the exit status is 1. docs/lineage.md, "On the bus", says what they do.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..state import StateDir
from .cli import run_call

#: How long the CLI waits: a fork copies a whole brain, a merge may merge adapters on a real model.
FORK_DEADLINE_MS = 300_000
MERGE_DEADLINE_MS = 900_000
_TOKEN_HELP = "token (default: env PERSONAD_TOKEN, then the admin token)"


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    fork = verb(
        "persona-fork", "fork a persona: new draft profile, a copy of its brain, its adapters referenced"
    )
    fork.add_argument("source", help="the persona to fork")
    fork.add_argument("--id", default=None, help="the fork's id (default <source>-fork-<n>)")
    fork.add_argument("--role", default=None, help="the fork's role")
    fork.add_argument(
        "--modifications",
        default=None,
        metavar="JSON",
        help='a partial profile, e.g. \'{"name": "Ada 2", "traits": {"humor": 80}}\'',
    )
    fork.add_argument(
        "--subject", action="append", default=None, help="copy only memories about this subject"
    )
    fork.add_argument("--tag", action="append", default=None, help="copy only memories with this kind or tag")
    fork.add_argument("--since", default=None, help="copy only memories created at or after (ISO 8601)")
    fork.add_argument("--until", default=None, help="copy only memories created before (ISO 8601)")
    fork.add_argument("--token", default=None, help=_TOKEN_HELP)

    merge = verb("persona-merge", "merge two personas into a new draft one; both sources become merged")
    merge.add_argument("primary", help="the primary source (its role and model are kept)")
    merge.add_argument("secondary", help="the secondary source")
    merge.add_argument("--strategy", required=True, choices=["selective", "average", "union"])
    merge.add_argument("--name", required=True, help="the merged persona's name")
    merge.add_argument("--description", default="", help="the merged persona's description")
    merge.add_argument("--id", default=None, help="the merged persona's id (default <primary>-merge-<n>)")
    merge.add_argument(
        "--combination",
        default="cat",
        choices=["cat", "linear", "ties", "dare_linear", "dare_ties"],
        help="how both adapter stacks combine (cat: exact, default)",
    )
    merge.add_argument("--token", default=None, help=_TOKEN_HELP)
    return {"persona-fork": _fork, "persona-merge": _merge}


def fork_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"source_persona_id": args.source}
    if args.id:
        params["new_persona_id"] = args.id
    if args.role:
        params["new_role"] = args.role
    if args.modifications:
        try:
            params["modifications"] = json.loads(args.modifications)
        except ValueError as exc:
            raise ConfigError(f"--modifications is not JSON: {exc}") from None
    memory_filter = {
        k: v
        for k, v in (
            ("subjects", args.subject),
            ("tags", args.tag),
            ("since", args.since),
            ("until", args.until),
        )
        if v
    }
    if memory_filter:
        params["memory_filter"] = memory_filter
    return params


def merge_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {
        "primary_persona_id": args.primary,
        "secondary_persona_id": args.secondary,
        "merge_strategy": args.strategy,
        "name": args.name,
        "description": args.description,
        "adapter_combination": args.combination,
    }
    if args.id:
        params["new_persona_id"] = args.id
    return params


def _fork(args: argparse.Namespace, state: StateDir, url: str) -> int:
    result = run_call(args, state, url, "persona.fork", fork_params(args), deadline_ms=FORK_DEADLINE_MS)
    if result is None:
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _merge(args: argparse.Namespace, state: StateDir, url: str) -> int:
    result = run_call(args, state, url, "persona.merge", merge_params(args), deadline_ms=MERGE_DEADLINE_MS)
    if result is None:
        return 1
    print(json.dumps(result, indent=2))
    return 0

"""CLI verb persona-generate (``persona.generate`` on cap:registry).

Listed in daemon/cli.py's ROLE_CLI_MODULES (the contract is there). It
prints the stored profile and what the rules did (the model's adjustments as
applied, the context flags' moves) as text, or the result as JSON with
``--json``; an error is printed with its code and the exit status is 1.
docs/generation.md, "On the bus", says what the method does.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from protocol.commands.personas import CONTEXT_FLAG_EFFECTS
from protocol.profile import TRAITS

from ..state import StateDir
from .cli import run_call

#: How long the CLI waits: a profile takes ~12 s on SmolLM2, and start: true waits for the daemon.
DEADLINE_SECONDS = 300.0


def trait_value(text: str) -> tuple[str, int]:
    """``focus=80`` as ("focus", 80); an unknown trait or a value outside 0..100 is refused here."""
    name, sep, value = text.partition("=")
    if not sep or name not in TRAITS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected TRAIT=VALUE with TRAIT one of {', '.join(TRAITS)}"
        )
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not a whole number") from None
    if not 0 <= number <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not within 0..100")
    return name, number


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    gen = verb("persona-generate", "write a new persona with the model (a draft, or started with --start)")
    gen.add_argument("role", help="what the persona is for, e.g. 'patent attorney'")
    gen.add_argument(
        "--trait",
        action="append",
        type=trait_value,
        default=[],
        metavar="TRAIT=VALUE",
        help="a base trait (0..100) the model may move by at most 15; repeat for more",
    )
    gen.add_argument(
        "--flag",
        action="append",
        choices=list(CONTEXT_FLAG_EFFECTS),
        default=[],
        help="a context flag with a fixed trait effect (docs/generation.md); repeat for more",
    )
    gen.add_argument("--context-notes", default=None, help="free text about the setting, for the prompt")
    gen.add_argument("--style", default=None, help="the communication style wanted (kept as given)")
    gen.add_argument("--detail", choices=["brief", "balanced", "detailed"], default=None, help="detail level")
    gen.add_argument("--notes", default=None, help="preferences, kept as communication.notes")
    gen.add_argument("--id", default=None, help="the new persona's id (default: from the generated name)")
    gen.add_argument(
        "--start", action="store_true", help="store it active and wait for its daemon (personad up starts it)"
    )
    gen.add_argument("--json", action="store_true", help="print the whole result as JSON")
    gen.add_argument("--timeout", type=float, default=DEADLINE_SECONDS, help="seconds to wait (default 300)")
    gen.add_argument(
        "--token", default=None, help="token (default: env PERSONAD_TOKEN, then the admin token)"
    )
    return {"persona-generate": _generate}


def generate_params(args: argparse.Namespace) -> dict[str, Any]:
    """The persona.generate params the options describe (only those given)."""
    params: dict[str, Any] = {"role": args.role, "start": args.start}
    if args.trait:
        params["base_traits"] = dict(args.trait)
    context: dict[str, Any] = {flag: True for flag in args.flag}
    if args.context_notes is not None:
        context["notes"] = args.context_notes
    if context:
        params["context"] = context
    prefs = {
        k: v for k, v in (("style", args.style), ("detail_level", args.detail), ("notes", args.notes)) if v
    }
    if prefs:
        params["user_preferences"] = prefs
    if args.id is not None:
        params["persona_id"] = args.id
    return params


def render(result: dict[str, Any]) -> str:
    """The result as a person reads it: the profile, then what the rules did, then whether it runs."""
    p = result["profile"]
    comm = p["communication"]
    lines = [
        f"{result['persona_id']}: {p['name']}, {p['role']} ({p['status']})",
        f"  {p['description']}",
        f"  communication: {comm['style']}; {comm['detail_level']}"
        + (f"; {comm['notes']}" if comm["notes"] else ""),
        "  traits: " + "  ".join(f"{t} {p['traits'][t]}" for t in TRAITS),
    ]
    if result["adjustments"]:
        lines.append("  the model's adjustments:")
        for a in result["adjustments"]:
            kept = "" if a["applied"] == a["requested"] else f" (asked {a['requested']:+d})"
            lines.append(f"    {a['trait']} {a['applied']:+d}{kept}: {a['reason']}")
    if result["context_applied"]:
        lines.append("  context flags:")
        for f in result["context_applied"]:
            lines.append(f"    {f['flag']}: {f['trait']} {f['delta']:+d}")
    if p["status"] == "active":
        if result["started"]:
            lines.append(f"started: persona:{result['persona_id']} is on the bus")
        else:
            lines.append(
                f"not started yet: nothing started persona:{result['persona_id']} in time "
                f"(under systemd: systemctl start personad@{result['persona_id']})"
            )
    return "\n".join(lines)


def _generate(args: argparse.Namespace, state: StateDir, url: str) -> int:
    result = run_call(
        args,
        state,
        url,
        "persona.generate",
        generate_params(args),
        deadline_ms=max(1, int(args.timeout * 1000)),
    )
    if result is None:
        return 1
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0

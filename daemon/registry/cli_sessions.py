"""CLI verbs session-recommend and sessions (``session.recommendations`` and ``session.status``).

For daemon/cli.py's ROLE_CLI_MODULES. ``session-recommend TOPIC`` prints
the ranking with every part of each score and its explanation, so an
operator sees why a persona came first; ``sessions`` lists the open ones.
The other session methods are for programs: ``personad call cap:registry
session.create '{...}'``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from protocol.commands.personas import CONTEXT_FLAG_EFFECTS
from protocol.commands.sessions import MAX_RECOMMENDATIONS

from ..state import StateDir
from .cli import run_call

#: A ranking asks the online personas with a 1.5 s deadline each: room for a slow one.
RECOMMEND_DEADLINE_MS = 30_000


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    recommend = verb(
        "session-recommend", "rank the active personas for a session's topic, each part explained"
    )
    recommend.add_argument("topic", help="what the session is about")
    recommend.add_argument(
        "--flag",
        action="append",
        default=[],
        choices=list(CONTEXT_FLAG_EFFECTS),
        help="a context flag (repeatable), e.g. requires_precision",
    )
    recommend.add_argument(
        "--limit", type=int, default=5, help=f"how many to show (1 to {MAX_RECOMMENDATIONS}; default 5)"
    )
    sessions = verb("sessions", "the open sessions: topic, participants, insights")
    for parser in (recommend, sessions):
        parser.add_argument(
            "--token", default=None, help="token (default: env PERSONAD_TOKEN, then the admin token)"
        )
    return {"session-recommend": _recommend, "sessions": _sessions}


def _recommend(args: argparse.Namespace, state: StateDir, url: str) -> int:
    params: dict[str, Any] = {"topic": args.topic, "limit": args.limit}
    if args.flag:
        params["context"] = {flag: True for flag in args.flag}
    result = run_call(args, state, url, "session.recommendations", params, deadline_ms=RECOMMEND_DEADLINE_MS)
    if result is None:
        return 1
    print(f"{result['considered']} active personas scored for {result['topic']!r}")
    for rank, rec in enumerate(result["recommendations"], 1):
        online = "online" if rec["online"] else "offline"
        print(f"{rank}. {rec['persona_id']}  {rec['score']:.3f}  {online}  {rec['name']} ({rec['role']})")
        for part in rec["parts"]:
            print(
                f"     {part['name']:<12} {part['value']:.2f} x {part['weight']:.2f} = "
                f"{part['contribution']:.3f}  {part['explanation']}"
            )
    return 0


def _sessions(args: argparse.Namespace, state: StateDir, url: str) -> int:
    result = run_call(args, state, url, "session.status", {})
    if result is None:
        return 1
    if not result["sessions"]:
        print("no open sessions")
        return 0
    for session in result["sessions"]:
        who = ", ".join(p["client_id"] for p in session["participants"]) or "nobody yet"
        print(f"{session['id']}  {session['topic']!r}  room {session['room']}")
        print(f"  participants: {who}; insights: {session['insights']}")
    print(f"{len(result['sessions'])} open, {result['insights_shared']} insights shared")
    return 0

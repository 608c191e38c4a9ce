"""``personad console`` (a login link for the web console) and ``personad mcp`` (the MCP door)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..state import StateDir
from .pairing import PAIRING_TTL_S, PairingStore

__all__ = ["add_verbs", "console_link"]


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    console = verb("console", "print a one-time login link for the web console on the bus's port")
    console.add_argument(
        "--role",
        default="admin",
        help="the role of the token the link logs in with (default admin: the console manages everything)",
    )
    mcp = verb("mcp", "serve the Model Context Protocol: over stdio (default) or Streamable HTTP")
    mcp.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=None,
        help="serve Streamable HTTP at http://HOST:PORT/mcp (port 0: a free one, logged); "
        "each MCP client sends its own bearer token",
    )
    mcp.add_argument(
        "--token",
        default=None,
        help="stdio: the bus token the MCP client acts with (default: $PERSONAD_TOKEN, then the admin token)",
    )
    return {"console": _console, "mcp": _mcp}


def console_link(state: StateDir, http_url: str, *, role: str = "admin") -> str:
    """A fresh one-time login link (the code in the fragment, which no server or Referer sees)."""
    code = PairingStore(state.tokens()).issue(role=role)
    return f"{http_url.rstrip('/')}/#pair={code}"


def _console(args: argparse.Namespace, state: StateDir, url: str) -> int:
    http_url = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    print(f"web console: {http_url}/")
    link = console_link(state, http_url, role=args.role)
    print(f"log in (once, within {PAIRING_TTL_S / 60:.0f} minutes): {link}")
    return 0


def _mcp(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .mcp_server import run

    return run(args, state, url)

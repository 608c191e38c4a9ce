"""Verbs of the browser subsystem: ``personad browser`` and ``personad extension pair``.

Listed in daemon/cli.py's ROLE_CLI_MODULES; see the contract there.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol.commands.bus import NAME_PATTERN, SUBSCRIPTION_PATTERN

from .. import runtime
from ..errors import ConfigError
from ..state import StateDir

BROWSER_TOKEN_SECRET = "browser.token"


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    browser = verb("browser", "run the headless Chromium worker (a provider of cap:browser)")
    browser.add_argument("--name", default="headless", help="joins as browser:<name> (default headless)")
    browser.add_argument(
        "--chromium",
        default=None,
        metavar="PATH",
        help="Chromium executable (env PERSONAD_CHROMIUM; default /usr/bin/chromium)",
    )
    browser.add_argument("--max-concurrency", type=int, default=4, help="requests run at once (default 4)")
    browser.add_argument("--max-contexts", type=int, default=32, help="browser contexts open at once")
    browser.add_argument(
        "--idle-timeout", type=float, default=300.0, help="seconds before an unused context is closed"
    )
    browser.add_argument(
        "--load-timeout-ms", type=int, default=15_000, help="default wait for a page's load event"
    )
    browser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="ENTRY",
        help="let Chromium reach a non-public address: a network (10.0.0.0/8), an address, "
        "address:port (127.0.0.1:8000) or name:port; repeatable (env PERSONAD_BROWSER_ALLOW, "
        "comma-separated, adds to it). Loopback, private, link-local … are denied otherwise",
    )

    extension = verb("extension", "pair the browser extension with this bus")
    extension.add_argument("action", choices=["pair"], help="pair: create its token and a loadable copy")
    extension.add_argument("--name", default="user", help="joins as extension:<name> (default user)")
    extension.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where to write the configured copy (default <state>/extension)",
    )
    extension.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="PATTERN",
        help="show events on these topics as notifications, e.g. 'persona.*' (repeatable)",
    )
    extension.add_argument(
        "--heartbeat", type=float, default=20.0, metavar="SECONDS", help="bus.ping interval (default 20)"
    )
    return {"browser": _browser, "extension": _extension}


def worker_token(state: StateDir) -> str:
    """$PERSONAD_TOKEN, a systemd credential, or the state dir's browser token (created if needed)."""
    # Role service: it serves cap:browser (provide:browser) and calls only the bus itself.
    return state.service_token(
        BROWSER_TOKEN_SECRET,
        what="the browser worker",
        name="browser",
        subject="browser:*",
        provides=("browser",),
    )


def _browser(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .chromium import DEFAULT_EXECUTABLE, check_executable
    from .netpolicy import ALLOW_ENV, split_allow_list
    from .worker import BrowserWorker, WorkerConfig, run_worker

    if not re.fullmatch(NAME_PATTERN, args.name):
        raise ConfigError(f"invalid --name {args.name!r}: letters, digits, '.', '_' and '-'")
    executable = check_executable(args.chromium or os.environ.get("PERSONAD_CHROMIUM") or DEFAULT_EXECUTABLE)
    config = WorkerConfig(
        name=args.name,
        executable=executable,
        max_concurrency=max(1, args.max_concurrency),
        max_contexts=max(1, args.max_contexts),
        idle_timeout=max(1.0, args.idle_timeout),
        load_timeout_ms=max(100, args.load_timeout_ms),
        allow=(*split_allow_list(os.environ.get(ALLOW_ENV, "")), *args.allow),
    )
    worker = BrowserWorker(config, url=url, token=worker_token(state))
    runtime.run(run_worker(worker))
    return 0


def _extension(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .extension import origin, pair

    if not re.fullmatch(NAME_PATTERN, args.name):
        raise ConfigError(f"invalid --name {args.name!r}: letters, digits, '.', '_' and '-'")
    for topic in args.topic:
        if not re.fullmatch(SUBSCRIPTION_PATTERN, topic):
            raise ConfigError(f"invalid --topic {topic!r}: a topic, a prefix ending in '.*', or '*'")
    if args.heartbeat < 1:
        raise ConfigError("--heartbeat must be at least 1 second")
    result = pair(
        state,
        url=url,
        name=args.name,
        out=Path(args.out) if args.out else None,
        topics=tuple(args.topic),
        heartbeat_s=args.heartbeat,
    )
    print(f"paired extension:{args.name} with {url} (token {result.entry.id}, role {result.entry.role})")
    print(f"extension id: {result.extension_id}")
    print(f"origin:       {origin(result.extension_id)}")
    print()
    print("1. the bus must allow the extension's origin:")
    print(f"     personad bus --allow-origin {origin(result.extension_id)}")
    print("2. load the configured copy (it holds the token, mode 0600):")
    print(f"     {result.folder}")
    print("   chrome://extensions -> Developer mode -> Load unpacked -> that folder,")
    print(f"   or start Chromium with --load-extension={result.folder}")
    if result.replaced:
        print(f"(the earlier pairing's token of extension:{args.name} is revoked)")
    print(f"revoke it with: personad token revoke {result.entry.id}")
    return 0

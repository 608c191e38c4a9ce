"""What every ``personad`` verb shares: the common options, the default bus URL, one call.

A module of its own so that the top-level CLI (``daemon/cli.py``) and the
subsystems' verb modules it lists in ``ROLE_CLI_MODULES``
(``daemon/inference/cli.py``, ``daemon/browser/cli.py``) both import it, and
no subsystem imports ``daemon.cli``: the dependency runs one way, from the
CLI down to the subsystems.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_URL", "ProgressLine", "call_once", "common_parser"]

DEFAULT_URL = "ws://127.0.0.1:8765"


def common_parser() -> argparse.ArgumentParser:
    """A parent parser with ``--state-dir``, ``--url`` and ``--log-level`` for every verb.

    Defaults are SUPPRESS so that an option given before the verb is not
    overwritten by the verb's own (absent) copy of it.
    """
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument(
        "--state-dir",
        default=argparse.SUPPRESS,
        help="state directory (env PERSONAD_STATE_DIR; default ./.personad)",
    )
    group.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"bus URL (env PERSONAD_URL; default {DEFAULT_URL})"
    )
    group.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        help="DEBUG, INFO, WARNING or ERROR (env PERSONAD_LOG_LEVEL)",
    )
    return common


def call_once(
    state_root: Path,
    url: str,
    token: str | None,
    method: str,
    params: dict[str, Any],
    *,
    to: str,
    deadline_ms: int = 30_000,
    progress: ProgressLine | None = None,
    on_progress: Any = None,
) -> Any:
    """Join the bus as a CLI client, call ``method`` on ``to`` once, leave; the result.

    ``token``: ``--token``, else ``$PERSONAD_TOKEN``, else the state dir's
    admin token (state.find_token). A refusal or an error answer is printed
    as ``error <code>: <message>`` and returns None, so a verb exits 1.
    ``on_progress`` gets the call's streamed notifications; ``progress``, the
    line it draws on, is ended before anything else is printed.
    """
    # Imported here: `personad --help` must not pay for the client and the event loop.
    from protocol import RpcError

    from . import runtime
    from .client import BusClient
    from .state import StateDir, find_token

    secret = find_token(StateDir(state_root), token)

    async def call() -> Any:
        async with BusClient(url, token=secret, kind="cli") as client:
            return await client.call(method, params, to=to, deadline_ms=deadline_ms, on_progress=on_progress)

    error: RpcError | None = None
    try:
        result = runtime.run(call())
    except RpcError as exc:
        result, error = None, exc
    if progress is not None:
        progress.end()
    if error is not None:
        print(f"error {error.code}: {error.message}", file=sys.stderr)
    return result


class ProgressLine:
    """One line redrawn in place: ``<label> [######....] done/total <suffix>`` (long work on a terminal)."""

    WIDTH = 30

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.open = False

    def update(self, label: str, done: int, total: int, suffix: str = "") -> None:
        filled = int(self.WIDTH * done / total) if total else 0
        bar = "#" * filled + "." * (self.WIDTH - filled)
        line = f"{label} [{bar}] {done}/{total} {suffix}"
        self.stream.write(f"\r{line:<110}")
        self.stream.flush()
        self.open = True

    def end(self) -> None:
        """Close the line (once), so what follows starts on a new one."""
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False

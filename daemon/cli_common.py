"""What every ``personad`` verb shares: the common options and the default bus URL.

A module of its own so that the top-level CLI (``daemon/cli.py``) and the
subsystems' verb modules it lists in ``ROLE_CLI_MODULES``
(``daemon/inference/cli.py``, ``daemon/browser/cli.py``) both import it, and
no subsystem imports ``daemon.cli``: the dependency runs one way, from the
CLI down to the subsystems.
"""

from __future__ import annotations

import argparse

__all__ = ["DEFAULT_URL", "common_parser"]

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

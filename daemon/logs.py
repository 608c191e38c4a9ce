"""Logging: one line per event, ``key=value`` fields, to stderr.

Under systemd (``$JOURNAL_STREAM`` set) the timestamp is left out: the journal
adds its own. Secrets never reach a log line: tokens and keys are not passed
to loggers anywhere in the code.
"""

from __future__ import annotations

import logging
import os
import sys


def configure(level: str | None = None, *, default: str = "INFO") -> None:
    level = (level or os.environ.get("PERSONAD_LOG_LEVEL") or default).upper()
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # websockets logs every failed handshake at INFO with a traceback; ours say it shorter.
    logging.getLogger("websockets").setLevel(logging.WARNING)

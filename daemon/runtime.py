"""Running a coroutine as a process's main: uvloop when available.

:func:`run` leaves the process's signal dispositions as it found them. The
daemons install their own SIGTERM/SIGINT handlers on the loop
(``loop.add_signal_handler``), and closing a loop resets those signals to
the *default* action rather than to what was there before, so without the
restore a second ``run`` in the same process (``personad status`` makes two
calls) would find Ctrl-C handled by nobody, and a test calling ``main()``
in-process would lose pytest's own handlers.

What a process does about a stop signal that arrives *after* its main
coroutine has returned (a repeated Ctrl-C while it exits) is the process's
decision, not this function's: see :func:`ignore_stop_signals`.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("personad.runtime")

#: Set by a supervisor (``personad up``) in each child's environment: its pid.
PARENT_PID_ENV = "PERSONAD_PARENT_PID"
#: prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1

#: The signals the daemons handle on their loops, so the ones to restore.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a fresh event loop; restore the stop signals' handlers after."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        factory = None
    # Signal handlers can only be read and set from the main thread; elsewhere
    # the loop cannot install any either, so there is nothing to restore.
    in_main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if in_main else {}
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    finally:
        for sig, handler in saved.items():
            # getsignal() returns None for a handler not installed from Python;
            # there is nothing we could put back then, so leave the default.
            if handler is not None:
                signal.signal(sig, handler)


def ignore_stop_signals() -> None:
    """Ignore SIGTERM/SIGINT from now on: for a daemon process that is exiting.

    A daemon stops on the first signal; a repeat that arrives while the
    process unwinds must not turn a clean exit into death by signal (systemd
    and ``personad up`` would report the exit status).
    """
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def die_with_parent() -> None:
    """Under a supervisor, stop (SIGTERM, so gracefully) when it dies, even by SIGKILL.

    A supervisor that is killed outright cannot stop its children; without
    this they would live on as orphans holding ports, gigabytes of memory and
    Chromium. Linux's ``PR_SET_PDEATHSIG`` asks the kernel to send the signal
    instead. The variable is removed from the environment so our own children
    (Chromium, a trainer) do not inherit a pid that is not their parent's.
    """
    value = os.environ.pop(PARENT_PID_ENV, None)
    if value is None or not value.isdigit():
        return
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.warning("cannot ask to be stopped with the supervisor: %s", os.strerror(ctypes.get_errno()))
    # The supervisor may have died before prctl: then no signal will come.
    if os.getppid() != int(value):
        raise SystemExit(f"personad: the supervisor (pid {value}) is gone; not starting")

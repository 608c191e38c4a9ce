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
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

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

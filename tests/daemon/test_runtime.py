"""runtime.run leaves the process's stop-signal handlers as it found them."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from daemon import runtime


def _marker(signum: int, frame: FrameType | None) -> None:
    """A handler this test can recognise."""


@pytest.fixture
def marked_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in runtime.STOP_SIGNALS}
    for sig in runtime.STOP_SIGNALS:
        signal.signal(sig, _marker)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


async def _daemon_like() -> str:
    # What every daemon's main does: handle the stop signals on the loop.
    loop = asyncio.get_running_loop()
    for sig in runtime.STOP_SIGNALS:
        loop.add_signal_handler(sig, lambda: None)
    return "done"


def test_run_restores_handlers_a_daemon_changed(marked_handlers: None) -> None:
    """After run(), SIGTERM and SIGINT have the handlers they had before."""
    assert runtime.run(_daemon_like()) == "done"
    assert [_marker, _marker] == [signal.getsignal(sig) for sig in runtime.STOP_SIGNALS]


def test_run_twice_in_one_process(marked_handlers: None) -> None:
    """A second run (personad status makes two calls) starts from the same handlers."""
    runtime.run(_daemon_like())
    runtime.run(_daemon_like())
    assert [_marker, _marker] == [signal.getsignal(sig) for sig in runtime.STOP_SIGNALS]


def test_run_restores_handlers_when_main_raises(marked_handlers: None) -> None:
    """An exception out of the coroutine still restores the handlers."""

    async def failing() -> None:
        await _daemon_like()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        runtime.run(failing())
    assert [_marker, _marker] == [signal.getsignal(sig) for sig in runtime.STOP_SIGNALS]


def test_ignore_stop_signals(marked_handlers: None) -> None:
    """An exiting daemon process ignores repeated stop signals."""
    runtime.ignore_stop_signals()
    assert [signal.SIG_IGN, signal.SIG_IGN] == [signal.getsignal(sig) for sig in runtime.STOP_SIGNALS]

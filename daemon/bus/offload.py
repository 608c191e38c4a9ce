"""Decoding big frames in a worker thread, without stalling the event loop.

The bus hands frames of ``decode_in_thread_bytes`` or more to a small thread
pool (server.py), so that the loop keeps answering other clients while one
is decoded: CPython gives the GIL to the loop thread every few milliseconds,
as long as the decoding thread runs Python code (the codecs' hooks) between
C calls. What it does not interrupt is a cyclic garbage collection, hence
the pause below.
"""

from __future__ import annotations

import gc
import threading

from protocol import Connection, Notification, Request, Response


class _GcPause:
    """Cyclic garbage collection held off while big frames decode off the loop.

    A frame of a few hundred thousand small lists or maps (legitimate or,
    until the container budget stops it, not) makes the collector run full
    collections over every object in the process from the decoding thread,
    holding the GIL: the loop thread then waited up to 100 ms on a busy
    machine, 25 ms with collection paused (measured with a 7.6 MiB frame).
    Reference counting frees everything as usual meanwhile; only the search
    for cycles waits until the decode is over. Counted, for the worker threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._was_enabled:
                gc.enable()


_gc_pause = _GcPause()


def receive_off_loop(conn: Connection, frame: bytes | str) -> Request | Response | Notification:
    """``conn.receive(frame)``, for a worker thread (the caller owns ``conn`` meanwhile)."""
    with _gc_pause:
        return conn.receive(frame)

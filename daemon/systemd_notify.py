"""A small client for systemd's service notification protocol, sd_notify(3).

systemd starts a ``Type=notify`` service with ``$NOTIFY_SOCKET`` naming an
``AF_UNIX``/``SOCK_DGRAM`` socket. The service reports its state by sending
datagrams of newline-separated ``KEY=value`` assignments to it:

``READY=1``
    start-up finished; units ordered ``After=`` this one may start now.
``STATUS=…``
    one free-form line shown by ``systemctl status``.
``WATCHDOG=1``
    keep-alive; with ``WatchdogSec=`` set, systemd exports ``$WATCHDOG_USEC``
    and restarts the service when no ping arrives within that time.
``STOPPING=1``
    shutdown has begun.

Outside systemd (no ``$NOTIFY_SOCKET``) the notifier is disabled and every
call is a no-op, so daemons call it unconditionally. Sending never raises
into the daemon: a lost notification is logged, and systemd's own timeouts
deal with the consequences.

We implement the protocol ourselves instead of depending on ``sdnotify``
(unmaintained) or linking libsystemd: it is one ``sendto()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

logger = logging.getLogger("personad.systemd")

# Limits

#: systemd 252 drops a notification datagram of PIPE_BUF (4096) bytes or more
#: ("Received notify message exceeded maximum size", src/core/manager.c).
#: Capping each value well below that keeps a message with a few fields valid.
MAX_VALUE_BYTES = 1024

# sd_notify(3): "The state parameter should contain a newline-separated list
# of variable assignments, similar in style to an environment block." Keys
# are upper-case like environment variables; systemd ignores unknown ones.
_KEY_RE = re.compile(r"[A-Z][A-Z0-9_]*")
# A value must stay on its line: the service manager splits a datagram on
# both "\n" and "\r", so either would start a new assignment
# (STATUS="x\nREADY=1" must not declare readiness), and it drops datagrams
# with embedded NUL bytes (manager_dispatch_notify_fd() in
# src/core/manager.c). Other control characters only garble `systemctl
# status`. All become spaces.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _sanitise(value: str) -> str:
    """Make ``value`` one printable line of at most ``MAX_VALUE_BYTES`` bytes."""
    line = _CONTROL_RE.sub(" ", value)
    encoded = line.encode("utf-8", "surrogateescape")
    if len(encoded) <= MAX_VALUE_BYTES:
        return line
    # Cut on a character boundary rather than send half a UTF-8 sequence.
    return encoded[:MAX_VALUE_BYTES].decode("utf-8", "ignore")


def _socket_address(notify_socket: str) -> bytes | None:
    """Translate ``$NOTIFY_SOCKET`` into an ``AF_UNIX`` address, or None."""
    # sd_notify(3): "If the first character of $NOTIFY_SOCKET is "/" or "@",
    # the string is understood as an AF_UNIX or Linux abstract namespace
    # socket (respectively)". In the abstract namespace the "@" stands for a
    # leading NUL byte, and the address is exactly that long (no terminator).
    if notify_socket.startswith("/"):
        return os.fsencode(notify_socket)
    if notify_socket.startswith("@") and len(notify_socket) > 1:
        return b"\0" + os.fsencode(notify_socket[1:])
    # Anything else (a relative path, or "vsock:" which systemd 253 added) is
    # not something we can send to.
    return None


def _positive_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value, 10)
    except ValueError:
        return None
    return number if number > 0 else None


class Notifier:
    """Sends sd_notify(3) messages to the service manager.

    Build it with :meth:`from_env`; a notifier built outside systemd is
    disabled and does nothing.
    """

    def __init__(
        self,
        address: bytes | None = None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        """``address`` is an ``AF_UNIX`` address (a leading NUL selects the
        abstract namespace); None disables the notifier."""
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        # Whether the previous send failed: a watchdog ping to a vanished
        # socket would otherwise log the same warning every few seconds.
        self._failing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build a notifier from ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and
        ``$WATCHDOG_PID`` (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        notify_socket = env.get("NOTIFY_SOCKET")
        if not notify_socket:
            return cls()
        address = _socket_address(notify_socket)
        if address is None:
            logger.warning(
                "NOTIFY_SOCKET=%r is neither a path nor an abstract socket; "
                "systemd notifications are disabled",
                notify_socket,
            )
            return cls()
        # sd_watchdog_enabled(3): WATCHDOG_USEC is the timeout in
        # microseconds; WATCHDOG_PID, if set, names the only process that is
        # meant to send the pings. Unparseable values disable the watchdog,
        # as they do in libsystemd.
        watchdog_pid: int | None = None
        if "WATCHDOG_PID" in env:
            # 0 never matches a real pid, so a garbled value disables pings.
            watchdog_pid = _positive_int(env["WATCHDOG_PID"]) or 0
        return cls(
            address,
            watchdog_usec=_positive_int(env.get("WATCHDOG_USEC")),
            watchdog_pid=watchdog_pid,
        )

    def __repr__(self) -> str:
        return (
            f"Notifier(address={self._address!r}, "
            f"watchdog_usec={self._watchdog_usec!r}, watchdog_pid={self._watchdog_pid!r})"
        )

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere (we run under systemd)."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings, or None when no watchdog is expected."""
        if self._address is None or self._watchdog_usec is None:
            return None
        # Checked on every call, as sd_watchdog_enabled(3) does, so that a
        # forked child never pings on its parent's behalf.
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        # sd_watchdog_enabled(3): "daemon software should call sd_notify()
        # with WATCHDOG=1 ... at half of the returned time", so that one late
        # ping is not fatal.
        return self._watchdog_usec / 2 / 1_000_000

    def notify(self, **fields: str) -> None:
        """Send one datagram of ``KEY=value`` lines, in argument order.

        Keys must be upper-case (``READY``, ``STATUS``, ...); values are cut
        to one line. Never raises for a failed send: it is logged instead.
        """
        for key in fields:
            if not _KEY_RE.fullmatch(key):
                # A programming error, not a runtime condition: fail loudly.
                raise ValueError(f"invalid sd_notify key: {key!r}")
        if self._address is None or not fields:
            return
        # sd_notify(3) sends the assignments separated by newlines; systemd
        # splits on "\n" and does not need a trailing one.
        message = "\n".join(f"{key}={_sanitise(value)}" for key, value in fields.items())
        self._send(message.encode("utf-8", "surrogateescape"))

    def _send(self, datagram: bytes) -> None:
        assert self._address is not None
        try:
            # A fresh socket per message, as libsystemd's sd_notify() does:
            # nothing to keep open or close, nothing a fork could share.
            # Non-blocking because the watchdog pings from the event loop,
            # which must never stall on a full socket buffer; CLOEXEC so no
            # subprocess inherits it.
            with socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            ) as sock:
                sock.sendto(datagram, self._address)
        except OSError as exc:
            # A lost READY=1 or WATCHDOG=1 is handled by systemd's timeouts
            # (TimeoutStartSec=, WatchdogSec=): crashing the daemon over it
            # would only make things worse.
            level = logging.DEBUG if self._failing else logging.WARNING
            logger.log(level, "cannot notify systemd at %r: %s", self._address, exc)
            self._failing = True
        else:
            if self._failing:
                logger.info("notifying systemd works again")
            self._failing = False

    def ready(self, status: str | None = None) -> None:
        """Tell systemd that start-up is finished (``READY=1``)."""
        if status is None:
            self.notify(READY="1")
        else:
            self.notify(READY="1", STATUS=status)

    def status(self, text: str) -> None:
        """Set the one-line status shown by ``systemctl status``."""
        self.notify(STATUS=text)

    def watchdog(self) -> None:
        """Send one keep-alive ping (``WATCHDOG=1``)."""
        self.notify(WATCHDOG="1")

    def stopping(self, status: str | None = None) -> None:
        """Tell systemd that shutdown has begun (``STOPPING=1``)."""
        if status is None:
            self.notify(STOPPING="1")
        else:
            self.notify(STOPPING="1", STATUS=status)

    async def run_watchdog(self) -> None:
        """Ping the watchdog every :attr:`watchdog_interval` until cancelled.

        Returns at once when no watchdog is expected. Run it as a task on the
        daemon's own event loop, not on a thread: the pings then prove that
        the loop is responsive, and a blocked loop gets the service restarted.
        """
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

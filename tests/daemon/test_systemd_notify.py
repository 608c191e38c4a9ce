"""Tests for daemon.systemd_notify.

A real AF_UNIX datagram socket stands in for systemd's notification socket:
the tests check the exact bytes that arrive, as sd_notify(3) specifies them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.systemd_notify import MAX_VALUE_BYTES, Notifier

#: Upper bound for anything we wait on; slow machines only change this.
TIMEOUT = 5.0
#: sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
SUN_PATH_MAX = 107


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET, bound like systemd binds it."""

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(TIMEOUT)

    @property
    def notify_socket(self) -> str:
        """The value systemd would export as $NOTIFY_SOCKET."""
        if isinstance(self.address, bytes):
            return "@" + self.address[1:].decode()
        return self.address

    def receive(self) -> bytes:
        """Return the next datagram, failing after TIMEOUT."""
        return self.sock.recv(65536)

    def assert_nothing_received(self) -> None:
        self.sock.setblocking(False)
        try:
            with pytest.raises(BlockingIOError):
                self.sock.recv(65536)
        finally:
            self.sock.settimeout(TIMEOUT)

    def close(self) -> None:
        self.sock.close()
        if isinstance(self.address, str):
            Path(self.address).unlink(missing_ok=True)


@pytest.fixture
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh socket path short enough for sun_path."""
    # tmp_path embeds the test name and can outgrow sun_path; a factory
    # directory is short and still cleaned up by pytest.
    path = tmp_path_factory.mktemp("sd") / "notify"
    assert len(os.fsencode(path)) <= SUN_PATH_MAX, f"socket path too long: {path}"
    return path


@pytest.fixture
def systemd(socket_path: Path) -> Iterator[FakeSystemd]:
    """A fake systemd listening on a filesystem socket."""
    fake = FakeSystemd(str(socket_path))
    yield fake
    fake.close()


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    """A fake systemd listening in the abstract namespace."""
    fake = FakeSystemd(f"\0personad-test-{uuid.uuid4().hex}".encode())
    yield fake
    fake.close()


def notifier_for(systemd: FakeSystemd, **env: str) -> Notifier:
    return Notifier.from_env({"NOTIFY_SOCKET": systemd.notify_socket, **env})


# Messages


def test_ready_sends_ready_and_status(systemd: FakeSystemd) -> None:
    """ready(status) sends READY=1 then STATUS in one datagram."""
    notifier_for(systemd).ready("listening on 127.0.0.1:8765")
    assert systemd.receive() == b"READY=1\nSTATUS=listening on 127.0.0.1:8765"


def test_ready_without_status(systemd: FakeSystemd) -> None:
    """ready() alone sends just READY=1."""
    notifier_for(systemd).ready()
    assert systemd.receive() == b"READY=1"


def test_status(systemd: FakeSystemd) -> None:
    """status() sends STATUS=<text>, UTF-8 encoded."""
    notifier_for(systemd).status("3 personas connectés")
    assert "STATUS=3 personas connectés".encode() == systemd.receive()


def test_watchdog(systemd: FakeSystemd) -> None:
    """watchdog() sends WATCHDOG=1."""
    notifier_for(systemd).watchdog()
    assert systemd.receive() == b"WATCHDOG=1"


def test_stopping(systemd: FakeSystemd) -> None:
    """stopping() sends STOPPING=1, with STATUS when given."""
    notifier = notifier_for(systemd)
    notifier.stopping()
    notifier.stopping("closing 3 connections")
    assert systemd.receive() == b"STOPPING=1"
    assert systemd.receive() == b"STOPPING=1\nSTATUS=closing 3 connections"


def test_notify_keeps_field_order(systemd: FakeSystemd) -> None:
    """notify() sends its fields as KEY=value lines in argument order."""
    notifier_for(systemd).notify(STATUS="warming up", EXTEND_TIMEOUT_USEC="5000000")
    assert systemd.receive() == b"STATUS=warming up\nEXTEND_TIMEOUT_USEC=5000000"


def test_values_cannot_inject_assignments(systemd: FakeSystemd) -> None:
    """Newlines, carriage returns and NULs in a value become spaces."""
    notifier_for(systemd).status("bad\nREADY=1\rSTOPPING=1\0end")
    assert systemd.receive() == b"STATUS=bad READY=1 STOPPING=1 end"


def test_long_values_are_cut_on_a_character_boundary(systemd: FakeSystemd) -> None:
    """A value longer than MAX_VALUE_BYTES is cut without splitting a character."""
    notifier_for(systemd).status("é" * MAX_VALUE_BYTES)
    received = systemd.receive()
    assert received.startswith(b"STATUS=")
    value = received.removeprefix(b"STATUS=")
    assert len(value) == MAX_VALUE_BYTES
    assert value.decode() == "é" * (MAX_VALUE_BYTES // 2)


def test_invalid_key_is_refused(systemd: FakeSystemd) -> None:
    """A key that is not an upper-case variable name raises ValueError."""
    with pytest.raises(ValueError, match="invalid sd_notify key"):
        notifier_for(systemd).notify(ready="1")


def test_abstract_namespace_socket(abstract_systemd: FakeSystemd) -> None:
    """NOTIFY_SOCKET=@name reaches the abstract socket \\0name."""
    notifier = notifier_for(abstract_systemd)
    assert notifier.enabled
    notifier.ready("abstract")
    assert abstract_systemd.receive() == b"READY=1\nSTATUS=abstract"


def test_from_env_reads_os_environ(systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> None:
    """from_env() without a mapping reads os.environ."""
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.notify_socket)
    Notifier.from_env().watchdog()
    assert systemd.receive() == b"WATCHDOG=1"


# Disabled notifier


def test_disabled_notifier_is_a_no_op(systemd: FakeSystemd, caplog: pytest.LogCaptureFixture) -> None:
    """Without NOTIFY_SOCKET nothing is sent, logged or raised."""
    caplog.set_level(logging.DEBUG, logger="personad.systemd")
    notifier = Notifier.from_env({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping("x")
    notifier.notify(STATUS="x")
    systemd.assert_nothing_received()
    assert caplog.records == []


@pytest.mark.parametrize("value", ["relative/notify", "vsock:2:1234", "@"])
def test_unusable_notify_socket_disables(value: str, caplog: pytest.LogCaptureFixture) -> None:
    """A NOTIFY_SOCKET that is neither a path nor @name disables, with a warning."""
    caplog.set_level(logging.WARNING, logger="personad.systemd")
    notifier = Notifier.from_env({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert [record.levelname for record in caplog.records] == ["WARNING"]


# Watchdog


def test_watchdog_interval_is_half_of_watchdog_usec(systemd: FakeSystemd) -> None:
    """watchdog_interval is WATCHDOG_USEC / 2, in seconds."""
    assert notifier_for(systemd, WATCHDOG_USEC="30000000").watchdog_interval == 15.0


def test_watchdog_pid_of_this_process_enables(systemd: FakeSystemd) -> None:
    """WATCHDOG_PID naming this process keeps the watchdog on."""
    notifier = notifier_for(systemd, WATCHDOG_USEC="30000000", WATCHDOG_PID=str(os.getpid()))
    assert notifier.watchdog_interval == 15.0


@pytest.mark.parametrize(
    "pid", [str(os.getpid() + 1), "1", "0", "not-a-pid"], ids=["another", "init", "zero", "not-a-pid"]
)
def test_watchdog_pid_of_another_process_disables(systemd: FakeSystemd, pid: str) -> None:
    """WATCHDOG_PID naming another (or no valid) process turns the watchdog off."""
    notifier = notifier_for(systemd, WATCHDOG_USEC="30000000", WATCHDOG_PID=pid)
    assert notifier.watchdog_interval is None


@pytest.mark.parametrize("usec", [None, "", "0", "-20000", "20ms"])
def test_missing_or_invalid_watchdog_usec_disables(systemd: FakeSystemd, usec: str | None) -> None:
    """No usable WATCHDOG_USEC means no watchdog interval."""
    env = {} if usec is None else {"WATCHDOG_USEC": usec}
    assert notifier_for(systemd, **env).watchdog_interval is None


async def test_run_watchdog_pings_repeatedly(systemd: FakeSystemd) -> None:
    """run_watchdog() keeps sending WATCHDOG=1 until cancelled."""
    notifier = notifier_for(systemd, WATCHDOG_USEC="20000")
    assert notifier.watchdog_interval == 0.01
    systemd.sock.setblocking(False)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(notifier.run_watchdog())
    try:
        async with asyncio.timeout(TIMEOUT):
            pings = [await loop.sock_recv(systemd.sock, 65536) for _ in range(2)]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert pings == [b"WATCHDOG=1", b"WATCHDOG=1"]


async def test_run_watchdog_returns_without_watchdog(systemd: FakeSystemd) -> None:
    """run_watchdog() returns at once when no watchdog is expected."""
    async with asyncio.timeout(TIMEOUT):
        await notifier_for(systemd).run_watchdog()
        await Notifier.from_env({}).run_watchdog()
    systemd.assert_nothing_received()


# Failures


def test_vanished_socket_does_not_raise(systemd: FakeSystemd, caplog: pytest.LogCaptureFixture) -> None:
    """Sending to a socket that went away logs one warning and never raises."""
    caplog.set_level(logging.DEBUG, logger="personad.systemd")
    notifier = notifier_for(systemd)
    systemd.close()
    notifier.ready("nobody listens")
    notifier.watchdog()
    assert [record.levelname for record in caplog.records] == ["WARNING", "DEBUG"]
    assert all(record.name == "personad.systemd" for record in caplog.records)


def test_sending_recovers_when_the_socket_returns(
    socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a failed send, the next send to a re-bound socket arrives."""
    caplog.set_level(logging.INFO, logger="personad.systemd")
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(socket_path)})
    notifier.watchdog()
    systemd = FakeSystemd(str(socket_path))
    try:
        notifier.watchdog()
        assert systemd.receive() == b"WATCHDOG=1"
    finally:
        systemd.close()
    assert [record.levelname for record in caplog.records] == ["WARNING", "INFO"]


def test_full_socket_buffer_does_not_block(systemd: FakeSystemd, caplog: pytest.LogCaptureFixture) -> None:
    """When systemd does not read, sends fail fast and are logged instead of blocking."""
    caplog.set_level(logging.WARNING, logger="personad.systemd")
    notifier = notifier_for(systemd)

    def flood() -> None:
        # The receive queue of an AF_UNIX datagram socket is bounded
        # (net.unix.max_dgram_qlen, and the sender's SO_SNDBUF); with nobody
        # reading, a blocking sender would hang on the next datagram.
        for _ in range(100_000):
            notifier.watchdog()
            if caplog.records:
                return

    # A daemon thread, so that a regression hangs neither the test nor pytest.
    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    sender.join(TIMEOUT)
    assert not sender.is_alive(), "notify() blocked on a full socket"
    assert [record.levelname for record in caplog.records] == ["WARNING"]

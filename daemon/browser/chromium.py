"""Launching Chromium with a debugging pipe, and knowing when it dies.

Chromium wants the pipe on fds 3 and 4 exactly. ``subprocess`` can only pass
fds under their own numbers, and a ``preexec_fn`` is unsafe once threads
exist, so we spawn with :func:`os.posix_spawn` and ``POSIX_SPAWN_DUP2`` file
actions (POSIX.1-2008), after moving our ends above fd 10 so that the dup2
sequence cannot clobber one of them. Everything else we hold is close-on-exec
(PEP 446), so Chromium inherits nothing but stdio and its pipe.

Chromium runs in its own session (``setsid``): its renderers and zygote
share the process group, and :meth:`Chromium.kill` ends the whole group, so a
crash or a stop leaves no orphans behind. Its exit is noticed through a pidfd
(Linux 5.3, :func:`os.pidfd_open`) watched by the event loop, and through EOF
on the pipe; whichever comes first closes the CDP connection, so a command
in flight fails at once instead of hanging.

Each launch gets a fresh ``--user-data-dir`` (removed when it ends), so
nothing survives from one launch to the next.

Sandbox. Chromium's own sandbox (a user namespace per renderer plus
seccomp-BPF) is on wherever it can work: it cannot as root (Chromium refuses
to start as root without ``--no-sandbox``), nor where the kernel forbids
unprivileged user namespaces and no setuid ``chrome-sandbox`` helper exists.
There :func:`sandbox_unavailable` says why, the worker logs it once at
WARNING, and Chromium runs with ``--no-sandbox``. Run the worker as a user,
or under systemd/personad-browser.service, to have the sandbox.

Network. With ``proxy`` set, every connection Chromium makes goes through the
worker's egress proxy (proxy.py), which enforces the network policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cdp import CdpConnection
from .errors import BrowserCrashed, BrowserError, ChromiumNotFound, LaunchError

log = logging.getLogger("personad.browser.chromium")

DEFAULT_EXECUTABLE = "/usr/bin/chromium"

#: Flags for every launch, each for a reason:
BASE_FLAGS: tuple[str, ...] = (
    # CDP on fds 3/4: no TCP debugging port that any local process could
    # connect to and drive the browser through.
    "--remote-debugging-pipe",
    "--disable-gpu",  # no GPU on servers; software rendering is deterministic
    "--disable-dev-shm-usage",  # /dev/shm is small in containers: use /tmp
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",  # no update checks, no safe-browsing fetches
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--hide-scrollbars",  # screenshots show the page, not the scrollbar
    "--mute-audio",
)


def proxy_flags(proxy: str) -> list[str]:
    """Flags sending every connection through the egress proxy at ``proxy``."""
    return [
        f"--proxy-server={proxy}",
        # "<-loopback>" removes Chromium's implicit bypass of localhost and
        # 127/8, [::1]: without it those would connect directly, unchecked.
        "--proxy-bypass-list=<-loopback>",
        # UDP cannot go through an HTTP proxy: without this WebRTC sends
        # STUN/TURN datagrams to any address a page names (127.0.0.1, the
        # LAN). (The switch is this one; "--force-webrtc-…" does nothing.)
        "--webrtc-ip-handling-policy=disable_non_proxied_udp",
        # Chromium never needs to resolve a name itself behind a proxy; if
        # anything tried, it fails instead of reaching a resolved address.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]


#: Said once per process, at WARNING, when Chromium runs without its sandbox.
_sandbox_warned = False


def sandbox_unavailable() -> str | None:
    """Why Chromium's sandbox cannot work for this process, or None when it can."""
    if os.geteuid() == 0:
        return (
            "the worker runs as root, where Chromium refuses its sandbox; run `personad browser` "
            "as an unprivileged user, or under systemd/personad-browser.service"
        )
    for path, bad in (
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
        ("/proc/sys/user/max_user_namespaces", "0"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"),
    ):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value == bad and not _setuid_helper():
            return (
                f"the kernel forbids unprivileged user namespaces ({path} = {value}) and no setuid "
                "chrome-sandbox is installed; allow them (sysctl) or run under "
                "systemd/personad-browser.service"
            )
    return None


def _setuid_helper() -> bool:
    helper = Path(os.environ.get("CHROME_DEVEL_SANDBOX", "/usr/lib/chromium/chrome-sandbox"))
    try:
        st = helper.stat()
    except OSError:
        return False
    return st.st_uid == 0 and bool(st.st_mode & 0o4000)


def decide_sandbox(requested: bool | None) -> bool:
    """Whether to run with the sandbox: ``requested``, or where it can work (warning once if not)."""
    global _sandbox_warned
    if requested is not None:
        return requested
    reason = sandbox_unavailable()
    if reason is None:
        return True
    if not _sandbox_warned:
        _sandbox_warned = True
        log.warning("Chromium runs without its sandbox (--no-sandbox): %s", reason)
    return False


#: Temporary profiles are named ``<prefix><worker pid>-<random>``.
PROFILE_PREFIX = "personad-chromium-"


def remove_stale_profiles(tmp: Path | None = None) -> list[Path]:
    """Remove temporary profiles left by workers that died without cleaning up (SIGKILL).

    Only our own (same uid), and only when the process that made them is gone.
    """
    removed = []
    for path in (tmp or Path(tempfile.gettempdir())).glob(f"{PROFILE_PREFIX}*-*"):
        pid_text = path.name[len(PROFILE_PREFIX) :].partition("-")[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            if path.lstat().st_uid != os.geteuid() or not path.is_dir() or path.is_symlink():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:
            continue  # alive under another user (EPERM), or vanished meanwhile
    return removed


def chromium_flags(
    user_data_dir: Path,
    *,
    headless: bool = True,
    extensions: Sequence[Path] = (),
    proxy: str | None = None,
    sandbox: bool = False,
) -> list[str]:
    """The command line after the executable."""
    flags = [*BASE_FLAGS, f"--user-data-dir={user_data_dir}"]
    if not sandbox:
        flags.append("--no-sandbox")
    if proxy is not None:
        flags += proxy_flags(proxy)
    if headless:
        # Since Chromium 132 `--headless` is the "new" headless mode (the old
        # one moved to chrome-headless-shell); it loads extensions too. We say
        # `=new` so older builds do the same.
        flags.append("--headless=new")
    if extensions:
        paths = ",".join(str(p) for p in extensions)
        flags += [f"--load-extension={paths}", f"--disable-extensions-except={paths}"]
    else:
        flags.append("--disable-extensions")
    flags.append("about:blank")
    return flags


#: Never handed to Chromium: our secrets (PERSONAD_TOKEN …) and systemd's
#: channels, which are the worker's, not the browser's.
_PRIVATE_ENV = ("PERSONAD_", "NOTIFY_SOCKET", "WATCHDOG_", "CREDENTIALS_DIRECTORY", "LISTEN_")


def chromium_environment() -> dict[str, str]:
    """The worker's environment minus what is not Chromium's business."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV)}


def check_executable(path: str) -> str:
    """``path`` if it is an executable file; raises ChromiumNotFound otherwise."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ChromiumNotFound(path)
    return path


def _high_fd(fd: int) -> int:
    # Move an fd to >= 10 (close-on-exec), so that dup2 onto 3 and 4 in the
    # child can never overwrite the other end we still have to dup.
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    """One running Chromium and its CDP connection."""

    def __init__(self, pid: int, cdp: CdpConnection, user_data_dir: Path, stderr_tail: deque[str]) -> None:
        self.pid = pid
        self.cdp = cdp
        self.user_data_dir = user_data_dir
        self.started = time.monotonic()
        self.version = ""
        self._stderr_tail = stderr_tail
        self._stopping = False
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._watch_task: asyncio.Task[None] | None = None
        self._stderr_task: asyncio.Task[None] | None = None

    @classmethod
    async def launch(
        cls,
        executable: str = DEFAULT_EXECUTABLE,
        *,
        headless: bool = True,
        extensions: Sequence[Path] = (),
        extra_flags: Sequence[str] = (),
        proxy: str | None = None,
        sandbox: bool | None = None,
        # Timeouts
        timeout: float = 20.0,
    ) -> Chromium:
        """Start Chromium and wait until it answers ``Browser.getVersion``. Raises LaunchError.

        ``proxy``: the egress proxy's URL (every connection goes through it).
        ``sandbox``: None runs Chromium's sandbox wherever it can work.
        """
        check_executable(executable)
        use_sandbox = decide_sandbox(sandbox)
        await asyncio.to_thread(remove_stale_profiles)
        user_data_dir = Path(tempfile.mkdtemp(prefix=f"{PROFILE_PREFIX}{os.getpid()}-"))
        argv = [
            executable,
            *chromium_flags(
                user_data_dir, headless=headless, extensions=extensions, proxy=proxy, sandbox=use_sandbox
            ),
            *extra_flags,
        ]
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        err_r, err_w = os.pipe()
        to_chrome_r, from_chrome_w, err_w = _high_fd(to_chrome_r), _high_fd(from_chrome_w), _high_fd(err_w)
        try:
            pid = os.posix_spawn(  # noqa: ASYNC221 - vfork+exec: returns at once
                executable,
                argv,
                chromium_environment(),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                    (os.POSIX_SPAWN_DUP2, to_chrome_r, 3),
                    (os.POSIX_SPAWN_DUP2, from_chrome_w, 4),
                ],
                setsid=True,
            )
        except OSError as exc:
            for fd in (to_chrome_r, to_chrome_w, from_chrome_r, from_chrome_w, err_r, err_w):
                os.close(fd)
            shutil.rmtree(user_data_dir, ignore_errors=True)
            raise LaunchError(f"cannot start {executable}: {exc.strerror}") from exc
        # Our copies of Chromium's ends must go, or we would never see EOF.
        for fd in (to_chrome_r, from_chrome_w, err_w):
            os.close(fd)
        cdp = CdpConnection()
        await cdp.open(from_chrome_r, to_chrome_w)
        tail: deque[str] = deque(maxlen=20)
        browser = cls(pid, cdp, user_data_dir, tail)
        browser._stderr_task = asyncio.get_running_loop().create_task(
            browser._read_stderr(err_r), name="chromium-stderr"
        )
        browser._watch_task = asyncio.get_running_loop().create_task(browser._watch(), name="chromium-watch")
        try:
            async with asyncio.timeout(timeout):
                version = await cdp.send("Browser.getVersion")
        except (TimeoutError, BrowserError) as exc:
            await browser.kill()
            detail = browser.stderr_tail() or str(exc) or type(exc).__name__
            raise LaunchError(f"Chromium ({executable}) did not start: {detail}") from None
        browser.version = str(version.get("product", ""))
        log.info(
            "chromium started pid=%d version=%s sandbox=%s",
            pid,
            browser.version,
            "on" if use_sandbox else "off",
        )
        return browser

    # -- watching ------------------------------------------------------------------

    async def _watch(self) -> None:
        """Resolve ``_exited`` with the wait status; close CDP when Chromium ends."""
        loop = asyncio.get_running_loop()
        try:
            pidfd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # pragma: no cover - kernels before 5.3
            pidfd = None
        # Pipe EOF also means Chromium is going; whichever comes first.
        pipe_closed = asyncio.ensure_future(self.cdp.wait_closed())
        try:
            if pidfd is not None:
                exited: asyncio.Future[None] = loop.create_future()
                loop.add_reader(pidfd, _resolve, exited)
                try:
                    waiters: list[asyncio.Future[Any]] = [exited, pipe_closed]
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    loop.remove_reader(pidfd)
                    os.close(pidfd)
            else:  # pragma: no cover
                await pipe_closed
        finally:
            pipe_closed.cancel()
        status = await self._reap()
        description = describe_status(status)
        if not self._stopping:
            log.warning("chromium pid=%d %s", self.pid, description)
        self.cdp.close(BrowserCrashed(f"Chromium {description}"))
        if not self._exited.done():
            self._exited.set_result(status)

    async def _reap(self) -> int:
        """Wait for Chromium's exit status (killing its group if only the pipe closed)."""
        for _ in range(50):  # the pipe may close a moment before the process ends
            pid, status = os.waitpid(self.pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks
            if pid:
                self._kill_group()  # renderers and zygote go with it
                return status
            await asyncio.sleep(0.02)
        self._kill_group()
        _pid, status = await asyncio.to_thread(os.waitpid, self.pid, 0)
        return status

    async def _read_stderr(self, fd: int) -> None:
        """Keep Chromium's last stderr lines for error messages; log them at DEBUG."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            while line := await reader.readline():
                text = line.decode("utf-8", "replace").rstrip()
                if text:
                    self._stderr_tail.append(text)
                    log.debug("chromium: %s", text)
        except (ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            transport.close()

    def stderr_tail(self) -> str:
        """Chromium's last meaningful stderr line (for error messages)."""
        for line in reversed(self._stderr_tail):
            if "ERROR" in line or "FATAL" in line or "error" in line:
                return line[-300:]
        return self._stderr_tail[-1][-300:] if self._stderr_tail else ""

    @property
    def alive(self) -> bool:
        return not self._exited.done() and not self.cdp.closed

    async def wait_exited(self) -> int:
        """Return Chromium's wait status once it has exited."""
        return await asyncio.shield(self._exited)

    # -- stopping ------------------------------------------------------------------

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def kill(self) -> None:
        """Kill Chromium and everything it started; remove its profile."""
        self._stopping = True
        self._kill_group()
        await self._finish()

    async def close(self, grace: float = 3.0) -> None:
        """Ask Chromium to quit (``Browser.close``), then kill it after ``grace`` seconds."""
        self._stopping = True
        if self.alive:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(grace):
                    await self.cdp.send("Browser.close")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.wait_exited()
        self._kill_group()
        await self._finish()

    async def _finish(self) -> None:
        if self._watch_task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10.0):
                    await asyncio.shield(self._watch_task)
        await self.cdp.aclose()
        if self._stderr_task is not None:
            # Its last lines explain a failed launch: read to EOF (the group is
            # dead, so EOF is near), then give up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._stderr_task)
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
        await asyncio.to_thread(shutil.rmtree, self.user_data_dir, True)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def describe_status(status: int) -> str:
    """``exited with status 1`` / ``was killed by signal 9 (SIGKILL)``."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"was killed by signal {sig} ({name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"

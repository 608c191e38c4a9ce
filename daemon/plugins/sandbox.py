"""Run a plugin in a bubblewrap sandbox and speak the channel with it.

The plugin runs as ``prlimit … -- bwrap … python -s -B /plugin/<entry>``:

* ``bwrap --unshare-all --unshare-user`` (new user, pid, net, ipc, uts,
  cgroup namespaces; ``--share-net`` only with the ``network`` permission),
  ``--uid/--gid 65534``, ``--cap-drop ALL``, ``--disable-userns``,
  ``--die-with-parent``, ``--new-session`` (no TIOCSTI on our terminal);
* a file system of read-only binds only: ``/usr`` (and the /lib, /bin links),
  the interpreter's prefix and the venv, the channel helper at
  ``/run/personad/personad_plugin.py``, the plugin's own folder at
  ``/plugin``, a private size-capped tmpfs at ``/tmp``, fresh ``/proc`` and
  ``/dev``. The state dir, the persona's folder and other personas' folders
  are not there at all;
* rlimits set by prlimit(1) before bwrap starts, inherited by the plugin:
  RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_FSIZE,
  RLIMIT_CORE = 0. (The kernel does not apply RLIMIT_NPROC to root's uid:
  when the host runs as root the pid namespace and --die-with-parent are
  what confine the plugin's children.)
* a wall-clock timeout: the host kills bwrap's process group, and the pid
  namespace's init takes every process inside with it.

The channel is JSON lines: the host writes ``{"input", "plugin",
"permissions"}`` first, then one answer per request; the plugin writes
``{"id", "call", "params"}`` requests and finally ``{"output": …}``.
:func:`classify` says which limit stopped a failed run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .errors import PluginError
from .manifest import Manifest
from .seccomp import network_filter

__all__ = ["ChannelDenied", "RunOutcome", "bwrap_argv", "classify", "run_sandboxed"]

API_FILE: Final = Path(__file__).with_name("api.py")
API_DIR: Final = "/run/personad"
SANDBOX_UID: Final = 65534
MAX_LINE_BYTES: Final = 2 * 1024 * 1024
MAX_CALLS: Final = 1000
MAX_OPEN_FILES: Final = 64
MAX_PROCESSES: Final = 64
MAX_FILE_BYTES: Final = 16 * 1024 * 1024
TMP_BYTES: Final = 16 * 1024 * 1024
STDERR_TAIL: Final = 4096


class ChannelDenied(Exception):
    """A channel request the host answers with an error (``reason`` goes back to the plugin)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


#: The host side of one request: (method, params) -> result, or ChannelDenied.
ChannelHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class RunOutcome:
    ok: bool
    output: Any
    stopped_by: str | None
    error: str | None
    duration_s: float
    calls: int
    denied: int
    exit_code: int | None
    stderr_tail: str


def _python_roots() -> list[Path]:
    """What the interpreter needs outside /usr: its prefix, the venv (read-only)."""
    roots: list[Path] = []
    for prefix in {
        sys.base_prefix,
        sys.prefix,
        os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))),
    }:
        path = Path(prefix)
        if path != Path("/usr") and not path.is_relative_to("/usr") and path not in roots:
            roots.append(path)
    return sorted(roots)


def bwrap_argv(folder: Path, manifest: Manifest, *, seccomp_fd: int | None = None) -> list[str]:
    """The full command line: prlimit, bwrap and the plugin's Python.

    ``seccomp_fd``: a readable fd holding the compiled seccomp program (bwrap reads it to EOF).
    """
    bwrap = shutil.which("bwrap")
    prlimit = shutil.which("prlimit")
    if bwrap is None or prlimit is None:
        raise PluginError(
            "sandbox_unavailable", "bwrap and prlimit are needed to run plugins (scripts/system-deps)"
        )
    limits = manifest.limits
    memory = limits.memory_mb * 1024 * 1024
    argv = [
        prlimit,
        f"--as={memory}:{memory}",
        # SIGXCPU at the soft limit; the hard one (a second later) is SIGKILL.
        f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
        f"--nofile={MAX_OPEN_FILES}:{MAX_OPEN_FILES}",
        f"--nproc={MAX_PROCESSES}:{MAX_PROCESSES}",
        f"--fsize={MAX_FILE_BYTES}:{MAX_FILE_BYTES}",
        "--core=0:0",
        "--",
        bwrap,
        "--unshare-all",
        "--unshare-user",
        *(["--share-net"] if "network" in manifest.permissions else []),
        "--uid", str(SANDBOX_UID),
        "--gid", str(SANDBOX_UID),
        "--cap-drop", "ALL",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--hostname", "plugin",
        # The private /tmp comes first: bwrap mounts in order, so a tmpfs laid
        # after the binds would hide any of them that lives under /tmp (a venv
        # or a checkout there, as in a CI runner's work dir).
        "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
        "--ro-bind", "/usr", "/usr",
    ]  # fmt: skip
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    for name in ("lib", "lib64", "lib32", "bin", "sbin"):
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    if "network" in manifest.permissions:
        # Name resolution needs these; without the network they are of no use.
        for name in ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl"):
            if Path(name).exists():
                argv += ["--ro-bind", name, name]
    for root in _python_roots():
        argv += ["--ro-bind", str(root), str(root)]
    argv += [
        "--ro-bind", str(API_FILE), f"{API_DIR}/personad_plugin.py",
        "--ro-bind", str(folder), "/plugin",
        "--proc", "/proc",
        "--dev", "/dev",
        "--chdir", "/plugin",
        "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "HOME", "/tmp",
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "PYTHONPATH", API_DIR,
        "--setenv", "PYTHONUNBUFFERED", "1",
        sys.executable, "-s", "-B", f"/plugin/{manifest.entry}",
    ]  # fmt: skip
    return argv


_NETWORK = re.compile(
    r"Network is unreachable|gaierror|ConnectionRefusedError|Address family not supported"
    r"|Cannot assign requested address|Temporary failure in name resolution|\[Errno (101|97|99|111)\]"
)
_PATHS = re.compile(
    r"^(FileNotFoundError|PermissionError|NotADirectoryError|IsADirectoryError)\b"
    r"|Read-only file system|\[Errno (2|13|30)\]"
)
_MEMORY = re.compile(r"^MemoryError\b|Cannot allocate memory|\[Errno 12\]|out of memory", re.IGNORECASE)


def classify(
    exit_code: int, stderr: str, *, timed_out: bool, denied: str | None, network: bool
) -> tuple[str, str]:
    """(stopped_by, error message) for a failed run, from how it ended and its last words."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if timed_out:
        return "wall_clock", "the plugin ran past its wall-clock limit and was killed"
    if exit_code == 128 + signal.SIGXCPU or exit_code == -signal.SIGXCPU:
        return "cpu_time", "the plugin used up its CPU time limit (SIGXCPU) and was stopped"
    if denied is not None:
        return "permission_denied", f"the plugin failed after the channel refused it: {denied}"
    if _MEMORY.search(last):
        return "memory", f"the plugin went past its memory limit: {last}"
    if not network and _NETWORK.search(last):
        return "network_denied", f"the plugin has no network permission: {last}"
    if _PATHS.search(last):
        return "forbidden_path", f"the plugin touched a path outside its sandbox: {last}"
    if exit_code == 128 + signal.SIGKILL:
        return "cpu_time", "the plugin was killed at its hard CPU limit"
    return "crashed", f"the plugin exited with status {exit_code}: {last or 'no message'}"


async def run_sandboxed(folder: Path, manifest: Manifest, payload: Any, handle: ChannelHandler) -> RunOutcome:
    """Run the plugin in ``folder`` on ``payload``; answer its requests with ``handle``."""
    program = None if "network" in manifest.permissions else network_filter()
    seccomp_fd = None
    if program is not None:
        seccomp_fd = os.memfd_create("plugin-seccomp")
        os.write(seccomp_fd, program)
        os.lseek(seccomp_fd, 0, os.SEEK_SET)
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *bwrap_argv(folder, manifest, seccomp_fd=seccomp_fd),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=MAX_LINE_BYTES,
            env={"PATH": "/usr/bin:/bin"},
            pass_fds=() if seccomp_fd is None else (seccomp_fd,),
        )
    finally:
        if seccomp_fd is not None:
            os.close(seccomp_fd)
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    stdin, stdout, stderr_stream = proc.stdin, proc.stdout, proc.stderr
    state: dict[str, Any] = {"calls": 0, "denied": 0, "first_denial": None, "output": None, "bad": None}
    tail = bytearray()

    async def send(message: dict[str, Any]) -> None:
        stdin.write((json.dumps(message) + "\n").encode())
        with contextlib.suppress(ConnectionError):
            await stdin.drain()

    async def read_stderr() -> None:
        while chunk := await stderr_stream.read(65536):
            tail.extend(chunk)
            del tail[:-STDERR_TAIL]

    async def converse() -> None:
        await send({"input": payload, "plugin": manifest.id, "permissions": list(manifest.permissions)})
        while True:
            try:
                line = await stdout.readline()
            except ValueError:
                state["bad"] = f"a channel line over {MAX_LINE_BYTES} bytes"
                return
            if not line:
                return
            try:
                message = json.loads(line)
                if not isinstance(message, dict):
                    raise ValueError("not an object")
            except ValueError:
                state["bad"] = f"not a channel message: {line[:200]!r}"
                return
            if "output" in message:
                state["output"] = message["output"]
                continue
            state["calls"] += 1
            if state["calls"] > MAX_CALLS:
                state["bad"] = f"over {MAX_CALLS} channel requests in one run"
                return
            request_id, method, params = message.get("id"), message.get("call"), message.get("params", {})
            try:
                if not isinstance(method, str) or not isinstance(params, dict):
                    raise ChannelDenied("bad_request", "a request is {id, call: str, params: object}")
                result = await handle(method, params)
                await send({"id": request_id, "result": result})
            except ChannelDenied as exc:
                state["denied"] += 1
                if exc.reason == "permission_denied" and state["first_denial"] is None:
                    state["first_denial"] = str(exc)
                await send({"id": request_id, "error": {"reason": exc.reason, "message": str(exc)}})

    timed_out = False
    reader = asyncio.ensure_future(read_stderr())
    try:
        async with asyncio.timeout(manifest.limits.wall_s):
            await converse()
            if state["bad"] is not None:
                _kill(proc)
            await proc.wait()
    except TimeoutError:
        timed_out = True
        _kill(proc)
        await proc.wait()
    finally:
        if proc.returncode is None:
            _kill(proc)
            await proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 5)
    duration = time.monotonic() - started
    stderr = tail.decode("utf-8", "replace")
    code = proc.returncode
    stopped_by: str | None = None
    error: str | None = None
    if state["bad"] is not None:
        stopped_by, error = "bad_output", f"the plugin broke the channel protocol: {state['bad']}"
    elif timed_out or code != 0:
        stopped_by, error = classify(
            code if code is not None else -1,
            stderr,
            timed_out=timed_out,
            denied=state["first_denial"],
            network="network" in manifest.permissions,
        )
    return RunOutcome(
        ok=stopped_by is None,
        output=state["output"] if stopped_by is None else None,
        stopped_by=stopped_by,
        error=error,
        duration_s=round(duration, 6),
        calls=state["calls"],
        denied=state["denied"],
        exit_code=code,
        stderr_tail=stderr[-1024:],
    )


def _kill(proc: asyncio.subprocess.Process) -> None:
    # bwrap leads its own process group (start_new_session); the plugin,
    # in the pid namespace bwrap made, dies with it (--die-with-parent).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)

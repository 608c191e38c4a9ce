"""The system under soak: ``personad up`` in a throwaway state dir, and its processes.

The soak runs the real embedded default (the supervisor restarts what dies,
as systemd does in production) with a few personas of its own. One of them
keeps its folder on a small tmpfs, so that a full disk can be made and undone
(``Disk``). Processes are found by walking the supervisor's tree with psutil
and named by their ``python -m daemon <verb>`` command line, so a restarted
child keeps its name and a series of RSS samples can follow it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from daemon.runtime import PARENT_PID_ENV  # noqa: E402
from daemon.state import StateDir  # noqa: E402

#: The persona whose folder sits on the small filesystem that the disk fault fills.
DISK_PERSONA = "soak-disk"


@dataclass
class System:
    root: Path
    personas: list[str]
    #: tmpfs size for DISK_PERSONA's folder; 0: no disk fault (not root, or no mount).
    disk_mib: int = 32
    state: StateDir = field(init=False)
    admin_token: str = field(init=False, default="")
    url: str = field(init=False, default="")
    up: subprocess.Popen[str] | None = field(init=False, default=None)
    output: list[str] = field(init=False, default_factory=list)
    disk: Disk | None = field(init=False, default=None)
    #: Command lines of processes in the tree that are none of personad's roles (for the report).
    others: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.state = StateDir(self.root / "state")

    # -- start and stop ------------------------------------------------------------------

    def start(self, timeout: float = 600.0) -> None:
        """Start ``personad up`` and wait for it to say it runs. Call it from the main thread:
        the kernel's parent-death signal follows the thread that started the process."""
        token = self.state.init()
        assert token is not None, "the soak needs a fresh state dir"
        self.admin_token = token
        config = self.root / "config"
        (config / "personas").mkdir(parents=True, exist_ok=True)
        for pid in self.personas:
            (config / "personas" / f"{pid}.toml").write_text(
                f'id = "{pid}"\nname = "Soak {pid}"\ndescription = "A persona under load."\n'
                'capabilities = ["chat"]\n',
                "utf-8",
            )
        if DISK_PERSONA in self.personas and self.disk_mib > 0:
            self.disk = Disk.mount(self.state.personas / DISK_PERSONA, self.disk_mib)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "PERSONAD_OV_CACHE": os.environ.get("PERSONAD_OV_CACHE", str(REPO / ".cache" / "openvino-ir")),
        }
        for name in ("NOTIFY_SOCKET", "PERSONAD_TOKEN", "PERSONAD_URL"):
            env.pop(name, None)
        # If the soak dies, even by kill -9, the kernel stops personad up, which stops its children.
        env[PARENT_PID_ENV] = str(os.getpid())
        argv = [sys.executable, "-m", "daemon", "--state-dir", str(self.state.root), "up"]
        argv += ["--config-dir", str(config), "--host", "127.0.0.1", "--port", "0"]
        # The Academy, skill sharing and PersonaHub are not soaked yet (docs/reliability.md).
        argv += ["--no-demo", "--no-academy", "--no-skills", "--no-hub"]
        self.up = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.up is not None
            assert self.up.stdout is not None
            with contextlib.suppress(ValueError, OSError):
                for line in self.up.stdout:
                    self.output.append(line)
                    if m := re.search(r"personad is running on (ws://\S+)\.", line):
                        self.url = m.group(1)
                        ready.set()
            ready.set()

        threading.Thread(target=read, name="up-output", daemon=True).start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("personad up did not come up:\n" + "".join(self.output[-60:]))

    def stop(self) -> None:
        if self.up is not None and self.up.poll() is None:
            self.up.send_signal(signal.SIGINT)
            try:
                self.up.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.up.pid, signal.SIGKILL)
                self.up.wait(10)
        if self.disk is not None:
            self.disk.unmount()

    # -- processes -------------------------------------------------------------------------

    def processes(self) -> dict[str, list[psutil.Process]]:
        """The supervisor's tree by role: bus, registry, inference, browser, persona:<id>,
        chromium (all of Chromium's processes), up, other."""
        roles: dict[str, list[psutil.Process]] = {}
        if self.up is None:
            return roles
        try:
            top = psutil.Process(self.up.pid)
            tree = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return roles
        for proc in tree:
            try:
                role = "up" if proc.pid == self.up.pid else _role(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            roles.setdefault(role, []).append(proc)
            if role == "other":
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    self.others.add(" ".join(proc.cmdline()[:4])[:200])
        return roles

    def pid_of(self, role: str) -> int | None:
        procs = self.processes().get(role) or []
        return procs[0].pid if procs else None

    def kill(self, role: str) -> int | None:
        """kill -9 the (first) process of a role; its pid, or None if none was running."""
        pid = self.pid_of(role)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pid

    def chromium_browser_pid(self) -> int | None:
        """Chromium's main process (the one the worker started; its renderers are its children)."""
        procs = self.processes().get("chromium") or []
        pids = {p.pid for p in procs}
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.ppid() not in pids:
                    return int(proc.pid)
        return None

    def rss_by_role(self) -> dict[str, tuple[float, tuple[int, ...]]]:
        """Proportional resident MiB (PSS) per role, summed over its processes, and their pids."""
        out: dict[str, tuple[float, tuple[int, ...]]] = {}
        for role, procs in self.processes().items():
            total = 0
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    # PSS: shared pages divided among their users, so that summing Chromium's
                    # dozens of processes does not count its shared memory dozens of times.
                    total += proc.memory_full_info().pss
            # Chromium's renderers come and go with pages: its main process names the run.
            pids = (min(p.pid for p in procs),) if role == "chromium" else tuple(sorted(p.pid for p in procs))
            out[role] = (total / 2**20, pids)
        return out


def _role(cmdline: list[str]) -> str:
    if "daemon.inference.train_worker" in cmdline:
        return "train worker"
    if "-m" in cmdline and "daemon" in cmdline:
        args = cmdline[cmdline.index("daemon") + 1 :]
        # Skip the common options (--state-dir S, --url U, …) to reach the verb.
        while args and args[0].startswith("--"):
            args = args[2:] if "=" not in args[0] else args[1:]
        if not args:
            return "other"
        if args[0] == "persona" and len(args) > 1:
            return f"persona:{args[1]}"
        return args[0]
    if cmdline and "chrom" in Path(cmdline[0]).name:
        return "chromium"
    return "other"


class Disk:
    """A small tmpfs under one persona's folder, and a filler file that fills it.

    A real full disk, not an injected error: SQLite and every file the persona
    writes there get ENOSPC from the kernel.
    """

    def __init__(self, path: Path, mib: int) -> None:
        self.path = path
        self.mib = mib
        self.filler = path / ".soak-filler"

    @classmethod
    def mount(cls, path: Path, mib: int) -> Disk | None:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            print(f"soak: no small filesystem for the disk fault ({done.stderr.strip()}); it is skipped")
            return None
        return cls(path, mib)

    def fill(self) -> int:
        """Write the filler until the filesystem is full; bytes written."""
        written = 0
        chunk = b"\0" * (1 << 20)
        with open(self.filler, "wb", buffering=0) as f:
            while True:
                try:
                    written += f.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    # Fill the last partial chunk too, down to the block.
                    for size in (1 << 16, 1 << 12):
                        with contextlib.suppress(OSError):
                            while True:
                                written += f.write(b"\0" * size)
                    return written

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def unmount(self) -> None:
        self.free()
        for _ in range(20):
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode == 0:
                return
            time.sleep(0.25)
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)

"""The system under soak: ``personad up`` in a throwaway state dir, and its processes.

The soak runs the real embedded default (the supervisor restarts what dies,
as systemd does in production) with a few personas of its own. One of them
keeps its folder on a small filesystem of its own, so that a full disk and a
slow one can be made and undone (``Disk``). Processes are found by walking the supervisor's tree with psutil
and named by their ``python -m daemon <verb>`` command line, so a restarted
child keeps its name and a series of RSS samples can follow it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
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
#: The soak's personas' retention bounds: more than any run writes (see System.start).
RETENTION_OFF_MEMORIES = 10**9
RETENTION_OFF_BYTES = 1 << 40


@dataclass
class System:
    root: Path
    personas: list[str]
    #: Size of DISK_PERSONA's filesystem; 0: no disk faults (they need root, to mount).
    disk_mib: int = 32
    #: More arguments for ``personad up`` (a cluster node's --nats, --node, --peer, --no-…).
    extra_args: list[str] = field(default_factory=list)
    #: Also the Academy, skill sharing and PersonaHub (cap:academy, cap:skills and mesh:main, cap:hub).
    ecosystem: bool = False
    state: StateDir = field(init=False)
    admin_token: str = field(init=False, default="")
    url: str = field(init=False, default="")
    up: subprocess.Popen[str] | None = field(init=False, default=None)
    output: list[str] = field(init=False, default_factory=list)
    disk: Disk | None = field(init=False, default=None)
    #: Command lines of processes in the tree that are none of personad's roles (for the report).
    others: set[str] = field(init=False, default_factory=set)
    #: CPU seconds each process had used when last seen, by pid: (role, seconds).
    cpu: dict[int, tuple[str, float]] = field(init=False, default_factory=dict)
    cpu_base: dict[int, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
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
            # Retention's bounds (100,000 memories, 256 MiB by default) above what a run writes:
            # retention deletes the least kept memories by design, which the ledger does not
            # model (a 60-minute run passed 100,000 memories a persona after 20 minutes, and
            # the ledger found every memory retention had removed "lost").
            (config / "personas" / f"{pid}.toml").write_text(
                f'id = "{pid}"\nname = "Soak {pid}"\ndescription = "A persona under load."\n'
                'capabilities = ["chat"]\n\n[memory]\n'
                f"max_memories = {RETENTION_OFF_MEMORIES}\nmax_bytes = {RETENTION_OFF_BYTES}\n",
                "utf-8",
            )
        if DISK_PERSONA in self.personas and self.disk_mib > 0:
            self.disk = Disk.mount(self.state.personas / DISK_PERSONA, self.disk_mib, self.root / "disk.img")
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
        argv += ["--no-demo"]
        if not self.ecosystem:
            argv += ["--no-academy", "--no-skills", "--no-hub"]
        argv += self.extra_args
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

    def mark_cpu(self) -> None:
        """From now on: ``cpu_by_role`` counts only what is used after this call."""
        self.rss_by_role()
        self.cpu_base = {pid: seconds for pid, (_role, seconds) in self.cpu.items()}

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds used by each role's processes since ``mark_cpu`` (those that died
        counted as last seen)."""
        out: dict[str, float] = {}
        for pid, (role, seconds) in self.cpu.items():
            out[role] = out.get(role, 0.0) + seconds - self.cpu_base.get(pid, 0.0)
        return out

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
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = (role, times.user + times.system)
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


def node_b(root: Path, nats_url: str) -> System:
    """A second machine's part of a cluster: ``personad up --no-personas`` with only its
    bus node, joined to the first through NATS (docs/federation.md). Its own state dir
    and token file; the first node's tokens reach it through the cluster's bucket."""
    return System(
        root / "node-b",
        [],
        disk_mib=0,
        extra_args=[
            *("--no-personas", "--no-inference", "--no-browser"),
            *("--no-academy", "--no-skills", "--no-hub"),
            *("--nats", nats_url, "--node", "soak-b"),
        ],
    )


class Nats:
    """nats-server with JetStream on a free loopback port, the cluster's messaging."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @staticmethod
    def binary() -> str | None:
        return shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")

    def start(self) -> str:
        binary = self.binary()
        assert binary is not None
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(self.root / "nats")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.05)
        self.url = f"nats://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Disk:
    """A small filesystem under one persona's folder: filled to make a full disk, throttled
    to make a slow one.

    Both are real, not injected errors: SQLite and every file the persona writes
    there get ENOSPC from the kernel, or wait on a block device that serves a few
    operations a second. The filesystem is ext4 on a loop device (a file of
    ``mib``), so that the kernel's I/O throttle (the blkio/io cgroup controller)
    has a device to hold back; where no loop device can be had, a tmpfs, and
    the slow disk is skipped.
    """

    def __init__(self, path: Path, mib: int, kind: str, image: Path | None = None) -> None:
        self.path = path
        self.mib = mib
        self.kind = kind  # "ext4 on a loop device" or "tmpfs"
        self.image = image
        self.filler = path / ".soak-filler"
        self.throttle: Throttle | None = None

    @classmethod
    def mount(cls, path: Path, mib: int, image: Path) -> Disk | None:
        path.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as f:
            f.truncate(mib << 20)
        # -m 0: no blocks kept for root (the persona runs as root here, and would use them).
        made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        if made.returncode == 0 and _run("mount", "-o", "loop", str(image), str(path)).returncode == 0:
            os.chmod(path, 0o700)
            disk = cls(path, mib, "ext4 on a loop device", image)
            device = _run("findmnt", "-n", "-o", "SOURCE", str(path)).stdout.strip()
            disk.throttle = Throttle.make(os.stat(device).st_rdev) if device.startswith("/dev/") else None
            if disk.throttle is None:
                print("soak: no I/O cgroup to throttle the loop device; the slow disk is skipped")
            return disk
        image.unlink(missing_ok=True)
        done = _run("mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(path))
        if done.returncode != 0:
            print(f"soak: no small filesystem for the disk faults ({done.stderr.strip()}); they are skipped")
            return None
        print("soak: no loop device; the persona's small filesystem is a tmpfs and the slow disk is skipped")
        return cls(path, mib, "tmpfs")

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
        if self.throttle is not None:
            self.throttle.remove()
        for _ in range(20):
            if _run("umount", str(self.path)).returncode == 0:
                break
            time.sleep(0.25)
        else:
            _run("umount", "-l", str(self.path))
        if self.image is not None:  # mount -o loop set autoclear: the loop device went with the umount
            self.image.unlink(missing_ok=True)


class Throttle:
    """The kernel's I/O throttle on one block device, for the processes of one cgroup.

    The soak moves itself into a cgroup of its own before it starts ``personad up``,
    so every process of the system is in it (children inherit their parent's
    cgroup) and nothing else on the machine is. ``slow`` then caps the device at a
    few operations a second: each fsync of SQLite waits its turn, as on a failing
    or overloaded disk. cgroup v1 (blkio) or v2 (io), whichever the machine has.
    """

    V1 = Path("/sys/fs/cgroup/blkio")
    V2 = Path("/sys/fs/cgroup")

    def __init__(self, group: Path, device: str, v2: bool) -> None:
        self.group = group
        self.device = device  # "major:minor"
        self.v2 = v2

    @classmethod
    def make(cls, rdev: int) -> Throttle | None:
        device = f"{os.major(rdev)}:{os.minor(rdev)}"
        name = f"personad-soak-{os.getpid()}"
        try:
            if (cls.V1 / "blkio.throttle.write_iops_device").exists():
                group, v2 = cls.V1 / name, False
            elif "io" in (cls.V2 / "cgroup.controllers").read_text().split():
                (cls.V2 / "cgroup.subtree_control").write_text("+io")
                group, v2 = cls.V2 / name, True
            else:
                return None
            group.mkdir(exist_ok=True)
            (group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            print(f"soak: cannot make an I/O cgroup ({exc})")
            return None
        return cls(group, device, v2)

    def slow(self, iops: int) -> None:
        if self.v2:
            (self.group / "io.max").write_text(f"{self.device} riops={iops} wiops={iops}")
        else:
            for name in ("read_iops_device", "write_iops_device"):
                (self.group / f"blkio.throttle.{name}").write_text(f"{self.device} {iops}")

    def fast(self) -> None:
        if self.v2:
            (self.group / "io.max").write_text(f"{self.device} riops=max wiops=max")
        else:
            for name in ("read_iops_device", "write_iops_device"):
                (self.group / f"blkio.throttle.{name}").write_text(f"{self.device} 0")

    def remove(self) -> None:
        """Lift the cap, move every process back to the parent group, remove the group."""
        with contextlib.suppress(OSError):
            self.fast()
        for pid in (self.group / "cgroup.procs").read_text().split() if self.group.exists() else []:
            with contextlib.suppress(OSError):
                (self.group.parent / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.group.rmdir()


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True)

"""Shared fixtures: real buses, real clients, real processes, on loopback.

Nothing here is a mock. ``bus`` runs the bus in the test's own event loop on
127.0.0.1:0; ``spawn`` starts real ``python -m daemon ...`` processes (the
same entry point as the ``personad`` script) and always stops them.

Time: every wait in the tests is bounded by ``WAIT`` (seconds), the one
constant to raise on a slow machine (env PERSONAD_TEST_WAIT). No test sleeps
to "let things settle": each waits for the condition it needs, within WAIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.bus import Bus, BusConfig
from daemon.client import BusClient
from daemon.state import StateDir

WAIT = float(os.environ.get("PERSONAD_TEST_WAIT", "15"))
REPO = Path(__file__).resolve().parent.parent
# Models exported to OpenVINO IR are kept by content in one cache for every
# test, worker and later run (an export takes about 40 s), not in each
# test's state directory. Set here so the services tests start inherit it.
os.environ.setdefault("PERSONAD_OV_CACHE", str(REPO / ".cache" / "openvino-ir"))


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    """An initialised state directory; the admin token is in state.admin_token."""
    sd = StateDir(tmp_path / "state")
    token = sd.init()
    assert token is not None
    object.__setattr__(sd, "admin_token", token)
    return sd


@pytest.fixture
def bus_config() -> BusConfig:
    """Bus settings for tests; override the fixture to change limits."""
    return BusConfig(port=0)


@pytest.fixture
async def bus(state: StateDir, bus_config: BusConfig) -> AsyncIterator[Bus]:
    """A real bus on 127.0.0.1:0 in this event loop."""
    async with Bus(bus_config, state.tokens()) as running:
        yield running


@pytest.fixture
async def connect(bus: Bus, state: StateDir) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await connect(kind=..., name=..., **kw)`` gives a connected BusClient."""
    clients: list[BusClient] = []

    async def factory(**kwargs: Any) -> BusClient:
        kwargs.setdefault("token", state.admin_token)  # type: ignore[attr-defined]
        kwargs.setdefault("kind", "cli")
        client = BusClient(bus.url, **kwargs)
        await client.start()
        if kwargs.get("reconnect"):
            await client.wait_connected(WAIT)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


async def eventually(predicate: Callable[[], Any], *, timeout: float = WAIT, what: str = "") -> Any:
    """Poll ``predicate`` (sync or async) until truthy, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)


# -- real processes ------------------------------------------------------------------


class Proc:
    """A personad process started by a test."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def wait_for_line(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Read output until a line matches ``pattern`` (regex)."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        for line in self.lines:
            if m := regex.search(line):
                return m
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if m := regex.search(line):
                return m
        raise AssertionError(f"{self.argv[3:]} never printed {pattern!r}; output:\n{''.join(self.lines)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(timeout)

    def output(self) -> str:
        assert self.popen.stdout is not None
        if self.popen.poll() is not None:
            self.lines.append(self.popen.stdout.read())
        return "".join(self.lines)


@pytest.fixture
def spawn(state: StateDir) -> Iterator[Callable[..., Proc]]:
    """Factory: ``spawn("bus", "--port", "0")`` runs ``python -m daemon <args>`` for real."""
    procs: list[Proc] = []

    def factory(*args: str, env: dict[str, str] | None = None) -> Proc:
        full_env = {
            **os.environ,
            "PERSONAD_STATE_DIR": str(state.root),
            "PYTHONUNBUFFERED": "1",
            "PERSONAD_CONFIG_DIR": str(REPO / "config"),
            **(env or {}),
        }
        full_env.pop("NOTIFY_SOCKET", None)
        proc = Proc([sys.executable, "-m", "daemon", *args], full_env, REPO)
        procs.append(proc)
        return proc

    yield factory
    for proc in procs:
        proc.stop(signal.SIGKILL if proc.popen.poll() is None else signal.SIGTERM)
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()


def run_cli(
    state: StateDir, *args: str, token: str | None = None, url: str | None = None, timeout: float = WAIT
) -> subprocess.CompletedProcess[str]:
    """``python -m daemon <args>`` as a person types it; the admin token comes from the state dir."""
    env = {**os.environ, "PERSONAD_STATE_DIR": str(state.root)}
    env.pop("PERSONAD_TOKEN", None)
    if token is not None:
        env["PERSONAD_TOKEN"] = token
    if url is not None:
        env["PERSONAD_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_bus_process(spawn: Callable[..., Proc], port: int = 0) -> tuple[Proc, str]:
    """Start ``personad bus`` and return it with its ws:// URL once it listens."""
    proc = spawn("bus", "--port", str(port))
    match = proc.wait_for_line(r"listening on (ws://\S+)")
    return proc, match.group(1)


# -- one real inference service for the chat tests ------------------------------------


class ChatServices:
    """A real bus and a real ``personad inference`` serving SmolLM2, shared by a session.

    Loading the model is the expensive part, so every chat test talks to
    this one service; each test module starts its own real persona daemon
    (its own brain) with :meth:`start_persona`.
    """

    def __init__(self, state: StateDir, config_dir: Path, model: Path) -> None:
        self.state = state
        self.config_dir = config_dir
        self.model = model
        self.procs: list[Proc] = []
        self.url = ""

    def start(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        # Not the test runner's systemd socket; a test may give one of its own in env.
        inherited = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        full_env = {
            **inherited,
            "PERSONAD_STATE_DIR": str(self.state.root),
            "PERSONAD_CONFIG_DIR": str(self.config_dir),
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            **({"PERSONAD_URL": self.url} if self.url else {}),
            **(env or {}),
        }
        full_env.pop("PERSONAD_TOKEN", None)
        proc = Proc([sys.executable, "-m", "daemon", *args], full_env, REPO)
        self.procs.append(proc)
        return proc

    def start_persona(self, persona_id: str, *, name: str, description: str) -> Proc:
        """A real ``personad persona`` process with its own brain; returns once it is on the bus."""
        (self.config_dir / "personas" / f"{persona_id}.toml").write_text(
            f'id = "{persona_id}"\nname = "{name}"\ndescription = "{description}"\n', "utf-8"
        )
        proc = self.start("persona", persona_id)
        proc.wait_for_line(rf"connected url=\S+ client_id=persona:{persona_id}\b", timeout=WAIT * 2)
        self.drain(proc)
        return proc

    @staticmethod
    def drain(proc: Proc) -> None:
        """Keep reading a ready process's output (into proc.lines) so a full pipe never blocks it."""
        import threading

        def read() -> None:
            assert proc.popen.stdout is not None
            with contextlib.suppress(ValueError, OSError):  # closed by stop_all
                for line in proc.popen.stdout:
                    proc.lines.append(line)

        threading.Thread(target=read, name=f"drain-{proc.popen.pid}", daemon=True).start()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
            if proc.popen.stdout is not None:
                proc.popen.stdout.close()


@pytest.fixture(scope="session")
def chat_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatServices]:
    """The session's bus and inference service (SmolLM2, one thread), for real chat tests."""
    from daemon.inference.model import convert_smollm2

    # The same cache as tests/daemon/inference's smollm2_folder: converted once a session.
    model = convert_smollm2(tmp_path_factory.getbasetemp() / "smollm2-cache")
    root = tmp_path_factory.mktemp("chat-services")
    state = StateDir(root / "state")
    token = state.init()
    assert token is not None
    object.__setattr__(state, "admin_token", token)
    (root / "config" / "personas").mkdir(parents=True)
    services = ChatServices(state, root / "config", model)
    try:
        bus = services.start("bus", "--port", "0")
        services.url = bus.wait_for_line(r"listening on (ws://\S+)").group(1)
        inference = services.start("inference", "--model", str(model), "--threads", "1")
        inference.wait_for_line(r"inference main ready: model SmolLM2-135M-Instruct", timeout=WAIT * 8)
        inference.wait_for_line(r"connected url=\S+ client_id=inference:main\b")
        services.drain(bus)
        services.drain(inference)
        yield services
    finally:
        services.stop_all()


@pytest.fixture(scope="module")
def tokenizer(chat_services: ChatServices) -> Any:
    """SmolLM2's own tokenizer: what a prompt must count, computed independently of the service."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chat_services.model, local_files_only=True)


def prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of a chat-templated prompt, as the model reads it."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])

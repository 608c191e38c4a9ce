"""End to end: `personad call … chat` and `personad chat` as a person uses them.

The real CLI in its own process against a real bus, a real persona daemon
(``persona:clichat``, with its brain) and the real inference service with
SmolLM2 (shared by the session: ``chat_services`` in tests/conftest.py).
What the CLI printed is checked against what the persona logged in its
brain, so a reply the CLI made up or garbled cannot pass.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from daemon.chat_cli import HISTORY_FILE
from tests.conftest import REPO, WAIT, ChatServices, run_cli

pytestmark = pytest.mark.slow

PERSONA = "clichat"
TARGET = f"persona:{PERSONA}"
SLOW = WAIT * 8  # a reply from the real model on a busy two-core machine


@pytest.fixture(scope="module")
def services(chat_services: ChatServices) -> ChatServices:
    chat_services.start_persona(PERSONA, name="Ada", description="A patient explainer.")
    return chat_services


def cli(services: ChatServices, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m daemon <args>`` as a person types it (admin token from the state dir), stdin piped."""
    if input is None:
        return run_cli(services.state, *args, url=services.url, timeout=SLOW)
    env = {**os.environ, "PERSONAD_STATE_DIR": str(services.state.root), "PERSONAD_URL": services.url}
    env.pop("PERSONAD_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        input=input,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SLOW,
    )


def interactions(services: ChatServices) -> list[dict[str, Any]]:
    """The persona's logged exchanges, oldest first, read from its brain over the bus."""
    sql = "SELECT id, with_persona, learned FROM interactions ORDER BY id"
    out = cli(services, "call", TARGET, "brain.query", json.dumps({"sql": sql, "row_limit": 1000}))
    assert 0 == out.returncode, out.stderr
    result = json.loads(out.stdout)
    rows = [dict(zip(result["columns"], row, strict=True)) for row in result["rows"]]
    for row in rows:
        if isinstance(row["learned"], str):
            row["learned"] = json.loads(row["learned"])
    return rows


def printed(reply: str) -> str:
    """What the CLI prints for a reply: the text, then a newline unless it ends with one."""
    return reply if reply.endswith("\n") else reply + "\n"


def test_call_chat_streams_plain_text_to_stdout(services) -> None:
    """`personad call persona:X chat` prints the reply as plain text: no JSON, no notifications."""
    before = len(interactions(services))
    params = {"message": "Name one colour of the rainbow.", "max_tokens": 16, "temperature": 0}
    out = cli(services, "call", TARGET, "chat", json.dumps(params), "--timeout", str(SLOW))
    assert 0 == out.returncode, out.stderr
    assert "" == out.stderr
    logged = interactions(services)
    assert before + 1 == len(logged)
    reply = logged[-1]["learned"]["reply"]
    assert reply.strip()
    assert printed(reply) == out.stdout


def test_call_chat_json_prints_the_result_and_the_stream_on_stderr(services) -> None:
    """With --json: the JSON result on stdout; the chat.token notifications, which add up to it, on stderr."""
    params = {"message": "Say hello.", "max_tokens": 12, "temperature": 0}
    out = cli(services, "call", TARGET, "chat", json.dumps(params), "--json", "--timeout", str(SLOW))
    assert 0 == out.returncode, out.stderr
    result = json.loads(out.stdout)
    assert result["reply"] == interactions(services)[-1]["learned"]["reply"]
    pieces = [
        json.loads(line.removeprefix("~ chat.token "))
        for line in out.stderr.splitlines()
        if line.startswith("~ chat.token ")
    ]
    assert [p["index"] for p in pieces] == list(range(len(pieces)))
    assert result["reply"] == "".join(p["text"] for p in pieces)
    assert 0 < len(pieces) <= result["completion_tokens"]


def test_call_chat_errors_go_to_stderr_with_a_failing_status(services) -> None:
    out = cli(services, "call", "persona:ghost", "chat", '{"message": "hello?"}')
    assert (1, "") == (out.returncode, out.stdout)
    assert out.stderr.startswith("error -32001:"), out.stderr


def test_chat_with_piped_lines_keeps_the_conversation(services) -> None:
    """`personad chat X` reads a message a line, prints a reply a line, sends earlier exchanges along."""
    before = len(interactions(services))
    lines = "Hello! My name is Rowena.\n\nWhat is my name?\n/bye\nThis line is never sent.\n"
    out = cli(
        services, "chat", PERSONA, "--max-tokens", "16", "--temperature", "0", "--timeout", str(SLOW),
        input=lines,
    )  # fmt: skip
    assert 0 == out.returncode, out.stderr
    logged = interactions(services)[before:]
    assert ["Hello! My name is Rowena.", "What is my name?"] == [i["learned"]["message"] for i in logged]
    first, second = (i["learned"] for i in logged)
    assert printed(first["reply"]) + printed(second["reply"]) == out.stdout
    # The persona's chat has no session id: the CLI carries the thread in `context`.
    assert first["context"] is None
    assert "Hello! My name is Rowena." in second["context"]
    assert first["reply"].strip() in second["context"]


def test_chat_with_an_offline_persona_says_so(services) -> None:
    out = cli(services, "chat", "ghost", input="hello?\n")
    assert (1, "") == (out.returncode, out.stdout)
    assert "persona:ghost is not on the bus" in out.stderr, out.stderr


def _metric(services: ChatServices, name: str, label: str) -> int:
    http = services.url.replace("ws://", "http://", 1).rstrip("/") + "/metrics"
    request = urllib.request.Request(
        http,
        headers={"Authorization": f"Bearer {services.state.admin_token}"},  # type: ignore[attr-defined]
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        text = response.read().decode()
    match = re.search(rf"^{name}\{{{label}\}} (\d+)$", text, re.M)
    return int(match.group(1)) if match else 0


class Terminal:
    """`personad chat` on a pseudo-terminal, so it runs as it does for a person (readline, a prompt)."""

    def __init__(self, services: ChatServices, *args: str) -> None:
        master, slave = os.openpty()
        env = {
            **os.environ,
            "PERSONAD_STATE_DIR": str(services.state.root),
            "PERSONAD_URL": services.url,
            "TERM": "dumb",
        }
        env.pop("PERSONAD_TOKEN", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "chat", PERSONA, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=REPO,
            close_fds=True,
        )
        os.close(slave)
        self.master = master
        self.seen = ""
        self.pos = 0  # where the last match ended: the next read_until looks from here

    def read_until(self, pattern: str, timeout: float = SLOW) -> str:
        """Read the terminal until ``pattern`` (regex) matches what came after the last match."""
        deadline = time.monotonic() + timeout
        start = self.pos
        while not (match := re.compile(pattern).search(self.seen, start)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"never saw {pattern!r}; the terminal showed:\n{self.seen}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the chat ended before {pattern!r}:\n{self.seen}")
                self.seen += chunk.decode(errors="replace")
        self.pos = match.end()
        return self.seen[start : self.pos]

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            return self.proc.wait(WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)


def test_chat_in_a_terminal_ctrl_c_cancels_the_reply_and_the_chat_goes_on(services) -> None:
    """In a terminal: Ctrl-C stops the reply (bus.cancel) but not the chat; /bye leaves; history 0600."""
    before = len(interactions(services))
    cancelled_before = _metric(services, "personad_bus_errors_total", 'code="CANCELLED"')
    history = services.state.root / HISTORY_FILE
    history.unlink(missing_ok=True)

    # A reply long enough that Ctrl-C lands while it streams even on a loaded machine
    # (with the default 256 tokens, a fresh-clone run once saw the whole reply first).
    term = Terminal(services, "--temperature", "0", "--max-tokens", "1500", "--timeout", str(SLOW))
    try:
        term.read_until(r">>> ")
        long_ask = "Write a very long story about a dragon who collects teapots."
        term.type(long_ask + "\r")
        # The message is echoed, then the reply starts streaming: wait for its first piece.
        term.read_until(re.escape(long_ask) + r"\r?\n\s*\S")
        term.proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal does
        term.read_until(r"\(reply cancelled\)")
        term.read_until(r">>> ")
        term.type("Say hi.\r")
        term.read_until(r"Say hi\.\r?\n\s*\S[\s\S]*>>> ")
        term.type("/bye\r")
        assert 0 == term.close(), term.seen
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()

    # Two cancels on the bus: the CLI's chat call, and then the persona's own
    # inference.generate, which the persona cancelled when its chat was.
    assert cancelled_before + 2 == _metric(services, "personad_bus_errors_total", 'code="CANCELLED"')
    messages = [i["learned"]["message"] for i in interactions(services)[before:]]
    assert ["Say hi."] == messages
    # History: both lines typed, in a private file.
    assert 0o600 == stat.S_IMODE(history.stat().st_mode)
    assert {long_ask, "Say hi.", "/bye"} <= set(history.read_text().splitlines())


def test_chat_refuses_bad_options_and_an_unreachable_bus(state) -> None:
    """Out-of-range options: exit 2 before connecting; no bus there: exit 1, said on stderr."""
    for option, value, said in [
        ("--temperature", "9", "--temperature: Input should be less than or equal to 2"),
        ("--max-tokens", "0", "--max-tokens: Input should be greater than or equal to 1"),
        ("--turns", "-1", "--turns must be 0 or more"),
    ]:
        out = run_cli(state, "chat", "demo", option, value)
        assert (2, "", f"personad: {said}\n") == (out.returncode, out.stdout, out.stderr)
    # Port 1 on loopback: nothing listens there.
    out = run_cli(state, "chat", "demo", url="ws://127.0.0.1:1")
    assert (1, "") == (out.returncode, out.stdout)
    assert out.stderr.startswith("personad: "), out.stderr


def test_ctrl_c_is_for_the_main_thread_not_the_bus_thread() -> None:
    """The chat's bus thread blocks SIGINT, so the kernel gives Ctrl-C to the main thread, which
    waits on the reply. (Two fresh-clone runs under load saw a SIGINT land on the busy bus thread:
    Python ran its handler only after the whole reply, and the reply was not cancelled.)"""
    import signal

    from daemon.chat_cli import _Loop

    loop = _Loop()
    try:

        async def mask() -> set[signal.Signals]:
            return signal.pthread_sigmask(signal.SIG_BLOCK, [])

        assert signal.SIGINT in loop.run(mask())
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the main thread takes it
    finally:
        loop.stop()

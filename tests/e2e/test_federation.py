"""End to end, real processes: nats-server, three `personad bus --nats` nodes, a persona daemon, the CLI.

The persona daemon is given two nodes (``PERSONAD_URL=A,B``); node A is
killed outright (SIGKILL) and the persona must answer from node B, reached by
a CLI call through node C. Then `personad up --nats --no-personas` runs one
machine's part: a bus node whose callers reach the persona on another node.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WAIT
from tests.conftest import run_cli as cli

NATS_SERVER = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    if NATS_SERVER is None:
        # Required, not optional: scripts/system-deps installs it, and a missing
        # server must fail the federation tests rather than silently skip them.
        pytest.fail("nats-server is not installed: run scripts/system-deps test")
    port = free_port()
    proc = subprocess.Popen(
        [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=WAIT)


def node(spawn, nats_url: str, name: str):
    proc = spawn("bus", "--port", "0", "--nats", nats_url, "--node", name)
    return proc, proc.wait_for_line(r"listening on (ws://\S+)").group(1)


def call(state, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(state, "call", *args, url=url)


def call_until_ok(state, url: str, *args: str) -> dict:
    deadline = time.monotonic() + WAIT
    while True:
        out = call(state, url, *args)
        if out.returncode == 0:
            return json.loads(out.stdout)
        if time.monotonic() > deadline:
            raise AssertionError(out.stderr)
        time.sleep(0.05)


def test_killing_a_node_moves_its_persona_to_another(state, spawn, nats_url) -> None:
    """persona:demo on A answers a CLI on C; A is SIGKILLed; it answers again from B."""
    a, url_a = node(spawn, nats_url, "a")
    _b, url_b = node(spawn, nats_url, "b")
    _c, url_c = node(spawn, nats_url, "c")
    spawn("persona", "demo", env={"PERSONAD_URL": f"{url_a},{url_b}"})
    status = call_until_ok(state, url_c, "persona:demo", "persona.status")
    assert ("demo", "connected", 0) == (status["id"], status["bus"]["state"], status["bus"]["reconnects"])

    offline = call(state, url_c, "persona:ghost", "persona.status")
    assert 1 == offline.returncode
    assert offline.stderr.startswith("error -32001:"), offline.stderr  # TARGET_OFFLINE, not a timeout

    a.stop(signal.SIGKILL)
    started = time.monotonic()
    status = call_until_ok(state, url_c, "persona:demo", "persona.status")
    moved_after = time.monotonic() - started
    assert ("connected", 1) == (status["bus"]["state"], status["bus"]["reconnects"])
    print(f"node A killed: persona:demo answered again through node B after {moved_after:.2f} s")


def test_up_runs_one_machine_s_part(state, spawn, nats_url) -> None:
    """`personad up --nats URL --no-personas`: a bus node on this machine, joined to the cluster."""
    _a, url_a = node(spawn, nats_url, "a")
    spawn("persona", "demo", env={"PERSONAD_URL": url_a})
    call_until_ok(state, url_a, "persona:demo", "persona.ping")
    up = spawn(
        "up",
        "--port",
        "0",
        "--nats",
        nats_url,
        "--node",
        "m2",
        "--no-personas",
        "--no-inference",
        "--no-browser",
        "--no-academy",
        "--no-skills",
        "--no-hub",
        "--no-demo",
    )
    url_m2 = up.wait_for_line(r"listening on (ws://\S+)").group(1)
    status = call_until_ok(state, url_m2, "persona:demo", "persona.status")
    assert "demo" == status["id"]

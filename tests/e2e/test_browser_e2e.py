"""The browser worker end to end: real processes (bus, `personad browser`, a persona, the CLI)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from daemon.browser.images import image_size
from tests.conftest import REPO, WAIT, run_cli, start_bus_process
from tests.daemon.browser.pages import serve_pages


@pytest.fixture
def pages():
    """A local HTTP server with known pages (tests/daemon/browser/pages.py)."""
    with serve_pages() as server:
        yield server


def cli(state, url: str, *args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    """``python -m daemon call ...`` as a person would type it (admin token from the state dir)."""
    return run_cli(state, *args, url=url, timeout=timeout)


def call_json(state, url: str, target: str, method: str, params: dict) -> dict:
    out = cli(state, url, "call", target, method, json.dumps(params))
    assert 0 == out.returncode, out.stderr
    return json.loads(out.stdout)


def start_worker(spawn, url: str, *args: str):
    """``personad browser`` with ``args``: the test pages are on 127.0.0.1, so callers allow them."""
    worker = spawn("browser", *args, env={"PERSONAD_URL": url})
    worker.wait_for_line(r"personad browser: browser:headless serving cap:browser")
    return worker


def chromium_of(pid: int) -> psutil.Process:
    """The Chromium browser process a worker started (the one holding the debugging pipe)."""
    for child in psutil.Process(pid).children(recursive=True):
        if "--remote-debugging-pipe" in child.cmdline() and not any(
            arg.startswith("--type=") for arg in child.cmdline()
        ):
            return child
    raise AssertionError(f"no Chromium under pid {pid}")


def test_the_worker_serves_the_cli_and_survives_a_chromium_kill(state, spawn, pages) -> None:
    """CLI browser_js and screenshot through `personad browser`; SIGKILL Chromium mid-request, then retry."""
    _bus, url = start_bus_process(spawn)
    worker = start_worker(spawn, url, "--allow", pages.url.removeprefix("http://"))
    value = call_json(
        state, url, "cap:browser", "browser_js", {"script": "document.title", "url": pages.url + "/"}
    )
    assert {"value": "personad test page", "url": pages.url + "/"} == value
    # Each CLI run is a new client (cli:<random>), so a new context: give the url again.
    shot = call_json(
        state,
        url,
        "cap:browser",
        "screenshot",
        {"url": pages.url + "/", "viewport": {"width": 320, "height": 200}},
    )
    data = base64.b64decode(shot["data"]["$bytes"])  # bytes travel as {"$bytes": base64} in JSON
    assert ("png", 320, 200) == image_size(data)
    assert hashlib.sha256(data).hexdigest() == shot["sha256"]

    env = {**os.environ, "PERSONAD_STATE_DIR": str(state.root), "PERSONAD_URL": url}
    hanging = subprocess.Popen(
        [sys.executable, "-m", "daemon", "call", "cap:browser", "browser_js",
         json.dumps({"script": "new Promise(() => {})", "timeout_ms": 60_000})],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        health_url = url.replace("ws://", "http://") + "/healthz"
        deadline = time.monotonic() + WAIT
        while json.load(urllib.request.urlopen(health_url, timeout=WAIT))["inflight"] < 1:
            assert time.monotonic() < deadline, "the request never reached the bus"
            time.sleep(0.02)
        chromium = chromium_of(worker.popen.pid)
        chromium.kill()
        _out, err = hanging.communicate(timeout=WAIT)
    finally:
        hanging.kill()
    assert 1 == hanging.returncode
    assert err.startswith("error 1008: Chromium was killed by signal 9 (SIGKILL) during the request"), (
        err + worker.output()
    )
    again = call_json(state, url, "cap:browser", "browser_js", {"script": "6 * 7"})
    assert 42 == again["value"]
    second = chromium_of(worker.popen.pid)
    assert chromium.pid != second.pid
    # SIGTERM: the worker stops cleanly, Chromium with it, its temporary profile removed.
    assert 0 == worker.stop(signal.SIGTERM)
    assert not second.is_running() or second.status() == psutil.STATUS_ZOMBIE
    assert [] == list(Path(tempfile.gettempdir()).glob(f"personad-chromium-{worker.popen.pid}-*"))


def test_without_chromium_the_worker_says_how_to_install_it(state, spawn) -> None:
    """`personad browser` with no Chromium exits 2 with the apt-get command."""
    worker = spawn("browser", "--chromium", "/nonexistent/chromium")
    assert 2 == worker.popen.wait(WAIT)
    output = worker.output()
    assert "Chromium not found at /nonexistent/chromium" in output
    assert "apt-get install -y chromium chromium-driver" in output


def test_a_persona_daemon_takes_a_screenshot_and_reads_a_page_as_itself(
    state, spawn, pages, tmp_path
) -> None:
    """`call persona:demo screenshot` lands in its session dir; browser_js needs (and uses) its grant."""
    _bus, url = start_bus_process(spawn)
    worker = start_worker(spawn, url, "--allow", pages.url.removeprefix("http://"))
    # The persona's own token, issued here so the test says which grants it has.
    token, _ = state.tokens().add(
        name="persona:demo",
        role="persona",
        subject="persona:demo",
        extra_grants=("screenshot@cap:browser", "browser_js@cap:browser"),
    )
    spawn("persona", "demo", env={"PERSONAD_URL": url, "PERSONAD_TOKEN": token})
    deadline = time.monotonic() + WAIT
    while (out := cli(state, url, "call", "persona:demo", "persona.ping")).returncode != 0:
        assert time.monotonic() < deadline, out.stderr
        time.sleep(0.1)
    result = call_json(
        state,
        url,
        "persona:demo",
        "screenshot",
        {"url": pages.url + "/", "viewport": {"width": 400, "height": 300}, "filename": "../../demo.png"},
    )
    path = state.root / "personas" / "demo" / "artifacts" / "screenshots" / "demo.png"
    assert ("artifacts/screenshots/demo.png", str(path)) == (result["path"], result["abs_path"])
    data = path.read_bytes()
    assert (hashlib.sha256(data).hexdigest(), ("png", 400, 300)) == (result["sha256"], image_size(data))
    # Its context is its own and lives on: the page it loaded is still there.
    value = call_json(state, url, "persona:demo", "browser_js", {"script": "document.title"})
    assert {"value": "personad test page", "url": pages.url + "/"} == value
    # A persona without the grant is refused by the bus, whoever asks it.
    plain, _ = state.tokens().add(name="persona:plain", role="persona", subject="persona:plain")
    (tmp_path / "config" / "personas").mkdir(parents=True)
    (tmp_path / "config" / "personas" / "plain.toml").write_text('id = "plain"\nname = "Plain"\n')
    env = {"PERSONAD_URL": url, "PERSONAD_TOKEN": plain, "PERSONAD_CONFIG_DIR": str(tmp_path / "config")}
    spawn("persona", "plain", env=env)
    deadline = time.monotonic() + WAIT
    while (
        refused := cli(state, url, "call", "persona:plain", "browser_js", '{"script": "1"}')
    ).stderr.startswith("error -32001"):  # not connected yet
        assert time.monotonic() < deadline, refused.stderr
        time.sleep(0.1)
    assert (1, "error -32003: token 'persona:plain' may not call browser_js on cap:browser") == (
        refused.returncode,
        refused.stderr.strip(),
    )
    assert 0 == worker.stop(signal.SIGTERM)

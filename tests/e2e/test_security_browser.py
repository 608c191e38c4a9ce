"""Finding 3 (SSRF through the browser) end to end: real processes, as an operator runs them.

`personad bus`, `personad browser` (its own process, its own Chromium) and the
CLI; then `personad up`, whose demo page is reachable only because the
supervisor allow-lists its address. tests/daemon/browser/test_network_policy.py
covers every bypass form and subrequest kind in detail.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.conftest import WAIT, run_cli, start_bus_process
from tests.daemon.browser.pages import serve_pages

from .test_browser_e2e import start_worker


@pytest.fixture
def pages():
    with serve_pages() as server:
        yield server


def browser_js(state, url: str, page: str, script: str):
    return run_cli(
        state, "call", "cap:browser", "browser_js", json.dumps({"url": page, "script": script}), url=url
    )


def test_the_worker_process_refuses_loopback_and_the_bus_unless_allowed(state, spawn, pages) -> None:
    """`personad browser` denies the bus's /metrics and a loopback page; --allow and the env open one port."""
    _bus, bus_url = start_bus_process(spawn)
    port = pages.url.rsplit(":", 1)[1]
    # Nothing allowed: the page server and the bus's own HTTP endpoint are loopback.
    worker = start_worker(spawn, bus_url)
    metrics = bus_url.replace("ws://", "http://") + "/metrics"
    for page in (
        pages.url + "/",
        metrics,
        f"http://0x7f000001:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
    ):
        out = browser_js(state, bus_url, page, "document.body.innerText")
        assert 0 != out.returncode, out.stdout
        assert "blocked by the browser's network policy" in out.stderr, out.stderr
        assert "loopback 127.0.0.0/8" in out.stderr
    worker.stop()
    # The same worker, allowed the page server's port by the environment: that port, and only it.
    worker = spawn("browser", env={"PERSONAD_URL": bus_url, "PERSONAD_BROWSER_ALLOW": f"127.0.0.1:{port}"})
    worker.wait_for_line(r"personad browser: browser:headless serving cap:browser", timeout=WAIT)
    out = browser_js(state, bus_url, pages.url + "/", "document.title")
    assert 0 == out.returncode, out.stderr
    assert "personad test page" == json.loads(out.stdout)["value"]
    out = browser_js(state, bus_url, metrics, "document.body.innerText")
    assert "blocked by the browser's network policy" in out.stderr


def test_a_bad_allow_entry_stops_the_worker_saying_what_is_accepted(state, spawn) -> None:
    _bus, bus_url = start_bus_process(spawn)
    worker = spawn("browser", "--allow", "http://127.0.0.1:8000/", env={"PERSONAD_URL": bus_url})
    assert 0 != worker.popen.wait(WAIT)
    assert "invalid browser allow-list entry 'http://127.0.0.1:8000/'" in worker.output()


def test_up_shows_the_browser_demo_through_the_allow_list(state, spawn) -> None:
    """`personad up` (no inference): the demo page on 127.0.0.1 loads because the supervisor allows it."""
    up = spawn("up", "--port", "0", "--no-inference")
    up.wait_for_line(r"cap:browser is up", timeout=WAIT * 4)
    up.wait_for_line(r"and read #answer with browser_js: ", timeout=WAIT * 4)
    up.wait_for_line(r"Ctrl-C stops everything")
    assert 0 == up.stop(signal.SIGINT)

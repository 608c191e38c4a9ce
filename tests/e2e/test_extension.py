"""The browser extension for real: paired by the CLI, loaded into headless Chromium, driven from the CLI.

Chromium 156 loads an unpacked extension with ``--load-extension`` in its
(new) headless mode; we pass ``--headless=new`` (daemon/browser/chromium.py).
The test reads the extension's own state through CDP, attached to its
service worker (``globalThis.personad``, ``chrome.notifications.getAll()``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import sys
import time
from typing import Any

import pytest

from daemon.browser.chromium import Chromium
from daemon.browser.extension import manifest_id
from daemon.browser.images import image_size
from tests.conftest import REPO, WAIT, start_bus_process
from tests.daemon.browser.pages import png_pixel, serve_pages

#: The id Chromium derives from the manifest's pinned key (docs/browser.md).
EXTENSION_ID = "amoadhonegbkdjjblhocnoklhidgajnn"
ORIGIN = f"chrome-extension://{EXTENSION_ID}"


@pytest.fixture
def pages():
    """A local HTTP server with known pages (tests/daemon/browser/pages.py)."""
    with serve_pages() as server:
        yield server


async def cli(state, url: str, *args: str) -> tuple[int, str, str]:
    """``python -m daemon ...`` as a separate process, without blocking the loop."""
    env = {**os.environ, "PERSONAD_STATE_DIR": str(state.root), "PERSONAD_URL": url}
    env.pop("PERSONAD_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args, env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def call(state, url: str, target: str, method: str, params: dict[str, Any] | None = None) -> Any:
    code, out, err = await cli(state, url, "call", target, method, json.dumps(params or {}))
    assert 0 == code, err
    return json.loads(out)


async def until(predicate, what: str) -> Any:
    """Await ``predicate()`` (async) until truthy, within WAIT."""
    deadline = time.monotonic() + WAIT
    while not (value := await predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return value


class ServiceWorker:
    """The extension's service worker, read through CDP (Target.attachToTarget, Runtime.evaluate)."""

    def __init__(self, browser: Chromium) -> None:
        self.cdp = browser.cdp
        self.session: str | None = None

    async def evaluate(self, expression: str) -> Any:
        if self.session is None:
            targets = (await self.cdp.send("Target.getTargets"))["targetInfos"]
            workers = [t for t in targets if t["type"] == "service_worker" and t["url"].startswith(ORIGIN)]
            if not workers:
                return None  # not registered yet
            worker = workers[0]
            attached = await self.cdp.send(
                "Target.attachToTarget", {"targetId": worker["targetId"], "flatten": True}
            )
            self.session = attached["sessionId"]
        result = await self.cdp.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session_id=self.session,
        )
        return result["result"].get("value")


async def test_the_extension_pairs_connects_serves_and_notifies(state, spawn, pages, tmp_path) -> None:
    """Paired by the CLI, loaded in headless Chromium: it joins, serves both commands, shows events."""
    assert EXTENSION_ID == manifest_id()
    bus, url = start_bus_process(spawn)  # without --allow-origin: the extension must be refused
    code, out, err = await cli(
        state, url, "extension", "pair", "--name", "e2e", "--out", str(tmp_path / "ext"),
        "--topic", "persona.*", "--heartbeat", "1",
    )  # fmt: skip
    assert 0 == code, err
    assert f"extension id: {EXTENSION_ID}" in out
    assert f"personad bus --allow-origin {ORIGIN}" in out
    config = json.loads((tmp_path / "ext" / "config.json").read_text())
    assert (url, "e2e", ["persona.*"]) == (config["url"], config["name"], config["topics"])
    assert 0o600 == (tmp_path / "ext" / "config.json").stat().st_mode & 0o777

    browser = await Chromium.launch(extensions=[tmp_path / "ext"])
    try:
        sw = ServiceWorker(browser)

        async def state_is(expected: str) -> bool:
            return expected == await sw.evaluate("globalThis.personad?.state")

        # The bus refuses the Origin it does not know (HTTP 403): the extension keeps retrying.
        await until(lambda: state_is("reconnecting"), "the extension to be refused and retry")
        bus.stop()
        port = int(url.rsplit(":", 1)[1])
        spawn("bus", "--port", str(port), "--allow-origin", ORIGIN).wait_for_line(r"listening on ws://")

        async def connected() -> bool:
            clients = await call(state, url, "bus", "bus.clients", {"kind": "extension"})
            return ["extension:e2e"] == [c["id"] for c in clients["clients"]]

        await until(connected, "extension:e2e on the bus")

        result = await call(
            state, url, "extension:e2e", "browser_js",
            {"script": "document.querySelector('#value').textContent", "url": pages.url + "/"},
        )  # fmt: skip
        assert {"value": "forty-two", "url": pages.url + "/"} == result
        code, _out, err = await cli(
            state, url, "call", "extension:e2e", "browser_js", json.dumps({"script": "null.x"})
        )
        assert (1, True) == (code, err.startswith("error 1001: the page's script threw: TypeError"))

        visible = await call(state, url, "extension:e2e", "screenshot", {})  # chrome.tabs.captureVisibleTab
        data = base64.b64decode(visible["data"]["$bytes"])
        assert (hashlib.sha256(data).hexdigest(), "png") == (visible["sha256"], image_size(data)[0])
        assert (visible["width"], visible["height"]) == image_size(data)[1:]
        box = await call(state, url, "extension:e2e", "screenshot", {"selector": "#box"})  # chrome.debugger
        data = base64.b64decode(box["data"]["$bytes"])
        assert ("png", 200, 100) == image_size(data)
        assert (255, 0, 0) == png_pixel(data, 100, 50)

        # An event on a subscribed topic becomes a browser notification.
        delivered = await call(
            state,
            url,
            "bus",
            "bus.publish",
            {"topic": "persona.demo.notice", "data": {"text": "hello from the bus"}},
        )
        assert {"delivered": 1} == delivered

        async def notified() -> Any:
            return await sw.evaluate(
                "(async () => { const shown = await chrome.notifications.getAll();"
                " return personad.notifications.filter(n => n.id in shown).map(n => n.message); })()"
            )

        assert ["hello from the bus"] == await until(notified, "the notification")
        # Heartbeats (every second here) are answered by the bus.
        await until(lambda: sw.evaluate("personad.stats.heartbeats >= 2"), "two heartbeats")
        assert re.fullmatch(r"\d+", str(await sw.evaluate("personad.stats.connects")))
    finally:
        await browser.kill()

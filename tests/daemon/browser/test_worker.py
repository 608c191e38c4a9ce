"""The headless worker through a real bus, with real Chromium and real pages."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket

import psutil
import pytest

from daemon.browser.errors import CdpClosed, LaunchError
from daemon.browser.images import image_size
from protocol import ErrorCode, RpcError
from protocol.commands.browser import BrowserErrorCode, ScreenshotResult
from tests.conftest import WAIT, eventually

from .conftest import CHROMIUM
from .pages import INDEX_HEIGHT, png_pixel


def live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies excepted)."""
    alive = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
    return alive


async def js(client, script: str, **params) -> object:
    result = await client.call("browser_js", {"script": script, **params}, to="cap:browser")
    return result["value"]


async def js_error(client, script: str, **params) -> RpcError:
    with pytest.raises(RpcError) as info:
        await client.call("browser_js", {"script": script, **params}, to="cap:browser")
    return info.value


# -- browser_js -------------------------------------------------------------------------


async def test_browser_js_returns_every_json_type(worker, connect) -> None:
    """null, booleans, integers, floats, strings, arrays and objects come back as themselves."""
    caller = await connect()
    script = (
        "({n: null, t: true, f: false, i: 42, x: 1.5, neg: -7, s: 'héllo', a: [1, 'two', [3]], o: {k: {}}})"
    )
    expected = {
        "n": None,
        "t": True,
        "f": False,
        "i": 42,
        "x": 1.5,
        "neg": -7,
        "s": "héllo",
        "a": [1, "two", [3]],
        "o": {"k": {}},
    }
    assert expected == await js(caller, script)
    for script, value in [("null", None), ("true", True), ("3", 3), ("2.5", 2.5), ("'s'", "s"), ("[]", [])]:
        assert value == await js(caller, script)
    assert None is await js(caller, "undefined")


async def test_browser_js_awaits_promises_and_reads_the_page(worker, connect, pages) -> None:
    """A promise is awaited (unless await_promise is false); the script sees the page at url."""
    caller = await connect()
    assert "late" == await js(caller, "new Promise(r => setTimeout(() => r('late'), 50))")
    assert {} == await js(caller, "new Promise(r => setTimeout(r, 10))", await_promise=False)
    result = await caller.call(
        "browser_js",
        {"script": "document.querySelector('#value').textContent", "url": pages.url + "/"},
        to="cap:browser",
    )
    assert {"value": "forty-two", "url": pages.url + "/"} == result
    # Without url, the same page is still there: it is the caller's own.
    assert "personad test page" == await js(caller, "document.title")


async def test_browser_js_reports_thrown_errors_with_the_page_text(worker, connect) -> None:
    """A throw or a rejection is SCRIPT_ERROR carrying the exception's text."""
    caller = await connect()
    error = await js_error(caller, "throw new TypeError('boom')")
    assert (BrowserErrorCode.SCRIPT_ERROR, "the page's script threw: TypeError: boom") == (
        error.code,
        error.message,
    )
    assert error.data["exception"].startswith("TypeError: boom")
    error = await js_error(caller, "Promise.reject(new Error('nope'))")
    assert BrowserErrorCode.SCRIPT_ERROR == error.code
    assert "Error: nope" in error.message
    error = await js_error(caller, "throw 'plain string'")
    assert "plain string" in error.message
    error = await js_error(caller, "this is not javascript")
    assert "SyntaxError" in error.message


async def test_browser_js_timeouts_are_clear_and_the_page_recovers(worker, connect) -> None:
    """A busy loop and a promise that never settles both end in SCRIPT_TIMEOUT; the next script runs."""
    caller = await connect()
    for script in ("while (true) {}", "new Promise(() => {})"):
        loop = asyncio.get_running_loop()
        started = loop.time()
        error = await js_error(caller, script, timeout_ms=300)
        assert (BrowserErrorCode.SCRIPT_TIMEOUT, "the script did not finish within 300 ms") == (
            error.code,
            error.message,
        )
        assert loop.time() - started < WAIT / 3
    assert 2 == await js(caller, "1 + 1")


async def test_values_json_cannot_carry_are_refused(worker, connect) -> None:
    """NaN, Infinity, BigInt and window are NOT_SERIALIZABLE, not silently mangled."""
    caller = await connect()
    for script in ("NaN", "Infinity", "10n", "window"):
        assert BrowserErrorCode.NOT_SERIALIZABLE == (await js_error(caller, script)).code, script


async def test_a_token_without_the_grant_is_refused_browser_js(worker, connect, state) -> None:
    """A persona token granted screenshot may screenshot but not browser_js: the bus answers FORBIDDEN."""
    token, _ = state.tokens().add(
        name="persona:nogrant",
        role="persona",
        subject="persona:nogrant",
        extra_grants=("screenshot@cap:browser",),
    )
    caller = await connect(token=token, kind="persona", name="nogrant")
    error = await js_error(caller, "1")
    assert (ErrorCode.FORBIDDEN, "token 'persona:nogrant' may not call browser_js on cap:browser") == (
        error.code,
        error.message,
    )
    with pytest.raises(RpcError) as info:
        await caller.call("screenshot", {}, to="cap:browser")
    assert BrowserErrorCode.NO_PAGE == info.value.code  # allowed through; the worker answered


# -- screenshot ---------------------------------------------------------------------------


async def test_screenshot_of_the_viewport_is_a_png_of_the_viewport_size(worker, connect, pages) -> None:
    """The PNG is exactly the requested viewport, its sha256 is right, its url the page's."""
    caller = await connect()
    raw = await caller.call(
        "screenshot", {"url": pages.url + "/", "viewport": {"width": 640, "height": 480}}, to="cap:browser"
    )
    shot = ScreenshotResult.model_validate(raw)
    assert ("png", 640, 480) == image_size(shot.data) == (shot.format, shot.width, shot.height)
    assert hashlib.sha256(shot.data).hexdigest() == shot.sha256
    assert pages.url + "/" == shot.url


async def test_screenshot_of_an_element_below_the_fold_and_of_the_full_page(worker, connect, pages) -> None:
    """selector clips to the element (even off-screen); full_page covers the whole document."""
    caller = await connect()
    url = pages.url + "/"
    box = await caller.call(
        "screenshot",
        {"url": url, "selector": "#box", "viewport": {"width": 800, "height": 600}},
        to="cap:browser",
    )
    assert (200, 100) == image_size(box["data"])[1:]
    # The clip is the red box itself, not whatever the viewport shows.
    assert (255, 0, 0) == png_pixel(box["data"], 100, 50) == png_pixel(box["data"], 0, 0)
    full = await caller.call(
        "screenshot", {"full_page": True, "format": "jpeg", "quality": 60}, to="cap:browser"
    )
    assert ("jpeg", 800, INDEX_HEIGHT) == image_size(full["data"])
    viewport_only = await caller.call("screenshot", {}, to="cap:browser")
    assert (800, 600) == image_size(viewport_only["data"])[1:]


async def test_screenshot_errors_are_specific(start_worker, connect, pages) -> None:
    """No page yet, no such element, a bad selector, a refused connection, a page that never loads."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    # Both local servers allow-listed: what is checked here is the connection's own failure.
    await start_worker(allow=(pages.url.removeprefix("http://"), f"127.0.0.1:{closed_port}"))
    caller = await connect()

    async def error(params: dict) -> RpcError:
        with pytest.raises(RpcError) as info:
            await caller.call("screenshot", params, to="cap:browser")
        return info.value

    assert BrowserErrorCode.NO_PAGE == (await error({})).code
    assert (
        BrowserErrorCode.ELEMENT_NOT_FOUND
        == (await error({"url": pages.url + "/", "selector": "#nope"})).code
    )
    assert ErrorCode.INVALID_PARAMS == (await error({"selector": "##"})).code
    refused = await error({"url": f"http://127.0.0.1:{closed_port}/"})
    assert BrowserErrorCode.NAVIGATION_FAILED == refused.code
    assert "ERR_CONNECTION_REFUSED" in refused.message
    slow = await error({"url": pages.url + "/slow", "load_timeout_ms": 300})
    assert (BrowserErrorCode.LOAD_TIMEOUT, f"{pages.url}/slow did not finish loading within 300 ms") == (
        slow.code,
        slow.message,
    )
    invalid = await error({"url": "file:///etc/passwd"})
    assert ErrorCode.INVALID_PARAMS == invalid.code


# -- contexts -------------------------------------------------------------------------------


async def test_each_requester_has_its_own_context(worker, connect, pages) -> None:
    """A cookie and localStorage set by one client are not seen by another; close_context forgets them."""
    alice = await connect(name="alice")
    bob = await connect(name="bob")
    url = pages.url + "/cookie"
    await js(alice, "document.cookie = 'who=alice; max-age=3600'; localStorage.setItem('k', 'a')", url=url)
    assert ["who=alice", "a"] == await js(alice, "[document.cookie, localStorage.getItem('k')]", url=url)
    assert ["", None] == await js(bob, "[document.cookie, localStorage.getItem('k')]", url=url)
    assert {"closed": True} == await alice.call("browser.close_context", {}, to="cap:browser")
    assert {"closed": False} == await alice.call("browser.close_context", {}, to="cap:browser")
    assert "" == await js(alice, "document.cookie", url=url)


async def test_navigate_and_idle_contexts_close_themselves(start_worker, connect, pages) -> None:
    """browser.navigate loads and titles the page; a context unused for idle_timeout is closed."""
    worker = await start_worker(idle_timeout=0.3)
    caller = await connect(name="idle")
    result = await caller.call("browser.navigate", {"url": pages.url + "/simple"}, to="cap:browser")
    assert {"url": pages.url + "/simple", "title": "simple"} == result
    await js(caller, "document.cookie = 'x=1; max-age=3600'")
    assert worker.context_of("cli:idle") is not None
    await eventually(lambda: worker.context_of("cli:idle") is None, what="the idle context to close")
    assert "" == await js(caller, "document.cookie", url=pages.url + "/simple")


async def test_concurrency_is_bounded_and_overload_is_answered(start_worker, connect) -> None:
    """With one slot and one queue place, a third request at once is OVERLOADED, the others succeed."""
    worker = await start_worker(max_concurrency=1, max_waiting=1)
    clients = [await connect(name=f"c{i}") for i in range(3)]
    calls = [
        asyncio.ensure_future(js(c, "new Promise(r => setTimeout(() => r(1), 500))")) for c in clients[:2]
    ]
    await eventually(lambda: 1 == worker._waiting, what="one request running and one waiting")
    error = await js_error(clients[2], "1")
    assert ErrorCode.OVERLOADED == error.code
    assert [1, 1] == await asyncio.gather(*calls)


# -- crashes -------------------------------------------------------------------------------


async def test_killing_chromium_mid_request_fails_that_request_and_the_next_succeeds(
    worker, connect, pages
) -> None:
    """SIGKILL to Chromium: the request in flight gets BROWSER_CRASHED at once; Chromium is relaunched."""
    caller = await connect()
    await js(caller, "1")  # a context exists
    pending = asyncio.ensure_future(js(caller, "new Promise(() => {})", timeout_ms=60_000))
    await eventually(lambda: worker.context_of("cli:" + caller.client_id.split(":")[1]).lock.locked())
    first = worker.browser
    os.kill(first.pid, signal.SIGKILL)
    with pytest.raises(RpcError) as info:
        await asyncio.wait_for(pending, WAIT)
    assert BrowserErrorCode.BROWSER_CRASHED == info.value.code
    assert "Chromium was killed by signal 9 (SIGKILL) during the request" in info.value.message
    assert "personad test page" == await js(caller, "document.title", url=pages.url + "/")
    assert 2 == worker.launches
    assert first is not worker.browser
    await eventually(lambda: not live_group_members(first.pid), what="the old Chromium's processes to end")


async def test_a_crashed_renderer_gets_a_new_page_in_the_same_context(worker, connect, pages) -> None:
    """When the page's renderer dies, the request errors and the next one runs in a new page, cookies kept."""
    caller = await connect(name="crashy")
    url = pages.url + "/cookie"
    await js(caller, "document.cookie = 'kept=yes; max-age=3600'", url=url)
    ctx = worker.context_of("cli:crashy")
    crashing = asyncio.ensure_future(js(caller, "new Promise(() => {})", timeout_ms=60_000))
    await eventually(lambda: ctx.lock.locked())
    # Page.crash (CDP) makes the renderer crash, as an out-of-memory page would.
    # The renderer dies before it can answer; Inspector.targetCrashed then
    # fails every command of that page's session (cdp.py, fail_session) — the
    # request in flight and Page.crash itself — so neither can hang or succeed.
    crash = asyncio.ensure_future(worker.browser.cdp.send("Page.crash", session_id=ctx.session_id))
    with pytest.raises(RpcError) as info:
        await asyncio.wait_for(crashing, WAIT)
    assert BrowserErrorCode.BROWSER_CRASHED == info.value.code
    assert "the page's renderer crashed during the request; retry" == info.value.message
    with pytest.raises(CdpClosed, match="the page's renderer crashed"):
        await asyncio.wait_for(crash, WAIT)
    assert "kept=yes" == await js(caller, "document.cookie", url=url)
    assert 1 == worker.launches


async def test_a_chromium_that_cannot_start_is_reported_not_waited_for(
    start_worker, connect, tmp_path
) -> None:
    """A failed first launch raises LaunchError; a failed relaunch makes requests BROWSER_UNAVAILABLE."""
    broken = tmp_path / "broken"
    wrapper = tmp_path / "chromium"
    wrapper.write_text(
        f"#!/bin/sh\n[ -e {broken} ] && {{ echo 'chromium: cannot open display' >&2; exit 1; }}\n"
        f'exec {CHROMIUM} "$@"\n'
    )
    wrapper.chmod(0o755)
    broken.touch()
    with pytest.raises(LaunchError, match="cannot open display"):
        await start_worker(executable=str(wrapper))
    broken.unlink()
    worker = await start_worker(executable=str(wrapper))
    caller = await connect()
    assert 1 == await js(caller, "1")
    broken.touch()
    os.kill(worker.browser.pid, signal.SIGKILL)
    await eventually(lambda: worker.browser is None, what="the worker to see the crash")
    error = await js_error(caller, "1")
    assert BrowserErrorCode.BROWSER_UNAVAILABLE == error.code
    assert "cannot open display" in error.message

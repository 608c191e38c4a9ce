"""Personas run screenshot and browser_js as themselves, and keep what they get."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from daemon.browser.images import image_size
from protocol import ErrorCode, RpcError
from protocol.commands import get
from protocol.commands.browser import BrowserErrorCode

from .pages import png_pixel


def files_under(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


async def test_a_persona_screenshot_lands_in_its_own_artifacts_and_nowhere_else(
    worker, persona, connect, pages, state, tmp_path
) -> None:
    """The PNG of the asked size is saved 0600 under the persona's artifacts/screenshots; sha256 matches."""
    ada = await persona("ada", grants=("screenshot@cap:browser",))
    await persona("bob")
    caller = await connect()
    before = files_under(tmp_path)
    result = await caller.call(
        "screenshot",
        {"url": pages.url + "/", "viewport": {"width": 640, "height": 360}, "filename": "front page.png"},
        to="persona:ada",
    )
    get("screenshot", served_by="persona").result.model_validate(result)  # the persona's published schema
    path = ada.session_dir.root / "artifacts" / "screenshots" / "front_page.png"
    assert ("artifacts/screenshots/front_page.png", str(path)) == (result["path"], result["abs_path"])
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == result["sha256"]
    assert ("png", 640, 360, len(data)) == (*image_size(data), result["size"])
    assert (640, 360, pages.url + "/") == (result["width"], result["height"], result["url"])
    assert (255, 255, 255) == png_pixel(data, 10, 10)  # the page's white, rendered for real
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    assert 0o700 == stat.S_IMODE(path.parent.stat().st_mode)
    assert result.get("data") is None  # bytes only when asked
    # Nothing else was written anywhere in the test's tree: not in bob's folder,
    # not by the worker (it has no business writing anything of a persona's).
    assert {str(path.relative_to(tmp_path))} == files_under(tmp_path) - before


async def test_hostile_filenames_are_neutralised_and_nothing_is_overwritten(
    worker, persona, connect, pages
) -> None:
    """../../x.png stays inside screenshots/ as x.png; a second one becomes x-1.png; bytes when asked."""
    ada = await persona("ada", grants=("screenshot@cap:browser",))
    caller = await connect()
    shots = ada.session_dir.root / "artifacts" / "screenshots"
    first = await caller.call(
        "screenshot", {"url": pages.url + "/", "filename": "../../x.png"}, to="persona:ada"
    )
    second = await caller.call(
        "screenshot", {"filename": "../../x.png", "return_bytes": True}, to="persona:ada"
    )
    assert ("artifacts/screenshots/x.png", "artifacts/screenshots/x-1.png") == (first["path"], second["path"])
    assert second["data"] == (shots / "x-1.png").read_bytes()
    assert not (ada.session_dir.root.parent.parent / "x.png").exists()
    jpeg = await caller.call("screenshot", {"filename": "/etc/.passwd", "format": "jpeg"}, to="persona:ada")
    assert "artifacts/screenshots/passwd.jpg" == jpeg["path"]
    assert {"x.png", "x-1.png", "passwd.jpg"} == {p.name for p in shots.iterdir()}


async def test_persona_browser_js_needs_the_persona_s_own_grant(worker, persona, connect, pages) -> None:
    """Without browser_js@cap:browser the persona's request is FORBIDDEN; with it, the value comes back."""
    await persona("plain")
    await persona("trusted", grants=("browser_js@cap:browser",))
    caller = await connect()
    with pytest.raises(RpcError) as info:
        await caller.call("browser_js", {"script": "1 + 1"}, to="persona:plain")
    assert (ErrorCode.FORBIDDEN, "token 'persona:plain' may not call browser_js on cap:browser") == (
        info.value.code,
        info.value.message,
    )
    result = await caller.call(
        "browser_js",
        {"script": "document.querySelector('#value').textContent", "url": pages.url + "/"},
        to="persona:trusted",
    )
    assert {"value": "forty-two", "url": pages.url + "/"} == result
    with pytest.raises(RpcError) as info:
        await caller.call("browser_js", {"script": "throw new Error('inner')"}, to="persona:trusted")
    assert (BrowserErrorCode.SCRIPT_ERROR, "the page's script threw: Error: inner") == (
        info.value.code,
        info.value.message,
    )


async def test_two_personas_do_not_share_cookies(worker, persona, connect, pages) -> None:
    """A cookie set by one persona (as itself) is not seen by another, nor by the caller."""
    await persona("ada", grants=("browser_js@cap:browser",))
    await persona("bob", grants=("browser_js@cap:browser",))
    caller = await connect()
    url = pages.url + "/cookie"

    async def run(target: str, script: str) -> object:
        return (await caller.call("browser_js", {"script": script, "url": url}, to=target))["value"]

    await run("persona:ada", "document.cookie = 'owner=ada; max-age=3600'")
    assert "owner=ada" == await run("persona:ada", "document.cookie")
    assert "" == await run("persona:bob", "document.cookie")
    assert "" == await run("cap:browser", "document.cookie")  # the caller's own context
    assert {"persona:ada", "persona:bob"} <= set(worker._contexts)


async def test_without_a_browser_provider_the_persona_says_so(persona, connect) -> None:
    """No cap:browser on the bus: the persona relays TARGET_OFFLINE, promptly and clearly."""
    await persona("ada", grants=("screenshot@cap:browser",))
    caller = await connect()
    with pytest.raises(RpcError) as info:
        await caller.call("screenshot", {"url": "http://127.0.0.1:9/"}, to="persona:ada", deadline_ms=5000)
    assert (ErrorCode.TARGET_OFFLINE, "cap:browser is not connected") == (info.value.code, info.value.message)


def test_the_screenshots_folder_is_private_and_made_at_start(state) -> None:
    """register_universal_commands creates artifacts/screenshots 0700 (strict layout at start-up)."""
    from daemon.dispatch import Dispatcher
    from daemon.persona.session_dir import prepare_session_dir
    from daemon.persona.universal import register_universal_commands

    session = prepare_session_dir(state.root, "ada")
    dispatcher = Dispatcher()
    register_universal_commands(dispatcher, client=None, session_dir=session)  # type: ignore[arg-type]
    folder = session.root / "artifacts" / "screenshots"
    assert 0o700 == stat.S_IMODE(os.lstat(folder).st_mode)
    assert {"browser_js", "screenshot"} <= set(dispatcher.methods)

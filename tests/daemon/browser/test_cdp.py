"""The CDP pipe client and the Chromium launcher, against real Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess

import pytest

from daemon import runtime
from daemon.browser.cdp import CdpConnection
from daemon.browser.chromium import Chromium, chromium_environment, remove_stale_profiles
from daemon.browser.errors import CdpClosed, CdpError, ChromiumNotFound, LaunchError
from tests.conftest import WAIT

from .conftest import CHROMIUM


async def test_commands_events_and_flat_sessions() -> None:
    """Answers match ids, errors carry CDP's code, events reach subscribers, sessions are flat."""
    browser = await Chromium.launch(CHROMIUM)
    try:
        cdp = browser.cdp
        assert browser.version.startswith(("Chrome/", "HeadlessChrome/"))
        with pytest.raises(CdpError) as info:
            await cdp.send("Nope.nothing")
        assert -32601 == info.value.code  # JSON-RPC's method not found, as CDP says it
        with cdp.subscribe("Target.targetCreated") as created:
            await cdp.send("Target.setDiscoverTargets", {"discover": True})
            target = await cdp.send("Target.createTarget", {"url": "about:blank"})
            async with asyncio.timeout(WAIT):
                while (await created.get())["targetInfo"]["targetId"] != target["targetId"]:
                    pass
        session = (
            await cdp.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        )["sessionId"]
        answers = await asyncio.gather(
            *(cdp.send("Runtime.evaluate", {"expression": f"{i} * 2"}, session_id=session) for i in range(20))
        )
        assert list(range(0, 40, 2)) == [a["result"]["value"] for a in answers]
        await cdp.send("Target.closeTarget", {"targetId": target["targetId"]})

        async def until_detached() -> None:
            while True:  # until Target.detachedFromTarget has been seen
                with contextlib.suppress(CdpError):  # "target closed" while it is closing
                    await cdp.send("Runtime.evaluate", {"expression": "1"}, session_id=session)

        with pytest.raises(CdpClosed, match="the page was closed"):
            await asyncio.wait_for(until_detached(), WAIT)
        with pytest.raises(CdpClosed, match="the page was closed"):  # and at once from now on
            await cdp.send("Runtime.evaluate", {"expression": "1"}, session_id=session)
    finally:
        await browser.kill()
    assert not browser.user_data_dir.exists()


async def test_a_killed_chromium_fails_everything_in_flight_at_once() -> None:
    """SIGKILL: the pending command, the subscription and later sends fail with CdpClosed at once."""
    browser = await Chromium.launch(CHROMIUM)
    target = await browser.cdp.send("Target.createTarget", {"url": "about:blank"})
    session = (
        await browser.cdp.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
    )["sessionId"]
    with browser.cdp.subscribe("Page.loadEventFired", session_id=session) as never:
        pending = asyncio.ensure_future(
            browser.cdp.send(
                "Runtime.evaluate",
                {"expression": "new Promise(() => {})", "awaitPromise": True},
                session_id=session,
            )
        )
        await asyncio.sleep(0)
        os.kill(browser.pid, signal.SIGKILL)
        # Pipe EOF or the pidfd, whichever Chromium's death shows first.
        with pytest.raises(CdpClosed, match=r"killed by signal 9 \(SIGKILL\)|closed its debugging pipe"):
            await asyncio.wait_for(pending, WAIT)
        with pytest.raises(CdpClosed):
            await asyncio.wait_for(never.get(), WAIT)
    assert os.WIFSIGNALED(await asyncio.wait_for(browser.wait_exited(), WAIT))
    with pytest.raises(CdpClosed):
        await browser.cdp.send("Browser.getVersion")
    assert isinstance(await browser.cdp.wait_closed(), CdpClosed)
    await browser.kill()
    assert not browser.user_data_dir.exists()


async def test_launch_failures_are_clear(tmp_path) -> None:
    """A missing executable is ChromiumNotFound (with the install command); one that exits is LaunchError."""
    with pytest.raises(ChromiumNotFound, match="apt-get install -y chromium chromium-driver"):
        await Chromium.launch(str(tmp_path / "no-chromium"))
    fake = tmp_path / "fake-chromium"
    fake.write_text("#!/bin/sh\necho 'fake: cannot open display' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(LaunchError, match="fake: cannot open display"):
        await asyncio.wait_for(Chromium.launch(str(fake)), WAIT)


async def broken_write_pipe() -> None:
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    cdp = CdpConnection()
    await cdp.open(from_chrome_r, to_chrome_w)
    os.close(to_chrome_r)  # "Chromium" stops reading; its writing end stays open: no EOF for us
    try:

        async def send_until_it_fails() -> None:
            while True:
                await cdp.send("Browser.getVersion")

        with pytest.raises(CdpClosed, match="the pipe to Chromium broke"):
            await asyncio.wait_for(send_until_it_fails(), WAIT)
    finally:
        os.close(from_chrome_w)
        await cdp.aclose()


@pytest.mark.parametrize("run", [asyncio.run, runtime.run], ids=["asyncio", "uvloop"])
def test_a_broken_write_pipe_fails_commands_instead_of_hanging(run) -> None:
    """When Chromium's reading end goes first (EPIPE before EOF), commands fail with CdpClosed."""
    run(broken_write_pipe())


def test_profiles_of_dead_workers_are_removed_and_no_others(tmp_path) -> None:
    """A profile whose worker pid is gone is removed; ours and a live process's stay."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"personad-chromium-{dead.pid}-abc"
    mine = tmp_path / f"personad-chromium-{os.getpid()}-def"
    alive = tmp_path / "personad-chromium-1-ghi"
    for path in (stale, mine, alive):
        (path / "Default").mkdir(parents=True)
    assert [stale] == remove_stale_profiles(tmp_path)
    assert (False, True, True) == (stale.exists(), mine.exists(), alive.exists())


def test_chromium_does_not_inherit_our_secrets(monkeypatch) -> None:
    """PERSONAD_TOKEN and systemd's sockets stay with the worker; the rest is passed on."""
    monkeypatch.setenv("PERSONAD_TOKEN", "pd_secret")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/notify")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = chromium_environment()
    assert ("C.UTF-8", None, None) == (env.get("LANG"), env.get("PERSONAD_TOKEN"), env.get("NOTIFY_SOCKET"))

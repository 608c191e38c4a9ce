"""Chromium's sandbox: on wherever it can work, and said once, at WARNING, where it cannot.

Whether it works is checked on the processes themselves: a sandboxed
renderer lives in a user namespace of its own (Chromium's namespace
sandbox), an unsandboxed one shares the browser's.
"""

from __future__ import annotations

import asyncio
import logging
import os
from functools import partial
from pathlib import Path

import psutil
import pytest

from daemon.browser import chromium
from daemon.browser.chromium import Chromium, sandbox_unavailable
from tests.conftest import WAIT, eventually

from .conftest import CHROMIUM

#: An unprivileged user to run Chromium as when the tests run as root.
NOBODY = 65534


def renderers(browser: Chromium) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(browser.pid).children(recursive=True)
        if "--type=renderer" in child.cmdline()
    ]


def user_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/user")


async def open_page(browser: Chromium) -> None:
    """A page of our own, so that a renderer runs."""
    target = await browser.cdp.send("Target.createTarget", {"url": "about:blank"})
    await browser.cdp.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})


def as_nobody(tmp_path: Path) -> str:
    """A wrapper that runs Chromium as an unprivileged user (the tests run as root here)."""
    wrapper = tmp_path / "chromium-as-nobody"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in --user-data-dir=*) dir="${a#--user-data-dir=}";'
        f' chown -R {NOBODY}:{NOBODY} "$dir";; esac; done\n'
        f'exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups env HOME="$dir" {CHROMIUM} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


async def test_an_unprivileged_chromium_runs_its_renderers_sandboxed(tmp_path: Path) -> None:
    """As a user (not root) Chromium starts with its sandbox: renderers get their own user namespace."""
    if os.geteuid() == 0:
        executable, sandbox = as_nobody(tmp_path), True
    else:
        assert sandbox_unavailable() is None, sandbox_unavailable()
        executable, sandbox = CHROMIUM, None
    browser = await asyncio.wait_for(Chromium.launch(executable, sandbox=sandbox), WAIT)
    try:
        await open_page(browser)
        await eventually(lambda: renderers(browser), what="a renderer to start")
        cmdline = psutil.Process(browser.pid).cmdline()
        assert "--no-sandbox" not in cmdline
        assert all(user_namespace(r.pid) != user_namespace(browser.pid) for r in renderers(browser))
    finally:
        await browser.kill()


async def test_as_root_chromium_runs_unsandboxed_and_the_log_says_why_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root: --no-sandbox (Chromium refuses it otherwise) and one WARNING saying why, for many launches."""
    if os.geteuid() != 0:
        pytest.skip("only root is refused the sandbox on a kernel with user namespaces")
    monkeypatch.setattr(chromium, "_sandbox_warned", False)
    caplog.set_level(logging.WARNING, logger="personad.browser.chromium")
    for _ in range(2):
        browser = await asyncio.wait_for(Chromium.launch(CHROMIUM), WAIT)
        try:
            await open_page(browser)
            await eventually(partial(renderers, browser), what="a renderer to start")
            assert "--no-sandbox" in psutil.Process(browser.pid).cmdline()
            assert all(user_namespace(r.pid) == user_namespace(browser.pid) for r in renderers(browser))
        finally:
            await browser.kill()
    warnings = [r.getMessage() for r in caplog.records if "sandbox" in r.getMessage()]
    assert 1 == len(warnings), warnings
    assert "the worker runs as root" in warnings[0]
    assert "personad-browser.service" in warnings[0]

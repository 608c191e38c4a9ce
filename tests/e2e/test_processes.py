"""End to end with real processes: the CLI, the bus, a persona, `personad up`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request

import msgpack
import psutil
from websockets.asyncio.client import connect as ws_connect

from tests.conftest import WAIT, start_bus_process
from tests.conftest import run_cli as cli


def call_until_ok(state, url: str, *args: str) -> dict:
    deadline = time.monotonic() + WAIT
    while True:
        out = cli(state, "call", *args, url=url)
        if out.returncode == 0:
            return json.loads(out.stdout)
        if time.monotonic() > deadline:
            raise AssertionError(out.stderr)
        time.sleep(0.1)


def test_init_prints_token_once_and_stores_it_private(tmp_path) -> None:
    """init prints PERSONAD_TOKEN=… once, stores it 0600, and does not clobber on a re-run."""
    env = {**os.environ, "PERSONAD_STATE_DIR": str(tmp_path / "s")}
    first = subprocess.run(
        [sys.executable, "-m", "daemon", "init"], env=env, capture_output=True, text=True, check=True
    )
    token = next(line for line in first.stdout.splitlines() if line.startswith("PERSONAD_TOKEN="))
    stored = tmp_path / "s" / "secrets" / "admin.token"
    assert token.split("=", 1)[1] == stored.read_text().strip()
    assert 0o600 == stat.S_IMODE(stored.stat().st_mode)
    assert token.split("=", 1)[1] not in (tmp_path / "s" / "tokens.json").read_text()
    again = subprocess.run(
        [sys.executable, "-m", "daemon", "init"], env=env, capture_output=True, text=True, check=True
    )
    assert "already initialised" in again.stdout
    assert "PERSONAD_TOKEN=" not in again.stdout


def test_bus_persona_and_cli(state, spawn) -> None:
    """init, bus, persona; call persona.status; offline, no-token and bad-token errors; healthz."""
    _bus, url = start_bus_process(spawn)
    spawn("persona", "demo", env={"PERSONAD_URL": url})
    status = call_until_ok(state, url, "persona:demo", "persona.status")
    assert ("demo", "connected") == (status["id"], status["bus"]["state"])

    started = time.monotonic()
    offline = cli(state, "call", "persona:ghost", "persona.status", url=url)
    assert (1, "error -32001: persona:ghost is not connected") == (offline.returncode, offline.stderr.strip())
    assert time.monotonic() - started < WAIT  # answered, not timed out after the 30 s deadline

    wrong = cli(state, "call", "bus", "bus.ping", token="pd_not-a-token", url=url)
    assert 1 == wrong.returncode
    assert wrong.stderr.startswith("error -32006:")
    assert "refused the token" in wrong.stderr

    empty = tmp_state_without_token(state)
    missing = subprocess.run(
        [sys.executable, "-m", "daemon", "call", "bus", "bus.ping"],
        env={**os.environ, "PERSONAD_STATE_DIR": str(empty), "PERSONAD_URL": url},
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert 2 == missing.returncode
    assert "no token" in missing.stderr

    health = json.load(urllib.request.urlopen(url.replace("ws://", "http://") + "/healthz", timeout=WAIT))
    assert ("ok", 1) == (health["status"], health["clients"].get("persona"))

    status_out = cli(state, "status", url=url)
    assert 0 == status_out.returncode
    assert "persona:demo" in status_out.stdout


def tmp_state_without_token(state):
    empty = state.root.parent / "empty-state"
    empty.mkdir()
    return empty


def test_persona_survives_bus_sigkill(state, spawn) -> None:
    """SIGKILL the bus, start it again on the same port: the persona reconnects by itself."""
    bus, url = start_bus_process(spawn)
    spawn("persona", "demo", env={"PERSONAD_URL": url})
    call_until_ok(state, url, "persona:demo", "persona.ping")
    bus.stop(signal.SIGKILL)
    port = url.rsplit(":", 1)[1]
    _, url2 = start_bus_process(spawn, port=int(port))
    status = call_until_ok(state, url2, "persona:demo", "persona.status")
    assert ("connected", 1) == (status["bus"]["state"], status["bus"]["reconnects"])


def test_sigterm_stops_cleanly(state, spawn) -> None:
    """SIGTERM ends the persona and the bus with status 0, clients closed with 1001."""
    bus, url = start_bus_process(spawn)
    persona = spawn("persona", "demo", env={"PERSONAD_URL": url})
    call_until_ok(state, url, "persona:demo", "persona.ping")

    async def watch_close() -> int | None:
        async with ws_connect(
            url,
            subprotocols=["personad.v1.msgpack"],
            additional_headers={"Authorization": f"Bearer {state.admin_token}"},
        ) as ws:
            await ws.send(
                msgpack.packb(
                    {"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {"protocol": 1, "kind": "cli"}}
                )
            )
            await ws.recv()
            assert 0 == persona.stop(signal.SIGTERM)
            bus.popen.send_signal(signal.SIGTERM)
            await asyncio.wait_for(ws.wait_closed(), WAIT)
            return ws.close_code

    assert 1001 == asyncio.run(watch_close())
    # The bus had its SIGTERM above: wait for it to exit. A second one while it is still
    # shutting down may find Python's default disposition back (the loop gone) and kill it.
    assert 0 == bus.popen.wait(WAIT)
    assert "persona demo stopped" in persona.output()


def test_slow_reader_is_dropped_before_bus_memory_grows(state, spawn) -> None:
    """A subscriber that never reads is dropped; the bus's RSS grows by about the cap, not the flood."""
    bus, url = start_bus_process(spawn)
    cap = 4 * 1024 * 1024  # BusConfig.max_send_buffer default
    flood_bytes = 96 * 1024 * 1024

    async def run() -> tuple[int, bool]:
        headers = {"Authorization": f"Bearer {state.admin_token}"}
        proto = ["personad.v1.msgpack"]

        async def hello(ws, name: str) -> None:
            await ws.send(
                msgpack.packb(
                    {
                        "jsonrpc": "2.0",
                        "id": 0,
                        "method": "hello",
                        "params": {"protocol": 1, "kind": "cli", "name": name},
                    }
                )
            )
            await ws.recv()

        proc = psutil.Process(bus.popen.pid)
        async with (
            ws_connect(url, subprotocols=proto, additional_headers=headers, max_queue=1) as sleeper,
            ws_connect(url, subprotocols=proto, additional_headers=headers) as pub,
        ):
            await hello(sleeper, "sleeper")
            await hello(pub, "pub")
            await sleeper.send(
                msgpack.packb(
                    {"jsonrpc": "2.0", "id": 1, "method": "bus.subscribe", "params": {"topics": ["flood"]}}
                )
            )
            await sleeper.recv()  # and never again
            before = proc.memory_info().rss
            payload = b"z" * (64 * 1024)
            peak = before
            for i in range(flood_bytes // len(payload)):
                await pub.send(
                    msgpack.packb(
                        {
                            "jsonrpc": "2.0",
                            "id": 10 + i,
                            "method": "bus.publish",
                            "params": {"topic": "flood", "data": payload},
                        }
                    )
                )
                reply = msgpack.unpackb(await pub.recv())
                peak = max(peak, proc.memory_info().rss)
                if reply["result"]["delivered"] == 0:
                    break
            dropped = reply["result"]["delivered"] == 0
            return peak - before, dropped

    growth, dropped = asyncio.run(run())
    assert dropped, "the bus kept buffering for a client that does not read"
    assert growth < 3 * cap, f"bus RSS grew {growth / 2**20:.1f} MiB with a {cap / 2**20:.0f} MiB cap"
    assert 0 == bus.stop(signal.SIGTERM)


def test_up_killed_outright_takes_its_children_with_it(state, spawn) -> None:
    """SIGKILL of `personad up` (no chance to stop anything) still stops every child, Chromium too."""
    up = spawn("up", "--port", "0", "--no-demo", "--no-inference")
    up.wait_for_line(r"cap:browser is up", timeout=WAIT * 4)
    up.wait_for_line(r"persona:demo \(Ada\) is up")
    up.wait_for_line(r"Ctrl-C stops everything")
    children = psutil.Process(up.popen.pid).children(recursive=True)
    verbs = {c.cmdline()[5] for c in children if c.cmdline()[1:3] == ["-m", "daemon"]}
    assert {"bus", "browser", "persona"} <= verbs, verbs
    assert any("chromium" in c.name() for c in children)
    up.popen.kill()
    up.popen.wait(WAIT)
    # The kernel tells each daemon (PR_SET_PDEATHSIG), which stops as on SIGTERM:
    # the browser worker stops its Chromium as well.
    _gone, alive = psutil.wait_procs(children, timeout=WAIT * 2)
    assert [] == [p.pid for p in alive]

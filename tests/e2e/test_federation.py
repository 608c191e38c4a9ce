"""End to end, real processes: nats-server, three `personad bus --nats` nodes, a persona daemon, the CLI.

The persona daemon is given two nodes (``PERSONAD_URL=A,B``); node A is
killed outright (SIGKILL) and the persona must answer from node B, reached by
a CLI call through node C. Then `personad up --nats --no-personas` runs one
machine's part: a bus node whose callers reach the persona on another node.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.client import BusClient, CallContext
from protocol import ErrorCode, Request, RpcError
from tests.conftest import WAIT, eventually
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


def test_a_request_to_a_client_of_a_node_that_dies_is_answered(state, spawn, nats_url) -> None:
    """A call from node B to a persona on node A is in flight when A is SIGKILLed: B answers
    TARGET_OFFLINE once A's heartbeats stop, rather than leaving the caller to its deadline."""
    a, url_a = node(spawn, nats_url, "a")
    _b, url_b = node(spawn, nats_url, "b")

    async def scenario() -> tuple[RpcError, float]:
        working = asyncio.Event()

        async def handler(request: Request, ctx: CallContext) -> str:
            if request.method == "persona.ping":
                return "pong"
            working.set()
            await asyncio.sleep(3600)  # a long generation, cut short by its node's death
            return "done"

        async with (
            BusClient(url_a, token=state.admin_token, kind="persona", name="stuck", handler=handler),
            BusClient(url_b, token=state.admin_token, kind="cli", name="caller") as caller,
        ):
            async def answered() -> bool:
                try:
                    return "pong" == await caller.call("persona.ping", to="persona:stuck")
                except RpcError as exc:
                    if exc.code != ErrorCode.TARGET_OFFLINE:  # not there yet is all it may say
                        raise
                    return False

            # Through B a few times first: B has heard A's claim of persona:stuck by then.
            for _ in range(3):
                await eventually(answered, what="persona:stuck reachable through node B")
            call = asyncio.create_task(caller.call("chat", to="persona:stuck", deadline_ms=120_000))
            await asyncio.wait_for(working.wait(), WAIT)
            a.stop(signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(RpcError) as info:
                await asyncio.wait_for(call, 120)
            return info.value, time.monotonic() - killed

    error, after = asyncio.run(scenario())
    assert ErrorCode.TARGET_OFFLINE == error.code, error  # not TIMEOUT, 120 s later
    assert "its node a stopped answering" in error.message
    print(f"node A killed mid-request: the caller on B had TARGET_OFFLINE after {after:.1f} s")


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


def test_an_answer_from_before_a_node_restarted_never_reaches_a_new_request(state, spawn, nats_url) -> None:
    """Requests through node B are held by a persona on node A when B is SIGKILLed; B comes
    back, and new requests through it (its bus ids start again at 1) are held too. The old
    requests are then answered: no new caller may get one of those answers for its own."""
    _a, url_a = node(spawn, nats_url, "a")
    b, url_b = node(spawn, nats_url, "b")

    async def scenario() -> dict[str, object]:
        held: dict[str, asyncio.Event] = {}
        arrived = asyncio.Event()

        async def handler(request: Request, ctx: CallContext) -> str:
            if request.method == "persona.ping":
                return "pong"
            message = str((request.params or {}).get("message"))
            held[message] = release = asyncio.Event()
            arrived.set()
            await release.wait()
            return f"answer to {message}"

        async def reachable(caller: BusClient) -> None:
            async def answered() -> bool:
                try:
                    return "pong" == await caller.call("persona.ping", to="persona:holder")
                except RpcError as exc:
                    if exc.code != ErrorCode.TARGET_OFFLINE:
                        raise
                    return False

            for _ in range(3):
                await eventually(answered, what="persona:holder reachable through node B")

        async def hold(caller: BusClient, prefix: str, n: int) -> list[asyncio.Task[object]]:
            calls = [
                asyncio.create_task(caller.call("chat", {"message": f"{prefix}-{i}"}, to="persona:holder"))
                for i in range(n)
            ]
            await eventually(lambda: sum(m.startswith(prefix) for m in held) == n, what=f"{prefix} held")
            return calls

        async with BusClient(url_a, token=state.admin_token, kind="persona", name="holder", handler=handler):
            old_caller = BusClient(url_b, token=state.admin_token, kind="cli", name="old", reconnect=False)
            await old_caller.start()
            await reachable(old_caller)
            old_calls = await hold(old_caller, "old", 30)
            b.stop(signal.SIGKILL)
            await asyncio.gather(*old_calls, return_exceptions=True)  # CONNECTION_LOST, each
            await old_caller.close()

            _b2, url_b2 = await asyncio.to_thread(node, spawn, nats_url, "b")  # the same node, run again
            async with BusClient(url_b2, token=state.admin_token, kind="cli", name="new") as new_caller:
                await reachable(new_caller)
                new_calls = await hold(new_caller, "new", 30)
                for message, release in held.items():
                    if message.startswith("old"):
                        release.set()  # their answers go out now, to a node run that is gone
                await asyncio.sleep(1.0)  # time for them to reach node B, were they to
                for release in held.values():
                    release.set()
                answers = await asyncio.gather(*new_calls)
        return {f"new-{i}": answer for i, answer in enumerate(answers)}

    answers = asyncio.run(scenario())
    assert {m: f"answer to {m}" for m in answers} == answers

"""The federation suite with one network namespace per node, as on separate machines.

Each bus node (and the persona daemon of node A) runs in a namespace of its
own with one address on a bridge; nats-server and the CLI run in the test's
namespace on the bridge's address. Nothing reaches a node through
127.0.0.1, so every hop is a real network hop between "machines". Needs
root and iproute2 (``ip netns``); skipped otherwise. Machines B and C have
state dirs of their own: they accept A's tokens because the nodes share them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.client import BusClient, CallContext
from daemon.errors import AuthError
from daemon.state import StateDir
from daemon.tokens import hash_token
from protocol import CloseCode, ErrorCode, Request, RpcError
from tests.conftest import REPO, WAIT, Proc, eventually
from tests.e2e.test_federation import NATS_SERVER, call, call_until_ok, free_port

IP = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")

# Only a non-root developer skips this suite (namespaces need root); as root
# (CI) a missing tool fails it: scripts/system-deps installs iproute2 and nats-server.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture(autouse=True)
def _tools() -> None:
    if IP is None or NATS_SERVER is None:
        pytest.fail("iproute2 (ip) and nats-server are needed: run scripts/system-deps test")


def ip(*args: str) -> None:
    assert IP is not None
    subprocess.run([IP, *args], check=True, capture_output=True)


@dataclass
class Network:
    """A bridge in the test's namespace and one namespace per node, each with an address."""

    bridge: str
    gateway: str
    namespaces: dict[str, tuple[str, str]]  # node -> (namespace, address)


@pytest.fixture
def network() -> Iterator[Network]:
    tag = f"pf{os.getpid() % 100000}"
    subnet = f"10.213.{os.getpid() % 250}"
    bridge = f"{tag}br"
    made: list[str] = []
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        spaces = {}
        for i, name in enumerate(("a", "b", "c"), start=2):
            ns = f"{tag}{name}"
            ip("netns", "add", ns)
            made.append(ns)
            ip("link", "add", f"{ns}h", "type", "veth", "peer", "name", f"{ns}n")
            ip("link", "set", f"{ns}h", "master", bridge)
            ip("link", "set", f"{ns}h", "up")
            ip("link", "set", f"{ns}n", "netns", ns)
            ip("-n", ns, "addr", "add", f"{subnet}.{i}/24", "dev", f"{ns}n")
            ip("-n", ns, "link", "set", f"{ns}n", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            spaces[name] = (ns, f"{subnet}.{i}")
        yield Network(bridge, f"{subnet}.1", spaces)
    finally:
        for ns in made:  # deleting a namespace deletes its veth pair
            subprocess.run([IP or "ip", "netns", "del", ns], capture_output=True)
        subprocess.run([IP or "ip", "link", "del", bridge], capture_output=True)


@pytest.fixture
def procs(state) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop(signal.SIGKILL if proc.popen.poll() is None else signal.SIGTERM)
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()


def in_namespace(
    procs: list[Proc], state, ns: str | None, *args: str, env: dict[str, str] | None = None
) -> Proc:
    full_env = {
        **os.environ,
        "PERSONAD_STATE_DIR": str(state.root),
        "PYTHONUNBUFFERED": "1",
        "PERSONAD_CONFIG_DIR": str(REPO / "config"),
        **(env or {}),
    }
    full_env.pop("NOTIFY_SOCKET", None)
    prefix = [IP or "ip", "netns", "exec", ns] if ns is not None else []
    # `ip netns exec` execs the command: the process is python's, and signals reach it.
    proc = Proc([*prefix, sys.executable, "-m", "daemon", *args], full_env, REPO)
    procs.append(proc)
    return proc


@dataclass
class Cluster:
    """nats-server on the bridge and three bus nodes, one per namespace, each with its own state dir."""

    urls: dict[str, str]
    nodes: dict[str, Proc]
    states: dict[str, StateDir]
    nats_url: str = ""


@pytest.fixture
def cluster(state, network: Network, procs: list[Proc], tmp_path: Path) -> Iterator[Cluster]:
    port = free_port()
    assert NATS_SERVER is not None
    nats = subprocess.Popen(
        [NATS_SERVER, "-a", network.gateway, "-p", str(port), "-js", "-sd", str(tmp_path / "js")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        urls, nodes, states = {}, {}, {}
        for name, (ns, address) in network.namespaces.items():
            # Machine A's state dir is the test's (its admin token); B and C have their own
            # and learn A's tokens over NATS, as separate machines would.
            node_state = state if name == "a" else StateDir(tmp_path / f"state-{name}")
            node_state.init()
            proc = in_namespace(
                procs,
                node_state,
                ns,
                *("bus", "--host", address, "--port", "8765"),
                *("--nats", f"nats://{network.gateway}:{port}", "--node", name),
            )
            urls[name] = proc.wait_for_line(r"listening on (ws://\S+)").group(1)
            nodes[name] = proc
            states[name] = node_state
        assert urls["a"] == f"ws://{network.namespaces['a'][1]}:8765"
        yield Cluster(urls, nodes, states, f"nats://{network.gateway}:{port}")
    finally:
        nats.terminate()
        nats.wait()


def test_persona_on_a_answers_c_and_moves_to_b(state, network: Network, cluster: Cluster, procs) -> None:
    """Persona on A answers a caller on C; no node: TARGET_OFFLINE; A SIGKILLed: it answers from B."""
    urls = cluster.urls
    in_namespace(
        procs,
        state,
        network.namespaces["a"][0],
        "persona",
        "demo",
        env={"PERSONAD_URL": f"{urls['a']},{urls['b']}"},
    )
    status = call_until_ok(state, urls["c"], "persona:demo", "persona.status")
    assert ("demo", 0) == (status["id"], status["bus"]["reconnects"])

    offline = call(state, urls["c"], "persona:ghost", "persona.status")
    assert offline.stderr.startswith("error -32001:"), offline.stderr

    # The persona issued itself a token when it started. Node A put it in the cluster's bucket
    # when it first accepted it, before the persona's subscription that C's call went through
    # (one ordered queue), so B knows it even though A dies before its next sweep.
    token = state.read_secret("persona-demo.token")
    assert token is not None
    assert asyncio.run(_in_bucket(cluster.nats_url, hash_token(token)))
    cluster.nodes["a"].stop(signal.SIGKILL)
    status = call_until_ok(state, urls["c"], "persona:demo", "persona.status")
    assert ("connected", 1) == (status["bus"]["state"], status["bus"]["reconnects"])


async def _in_bucket(url: str, digest: str) -> bool:
    """Whether the cluster's token bucket has ``digest`` now (daemon/bus/federation_tokens.py)."""
    import nats
    from nats.js.errors import KeyNotFoundError

    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value("personad_tokens")
        try:
            await kv.get(digest)
        except KeyNotFoundError:
            return False
        return True
    finally:
        await nc.close()


async def echo(request: Request, ctx: CallContext) -> dict:
    return {"caller": ctx.caller}


async def test_cap_room_and_revocation_across_namespaces(state, cluster: Cluster) -> None:
    """cap:inference on B serves A; a room spans A and C; a token revoked on A is closed on B and C."""
    urls, clients = cluster.urls, []

    async def connect(node: str, token: str, **kwargs) -> BusClient:
        client = BusClient(urls[node], token=token, **kwargs)
        deadline = time.monotonic() + WAIT
        while True:  # B and C accept A's tokens once they have read them over NATS
            try:
                await client.start()
                break
            except AuthError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        clients.append(client)
        return client

    try:
        admin = state.admin_token  # type: ignore[attr-defined]
        await connect("b", admin, kind="inference", name="b", capabilities=["inference"], handler=echo)
        persona = await connect("a", admin, kind="persona", name="alice")
        result = await eventually_ok(lambda: persona.call("inference.generate", to="cap:inference"))
        assert {"caller": "persona:alice"} == result

        heard: list = []
        carol_token, entry = state.tokens().add(name="carol", role="persona", subject="persona:carol*")
        carol = await connect("c", carol_token, kind="persona", name="carol", on_notification=heard.append)
        carol_on_b = await connect("b", carol_token, kind="persona", name="carol2")
        await persona.call("bus.room.join", {"room": "team"})
        await persona.call("bus.room.invite", {"room": "team", "client": "persona:carol"})
        # Once C has the room's home (A), carol, invited, may see it: then she joins.
        seen = await eventually_ok(lambda: carol.call("bus.room.members", {"room": "team"}))
        assert ["persona:alice"] == seen["members"]
        joined = await carol.call("bus.room.join", {"room": "team"})
        assert ["persona:alice", "persona:carol"] == joined["members"]
        await persona.call("bus.room.send", {"room": "team", "data": "hi"})
        await eventually(
            lambda: [n for n in heard if n.method == "room.message"], what="the room message on C"
        )

        links = [carol._link, carol_on_b._link]
        assert 1 == state.tokens().revoke(entry.id)
        for link in links:
            assert link is not None
            await eventually(lambda link=link: link.ws.close_code is not None, what="closed on its node")
            assert int(CloseCode.TOKEN_REVOKED) == link.ws.close_code
    finally:
        for client in clients:
            await client.close()


async def eventually_ok(call_it):
    """The call's result once it stops failing with TARGET_OFFLINE or FORBIDDEN (state still spreading)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return await call_it()
        except RpcError as exc:
            if exc.code not in (ErrorCode.TARGET_OFFLINE, ErrorCode.FORBIDDEN) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)

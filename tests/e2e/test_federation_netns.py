"""The federation suite with one network namespace per node, as on separate machines.

Each bus node (and the persona daemon of node A) runs in a namespace of its
own with one address on a bridge; nats-server and the CLI run in the test's
namespace on the bridge's address. Nothing reaches a node through
127.0.0.1, so every hop is a real network hop between "machines". Needs
root and iproute2 (``ip netns``); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, Proc
from tests.e2e.test_federation import NATS_SERVER, call, call_until_ok, free_port

IP = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or IP is None or NATS_SERVER is None,
    reason="network namespaces need root and iproute2 (and nats-server)",
)


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


def test_nodes_in_separate_namespaces(state, network: Network, procs: list[Proc], tmp_path: Path) -> None:
    """Persona on A answers a caller on C; no node: TARGET_OFFLINE; A SIGKILLed: it answers from B."""
    port = free_port()
    assert NATS_SERVER is not None
    nats = subprocess.Popen(
        [NATS_SERVER, "-a", network.gateway, "-p", str(port), "-js", "-sd", str(tmp_path / "js")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        urls = {}
        nodes = {}
        for name, (ns, address) in network.namespaces.items():
            proc = in_namespace(
                procs,
                state,
                ns,
                *("bus", "--host", address, "--port", "8765"),
                *("--nats", f"nats://{network.gateway}:{port}", "--node", name),
            )
            urls[name] = proc.wait_for_line(r"listening on (ws://\S+)").group(1)
            nodes[name] = proc
        assert urls["a"] == f"ws://{network.namespaces['a'][1]}:8765"
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

        nodes["a"].stop(signal.SIGKILL)
        status = call_until_ok(state, urls["c"], "persona:demo", "persona.status")
        assert ("connected", 1) == (status["bus"]["state"], status["bus"]["reconnects"])
    finally:
        nats.terminate()
        nats.wait()

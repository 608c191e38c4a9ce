"""Buses federated over NATS: a real nats-server and bus nodes on 127.0.0.1, real clients."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.bus import Bus, BusConfig
from daemon.client import BusClient, CallContext
from daemon.errors import BusUnavailable
from daemon.state import StateDir
from protocol import ErrorCode, Request, RpcError
from tests.conftest import WAIT, eventually

NATS_SERVER = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def nats_url(tmp_path: Path) -> AsyncIterator[str]:
    """nats-server on 127.0.0.1, with JetStream in a tmp dir, for this test only."""
    if NATS_SERVER is None:
        # Required, not optional: scripts/system-deps installs it, and a missing
        # server must fail the federation tests rather than silently skip them.
        pytest.fail("nats-server is not installed: run scripts/system-deps test")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *(NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def accepting() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    try:
        await eventually(accepting, what="nats-server accepting")
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), WAIT)


class Cluster:
    """Bus nodes on one NATS server, and clients connected to one node each."""

    def __init__(self, nats_url: str, state: StateDir) -> None:
        self.nats_url = nats_url
        self.state = state
        self.nodes: dict[str, Bus] = {}
        self.clients: list[BusClient] = []

    async def node(self, name: str, state: StateDir | None = None, **config: Any) -> Bus:
        """A bus node; ``state``: its own machine's state dir (default: one shared by all)."""
        tokens = (state or self.state).tokens()
        bus = Bus(BusConfig(port=0, nats_url=self.nats_url, node=name, **config), tokens)
        await bus.start()
        self.nodes[name] = bus
        return bus

    async def connect(self, node: str | list[str], **kwargs: Any) -> BusClient:
        kwargs.setdefault("token", self.state.admin_token)  # type: ignore[attr-defined]
        kwargs.setdefault("kind", "cli")
        names = [node] if isinstance(node, str) else node
        url = ",".join(self.nodes[n].url for n in names)
        client = BusClient(url, **kwargs)
        await client.start()
        if kwargs.get("reconnect"):
            await client.wait_connected(WAIT)
        self.clients.append(client)
        return client

    async def settled(self) -> None:
        """Until every node's subscriptions and claims have reached the NATS server."""
        for bus in self.nodes.values():
            if bus.federation is not None and not bus.shutting_down:
                await bus.federation.wait_idle()

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for bus in self.nodes.values():
            await bus.close()


@pytest.fixture
async def cluster(nats_url: str, state: StateDir) -> AsyncIterator[Cluster]:
    c = Cluster(nats_url, state)
    try:
        yield c
    finally:
        await c.close()


async def echo(request: Request, ctx: CallContext) -> dict:
    return {"params": request.params, "caller": ctx.caller}


# -- step 1: clients on one node reach clients on another --------------------------


async def test_persona_on_a_answers_caller_on_c(cluster: Cluster) -> None:
    """A request from node C reaches persona:alice on node A; the answer says who called."""
    await cluster.node("a")
    await cluster.node("b")
    await cluster.node("c")
    await cluster.connect("a", kind="persona", name="alice", handler=echo)
    await cluster.settled()
    caller = await cluster.connect("c", name="carol")
    result = await caller.call("persona.status", {"x": 1}, to="persona:alice")
    assert {"params": {"x": 1}, "caller": "cli:carol"} == result


async def test_progress_crosses_nodes_to_the_caller(cluster: Cluster) -> None:
    """Streamed progress from a persona on A reaches the caller on C, in order."""

    async def streamer(request: Request, ctx: CallContext) -> str:
        for word in ("one", "two", "three"):
            await ctx.progress("chat.token", {"text": word})
        return "done"

    await cluster.node("a")
    await cluster.node("c")
    await cluster.connect("a", kind="persona", name="s", handler=streamer)
    await cluster.settled()
    caller = await cluster.connect("c")
    got: list = []
    assert "done" == await caller.call("chat", to="persona:s", on_progress=got.append)
    assert ["one", "two", "three"] == [n.params["text"] for n in got]


async def test_no_node_holds_the_target_answers_target_offline(cluster: Cluster) -> None:
    """A target on no node is TARGET_OFFLINE from NATS's no-responders, not a timeout."""
    await cluster.node("a")
    await cluster.node("b")
    caller = await cluster.connect("a")
    with pytest.raises(RpcError) as info:
        await caller.call("persona.status", to="persona:nobody", deadline_ms=60_000)
    assert ErrorCode.TARGET_OFFLINE == info.value.code
    assert "any node" in info.value.message


async def test_deadline_crosses_nodes(cluster: Cluster) -> None:
    """Past its deadline the caller on C gets TIMEOUT; the handler on A is cancelled."""
    cancelled = asyncio.Event()

    async def stuck(request: Request, ctx: CallContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await cluster.node("a")
    await cluster.node("c")
    await cluster.connect("a", kind="persona", name="stuck", handler=stuck)
    await cluster.settled()
    caller = await cluster.connect("c")
    with pytest.raises(RpcError) as info:
        await caller.call("persona.status", to="persona:stuck", deadline_ms=300)
    assert ErrorCode.TIMEOUT == info.value.code
    await asyncio.wait_for(cancelled.wait(), WAIT)
    await eventually(lambda: not cluster.nodes["a"].router.pending, what="node A settles it")


async def test_caller_cancel_crosses_nodes(cluster: Cluster) -> None:
    """Cancelling the call on C stops the handler on A."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck(request: Request, ctx: CallContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await cluster.node("a")
    await cluster.node("c")
    await cluster.connect("a", kind="persona", name="stuck", handler=stuck)
    await cluster.settled()
    caller = await cluster.connect("c")
    task = asyncio.ensure_future(caller.call("persona.status", to="persona:stuck"))
    await asyncio.wait_for(started.wait(), WAIT)
    task.cancel()
    await asyncio.wait_for(cancelled.wait(), WAIT)


async def test_target_leaving_answers_the_remote_caller(cluster: Cluster) -> None:
    """A persona on A that disconnects mid-request: the caller on C gets TARGET_OFFLINE."""
    started = asyncio.Event()

    async def stuck(request: Request, ctx: CallContext) -> None:
        started.set()
        await asyncio.Event().wait()

    await cluster.node("a")
    await cluster.node("c")
    target = await cluster.connect("a", kind="persona", name="leaving", handler=stuck)
    await cluster.settled()
    caller = await cluster.connect("c")
    call = asyncio.ensure_future(caller.call("persona.status", to="persona:leaving"))
    await asyncio.wait_for(started.wait(), WAIT)
    await target.close()
    with pytest.raises(RpcError) as info:
        await call
    assert ErrorCode.TARGET_OFFLINE == info.value.code


async def test_notification_crosses_nodes(cluster: Cluster) -> None:
    """A notification to a client id held on another node is delivered, stamped with its sender."""
    await cluster.node("a")
    await cluster.node("c")
    got: list = []
    await cluster.connect("a", name="listener", on_notification=got.append)
    await cluster.settled()
    sender = await cluster.connect("c", name="sender")
    await sender.notify("note.hello", {"n": 1}, to="cli:listener")
    await eventually(lambda: got, what="the notification")
    assert "cli:sender" == got[0].from_
    assert {"n": 1} == got[0].params


async def test_the_caller_grants_are_checked_on_its_own_node(cluster: Cluster, state) -> None:
    """A token that may not call the persona is refused by its node; nothing crosses."""
    await cluster.node("a")
    await cluster.node("c")
    await cluster.connect("a", kind="persona", name="alice", handler=echo)
    await cluster.settled()
    token, _ = state.tokens().add(name="watcher", role="observer", subject="cli:*")
    caller = await cluster.connect("c", token=token)
    with pytest.raises(RpcError) as info:
        await caller.call("chat", to="persona:alice")
    assert ErrorCode.FORBIDDEN == info.value.code


# -- step 2: capabilities served on any node ------------------------------------------


async def serving(name: str):
    async def handler(request: Request, ctx: CallContext) -> dict:
        return {"served_by": name, "caller": ctx.caller}

    return handler


async def test_cap_on_b_serves_personas_on_a(cluster: Cluster) -> None:
    """cap:inference provided only on node B answers a persona on node A."""
    await cluster.node("a")
    await cluster.node("b")
    await cluster.connect(
        "b", kind="inference", name="gpu", capabilities=["inference"], handler=await serving("b")
    )
    await cluster.settled()
    persona = await cluster.connect("a", kind="persona", name="alice")
    result = await persona.call("inference.generate", {"prompt": "hi"}, to="cap:inference")
    assert {"served_by": "b", "caller": "persona:alice"} == result


async def test_local_provider_is_asked_first(cluster: Cluster) -> None:
    """With providers on A and B, a caller on A is served by A's, every time."""
    await cluster.node("a")
    await cluster.node("b")
    for node in ("a", "b"):
        await cluster.connect(
            node, kind="inference", name=node, capabilities=["inference"], handler=await serving(node)
        )
    await cluster.settled()
    caller = await cluster.connect("a")
    served = {(await caller.call("inference.generate", to="cap:inference"))["served_by"] for _ in range(10)}
    assert {"a"} == served


async def test_providers_on_two_nodes_share_the_remote_load(cluster: Cluster) -> None:
    """A caller on C, with providers on A and B only: NATS's queue group spreads its calls."""
    for node in ("a", "b", "c"):
        await cluster.node(node)
    for node in ("a", "b"):
        await cluster.connect(
            node, kind="inference", name=node, capabilities=["inference"], handler=await serving(node)
        )
    await cluster.settled()
    caller = await cluster.connect("c")
    served = [(await caller.call("inference.generate", to="cap:inference"))["served_by"] for _ in range(40)]
    assert {"a", "b"} == set(served)


async def test_cap_with_no_provider_anywhere_is_target_offline(cluster: Cluster) -> None:
    """The last provider leaving its node withdraws the capability from the cluster."""
    await cluster.node("a")
    await cluster.node("b")
    provider = await cluster.connect(
        "b", kind="inference", name="gpu", capabilities=["inference"], handler=await serving("b")
    )
    await cluster.settled()
    caller = await cluster.connect("a")
    assert "b" == (await caller.call("inference.generate", to="cap:inference"))["served_by"]
    await provider.close()
    await eventually(lambda: not cluster.nodes["b"].router.providers, what="node B forgets its provider")
    await cluster.settled()
    with pytest.raises(RpcError) as info:
        await caller.call("inference.generate", to="cap:inference", deadline_ms=60_000)
    assert ErrorCode.TARGET_OFFLINE == info.value.code


async def test_an_extension_serves_no_cap_on_other_nodes(cluster: Cluster) -> None:
    """A person's browser extension is never offered to other nodes as a capability provider."""
    await cluster.node("a")
    await cluster.node("b")
    await cluster.connect(
        "b", kind="extension", name="mine", capabilities=["browser"], handler=await serving("ext")
    )
    await cluster.settled()
    caller = await cluster.connect("a")
    with pytest.raises(RpcError) as info:
        await caller.call("screenshot", to="cap:browser", deadline_ms=60_000)
    assert ErrorCode.TARGET_OFFLINE == info.value.code


# -- step 3: one connection per client id, cluster-wide -------------------------------


async def test_a_claim_on_another_node_replaces_the_first(cluster: Cluster) -> None:
    """persona:twin connects on A, then on B: A's connection is closed with 4004, B's serves."""
    await cluster.node("a")
    await cluster.node("b")
    await cluster.node("c")
    first = await cluster.connect("a", kind="persona", name="twin", handler=await serving("a"))
    link = first._link
    await cluster.settled()
    await cluster.connect("b", kind="persona", name="twin", handler=await serving("b"))
    await eventually(lambda: link.ws.close_code is not None, what="A closes the first connection")
    assert 4004 == link.ws.close_code
    await eventually(lambda: "persona:twin" not in cluster.nodes["a"].router.clients, what="A forgets it")
    await cluster.settled()
    caller = await cluster.connect("c")
    assert "b" == (await caller.call("persona.status", to="persona:twin"))["served_by"]


async def test_a_remote_provider_names_itself(cluster: Cluster) -> None:
    """Progress from cap:inference on B reaches A stamped with the provider's id, not the cap."""

    async def streamer(request: Request, ctx: CallContext) -> str:
        await ctx.progress("inference.token", {"text": "hi"})
        return "done"

    await cluster.node("a")
    await cluster.node("b")
    await cluster.connect("b", kind="inference", name="gpu", capabilities=["inference"], handler=streamer)
    await cluster.settled()
    caller = await cluster.connect("a")
    got: list = []
    assert "done" == await caller.call("inference.generate", to="cap:inference", on_progress=got.append)
    assert ["inference:gpu"] == [n.from_ for n in got]


# -- without --nats, nothing changes ---------------------------------------------------


def test_a_bus_without_nats_never_imports_it() -> None:
    """The default path (the bus, the CLI, the client, a running bus) loads no nats module."""
    code = (
        "import asyncio, sys, tempfile, pathlib\n"
        "from daemon.bus import Bus, BusConfig\n"
        "import daemon.cli, daemon.client, daemon.supervisor\n"
        "from daemon.state import StateDir\n"
        "async def main():\n"
        "    sd = StateDir(pathlib.Path(tempfile.mkdtemp()) / 's'); sd.init()\n"
        "    async with Bus(BusConfig(port=0), sd.tokens()):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m == 'nats' or m.startswith('nats.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, check=True
    )
    assert "[]" == out.stdout.strip().splitlines()[-1]


async def test_a_node_that_cannot_reach_nats_says_so(state, monkeypatch) -> None:
    """No NATS at the URL: the bus does not start, and the error shows the URL without its password."""
    from daemon.bus import federation_link

    monkeypatch.setattr(federation_link, "CONNECT_TIMEOUT", 1.0)  # not the operator's 10 s
    config = BusConfig(port=0, nats_url=f"nats://bus:hunter2@127.0.0.1:{free_port()}", node="lonely")
    bus = Bus(config, state.tokens())
    with pytest.raises(BusUnavailable) as info:
        await bus.start()
    await bus.close()
    assert "nats://bus:***@127.0.0.1:" in str(info.value)
    assert "hunter2" not in str(info.value)


async def test_a_node_opens_its_port_only_once_it_has_joined(nats_url: str, state: StateDir) -> None:
    """While a (re)starting node is still joining NATS its port is closed: a client that
    comes then is refused at connect and retries, rather than meeting a half-started bus
    (it answered every request HTTP 421 "unknown Host" until it had joined)."""
    nats_port = int(nats_url.rsplit(":", 1)[1])
    release = asyncio.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # NATS, reached only once the test lets it: the node is still joining until then.
        await release.wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", nats_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    proxy = await asyncio.start_server(held, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    port = free_port()
    bus = Bus(BusConfig(port=port, nats_url=f"nats://127.0.0.1:{proxy_port}", node="late"), state.tokens())
    starting = asyncio.create_task(bus.start())
    try:
        await asyncio.sleep(0.5)
        assert not starting.done()
        with pytest.raises(BusUnavailable, match="cannot reach the bus"):
            async with BusClient(f"ws://127.0.0.1:{port}", token=state.admin_token, kind="cli"):
                pass
        release.set()
        await asyncio.wait_for(starting, WAIT)
        async with BusClient(bus.url, token=state.admin_token, kind="cli") as client:
            assert (await client.call("bus.ping"))["time"] > 0
    finally:
        release.set()
        await bus.close()
        proxy.close()

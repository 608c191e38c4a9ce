"""The bus's own defences, in-process on 127.0.0.1:0 with real WebSocket clients.

Closed rooms (a persona may not list, join or read a person's room
uninvited), the Host check against DNS rebinding on HTTP and on the
WebSocket upgrade, the bearer token on /metrics, and the small first frame
before authentication. The memory side of the frame limits, measured on a
real bus process, is in tests/e2e/test_security_bus.py.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import msgpack
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from daemon.bus import Bus, BusConfig
from daemon.client import BusClient
from protocol import ErrorCode, RpcError
from tests.conftest import WAIT, eventually


def token_for(state, name: str, role: str, subject: str, *grants: str) -> str:
    token, _ = state.tokens().add(name=name, role=role, subject=subject, extra_grants=grants)
    return token


# -- rooms ---------------------------------------------------------------------------


async def test_persona_cannot_see_join_or_read_a_persons_room_uninvited(connect, state) -> None:
    """Uninvited: members, join and leave are FORBIDDEN and nothing reaches it; invited: it can;
    removed by the owner: out again."""
    person_inbox: list = []
    persona_inbox: list = []
    person = await connect(kind="cli", name="alice", on_notification=person_inbox.append)
    persona = await connect(
        kind="persona",
        name="p",
        token=token_for(state, "p", "persona", "persona:p"),
        on_notification=persona_inbox.append,
    )
    created = await person.call("bus.room.join", {"room": "family"})
    assert ["cli:alice"] == created["members"]

    for method in ("bus.room.members", "bus.room.join", "bus.room.leave"):
        with pytest.raises(RpcError) as info:
            await persona.call(method, {"room": "family"})
        assert ErrorCode.FORBIDDEN == info.value.code, method
    with pytest.raises(RpcError) as info:
        await persona.call("bus.room.send", {"room": "family", "data": "hi"})
    assert ErrorCode.FORBIDDEN == info.value.code
    assert 0 == (await person.call("bus.room.send", {"room": "family", "data": "secret"}))["delivered"]
    await persona.notify("note.posted", {"text": "x"}, to="room:family")
    # A ping round trip orders after the notification: had it been relayed, it is here.
    await persona.call("bus.ping")
    await person.call("bus.ping")
    assert [] == [n for n in persona_inbox if n.method.startswith("room.")]
    assert [] == [n for n in person_inbox if n.method == "note.posted"]

    assert "cli:alice" == created["owner"]
    await person.call("bus.room.invite", {"room": "family", "client": "persona:p"})
    await eventually(lambda: any(n.method == "room.invited" for n in persona_inbox), what="room.invited")
    invited = next(n for n in persona_inbox if n.method == "room.invited")
    assert {"room": "family", "by": "cli:alice"} == invited.params
    assert ["cli:alice"] == (await persona.call("bus.room.members", {"room": "family"}))["members"]
    joined = await persona.call("bus.room.join", {"room": "family"})
    assert ["cli:alice", "persona:p"] == joined["members"]
    assert 1 == (await person.call("bus.room.send", {"room": "family", "data": "welcome"}))["delivered"]
    await eventually(lambda: any(n.method == "room.message" for n in persona_inbox), what="room.message")
    with pytest.raises(RpcError) as info:  # a member, not the owner
        await persona.call("bus.room.remove", {"room": "family", "member": "cli:alice"})
    assert ErrorCode.FORBIDDEN == info.value.code

    after = await person.call("bus.room.remove", {"room": "family", "member": "persona:p"})
    assert (["cli:alice"], []) == (after["members"], after["invited"])
    await eventually(
        lambda: any(n.method == "room.presence" and n.params["change"] == "removed" for n in persona_inbox),
        what="the removed member is told",
    )
    with pytest.raises(RpcError) as info:
        await persona.call("bus.room.join", {"room": "family"})
    assert ErrorCode.FORBIDDEN == info.value.code
    assert 0 == (await person.call("bus.room.send", {"room": "family", "data": "gone"}))["delivered"]


async def test_a_room_grant_admits_without_invitation(connect, state) -> None:
    """A room:<glob> grant lets a token in uninvited; it does not open other rooms."""
    owner = await connect(kind="cli", name="owner")
    await owner.call("bus.room.join", {"room": "team-a"})
    await owner.call("bus.room.join", {"room": "private"})
    member = await connect(
        kind="persona", name="g", token=token_for(state, "g", "persona", "persona:g", "room:team-*")
    )
    assert "persona:g" in (await member.call("bus.room.join", {"room": "team-a"}))["members"]
    with pytest.raises(RpcError) as info:
        await member.call("bus.room.join", {"room": "private"})
    assert ErrorCode.FORBIDDEN == info.value.code


async def test_invitations_are_bounded_and_not_repeated(state) -> None:
    """A member cannot grow a room's invitations without bound, nor spam an invitee."""
    async with Bus(BusConfig(port=0, max_room_invitations=2), state.tokens()) as bus:
        inbox: list = []
        async with (
            BusClient(bus.url, token=state.admin_token, kind="cli", name="owner") as owner,
            BusClient(
                bus.url, token=state.admin_token, kind="cli", name="guest", on_notification=inbox.append
            ) as guest,
        ):
            await owner.call("bus.room.join", {"room": "r"})
            for _ in range(3):
                await owner.call("bus.room.invite", {"room": "r", "client": "cli:guest"})
            await owner.call("bus.room.invite", {"room": "r", "client": "persona:a"})
            with pytest.raises(RpcError) as info:
                await owner.call("bus.room.invite", {"room": "r", "client": "persona:b"})
            assert ErrorCode.OVERLOADED == info.value.code
            await guest.call("bus.ping")
            assert 1 == sum(n.method == "room.invited" for n in inbox)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("bus.room.invite", {"room": "r", "client": "persona:x"}),
        ("bus.room.remove", {"room": "r", "member": "persona:x"}),
    ],
)
async def test_room_methods_need_their_grant(connect, state, method, params) -> None:
    """An observer token (no bus.room.* grant) is refused the new room methods."""
    watcher = await connect(kind="cli", name="w", token=token_for(state, "w", "observer", "cli:w"))
    with pytest.raises(RpcError) as info:
        await watcher.call(method, params)
    assert ErrorCode.FORBIDDEN == info.value.code
    assert "may not call" in info.value.message


# -- HTTP: Host check and /metrics ------------------------------------------------------


def _get(url: str, *, host: str | None = None, token: str | None = None) -> int:
    headers = {}
    if host is not None:
        headers["Host"] = host
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=WAIT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_foreign_host_is_refused_on_http(bus, state) -> None:
    """A DNS-rebinding page sends its own Host: /healthz and /metrics answer 421 to it."""
    http = bus.url.replace("ws://", "http://")
    for path in ("/healthz", "/metrics"):
        assert 421 == await asyncio.to_thread(_get, http + path, host="evil.example", token=state.admin_token)
        assert 421 == await asyncio.to_thread(
            _get, http + path, host=f"evil.example:{bus.port}", token=state.admin_token
        )
    for host in (f"127.0.0.1:{bus.port}", f"localhost:{bus.port}", f"[::1]:{bus.port}"):
        assert 200 == await asyncio.to_thread(_get, http + "/healthz", host=host)
    assert 421 == await asyncio.to_thread(_get, http + "/healthz", host="127.0.0.1:1")


async def test_foreign_host_is_refused_on_the_websocket_upgrade(bus) -> None:
    """The upgrade request is checked the same way, before any WebSocket exists."""

    async def upgrade(host: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", bus.port)
        writer.write(
            (
                "GET / HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: personad.v1.json\r\n\r\n"
            ).encode()
        )
        status = await asyncio.wait_for(reader.readline(), WAIT)
        writer.close()
        return status

    assert (await upgrade("evil.example")).startswith(b"HTTP/1.1 421")
    assert (await upgrade(f"127.0.0.1:{bus.port}")).startswith(b"HTTP/1.1 101")


async def test_metrics_token_rules(bus, state) -> None:
    """/metrics: 401 without a token, 403 without the grant, 200 with it (admin's * included)."""
    url = bus.url.replace("ws://", "http://") + "/metrics"
    persona = token_for(state, "p", "persona", "persona:p")
    scraper = token_for(state, "prom", "observer", "cli:prom", "metrics")
    assert 401 == await asyncio.to_thread(_get, url)
    assert 401 == await asyncio.to_thread(_get, url, token="pd_not_a_token")
    assert 403 == await asyncio.to_thread(_get, url, token=persona)
    assert 200 == await asyncio.to_thread(_get, url, token=scraper)
    assert 200 == await asyncio.to_thread(_get, url, token=state.admin_token)


async def test_public_metrics_and_allowed_hosts(state) -> None:
    """public_metrics serves /metrics without a token; allowed_hosts adds a name, bare or with the port."""
    config = BusConfig(port=0, public_metrics=True, allowed_hosts=("bus.example",))
    async with Bus(config, state.tokens()) as bus:
        http = bus.url.replace("ws://", "http://")
        assert 200 == await asyncio.to_thread(_get, http + "/metrics")
        assert 200 == await asyncio.to_thread(_get, http + "/healthz", host="bus.example")
        assert 200 == await asyncio.to_thread(_get, http + "/healthz", host=f"bus.example:{bus.port}")
        assert 421 == await asyncio.to_thread(_get, http + "/healthz", host="evil.example")


# -- frames before and after authentication ---------------------------------------------


async def test_only_a_small_frame_before_hello(bus, state) -> None:
    """Before hello, a frame over max_hello_bytes is refused (1009) from its header; after it,
    frames up to max_message_bytes are fine, including ones decoded off the loop."""
    ws = await ws_connect(bus.url, subprotocols=["personad.v1.msgpack"], compression=None)  # type: ignore[list-item]
    await ws.send(b"\x90" * (bus.config.max_hello_bytes + 1))
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), WAIT)
    assert 1009 == ws.close_code
    await eventually(lambda: bus.metrics.closed["hello_too_big"] == 1, what="counted in /metrics")

    async with ws_connect(
        bus.url,
        subprotocols=["personad.v1.msgpack"],  # type: ignore[list-item]
        compression=None,
        additional_headers={"Authorization": f"Bearer {state.admin_token}"},
        max_size=None,
    ) as ws:
        await ws.send(
            msgpack.packb(
                {"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {"protocol": 1, "kind": "cli"}}
            )
        )
        assert "result" in msgpack.unpackb(await asyncio.wait_for(ws.recv(), WAIT))
        big = "x" * (2 * 1024 * 1024)
        assert len(big) > bus.config.decode_in_thread_bytes
        await ws.send(
            msgpack.packb(
                {"jsonrpc": "2.0", "id": 1, "method": "bus.publish", "params": {"topic": "t", "data": big}}
            )
        )
        reply = msgpack.unpackb(await asyncio.wait_for(ws.recv(), WAIT))
        assert {"delivered": 0} == reply["result"]


async def test_a_low_open_files_limit_lowers_the_cap_instead_of_failing(state) -> None:
    """Under 100 open files (hard), the bus says so, caps connections at 36 and answers 503 past it,
    over WebSocket and HTTP alike, instead of running out of descriptors; its clients go on."""
    import resource
    import subprocess
    import sys

    from websockets.exceptions import InvalidStatus

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))

    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "daemon", "--state-dir", str(state.root), "bus", "--port", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=low_limit,
    )
    conns = []
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        while not (seen and seen[-1].startswith("personad bus listening on")):
            line = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode()
            assert line, "".join(seen)
            seen.append(line)
        url = seen[-1].split()[-1]
        assert any("accepting at most 36 connections, not 10000" in line for line in seen), seen
        first = BusClient(url, token=state.admin_token, kind="cli", name="first")
        await first.start()
        for _ in range(35):
            conns.append(await ws_connect(url, subprotocols=["personad.v1.json"]))
        with pytest.raises(InvalidStatus) as info:
            await ws_connect(url, subprotocols=["personad.v1.json"])
        assert 503 == info.value.response.status_code
        health = url.replace("ws://", "http://") + "/healthz"
        with pytest.raises(urllib.error.HTTPError) as http_info:
            await asyncio.to_thread(urllib.request.urlopen, health, timeout=WAIT)
        http_info.value.close()
        assert 503 == http_info.value.code
        assert (await first.call("bus.ping"))["time"] > 0
        await first.close()
    finally:
        for ws in conns:
            await ws.close()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), WAIT)

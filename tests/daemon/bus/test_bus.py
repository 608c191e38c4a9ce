"""The bus, in-process on 127.0.0.1:0, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import msgpack
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from daemon.bus import Bus, BusConfig
from daemon.client import BusClient, CallContext
from daemon.errors import AuthError
from protocol import ErrorCode, Request, RpcError
from tests.conftest import WAIT, eventually


async def echo(request: Request, ctx: CallContext) -> dict:
    return {"params": request.params, "caller": ctx.caller}


def persona_token(state, name: str, role: str = "persona") -> str:
    token, _ = state.tokens().add(name=name, role=role, subject=f"persona:{name}")
    return token


@pytest.fixture
async def raw():
    """Factory of raw msgpack connections that have said hello (no project client code)."""
    opened = []

    async def factory(bus: Bus, token: str, *, max_queue: int | None = 16):
        ws = await _raw(bus, token, max_queue=max_queue)
        opened.append(ws)
        return ws

    yield factory
    for ws in opened:
        if not ws.transport.is_closing():
            ws.transport.abort()
        await ws.wait_closed()


async def _raw(bus: Bus, token: str, *, max_queue: int | None = 16):
    ws = await ws_connect(
        bus.url,
        subprotocols=["personad.v1.msgpack"],
        compression=None,
        additional_headers={"Authorization": f"Bearer {token}"},
        max_queue=max_queue,
    )
    await ws.send(
        msgpack.packb(
            {"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {"protocol": 1, "kind": "cli"}}
        )
    )
    reply = msgpack.unpackb(await ws.recv())
    assert "result" in reply, reply
    return ws


# -- handshake and auth ----------------------------------------------------------------


async def test_hello_result_and_ping(connect, bus) -> None:
    """A client says hello, learns its id and limits, and pings the bus."""
    client = await connect(kind="cli", name="alice")
    assert "cli:alice" == client.client_id
    assert bus.config.max_message_bytes == client.hello.limits.max_message_bytes
    assert (await client.call("bus.ping"))["time"] > 0


async def test_wrong_header_token_is_refused(bus) -> None:
    """A wrong bearer token is refused at the HTTP upgrade (401) with a clear error."""
    client = BusClient(bus.url, token="pd_wrong", kind="cli")
    with pytest.raises(AuthError, match="refused the token"):
        await client.start()


async def test_wrong_hello_token_is_refused(bus) -> None:
    """A browser-style token in hello that is wrong gets UNAUTHENTICATED."""
    client = BusClient(bus.url, token="pd_wrong", kind="browser", token_in_hello=True)
    with pytest.raises(AuthError, match="invalid token"):
        await client.start()


async def test_hello_token_works_without_header(connect, state) -> None:
    """A client that cannot set headers authenticates in its hello."""
    client = await connect(kind="extension", name="ext", token_in_hello=True)
    assert "extension:ext" == client.client_id


async def test_token_subject_limits_identity(bus, state) -> None:
    """A persona token may not connect as another persona."""
    token = persona_token(state, "alice")
    client = BusClient(bus.url, token=token, kind="persona", name="mallory")
    with pytest.raises(RpcError) as info:
        await client.start()
    assert ErrorCode.FORBIDDEN == info.value.code


async def test_acl_forbids_ungranted_methods(connect, state) -> None:
    """A persona token is not granted browser_js; an observer may not call bus.publish."""
    target = await connect(kind="browser", name="w", capabilities=["browser"], handler=echo)
    alice = await connect(kind="persona", name="alice", token=persona_token(state, "alice"))
    with pytest.raises(RpcError) as info:
        await alice.call("browser_js", {"script": "1"}, to="cap:browser")
    assert ErrorCode.FORBIDDEN == info.value.code
    token, _ = state.tokens().add(name="watcher", role="observer", subject="*")
    watcher = await connect(kind="cli", token=token)
    with pytest.raises(RpcError) as info:
        await watcher.publish("x", 1)
    assert ErrorCode.FORBIDDEN == info.value.code
    assert [] == list(target._serving)


async def test_personas_cannot_read_each_others_memory(connect, state) -> None:
    """A persona token may chat with another persona but not recall or query its brain."""
    await connect(kind="persona", name="bob", handler=echo)
    alice = await connect(kind="persona", name="alice", token=persona_token(state, "alice"))
    assert "persona:alice" == (await alice.call("chat", {"message": "hi"}, to="persona:bob"))["caller"]
    for method in ("memory.recall", "brain.query", "brain.erase"):
        with pytest.raises(RpcError) as info:
            await alice.call(method, {}, to="persona:bob")
        assert ErrorCode.FORBIDDEN == info.value.code, method


async def test_browser_origin_must_be_allowed(state) -> None:
    """A connection from an Origin not on the list is refused at the upgrade (403)."""
    from websockets.exceptions import InvalidStatus

    allowed = "chrome-extension://abcdefghijklmnopabcdefghijklmnop"
    async with Bus(BusConfig(port=0, origins=(None, allowed)), state.tokens()) as bus:
        with pytest.raises(InvalidStatus) as info:
            await ws_connect(bus.url, subprotocols=["personad.v1.json"], origin="https://evil.example")
        assert 403 == info.value.response.status_code
        async with ws_connect(bus.url, subprotocols=["personad.v1.json"], origin=allowed) as ws:
            hello = {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "hello",
                "params": {"protocol": 1, "kind": "extension", "token": state.admin_token},
            }
            await ws.send(json.dumps(hello))
            assert "extension:" in json.loads(await ws.recv())["result"]["client_id"]


async def test_connection_cap_answers_503(state) -> None:
    """Past max_connections the bus refuses new upgrades with 503 and keeps the others."""
    from websockets.exceptions import InvalidStatus

    async with (
        Bus(BusConfig(port=0, max_connections=1), state.tokens()) as bus,
        BusClient(bus.url, token=state.admin_token, kind="cli") as first,
    ):
        with pytest.raises(InvalidStatus) as info:
            await ws_connect(bus.url, subprotocols=["personad.v1.json"])
        assert 503 == info.value.response.status_code
        assert (await first.call("bus.ping"))["time"] > 0


async def test_revoked_token_stops_working_without_restart(bus, state) -> None:
    """Tokens are re-read when the file changes: a revoked one is refused at once."""
    token = persona_token(state, "alice")
    assert 1 == state.tokens().revoke("alice")
    with pytest.raises(AuthError):
        await BusClient(bus.url, token=token, kind="persona", name="alice").start()


# -- routing -------------------------------------------------------------------------------


async def test_request_reaches_target_and_answer_returns(connect) -> None:
    """Requests route by client id; the target sees who called; ids do not collide."""
    await connect(kind="persona", name="p", handler=echo)
    a = await connect(kind="cli", name="a")
    b = await connect(kind="cli", name="b")
    ra, rb = await asyncio.gather(
        a.call("persona.ping", {"n": 1}, to="persona:p"), b.call("persona.ping", {"n": 2}, to="persona:p")
    )
    assert ({"params": {"n": 1}, "caller": "cli:a"}, {"params": {"n": 2}, "caller": "cli:b"}) == (ra, rb)


async def test_capability_routing_prefers_the_least_busy(connect) -> None:
    """cap: goes to a provider; a busy provider is skipped for an idle one."""
    release = asyncio.Event()

    async def slow(request: Request, ctx: CallContext) -> str:
        await release.wait()
        return "slow"

    async def fast(request: Request, ctx: CallContext) -> str:
        return "fast"

    await connect(kind="browser", name="one", capabilities=["browser"], handler=slow)
    caller = await connect()
    first = asyncio.ensure_future(caller.call("browser.navigate", to="cap:browser"))
    await eventually(lambda: caller._pending, what="first request in flight")
    await connect(kind="browser", name="two", capabilities=["browser"], handler=fast)
    assert "fast" == await caller.call("browser.navigate", to="cap:browser")
    release.set()
    assert "slow" == await first


async def test_capability_routing_never_picks_a_persons_browser(connect) -> None:
    """cap:browser never goes to a person's extension, not even as the only provider; a worker serves it."""

    async def who(name: str):
        async def handler(request: Request, ctx: CallContext) -> str:
            return name

        return handler

    # Declared with the admin token (provide:* via "*"), the extension's claim is
    # accepted, and still it is not a cap: provider: only its own id reaches it.
    await connect(kind="extension", name="user", capabilities=["browser"], handler=await who("extension"))
    caller = await connect()
    with pytest.raises(RpcError) as info:
        await caller.call("browser.navigate", to="cap:browser")
    assert ErrorCode.TARGET_OFFLINE == info.value.code
    assert "extension" == await caller.call("browser.navigate", to="extension:user")
    await connect(kind="browser", name="headless", capabilities=["browser"], handler=await who("worker"))
    assert ["worker"] * 3 == [await caller.call("browser.navigate", to="cap:browser") for _ in range(3)]


async def test_answer_too_large_for_a_json_caller_is_an_error(state) -> None:
    """An answer whose base64 would exceed the JSON caller's frame limit becomes an error, not a 1009."""
    from protocol import JSON

    async def big(request: Request, ctx: CallContext) -> bytes:
        return b"\x00" * 900_000

    async with (
        Bus(BusConfig(port=0, max_message_bytes=1_000_000), state.tokens()) as bus,
        BusClient(bus.url, token=state.admin_token, kind="persona", name="p", handler=big),
        BusClient(bus.url, token=state.admin_token, kind="cli", codec=JSON, max_message_bytes=1_000_000) as c,
    ):
        with pytest.raises(RpcError) as info:
            await c.call("persona.status", to="persona:p")
        assert ErrorCode.INTERNAL_ERROR == info.value.code
        assert "too large" in info.value.message
        assert (await c.call("bus.ping"))["time"] > 0


async def test_offline_target_fails_fast(connect) -> None:
    """A call to a persona that is not connected gets TARGET_OFFLINE at once."""
    client = await connect()
    with pytest.raises(RpcError) as info:
        await client.call("persona.status", to="persona:nobody", deadline_ms=60_000)
    assert ErrorCode.TARGET_OFFLINE == info.value.code


async def test_deadline_answers_timeout_and_cancels_the_handler(connect) -> None:
    """Past its deadline the caller gets TIMEOUT and the target's handler is cancelled."""
    cancelled = asyncio.Event()

    async def stuck(request: Request, ctx: CallContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await connect(kind="persona", name="stuck", handler=stuck)
    client = await connect()
    with pytest.raises(RpcError) as info:
        await client.call("persona.status", to="persona:stuck", deadline_ms=100)
    assert ErrorCode.TIMEOUT == info.value.code
    await asyncio.wait_for(cancelled.wait(), WAIT)


async def test_caller_cancel_reaches_the_target(connect) -> None:
    """Cancelling the caller's task sends bus.cancel; the target's handler stops."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck(request: Request, ctx: CallContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await connect(kind="persona", name="stuck", handler=stuck)
    client = await connect()
    task = asyncio.ensure_future(client.call("persona.status", to="persona:stuck"))
    await asyncio.wait_for(started.wait(), WAIT)
    task.cancel()
    await asyncio.wait_for(cancelled.wait(), WAIT)


async def test_target_disconnect_answers_target_offline(connect) -> None:
    """When the target leaves mid-request, the caller is answered, not left hanging."""
    started = asyncio.Event()

    async def stuck(request: Request, ctx: CallContext) -> None:
        started.set()
        await asyncio.Event().wait()

    target = await connect(kind="persona", name="leaving", handler=stuck)
    client = await connect()
    call = asyncio.ensure_future(client.call("persona.status", to="persona:leaving"))
    await asyncio.wait_for(started.wait(), WAIT)
    await target.close()
    with pytest.raises(RpcError) as info:
        await call
    assert ErrorCode.TARGET_OFFLINE == info.value.code


async def test_progress_goes_to_the_caller_only(connect) -> None:
    """Streamed notifications reach the caller, tied to its request, and nobody else."""

    async def streamer(request: Request, ctx: CallContext) -> str:
        for word in ("one", "two", "three"):
            await ctx.progress("chat.token", {"text": word})
        return "done"

    await connect(kind="persona", name="s", handler=streamer)
    bystander_got: list = []
    await connect(name="bystander", on_notification=bystander_got.append)
    client = await connect()
    got: list = []
    assert "done" == await client.call("chat", to="persona:s", on_progress=got.append)
    assert ["one", "two", "three"] == [n.params["text"] for n in got]
    assert [] == bystander_got


async def test_inflight_cap_answers_overloaded(state) -> None:
    """Past max_inflight_per_client, further requests are answered OVERLOADED."""
    async with Bus(BusConfig(port=0, max_inflight_per_client=2), state.tokens()) as bus:
        release = asyncio.Event()

        async def slow(request: Request, ctx: CallContext) -> int:
            await release.wait()
            return 1

        async with (
            BusClient(bus.url, token=state.admin_token, kind="persona", name="p", handler=slow),
            BusClient(bus.url, token=state.admin_token, kind="cli") as client,
        ):
            calls = [asyncio.ensure_future(client.call("x.y", to="persona:p")) for _ in range(3)]
            done, _ = await asyncio.wait(calls, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
            with pytest.raises(RpcError) as info:
                await done.pop()
            assert ErrorCode.OVERLOADED == info.value.code
            release.set()
            assert [1, 1] == [await c for c in calls if not c.done() or not c.exception()]


async def test_clients_cannot_relay_bus_cancel(connect, state) -> None:
    """A client cannot cancel someone else's request by sending bus.cancel to the target."""
    release = asyncio.Event()

    async def slow(request: Request, ctx: CallContext) -> str:
        await release.wait()
        return "finished"

    target = await connect(kind="persona", name="p", handler=slow)
    caller = await connect(name="caller")
    mallory = await connect(kind="persona", name="mallory", token=persona_token(state, "mallory"))
    call = asyncio.ensure_future(caller.call("persona.status", to="persona:p"))
    await eventually(lambda: target._serving, what="request being served")
    for guess in range(1, 20):
        await mallory.notify("bus.cancel", {"id": guess}, to="persona:p")
    assert (await mallory.call("bus.ping"))["time"] > 0  # the notifications were processed
    release.set()
    assert "finished" == await call


async def test_broken_token_file_keeps_the_last_good_tokens(bus, state, connect) -> None:
    """A garbled tokens.json neither takes the bus down nor logs everyone out."""
    client = await connect(name="before")
    state.tokens_path.write_text("{ not json")
    late = await connect(name="after")  # verified against the tokens read before
    assert (await late.call("bus.ping"))["time"] > 0
    assert (await client.call("bus.ping"))["time"] > 0


async def test_revoked_token_closes_live_connections(bus, state, connect) -> None:
    """Revoking a token closes the connections already using it (close 4006)."""
    client = await connect(kind="persona", name="alice", token=persona_token(state, "alice"))
    link = client._link
    assert 1 == state.tokens().revoke("alice")
    await eventually(lambda: link.ws.close_code is not None, what="revoked connection closed")
    assert 4006 == link.ws.close_code


# -- events and rooms ------------------------------------------------------------------


async def test_events_reach_matching_subscribers(connect) -> None:
    """Exact, prefix and wildcard subscriptions each get the events they match."""
    got: dict[str, list] = {"exact": [], "prefix": [], "all": [], "other": []}
    for name, pattern in [
        ("exact", "persona.demo.notice"),
        ("prefix", "persona.*"),
        ("all", "*"),
        ("other", "weather.*"),
    ]:
        client = await connect(name=name, on_notification=got[name].append)
        await client.subscribe(pattern)
    publisher = await connect(name="pub")
    assert 3 == await publisher.publish("persona.demo.notice", {"png": b"\x89PNG"})
    await eventually(lambda: all(got[k] for k in ("exact", "prefix", "all")))
    event = got["exact"][0]
    assert (
        "event",
        {"topic": "persona.demo.notice", "data": {"png": b"\x89PNG"}, "publisher": "cli:pub"},
    ) == (event.method, event.params)
    assert [] == got["other"]


async def test_unsubscribe_stops_events(connect) -> None:
    """After unsubscribing, no more events arrive for that pattern."""
    client = await connect(name="sub")
    await client.subscribe("a.*", "b")
    assert ["b"] == (await client.call("bus.unsubscribe", {"topics": ["a.*"]}))["topics"]
    assert 0 == await (await connect()).publish("a.x")


async def test_rooms_membership_presence_and_messages(connect) -> None:
    """Room members see who joins and what others send; non-members may not send."""
    inbox: dict[str, list] = {"a": [], "b": []}
    a = await connect(name="a", on_notification=inbox["a"].append)
    b = await connect(name="b", on_notification=inbox["b"].append)
    outsider = await connect(name="c")
    await a.call("bus.room.join", {"room": "standup"})
    joined = await b.call("bus.room.join", {"room": "standup"})
    assert ["cli:a", "cli:b"] == joined["members"]
    assert 1 == (await b.call("bus.room.send", {"room": "standup", "data": "hi"}))["delivered"]
    await b.notify("note.posted", {"text": "as a notification"}, to="room:standup")
    await eventually(lambda: len(inbox["a"]) >= 3)
    assert ["room.presence", "room.message", "note.posted"] == [n.method for n in inbox["a"]]
    assert "cli:b" == inbox["a"][2].from_
    with pytest.raises(RpcError) as info:
        await outsider.call("bus.room.send", {"room": "standup", "data": "x"})
    assert ErrorCode.FORBIDDEN == info.value.code
    await b.close()
    await eventually(lambda: len(inbox["a"]) >= 4)
    assert {"room": "standup", "member": "cli:b", "change": "left"} == inbox["a"][3].params


# -- bad input and self-protection -----------------------------------------------------


async def test_garbage_closes_only_that_connection(bus, state, connect, raw) -> None:
    """Garbage gets close code 1007 and an oversized frame 1009; other clients carry on."""
    healthy = await connect(name="healthy")
    ws = await raw(bus, state.admin_token)
    await ws.send(b"\xc1\xc1 not msgpack")
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), WAIT)
    assert 1007 == info.value.rcvd.code
    big = await raw(bus, state.admin_token)
    await big.send(b"\x00" * (bus.config.max_message_bytes + 1))
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(big.recv(), WAIT)
    assert 1009 == info.value.rcvd.code
    assert (await healthy.call("bus.ping"))["time"] > 0


async def test_invalid_envelope_is_answered_and_connection_stays(bus, state, raw) -> None:
    """A parsable but invalid request gets INVALID_REQUEST and the connection lives on."""
    ws = await raw(bus, state.admin_token)
    await ws.send(msgpack.packb({"jsonrpc": "2.0", "id": 5, "method": "Not A Method"}))
    reply = msgpack.unpackb(await asyncio.wait_for(ws.recv(), WAIT))
    assert (5, ErrorCode.INVALID_REQUEST) == (reply["id"], reply["error"]["code"])
    await ws.send(msgpack.packb({"jsonrpc": "2.0", "id": 6, "method": "bus.ping"}))
    assert 6 == msgpack.unpackb(await asyncio.wait_for(ws.recv(), WAIT))["id"]


async def test_slow_consumer_is_dropped_within_the_cap(state, raw) -> None:
    """A subscriber that stops reading is dropped once its buffer passes the cap."""
    cap = 256 * 1024
    async with Bus(BusConfig(port=0, max_send_buffer=cap), state.tokens()) as bus:
        sleeper = await raw(bus, state.admin_token, max_queue=1)
        await sleeper.send(
            msgpack.packb(
                {"jsonrpc": "2.0", "id": 1, "method": "bus.subscribe", "params": {"topics": ["flood"]}}
            )
        )
        await asyncio.wait_for(sleeper.recv(), WAIT)  # then never read again
        session = bus.router.clients[next(c for c in bus.router.clients if c.startswith("cli:"))]
        async with BusClient(bus.url, token=state.admin_token, kind="cli", name="pub") as pub:
            payload = "x" * 16384
            peak = 0
            for _ in range(2000):
                await pub.publish("flood", payload)
                peak = max(peak, session.ws.transport.get_write_buffer_size())
                if session.closed:
                    break
            assert session.closed, "the slow consumer was never dropped"
            assert peak <= cap + 64 * 1024
            assert 1 == bus.metrics.closed["slow_consumer"]
            assert (await pub.call("bus.ping"))["time"] > 0


async def test_stalled_buffer_is_dropped(state, raw) -> None:
    """A client whose send buffer stops draining is dropped after stall_timeout."""
    async with Bus(BusConfig(port=0, stall_timeout=0.3), state.tokens()) as bus:
        sleeper = await raw(bus, state.admin_token, max_queue=1)
        await sleeper.send(
            msgpack.packb({"jsonrpc": "2.0", "id": 1, "method": "bus.subscribe", "params": {"topics": ["t"]}})
        )
        await asyncio.wait_for(sleeper.recv(), WAIT)
        session = next(s for s in bus.router.clients.values())
        async with BusClient(bus.url, token=state.admin_token, kind="cli", name="pub") as pub:
            while session.ws.transport.get_write_buffer_size() == 0:
                await pub.publish("t", "y" * 65536)
            await eventually(lambda: session.closed, what="stalled client dropped")
        assert 1 == bus.metrics.closed["stalled"]


async def test_replaced_connection_is_closed(connect) -> None:
    """A second connection with the same id replaces the first (close 4004)."""
    first = await connect(kind="persona", name="twin")
    link = first._link
    await connect(kind="persona", name="twin")
    await eventually(lambda: link.ws.close_code is not None)
    assert 4004 == link.ws.close_code


# -- HTTP and shutdown -----------------------------------------------------------------


def _get(url: str, token: str | None = None) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=WAIT) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


async def test_healthz_and_metrics(bus, connect, state) -> None:
    """/healthz is JSON with clients by kind; /metrics (admin token) is Prometheus text."""
    await connect(kind="persona", name="p")
    http = bus.url.replace("ws://", "http://")
    status, ctype, body = await asyncio.to_thread(_get, http + "/healthz")
    health = json.loads(body)
    assert (200, "application/json", "ok", {"persona": 1}) == (
        status,
        ctype,
        health["status"],
        health["clients"],
    )
    status, ctype, body = await asyncio.to_thread(_get, http + "/metrics", state.admin_token)
    assert 200 == status
    assert ctype.startswith("text/plain; version=0.0.4")
    assert 'personad_bus_clients{kind="persona"} 1' in body


async def test_shutdown_answers_inflight_and_closes_1001(state) -> None:
    """Closing the bus answers in-flight requests SHUTTING_DOWN and closes clients with 1001."""
    bus = Bus(BusConfig(port=0), state.tokens())
    await bus.start()
    started = asyncio.Event()

    async def stuck(request: Request, ctx: CallContext) -> None:
        started.set()
        await asyncio.Event().wait()

    target = BusClient(bus.url, token=state.admin_token, kind="persona", name="p", handler=stuck)
    client = BusClient(bus.url, token=state.admin_token, kind="cli")
    await target.start()
    await client.start()
    call = asyncio.ensure_future(client.call("persona.status", to="persona:p"))
    await asyncio.wait_for(started.wait(), WAIT)
    link = client._link
    await bus.close()
    with pytest.raises(RpcError) as info:
        await call
    assert ErrorCode.SHUTTING_DOWN == info.value.code
    await eventually(lambda: link.ws.close_code is not None)
    assert 1001 == link.ws.close_code
    await target.close()
    await client.close()


async def test_uptime_follows_the_monotonic_clock_not_the_wall_clock(state, monkeypatch) -> None:
    """A step of the wall clock (NTP, date -s) must not move the bus's uptime: /healthz and
    /metrics once reported a negative uptime after the clock was set back an hour."""
    import daemon.bus.server as server

    async with Bus(BusConfig(port=0), state.tokens()) as bus:
        before = bus.health()["uptime_s"]
        real = server.time.time
        monkeypatch.setattr(server.time, "time", lambda: real() - 3600.0)
        after = bus.health()["uptime_s"]
        metrics = bus.render_metrics()
    assert 0.0 <= before <= after < before + 60
    line = next(x for x in metrics.splitlines() if x.startswith("personad_bus_uptime_seconds"))
    assert float(line.split()[-1]) >= 0.0

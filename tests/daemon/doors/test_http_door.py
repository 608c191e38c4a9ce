"""The HTTP door on the bus's port: a real bus, real WebSocket targets, real HTTP clients."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

from daemon.bus import Bus, BusConfig
from daemon.client import CallContext
from daemon.doors.http_server import HttpLimits
from daemon.doors.pairing import PairingStore
from protocol import ErrorCode, Request, RpcError
from tests.conftest import WAIT, eventually


def http_url(bus: Bus) -> str:
    return bus.url.replace("ws://", "http://")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def http(bus: Bus):
    async with httpx.AsyncClient(base_url=http_url(bus), timeout=WAIT) as client:
        yield client


def sse_events(text: str) -> list[tuple[str, dict]]:
    """(event, data) pairs of a complete Server-Sent Events body; comments skipped."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_a_call_answers_its_result_and_the_target_sees_a_door_caller(connect, http, state) -> None:
    seen: list[str | None] = []

    async def echo(request: Request, ctx: CallContext) -> dict:
        seen.append(ctx.caller)
        return {"echo": request.params}

    await connect(kind="persona", name="echo", handler=echo)
    response = await http.post(
        "/v1/call/persona:echo/persona.status", json={"x": [1, 2]}, headers=bearer(state.admin_token)
    )
    assert (200, {"result": {"echo": {"x": [1, 2]}}}) == (response.status_code, response.json())
    assert response.headers["content-type"] == "application/json"
    # A reserved kind: nothing on the bus can claim (and so impersonate) a door caller.
    assert seen[0] is not None
    assert seen[0].startswith("door:http.")


async def test_bus_errors_keep_their_code_and_message_and_map_to_http_statuses(connect, http, state) -> None:
    admin = bearer(state.admin_token)
    offline = await http.post("/v1/call/persona:nobody/persona.status", headers=admin)
    assert (503, ErrorCode.TARGET_OFFLINE) == (offline.status_code, offline.json()["error"]["code"])
    invalid = await http.post("/v1/call/bus/bus.clients", json={"kind": 3}, headers=admin)
    assert (422, ErrorCode.INVALID_PARAMS) == (invalid.status_code, invalid.json()["error"]["code"])
    assert invalid.json()["error"]["data"][0]["loc"] == ["kind"]
    unknown = await http.post("/v1/call/bus/bus.nothing", headers=admin)
    assert (404, ErrorCode.METHOD_NOT_FOUND) == (unknown.status_code, unknown.json()["error"]["code"])
    garbage = await http.post(
        "/v1/call/bus/bus.ping", content=b"{not json", headers={**admin, "Content-Type": "application/json"}
    )
    assert (400, ErrorCode.PARSE_ERROR) == (garbage.status_code, garbage.json()["error"]["code"])
    form = await http.post("/v1/call/bus/bus.ping", data={"a": "b"}, headers=admin)
    assert 400 == form.status_code
    assert "application/json" in form.json()["error"]["message"]


async def test_a_token_without_the_grant_is_refused_as_on_the_websocket(connect, http, state) -> None:
    """The same code and message through the HTTP door as through a WebSocket client."""
    await connect(kind="persona", name="target", handler=lambda r, c: {"ok": True})
    token, _ = state.tokens().add(name="watcher", role="observer", subject="cli:*")
    ws_client = await connect(token=token, kind="cli", name="watcher")
    with pytest.raises(RpcError) as over_ws:
        await ws_client.call("memory.recall", to="persona:target", params={"query": "x"})
    response = await http.post(
        "/v1/call/persona:target/memory.recall", json={"query": "x"}, headers=bearer(token)
    )
    assert 403 == response.status_code
    assert {"code": over_ws.value.code, "message": over_ws.value.message} == response.json()["error"]
    assert ErrorCode.FORBIDDEN == over_ws.value.code


async def test_no_token_or_a_wrong_one_is_401(http) -> None:
    missing = await http.post("/v1/call/bus/bus.ping")
    wrong = await http.post("/v1/call/bus/bus.ping", headers=bearer("pd_not-a-token"))
    for response in (missing, wrong):
        assert 401 == response.status_code
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert ErrorCode.UNAUTHENTICATED == response.json()["error"]["code"]


async def test_progress_streams_as_server_sent_events_then_the_result(connect, http, state) -> None:
    async def streamer(request: Request, ctx: CallContext) -> str:
        for word in ("one", "two", "three"):
            await ctx.progress("chat.token", {"text": word})
        return "done"

    await connect(kind="persona", name="s", handler=streamer)
    response = await http.post(
        "/v1/call/persona:s/chat",
        json={"message": "hi"},
        headers={**bearer(state.admin_token), "Accept": "text/event-stream"},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [
        ("progress", {"method": "chat.token", "params": {"text": w}}) for w in ("one", "two", "three")
    ] + [("result", {"result": "done"})] == events


async def test_a_streamed_error_is_an_error_event(http, state) -> None:
    response = await http.post(
        "/v1/call/persona:gone/chat",
        json={"message": "hi"},
        headers={**bearer(state.admin_token), "Accept": "text/event-stream"},
    )
    [(event, data)] = sse_events(response.text)
    assert ("error", ErrorCode.TARGET_OFFLINE) == (event, data["error"]["code"])


async def test_a_client_that_goes_away_cancels_its_call_at_the_target(bus, connect, state) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck(request: Request, ctx: CallContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await connect(kind="persona", name="slow", handler=stuck)
    body = b'{"message": "hi"}'
    _reader, writer = await asyncio.open_connection("127.0.0.1", bus.port)
    writer.write(
        b"POST /v1/call/persona:slow/chat HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Authorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (bus.port, state.admin_token.encode(), len(body), body)
    )
    await writer.drain()
    await asyncio.wait_for(started.wait(), WAIT)
    writer.close()
    await asyncio.wait_for(cancelled.wait(), WAIT)
    await eventually(lambda: not bus.router.pending, what="the request settled")


async def test_events_stream_topics_and_room_messages(bus, connect, state) -> None:
    publisher = await connect(name="pub")
    await publisher.call("bus.room.join", params={"room": "lounge"})
    url = http_url(bus) + "/v1/events?topic=news.*&room=lounge"
    got: list[tuple[str, dict]] = []
    async with (
        httpx.AsyncClient(timeout=WAIT) as client,
        client.stream("GET", url, headers=bearer(state.admin_token)) as response,
    ):
        assert 200 == response.status_code
        block: list[str] = []
        async for line in response.aiter_lines():
            if line:
                block.append(line)
                continue
            fields = dict(item.split(": ", 1) for item in block if not item.startswith(":"))
            block = []
            got.append((fields["event"], json.loads(fields["data"])))
            if fields["event"] == "ready":
                await publisher.call("bus.publish", params={"topic": "news.today", "data": {"n": 1}})
                await publisher.notify("room.say", to="room:lounge", params={"text": "hello"})
            if len(got) == 3:
                break
    assert "ready" == got[0][0]
    assert ("event", "news.today", {"n": 1}) == (
        got[1][0],
        got[1][1]["params"]["topic"],
        got[1][1]["params"]["data"],
    )
    assert ("room.say", {"text": "hello"}) == (got[2][0], got[2][1]["params"])
    # The stream's session left the room when the client went away.
    await eventually(
        lambda: len(bus.router.rooms.members("lounge")) == 1, what="the door session left the room"
    )


async def test_events_are_subscribed_with_the_callers_grants(http, state) -> None:
    # An observer may subscribe to topics, not join rooms.
    token, _ = state.tokens().add(name="watcher", role="observer", subject="cli:*")
    nothing = await http.get("/v1/events", headers=bearer(token))
    assert (422, ErrorCode.INVALID_PARAMS) == (nothing.status_code, nothing.json()["error"]["code"])
    room = await http.get("/v1/events?room=secret", headers=bearer(token))
    assert (403, ErrorCode.FORBIDDEN) == (room.status_code, room.json()["error"]["code"])
    assert "bus.room.join" in room.json()["error"]["message"]


async def test_host_and_origin_are_checked_before_anything(http, state, bus) -> None:
    rebound = await http.get("/healthz", headers={"Host": "evil.example"})
    assert 421 == rebound.status_code
    foreign = await http.post(
        "/v1/call/bus/bus.ping", headers={**bearer(state.admin_token), "Origin": "http://evil.example"}
    )
    assert (403, ErrorCode.FORBIDDEN) == (foreign.status_code, foreign.json()["error"]["code"])
    same = await http.post(
        "/v1/call/bus/bus.ping", headers={**bearer(state.admin_token), "Origin": http_url(bus)}
    )
    assert 200 == same.status_code


async def test_pipelined_requests_are_answered_in_order_on_one_connection(bus, state) -> None:
    request = (
        b"POST /v1/call/bus/bus.ping HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
        b"Content-Length: 0\r\n\r\n" % (bus.port, state.admin_token.encode())
    )
    last = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % bus.port
    reader, writer = await asyncio.open_connection("127.0.0.1", bus.port)
    writer.write(request * 3 + last)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), WAIT)  # until the server closes after the last
    writer.close()
    assert [b"200 OK"] * 4 == re.findall(rb"HTTP/1\.1 (\d+ \w+)\r\n", raw)
    assert raw.count(b'"result":{"time":') == 3
    assert b'"status":"ok"' in raw


async def test_limits_a_big_body_garbage_and_a_head_that_never_ends(state) -> None:
    bus = Bus(BusConfig(port=0, max_message_bytes=4096), state.tokens())
    bus.http.limits = HttpLimits(max_body_bytes=4096, request_timeout=0.5)
    async with bus, httpx.AsyncClient(base_url=http_url(bus), timeout=WAIT) as http:
        big = await http.post(
            "/v1/call/bus/bus.ping",
            content=b"[" + b"1," * 4000 + b"1]",
            headers=bearer(state.admin_token),
        )
        assert 413 == big.status_code
        # Garbage that is not HTTP gets a 400 and the connection closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", bus.port)
        writer.write(b"\x16\x03\x01 hello there\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), WAIT)).startswith(b"HTTP/1.1 400")
        writer.close()
        # A head that never completes is dropped after request_timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", bus.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        began = time.monotonic()
        assert b"" == await asyncio.wait_for(reader.read(), WAIT)
        assert time.monotonic() - began < WAIT
        writer.close()
        # And the bus still serves everyone else.
        assert 200 == (await http.get("/healthz")).status_code


async def test_pairing_codes_are_one_time_and_give_a_working_token(http, state) -> None:
    code = PairingStore(state.tokens()).issue()
    first = await http.post("/v1/pair", json={"code": code})
    assert 200 == first.status_code
    assert "no-store" == first.headers["cache-control"]
    token = first.json()["token"]
    assert 200 == (await http.post("/v1/call/bus/bus.ping", headers=bearer(token))).status_code
    again = await http.post("/v1/pair", json={"code": code})
    assert (401, ErrorCode.UNAUTHENTICATED) == (again.status_code, again.json()["error"]["code"])
    expired = PairingStore(state.tokens()).issue(ttl_s=-1)
    assert 401 == (await http.post("/v1/pair", json={"code": expired})).status_code
    assert 422 == (await http.post("/v1/pair", json={"nope": 1})).status_code
    # The token is a named, revocable one.
    assert any(e.name.startswith("console-") for e in state.tokens().entries())


async def test_a_hello_cannot_claim_the_door_kind(bus, state) -> None:
    from daemon.client import BusClient
    from daemon.errors import AuthError

    client = BusClient(bus.url, token=state.admin_token, kind="door", name="x")
    with pytest.raises((AuthError, RpcError)):
        await client.start()
    await client.close()


async def test_methods_and_paths_that_are_not_served(http, state) -> None:
    wrong_method = await http.get("/v1/call/bus/bus.ping", headers=bearer(state.admin_token))
    assert (405, "POST") == (wrong_method.status_code, wrong_method.headers["allow"])
    assert 404 == (await http.get("/no/such/page")).status_code
    assert 404 == (await http.get("/../../etc/passwd")).status_code


async def test_a_call_in_flight_when_the_bus_stops_is_answered_shutting_down(state, connect) -> None:
    """As over the WebSocket: every request in flight gets its answer before the bus goes."""
    from daemon.client import BusClient

    bus = Bus(BusConfig(port=0), state.tokens())
    await bus.start()
    started = asyncio.Event()

    async def stuck(request: Request, ctx: CallContext) -> None:
        started.set()
        await asyncio.Event().wait()

    target = BusClient(bus.url, token=state.admin_token, kind="persona", name="p", handler=stuck)
    await target.start()
    try:
        async with httpx.AsyncClient(base_url=http_url(bus), timeout=WAIT) as http:
            call = asyncio.ensure_future(
                http.post("/v1/call/persona:p/persona.status", headers=bearer(state.admin_token))
            )
            await asyncio.wait_for(started.wait(), WAIT)
            await bus.close()
            response = await call
        assert (503, ErrorCode.SHUTTING_DOWN) == (response.status_code, response.json()["error"]["code"])
    finally:
        await target.close()

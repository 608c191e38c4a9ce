"""Acceptance: a raw client that follows only docs/protocol.md can use the bus.

The client half of this file is what someone writing a client in another
language would write after reading docs/protocol.md: it speaks the JSON
subprotocol with nothing but ``websockets``, ``json`` and ``base64``. It
imports nothing from ``protocol`` or ``daemon``, and every constant it needs
(subprotocol name, error codes, close codes) is spelled out here as the
document gives it.

The bus and the persona are real processes (``python -m daemon bus`` and
``python -m daemon persona demo``), started through the conftest fixtures;
``state`` provides the admin token that ``personad init`` would have printed.
Every wait is bounded by ``WAIT``; nothing sleeps to let things settle.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from tests.conftest import WAIT, Proc, start_bus_process

pytestmark = pytest.mark.slow

# -- what docs/protocol.md says, copied by hand -------------------------------------

SUBPROTOCOL = Subprotocol("personad.v1.json")
PROTOCOL_VERSION = 1
INVALID_REQUEST = -32600
UNAUTHENTICATED = -32006
CLOSE_INVALID_DATA = 1007
CLOSE_UNAUTHENTICATED = 4001


# -- the raw client -------------------------------------------------------------------


class RawClient:
    """One JSON-subprotocol connection: text frames, one JSON-RPC object each."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        #: Notifications that arrived while waiting for a response.
        self.notifications: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, *, token: str | None = None) -> RawClient:
        """Open the WebSocket, sending the token as an Authorization header if given."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        ws = await connect(url, subprotocols=[SUBPROTOCOL], additional_headers=headers, open_timeout=WAIT)
        assert SUBPROTOCOL == ws.subprotocol
        return cls(ws)

    async def hello(
        self, *, kind: str = "cli", name: str | None = None, token: str | None = None
    ) -> dict[str, Any]:
        """Send the hello request (id 0) and return the whole response object."""
        params: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "kind": kind, "agent": "raw-test/1"}
        if name is not None:
            params["name"] = name
        if token is not None:
            params["token"] = token  # browser style: no header needed
        await self.send({"jsonrpc": "2.0", "id": 0, "method": "hello", "params": params})
        return await self.response(0)

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_text(json.dumps(message))

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)  # a str goes out as a text frame

    async def receive(self) -> dict[str, Any]:
        """The next message, within WAIT; every frame must be a text frame."""
        async with asyncio.timeout(WAIT):
            frame = await self.ws.recv()
        assert isinstance(frame, str), "the JSON subprotocol uses text frames only"
        message: dict[str, Any] = json.loads(frame)
        assert "2.0" == message["jsonrpc"]
        return message

    async def response(self, rid: int | str) -> dict[str, Any]:
        """Read until the response with this id; keep notifications aside."""
        while True:
            message = await self.receive()
            if "method" in message and "id" not in message:
                self.notifications.append(message)
                continue
            assert rid == message["id"], f"unexpected message {message}"
            return message

    async def call(
        self, method: str, params: Any = None, *, to: str | None = None, deadline_ms: int | None = None
    ) -> dict[str, Any]:
        """Send a request and return its response object (result or error)."""
        rid = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            message["params"] = params
        if to is not None:
            message["to"] = to
        if deadline_ms is not None:
            message["meta"] = {"deadline_ms": deadline_ms}
        await self.send(message)
        return await self.response(rid)

    async def result(self, method: str, params: Any = None, **kwargs: Any) -> Any:
        """Call and return the result, failing the test on an error answer."""
        answer = await self.call(method, params, **kwargs)
        assert "error" not in answer, answer
        return answer["result"]

    async def notification(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first notification (already kept aside or arriving) that matches."""
        while True:
            for note in self.notifications:
                if predicate(note):
                    self.notifications.remove(note)
                    return note
            message = await self.receive()
            assert "id" not in message, f"unexpected response {message}"
            self.notifications.append(message)

    async def closed(self) -> tuple[int | None, str | None]:
        """Wait for the bus to close the connection; return (code, reason)."""
        async with asyncio.timeout(WAIT):
            await self.ws.wait_closed()
        return self.ws.close_code, self.ws.close_reason

    async def close(self) -> None:
        await self.ws.close()


async def joined(url: str, token: str, *, name: str | None = None) -> RawClient:
    """A connection that has said hello with the header token."""
    client = await RawClient.open(url, token=token)
    answer = await client.hello(name=name)
    assert "result" in answer, answer
    return client


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def bus_url(spawn: Callable[..., Proc]) -> str:
    """A real `personad bus` process on a free loopback port."""
    _proc, url = start_bus_process(spawn)
    return url


@pytest.fixture
def admin_token(state: Any) -> str:
    """The admin token `personad init` printed."""
    return str(state.admin_token)


# -- tests ----------------------------------------------------------------------------


async def test_header_token_handshake_and_bus_ping(bus_url: str, admin_token: str) -> None:
    """With the token in the Authorization header, hello succeeds and bus.ping answers."""
    client = await RawClient.open(bus_url, token=admin_token)
    try:
        hello = await client.hello(name="raw")
        assert {"jsonrpc", "id", "result"} == set(hello)
        result = hello["result"]
        assert "cli:raw" == result["client_id"]
        assert PROTOCOL_VERSION == result["protocol"]
        assert {"max_message_bytes", "max_inflight", "default_deadline_ms", "max_deadline_ms"} == set(
            result["limits"]
        )
        assert ["*"] == result["grants"]  # the admin role

        before = time.time()
        pong = await client.result("bus.ping")
        assert abs(pong["time"] - before) < WAIT
    finally:
        await client.close()


async def test_hello_params_token_handshake(bus_url: str, admin_token: str) -> None:
    """Without any header (as a browser), the token in hello.params authenticates."""
    client = await RawClient.open(bus_url)
    try:
        hello = await client.hello(kind="browser", name="tab1", token=admin_token)
        assert "browser:tab1" == hello["result"]["client_id"]
        assert isinstance((await client.result("bus.ping"))["time"], float)
    finally:
        await client.close()


async def test_wrong_header_token_is_refused_with_http_401(bus_url: str) -> None:
    """A wrong Authorization header token is refused at the upgrade with HTTP 401."""
    with pytest.raises(InvalidStatus) as refused:
        await RawClient.open(bus_url, token="pd_not-a-real-token")
    assert 401 == refused.value.response.status_code


async def test_persona_status_on_a_real_persona(
    bus_url: str, admin_token: str, spawn: Callable[..., Proc]
) -> None:
    """A real persona process appears in bus.clients and answers persona.status."""
    persona = spawn("persona", "demo", env={"PERSONAD_URL": bus_url})
    client = await joined(bus_url, admin_token)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            listed = await client.result("bus.clients", {"kind": "persona"})
            if "persona:demo" in [c["id"] for c in listed["clients"]]:
                break
            assert persona.popen.poll() is None, persona.output()
            assert time.monotonic() < deadline, "persona:demo never joined the bus"
            await asyncio.sleep(0.05)  # polling interval, bounded by WAIT above

        answer = await client.call("persona.status", to="persona:demo", deadline_ms=int(WAIT * 1000))
        assert "persona:demo" == answer["from"]  # stamped by the bus
        status = answer["result"]
        assert "demo" == status["id"]
        assert persona.popen.pid == status["pid"]
        assert "connected" == status["bus"]["state"]
        assert status["session_dir"].endswith("/personas/demo")
    finally:
        await client.close()


async def test_bytes_travel_as_dollar_bytes_through_a_subscription(bus_url: str, admin_token: str) -> None:
    """Bytes sent as {"$bytes": base64} in bus.publish come back as $bytes in the event."""
    payload = b"\x89PNG\r\n\x1a\n\x00\xff\xfe raw bytes"
    publisher = await joined(bus_url, admin_token, name="pub")
    subscriber = await joined(bus_url, admin_token, name="sub")
    try:
        subscribed = await subscriber.result("bus.subscribe", {"topics": ["raw.bytes.*"]})
        assert ["raw.bytes.*"] == subscribed["topics"]

        blob = {"$bytes": base64.b64encode(payload).decode("ascii")}
        published = await publisher.result(
            "bus.publish", {"topic": "raw.bytes.png", "data": {"name": "x.png", "blob": blob}}
        )
        assert 1 == published["delivered"]

        event = await subscriber.notification(lambda n: "event" == n["method"])
        params = event["params"]
        assert ("raw.bytes.png", "cli:pub") == (params["topic"], params["publisher"])
        assert "x.png" == params["data"]["name"]
        assert {"$bytes"} == set(params["data"]["blob"])
        assert payload == base64.b64decode(params["data"]["blob"]["$bytes"], validate=True)
    finally:
        await publisher.close()
        await subscriber.close()


async def test_invalid_envelope_is_answered_and_connection_stays(bus_url: str, admin_token: str) -> None:
    """A parsable but invalid envelope with an id gets INVALID_REQUEST; the connection stays."""
    client = await joined(bus_url, admin_token)
    try:
        await client.send({"jsonrpc": "2.0", "id": "bad-1", "method": "bus.ping", "unknown_member": True})
        answer = await client.response("bad-1")
        assert INVALID_REQUEST == answer["error"]["code"]
        assert isinstance(answer["error"]["message"], str)

        await client.send({"jsonrpc": "2.0", "id": "bad-2", "method": "Not A Method"})
        assert INVALID_REQUEST == (await client.response("bad-2"))["error"]["code"]

        assert "time" in await client.result("bus.ping")
    finally:
        await client.close()


async def test_garbage_closes_only_that_connection(bus_url: str, admin_token: str) -> None:
    """Garbage text closes that connection with 1007; another raw client keeps working."""
    victim = await joined(bus_url, admin_token, name="victim")
    bystander = await joined(bus_url, admin_token, name="bystander")
    try:
        await victim.send_text("this is {not json")
        code, reason = await victim.closed()
        assert CLOSE_INVALID_DATA == code
        assert reason  # a short reason, no internals

        assert "time" in await bystander.result("bus.ping")
        listed = await bystander.result("bus.clients", {"kind": "cli"})
        assert "cli:bystander" in [c["id"] for c in listed["clients"]]
    finally:
        await bystander.close()


async def test_missing_token_is_refused(bus_url: str) -> None:
    """No header and no hello token: UNAUTHENTICATED (-32006), then close code 4001."""
    client = await RawClient.open(bus_url)
    answer = await client.hello(name="anonymous")
    assert UNAUTHENTICATED == answer["error"]["code"]
    assert "result" not in answer
    code, _reason = await client.closed()
    assert CLOSE_UNAUTHENTICATED == code
    with pytest.raises(ConnectionClosed):
        await client.send({"jsonrpc": "2.0", "id": 1, "method": "bus.ping"})

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

from tests.conftest import WAIT, Proc, run_cli, start_bus_process
from tests.schema.ajv import ajv_check, envelope_cases

pytestmark = pytest.mark.slow

# -- what docs/protocol.md says, copied by hand -------------------------------------

SUBPROTOCOL = Subprotocol("personad.v1.json")
PROTOCOL_VERSION = 1
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
UNAUTHENTICATED = -32006
CLOSE_INVALID_DATA = 1007
CLOSE_UNAUTHENTICATED = 4001
CLOSE_BAD_HELLO = 4005


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


# -- strict envelopes (finding 9) ---------------------------------------------------------

#: Lax envelopes the bus used to accept, each with a readable id: "Bad input" in
#: docs/protocol.md says such a message is answered INVALID_REQUEST with that id.
LAX_WITH_ID: list[tuple[str, dict[str, Any]]] = [
    ("deadline_ms as a string", {"id": "lax-1", "method": "bus.ping", "meta": {"deadline_ms": "700"}}),
    ("deadline_ms true", {"id": "lax-2", "method": "bus.ping", "meta": {"deadline_ms": True}}),
    ("to null", {"id": "lax-3", "method": "bus.ping", "to": None}),
    ("from null", {"id": "lax-4", "method": "bus.ping", "from": None}),
    ("meta null", {"id": "lax-5", "method": "bus.ping", "meta": None}),
    ("params null", {"id": "lax-6", "method": "bus.ping", "params": None}),
    ("meta.trace null", {"id": "lax-7", "method": "bus.ping", "meta": {"trace": None}}),
    ("method as $bytes", {"id": "lax-8", "method": {"$bytes": base64.b64encode(b"bus.ping").decode()}}),
    ("a response whose error is null", {"id": "lax-9", "error": None}),
]


@pytest.mark.parametrize(("what", "message"), LAX_WITH_ID, ids=[w for w, _ in LAX_WITH_ID])
async def test_lax_envelope_with_an_id_is_answered_invalid_request(
    bus_url: str, admin_token: str, what: str, message: dict[str, Any]
) -> None:
    """A lax member (a string for a number, null for absent) is INVALID_REQUEST, not taken as meant."""
    client = await joined(bus_url, admin_token)
    try:
        await client.send({"jsonrpc": "2.0", **message})
        answer = await client.response(message["id"])
        assert "result" not in answer, f"{what} was accepted: {answer}"
        assert INVALID_REQUEST == answer["error"]["code"], answer
        assert "time" in await client.result("bus.ping")  # the connection stays
    finally:
        await client.close()


async def test_id_true_is_not_id_1(bus_url: str, admin_token: str) -> None:
    """`"id": true` is no readable id (not 1): the connection is closed with 1007, nothing is answered."""
    client = await joined(bus_url, admin_token)
    await client.send({"jsonrpc": "2.0", "id": True, "method": "bus.ping"})
    try:
        answer: dict[str, Any] | None = await client.receive()
    except ConnectionClosed:
        answer = None
    assert answer is None, f"answered as if the id were readable: {answer}"
    code, _reason = await client.closed()
    assert CLOSE_INVALID_DATA == code


@pytest.mark.parametrize("protocol", [True, "1", 1.0], ids=["true", "string", "float"])
async def test_hello_protocol_must_be_the_integer_1(bus_url: str, admin_token: str, protocol: Any) -> None:
    """hello with `"protocol": true` (or "1", or 1.0) is INVALID_PARAMS and closed with 4005."""
    client = await RawClient.open(bus_url, token=admin_token)
    # json.dumps writes 1.0 as "1.0": a float on the wire.
    params = {"protocol": protocol, "kind": "cli"}
    await client.send({"jsonrpc": "2.0", "id": 0, "method": "hello", "params": params})
    answer = await client.response(0)
    assert "result" not in answer, answer
    assert INVALID_PARAMS == answer["error"]["code"]
    assert ["protocol"] == answer["error"]["data"][0]["loc"]
    code, _reason = await client.closed()
    assert CLOSE_BAD_HELLO == code


async def _bus_verdict(url: str, token: str, text: str) -> bool:
    """Whether the bus takes ``text`` as a valid message: refused means INVALID_REQUEST or a 1007 close.

    A bus.ping sent right after it marks the end: the bus handles a connection's
    frames in order, so any refusal arrives before the ping's answer.
    """
    client = await joined(url, token)
    try:
        await client.send_text(text)
        await client.send({"jsonrpc": "2.0", "id": "sentinel", "method": "bus.ping"})
        while True:
            try:
                message = await client.receive()
            except ConnectionClosed:
                code, _reason = await client.closed()
                assert CLOSE_INVALID_DATA == code
                return False
            if "error" in message and message["error"]["code"] == INVALID_REQUEST:
                return False
            if message.get("id") == "sentinel":
                return True
    finally:
        await client.close()


async def test_schema_and_bus_agree_on_the_envelope_corpus(
    bus_url: str, admin_token: str, state: Any
) -> None:
    """`personad schema` compiled by Ajv (strict) and a real bus give each envelope the docs' verdict."""
    done = run_cli(state, "schema")
    assert 0 == done.returncode, done.stderr
    schema = json.loads(done.stdout)
    cases = envelope_cases()
    ajv = ajv_check(schema, [("#", json.loads(c["text"])) for c in cases])["results"]
    disagreements = []
    for case, by_ajv in zip(cases, ajv, strict=True):
        by_bus = await _bus_verdict(bus_url, admin_token, case["text"])
        ajv_expected = True if "schema_cannot_tell" in case else case["valid"]
        if by_bus != case["valid"] or by_ajv["valid"] != ajv_expected:
            disagreements.append(f"{case['name']}: docs {case['valid']}, bus {by_bus}, ajv {by_ajv}")
    assert [] == disagreements

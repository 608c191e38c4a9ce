"""The handshake state machine, driven through its table and its API."""

from __future__ import annotations

import pytest

from protocol import JSON, Connection, Notification, Request, Response, Role, State, StateError
from protocol.connection import TRANSITIONS, Event


def hello(rid: int = 0) -> Request:
    return Request(id=rid, method="hello", params={"protocol": 1, "kind": "cli"})


def test_table_every_state_can_be_lost() -> None:
    """CONNECTION_LOST leads to CLOSED from every state."""
    assert all(TRANSITIONS[(s, Event.CONNECTION_LOST)] is State.CLOSED for s in State)


def test_table_has_no_exit_from_closed() -> None:
    """CLOSED is final: no transition leaves it."""
    assert [k for k, v in TRANSITIONS.items() if k[0] is State.CLOSED and v is not State.CLOSED] == []


def test_server_accepts_only_hello_first() -> None:
    """Before the handshake, anything but hello is a StateError (close 1008)."""
    server = Connection(Role.SERVER, JSON)
    with pytest.raises(StateError) as info:
        server.receive(JSON.encode(Request(id=1, method="bus.ping")))
    assert 1008 == info.value.close_code
    assert State.AWAITING_HELLO is server.state


def test_full_handshake_both_sides() -> None:
    """Client hello -> server accept -> both READY, then any message flows."""
    client, server = Connection(Role.CLIENT, JSON), Connection(Role.SERVER, JSON)
    frame = client.send(hello())
    assert State.AWAITING_HELLO is client.state
    assert "hello" == server.receive(frame).method
    reply = server.send(Response(id=0, result={"client_id": "cli:x"}))
    server.hello_accepted()
    assert isinstance(client.receive(reply), Response)
    client.hello_accepted()
    assert (State.READY, State.READY) == (client.state, server.state)
    assert server.receive(client.send(Notification(method="event"))).method == "event"


def test_client_must_send_hello_first() -> None:
    """A client cannot send anything before its hello."""
    with pytest.raises(StateError):
        Connection(Role.CLIENT, JSON).send(Request(id=1, method="bus.ping"))


def test_server_may_only_answer_hello_before_ready() -> None:
    """Before READY the server sends nothing but the hello's answer."""
    server = Connection(Role.SERVER, JSON)
    server.receive(JSON.encode(hello(5)))
    with pytest.raises(StateError):
        server.send(Notification(method="event"))
    with pytest.raises(StateError):
        server.send(Response(id=6, result=1))
    server.send(Response(id=5, error={"code": -32006, "message": "no"}))
    server.hello_rejected()
    assert State.CLOSING is server.state


def test_closing_allows_only_responses_out() -> None:
    """While closing, late answers may go out but no new requests."""
    client, server = Connection(Role.CLIENT, JSON), Connection(Role.SERVER, JSON)
    server.receive(client.send(hello()))
    server.hello_accepted()
    server.close()
    server.send(Response(id=3, result=None))
    with pytest.raises(StateError):
        server.send(Request(id=4, method="persona.status"))
    with pytest.raises(StateError):
        server.send_wire({"jsonrpc": "2.0", "method": "event"})


def test_send_wire_needs_ready() -> None:
    """The relay fast path refuses to send before the handshake."""
    with pytest.raises(StateError):
        Connection(Role.SERVER, JSON).send_wire({"jsonrpc": "2.0", "id": 1, "result": 1})


def test_closed_is_final() -> None:
    """After connection_lost nothing is received or sent."""
    conn = Connection(Role.SERVER, JSON)
    conn.connection_lost()
    with pytest.raises(StateError):
        conn.receive(JSON.encode(hello()))
    with pytest.raises(StateError):
        conn.close() if False else conn.hello_accepted()

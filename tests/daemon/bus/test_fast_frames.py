"""The bus reads small binary frames itself, past websockets' parser (server.py's FastConnection).

These tests write WebSocket frames by hand on a connection that said hello,
in the ways a TCP stream can cut them, and check the bus answers each
message once, in order, and still refuses what websockets refuses.
"""

from __future__ import annotations

import asyncio
import os

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from daemon.bus import Bus
from tests.conftest import WAIT


def frame(payload: bytes, *, opcode: int = 0x2, fin: bool = True, masked: bool = True) -> bytes:
    """One client-to-server WebSocket frame (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 65536:
        head += bytes([bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ping(rid: int, **params: object) -> bytes:
    return msgpack.packb({"jsonrpc": "2.0", "id": rid, "method": "bus.ping", "params": params})


async def hello(bus: Bus, token: str) -> ClientConnection:
    ws = await ws_connect(
        bus.url,
        subprotocols=["personad.v1.msgpack"],  # type: ignore[list-item]
        compression=None,
        additional_headers={"Authorization": f"Bearer {token}"},
    )
    await ws.send(
        msgpack.packb(
            {"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {"protocol": 1, "kind": "cli"}}
        )
    )
    assert "result" in msgpack.unpackb(await ws.recv())
    return ws


async def answers(ws: ClientConnection, count: int) -> list[object]:
    async with asyncio.timeout(WAIT):
        return [msgpack.unpackb(await ws.recv()).get("id") for _ in range(count)]


@pytest.fixture
async def ws(bus: Bus, state):  # type: ignore[no-untyped-def]
    conn = await hello(bus, state.admin_token)
    yield conn
    conn.transport.abort()
    await conn.wait_closed()


async def test_several_frames_in_one_read_are_answered_in_order(ws: ClientConnection) -> None:
    ws.transport.write(b"".join(frame(ping(i)) for i in range(1, 6)))
    assert await answers(ws, 5) == [1, 2, 3, 4, 5]


async def test_a_frame_cut_anywhere_is_answered_once(ws: ClientConnection) -> None:
    data = frame(ping(7, pad="x" * 300)) + frame(ping(8))  # a 16-bit length, then a small one
    for cut in (1, 2, 3, 5, 9, len(data) - 1):
        ws.transport.write(data[:cut])
        await asyncio.sleep(0.02)  # a separate read on the bus
        ws.transport.write(data[cut:])
        assert await answers(ws, 2) == [7, 8]


async def test_control_frames_and_fragments_between_keep_the_order(ws: ClientConnection) -> None:
    message = ping(3)
    ws.transport.write(
        frame(ping(1))
        + frame(b"hi", opcode=0x9)  # a ping: websockets answers it with a pong
        + frame(ping(2))
        + frame(message[:4], fin=False)
        + frame(message[4:], opcode=0x0)
        + frame(ping(4))
    )
    assert await answers(ws, 4) == [1, 2, 3, 4]
    # Frames after the queued ones take the fast path again.
    ws.transport.write(frame(ping(5)))
    assert await answers(ws, 1) == [5]


async def test_an_invalid_envelope_is_answered_and_the_connection_stays(ws: ClientConnection) -> None:
    bad = msgpack.packb({"jsonrpc": "2.0", "id": 9, "method": "Not.A.Method"})
    ws.transport.write(frame(bad) + frame(ping(10)))
    async with asyncio.timeout(WAIT):
        first = msgpack.unpackb(await ws.recv())
        second = msgpack.unpackb(await ws.recv())
    assert first["id"] == 9
    assert first["error"]["code"] == -32600
    assert second["id"] == 10


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(ping(1), masked=False), 1002),  # a client must mask: websockets refuses it
        (frame(b"\xc1"), 1007),  # not msgpack: the bus refuses it
        (frame(b"{}", opcode=0x1), 1003),  # a text frame on a msgpack connection
    ],
    ids=["unmasked", "garbage", "text frame"],
)
async def test_refused_frames_close_the_connection(ws: ClientConnection, data: bytes, code: int) -> None:
    ws.transport.write(data + frame(ping(2)))
    with pytest.raises(ConnectionClosed):
        await read_until_closed(ws)
    assert ws.close_code == code


async def read_until_closed(ws: ClientConnection) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            reply = msgpack.unpackb(await ws.recv())
            assert reply.get("id") != 2, "a frame after a refused one was answered"

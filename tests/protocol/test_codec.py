"""The codecs, without an event loop."""

from __future__ import annotations

import json
import math

import msgpack
import pytest

from protocol import JSON, MSGPACK, Notification, Request, Response, codec_for
from protocol.codec import container_budget
from protocol.errors import FrameTooLarge, InvalidMessage, MalformedFrame, WrongFrameType


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=lambda c: c.name)
def test_round_trip_of_every_message_type(codec) -> None:
    """Each message type survives encode/decode unchanged, bytes included."""
    messages = [
        Request(id=7, method="persona.status", to="persona:demo", meta={"deadline_ms": 500}),
        Request(id="a-b", method="bus.publish", params={"topic": "t", "data": b"\x00\xffpng"}),
        Notification(method="event", params={"topic": "x", "data": [1, 2.5, None, True]}),
        Notification(method="chat.token", params={"t": "hi"}, meta={"reply_to": 3}),
        Response(id=1, result=None),
        Response(id=2, error={"code": -32001, "message": "gone", "data": {"why": "left"}}),
    ]
    for message in messages:
        assert message == codec.decode(codec.encode(message))


def test_json_bytes_convention() -> None:
    """Bytes travel in JSON as {"$bytes": base64} and come back as bytes."""
    frame = JSON.encode(Response(id=1, result={"png": b"\x89PNG"}))
    assert json.loads(frame)["result"] == {"png": {"$bytes": "iVBORw=="}}
    assert JSON.decode(frame).result == {"png": b"\x89PNG"}


def test_null_result_is_sent() -> None:
    """A null result is a result, not an absent one."""
    assert json.loads(JSON.encode(Response(id=1, result=None))) == {"jsonrpc": "2.0", "id": 1, "result": None}


def test_frame_type_must_match_codec() -> None:
    """Text frames on a msgpack connection and binary on a JSON one close with 1003."""
    with pytest.raises(WrongFrameType) as info:
        MSGPACK.decode('{"id":1}')
    assert 1003 == info.value.close_code
    with pytest.raises(WrongFrameType):
        JSON.decode(b'{"id":1}')


def test_valid_surrogate_pairs_pass() -> None:
    """An escaped surrogate *pair* is one real character and is accepted."""
    assert "\U0001f600" == JSON.decode('{"id":1,"result":"\\ud83d\\ude00"}').result


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=lambda c: c.name)
def test_size_limit(codec) -> None:
    """A frame over the limit raises FrameTooLarge with both numbers."""
    frame = codec.encode(Notification(method="x", params={"blob": "a" * 2000}))
    with pytest.raises(FrameTooLarge) as info:
        codec.decode(frame, max_bytes=1000)
    assert (info.value.limit, info.value.size > 1000) == (1000, True)


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "{",
        "[1,2]x",
        '{"id":1,"result":NaN}',
        '{"id":1,"result":Infinity}',
        "[" * 100_000,
        '{"id":1,"result":{"$bytes":"***"}}',
    ],
)
def test_json_garbage_is_malformed(frame: str) -> None:
    """Invalid JSON, NaN, runaway nesting and bad base64 are MalformedFrame."""
    with pytest.raises(MalformedFrame):
        JSON.decode(frame)


@pytest.mark.parametrize(
    "frame",
    [
        b"\xc1",
        msgpack.packb({1: 2}),
        msgpack.packb({"a": msgpack.ExtType(5, b"x")}),
        msgpack.packb({"a": [math.nan]}),
        msgpack.packb({"a": msgpack.Timestamp(1, 0)}),
        msgpack.packb({"id": 1}) + b"\x00",
    ],
)
def test_msgpack_garbage_is_malformed(frame: bytes) -> None:
    """What JSON could not carry (int keys, ext types, NaN) is refused at the door."""
    with pytest.raises(MalformedFrame):
        MSGPACK.decode(frame)


@pytest.mark.parametrize(
    ("data", "salvaged_id"),
    [
        ({"id": 5}, 5),
        ({"id": "x", "method": "Bad-Name"}, "x"),
        ([1, 2], None),
        ({"method": "ok", "id": 1.5}, None),
        ({"id": 3, "result": 1, "error": {"code": 1, "message": "m"}}, 3),
        ({"id": 4, "method": "m", "to": "nobody"}, 4),
        ({"id": 9, "method": "m", "surprise": 1}, 9),
    ],
)
def test_invalid_envelopes_keep_the_id(data, salvaged_id) -> None:
    """An invalid envelope raises InvalidMessage carrying the id, when one can be read."""
    with pytest.raises(InvalidMessage) as info:
        JSON.decode(json.dumps(data))
    assert salvaged_id == info.value.request_id


def test_codec_for_subprotocols() -> None:
    """Subprotocol names select codecs; unknown or missing ones are a clear error."""
    assert codec_for("personad.v1.msgpack") is MSGPACK
    assert codec_for("personad.v1.json") is JSON
    with pytest.raises(ValueError, match="no subprotocol"):
        codec_for(None)
    with pytest.raises(ValueError, match="unknown subprotocol"):
        codec_for("graphql-ws")


# -- decoding bounded by the frame's size -------------------------------------------


def _bomb(codec, arrays: int) -> bytes | str:
    if codec is MSGPACK:
        return b"\xdd" + arrays.to_bytes(4, "big") + b"\x90" * arrays
    return "[" + ",".join(["[]"] * arrays) + "]"


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=lambda c: c.name)
def test_container_bomb_is_malformed(codec) -> None:
    """A frame of empty arrays, 56 bytes of Python per wire byte, is refused within the budget."""
    frame = _bomb(codec, 400_000)
    assert container_budget(len(frame)) < 400_000
    with pytest.raises(MalformedFrame, match="arrays"):
        codec.decode(frame)


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=lambda c: c.name)
def test_densest_legit_message_passes(codec) -> None:
    """brain.query's worst case, 1000 one-column rows (a list per 2-4 bytes), is within budget."""
    rows = [[i] for i in range(1000)]
    result = {"columns": ["id"], "rows": rows, "truncated": True, "elapsed_s": 0.01}
    frame = codec.encode(Response(id=1, result=result))
    assert rows == codec.decode(frame).result["rows"]


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=lambda c: c.name)
def test_many_records_in_a_big_frame_pass(codec) -> None:
    """bus.clients for 20,000 clients (a map and a list each, ~60 bytes per container) passes."""
    clients = [
        {
            "id": f"persona:p{i}",
            "kind": "persona",
            "capabilities": [],
            "connected_at": 1764620000.0 + i,
            "inflight": 0,
            "codec": "msgpack",
            "token": f"p{i}",
        }
        for i in range(20_000)
    ]
    frame = codec.encode(Response(id=1, result={"clients": clients}))
    assert clients == codec.decode(frame).result["clients"]


def test_json_brackets_inside_strings_do_not_count() -> None:
    """Text full of brackets (code, nested JSON as a string) is not mistaken for containers."""
    text = "[{}]" * 20_000
    frame = JSON.encode(Notification(method="note", params={"source": text}))
    assert text == JSON.decode(frame).params["source"]
    escaped = JSON.encode(Notification(method="note", params={"q": '"[' * 20_000}))
    assert '"[' * 20_000 == JSON.decode(escaped).params["q"]


def test_json_container_count_reads_escapes_as_json_does() -> None:
    """Escaped quotes do not end a string, escaped backslashes do not escape its end."""
    inside = '\\"' + "[" * 5000 + '\\"'  # brackets inside a string with escaped quotes
    assert '"' + "[" * 5000 + '"' == JSON.decode('{"id":1,"result":"' + inside + '"}').result
    outside = '{"id":1,"result":["\\\\",' + ",".join(["[]"] * 5000) + "]}"  # "\\" ends its string
    with pytest.raises(MalformedFrame, match="arrays and objects"):
        JSON.decode(outside)


def test_json_container_count_is_linear_in_escaped_quotes() -> None:
    """An unterminated string of escaped quotes after many brackets is refused at once
    (a pattern that rescans from every escaped quote took 33 s for 85 KB)."""
    frame = "[" * 5000 + '"' + '\\"' * 200_000
    with pytest.raises(MalformedFrame):
        JSON.decode(frame)

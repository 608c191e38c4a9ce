"""Fuzzing the decoder: whatever arrives, only documented errors come out."""

from __future__ import annotations

import json

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import JSON, MSGPACK, Notification, Request, Response
from protocol.errors import DecodeError

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "method",
                    "params",
                    "result",
                    "error",
                    "to",
                    "from",
                    "meta",
                    "jsonrpc",
                    "code",
                    "message",
                    "deadline_ms",
                    "reply_to",
                    "$bytes",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decodes_or_documented_error(codec, frame) -> None:
    try:
        message = codec.decode(frame, max_bytes=4096)
    except DecodeError:
        return
    assert isinstance(message, Request | Notification | Response)
    # Anything accepted can be re-encoded in *both* codecs (relay safety).
    JSON.encode(message)
    MSGPACK.encode(message)


@SETTINGS
@given(st.binary(max_size=300))
def test_msgpack_random_bytes(frame: bytes) -> None:
    """Random bytes on a msgpack connection: a message or a DecodeError, nothing else."""
    _decodes_or_documented_error(MSGPACK, frame)


@SETTINGS
@given(st.text(max_size=300) | st.integers().map(lambda n: f'{{"id":1,"result":{n}}}'))
def test_json_random_text(frame: str) -> None:
    """Random text on a JSON connection: a message or a DecodeError, nothing else."""
    _decodes_or_documented_error(JSON, frame)


@SETTINGS
@given(json_values)
def test_structured_values_both_codecs(value) -> None:
    """Well-formed but arbitrary structures: a message or a DecodeError, in both codecs."""
    try:
        text = json.dumps(value)
    except ValueError:
        text = None
    if text is not None:
        _decodes_or_documented_error(JSON, text)
    _decodes_or_documented_error(MSGPACK, msgpack.packb(value, use_bin_type=True))


#: What a msgpack peer can send, including what the codec must refuse
#: (bytes keys, NaN, timestamps, ext types).
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=8)
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1))
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4) | st.integers(0, 9), inner, max_size=5),
    max_leaves=30,
)


def _hooked_loads(frame: bytes) -> object:
    """The checking decode, every frame through the hooks (the reference for the quick path)."""
    from protocol.codec import _MsgpackHooks, _no_ext

    hooks = _MsgpackHooks(10**9)
    return msgpack.unpackb(frame, raw=False, strict_map_key=True, ext_hook=_no_ext, timestamp=0,
                           object_hook=hooks.map, list_hook=hooks.list)


def _outcome(decode, frame: bytes) -> tuple[str, object]:
    try:
        return "value", decode(frame)
    except Exception:
        return "refused", None


@SETTINGS
@given(msgpack_values)
def test_msgpack_quick_path_agrees_with_the_hooks(value) -> None:
    """A small frame decoded without the hooks gives exactly what the hooks give, or both refuse."""
    frame = msgpack.packb(value, use_bin_type=True, datetime=False)
    # Compared as repr: a bare NaN (no container, so no hook sees it; the
    # envelope check refuses it) is accepted by both and is not equal to itself.
    assert repr(_outcome(MSGPACK.decode_data, frame)) == repr(_outcome(_hooked_loads, frame))

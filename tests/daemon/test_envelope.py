"""daemon/envelope.py accepts only what the protocol's pydantic models accept, read the same way.

The bus and BusClient read envelopes with it and fall back to pydantic on
None, so a message it wrongly accepted would skip a refusal: these tests hold
it to the models, on hand-picked edge cases and on generated messages.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from daemon.envelope import FastMessage, read
from protocol.messages import Notification, Request, Response, message_adapter


def pydantic_reads(data: Any) -> Request | Notification | Response | None:
    try:
        return message_adapter.validate_python(data)
    except ValidationError:
        return None


def same(fast: FastMessage, model: Request | Notification | Response) -> None:
    assert fast.kind == type(model).__name__.lower()
    assert fast.from_ == model.from_
    if isinstance(model, Response):
        assert fast.id == model.id
        assert fast.result == model.result
        if model.error is None:
            assert fast.error is None
        else:
            assert fast.error is not None
            assert (fast.error.code, fast.error.message, fast.error.data) == (
                model.error.code,
                model.error.message,
                model.error.data,
            )
    else:
        assert fast.method == model.method
        assert fast.params == model.params
        assert fast.to == model.to
        if isinstance(model, Request):
            assert fast.id == model.id
    if model.meta is None:
        assert fast.meta is None
    else:
        assert fast.meta is not None
        assert (fast.meta.deadline_ms, fast.meta.trace, fast.meta.reply_to) == (
            model.meta.deadline_ms,
            model.meta.trace,
            model.meta.reply_to,
        )


VALID = [
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "persona.ping",
        "to": "persona:demo",
        "meta": {"deadline_ms": 30000},
    },
    {"id": "a", "method": "bus.ping"},
    {"id": -(2**53), "method": "$/x.y", "params": []},
    {"method": "event", "params": {"a": 1}, "to": "room:x", "meta": {"reply_to": 3}},
    {"jsonrpc": "2.0", "id": 1, "result": None},
    {"id": None, "error": {"code": -32600, "message": "bad", "data": None}},
    {"id": 7, "error": {"code": 1, "message": ""}, "from": "persona:a", "meta": {}},
]

INVALID = [
    [],
    {"jsonrpc": "1.0", "id": 1, "method": "a"},
    {"jsonrpc": None, "id": 1, "method": "a"},
    {"id": True, "method": "a"},
    {"id": 2**53 + 1, "method": "a"},
    {"id": "x" * 129, "method": "a"},
    {"id": 1.0, "method": "a"},
    {"id": 1, "method": "A"},
    {"id": 1, "method": "a\n"},
    {"id": 1, "method": "a" * 129},
    {"id": 1, "method": "a", "params": None},
    {"id": 1, "method": "a", "params": "x"},
    {"id": 1, "method": "a", "to": None},
    {"id": 1, "method": "a", "to": "persona:demo\n"},
    {"id": 1, "method": "a", "to": "nocolon"},
    {"id": 1, "method": "a", "from": None},
    {"id": 1, "method": "a", "meta": None},
    {"id": 1, "method": "a", "meta": {"deadline_ms": 0}},
    {"id": 1, "method": "a", "meta": {"deadline_ms": True}},
    {"id": 1, "method": "a", "meta": {"deadline_ms": "5"}},
    {"id": 1, "method": "a", "meta": {"deadline_ms": None}},
    {"id": 1, "method": "a", "meta": {"trace": "t" * 65}},
    {"id": 1, "method": "a", "meta": {"other": 1}},
    {"id": 1, "method": "a", "extra": 1},
    {"id": 1, "method": "a", "result": 1},
    {"id": 1},
    {"result": 1},
    {"id": None, "result": 1},
    {"id": 1, "result": 1, "error": {"code": 1, "message": "x"}},
    {"id": 1, "error": None},
    {"id": 1, "error": {"code": True, "message": "x"}},
    {"id": 1, "error": {"code": 1}},
    {"id": 1, "error": {"code": 1, "message": "x" * 4097}},
    {"id": 1, "error": {"code": 1, "message": "x", "more": 1}},
]


@pytest.mark.parametrize("data", VALID)
def test_plainly_valid_messages_are_read_as_pydantic_reads_them(data: dict[str, Any]) -> None:
    fast = read(data)
    model = pydantic_reads(data)
    assert fast is not None
    assert model is not None
    same(fast, model)


@pytest.mark.parametrize("data", INVALID)
def test_invalid_messages_are_left_to_pydantic(data: Any) -> None:
    assert pydantic_reads(data) is None
    assert read(data) is None


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["2.0", "a", "bus.ping", "persona:demo", "room:x", "A", "x" * 70, ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
KEYS = ["jsonrpc", "id", "method", "params", "to", "from", "meta", "result", "error", "other"]
metas = st.dictionaries(st.sampled_from(["deadline_ms", "trace", "reply_to", "x"]), scalars, max_size=3)
errors = st.dictionaries(st.sampled_from(["code", "message", "data", "x"]), scalars, max_size=3)
members = st.dictionaries(
    st.sampled_from(KEYS),
    st.one_of(scalars, values, metas, errors),
    max_size=6,
)


@settings(max_examples=1000, deadline=None)
@given(members)
def test_generated_messages_agree_with_pydantic(data: dict[str, Any]) -> None:
    fast = read(data)
    if fast is not None:
        model = pydantic_reads(data)
        assert model is not None, data
        same(fast, model)

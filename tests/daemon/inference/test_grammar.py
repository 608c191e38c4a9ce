"""Constrained decoding (json_schema): every output parses and validates; free text is untouched.

The tiny random model is the hard case for a grammar: left alone it writes
noise, so any output that is valid JSON of the schema is the grammar's doing.
The real model under the profile schema the registry uses is the acceptance
in tests/daemon/registry/test_generate.py (20 roles on SmolLM2).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.inference.adapters import AdapterStore
from daemon.inference.engine import AsyncEngine
from daemon.inference.errors import InvalidSchema
from daemon.inference.service import InferenceService, service_token
from protocol import ErrorCode, RpcError
from protocol.commands.inference import MAX_JSON_SCHEMA_BYTES, GenerateParams
from tests.conftest import WAIT, eventually


class Card(BaseModel):
    """A schema whose every value is short, so even a random model ends within max_tokens."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=8)]
    level: Annotated[int, Field(ge=0, le=100)]
    kind: Literal["cat", "dog", "fox"]
    flags: Annotated[list[bool], Field(max_length=3)]
    ok: bool


CARD = Card.model_json_schema()


def ask(text: str = "hello there", schema: dict[str, Any] | None = CARD, **kw: Any) -> GenerateParams:
    kw.setdefault("temperature", 1.0)
    kw.setdefault("max_tokens", 160)
    return GenerateParams(messages=[{"role": "user", "content": text}], json_schema=schema, **kw)


@pytest.fixture
async def engine(load_tiny, store: AdapterStore) -> AsyncIterator[AsyncEngine]:  # type: ignore[no-untyped-def]
    running = await AsyncEngine.open(state_root=store.root.parent, store=store, loaded=load_tiny())
    yield running
    await running.close()


async def test_every_constrained_output_validates_on_the_tiny_model(engine: AsyncEngine) -> None:
    """20 sampled outputs at temperature 1 (random weights): each stops, parses and validates."""
    results = await asyncio.gather(
        *(engine.generate(ask(f"card {i}", seed=i), owner=f"o{i % 3}") for i in range(20))
    )
    for result in results:
        assert result.constrained
        assert "stop" == result.finish_reason, result.text
        Card.model_validate_json(result.text)
    assert len({r.text for r in results}) > 1  # sampled, not one fixed answer


async def test_free_text_rows_are_unchanged_beside_constrained_ones(engine: AsyncEngine) -> None:
    """Greedy free text is the same alone and batched with constrained rows; their results say so."""
    alone = await engine.generate(ask("hello there", schema=None, temperature=0.0), owner="a")
    assert not alone.constrained
    try:
        Card.model_validate_json(alone.text)
        raise AssertionError("the random model wrote a valid card unprompted")
    except ValidationError:
        pass
    mixed = await asyncio.gather(
        engine.generate(ask("hello there", schema=None, temperature=0.0), owner="a"),
        *(engine.generate(ask(f"card {i}", seed=i), owner=f"b{i}") for i in range(3)),
    )
    assert alone.text == mixed[0].text
    assert not mixed[0].constrained
    assert max(r.batch_size for r in mixed) > 1  # they did share a batch
    for result in mixed[1:]:
        assert result.constrained
        Card.model_validate_json(result.text)


async def test_max_tokens_cuts_a_constrained_value_short_and_says_so(engine: AsyncEngine) -> None:
    result = await engine.generate(ask(max_tokens=3, temperature=0.0), owner="a")
    assert result.constrained
    assert "length" == result.finish_reason
    with pytest.raises(ValidationError):
        Card.model_validate_json(result.text)


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"type": "objectx"}, "objectx"),
        ({"$ref": "#/$defs/nowhere"}, "nowhere"),
        ({"type": "object", "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 1}}}, ""),
    ],
)
async def test_a_schema_xgrammar_cannot_compile_is_invalid_params(
    engine: AsyncEngine, schema: dict[str, Any], says: str
) -> None:
    """The request fails with INVALID_PARAMS naming json_schema; the engine serves the next one."""
    with pytest.raises(InvalidSchema) as caught:
        await engine.generate(ask(schema=schema), owner="a")
    assert caught.value.code == ErrorCode.INVALID_PARAMS
    assert "json_schema" in str(caught.value)
    assert says in str(caught.value)
    result = await engine.generate(ask(), owner="a")
    Card.model_validate_json(result.text)


@pytest.mark.parametrize(
    "schema",
    [
        ["not", "an", "object"],
        "a string",
        True,
        {"description": "x" * MAX_JSON_SCHEMA_BYTES},
    ],
)
def test_json_schema_param_is_an_object_of_bounded_size(schema: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        GenerateParams.model_validate({"messages": [{"role": "user", "content": "x"}], "json_schema": schema})
    assert "json_schema" in str(caught.value)


async def test_grammars_are_cached_by_canonical_json(engine: AsyncEngine) -> None:
    """The same schema twice compiles once; member order is part of the key (it orders the output)."""
    await engine.generate(ask(max_tokens=4), owner="a")
    await engine.generate(ask(max_tokens=4), owner="a")
    compiled = await engine.run(lambda e: e._grammars.compiled if e._grammars else 0)
    assert 1 == compiled
    reordered = {**CARD, "properties": dict(reversed(list(CARD["properties"].items())))}
    result = await engine.generate(ask(schema=reordered, max_tokens=160), owner="a")
    assert 2 == await engine.run(lambda e: e._grammars.compiled if e._grammars else 0)
    assert list(json.loads(result.text)) == list(reordered["properties"])


async def test_bad_schema_over_the_bus_is_invalid_params_naming_the_field(
    bus, state, engine, connect
) -> None:  # type: ignore[no-untyped-def]
    """Through the real service: INVALID_PARAMS, 'json_schema' in the message; a good one then works."""
    service = InferenceService(engine, url=bus.url, token=service_token(state, "main"))
    stop = asyncio.Event()
    task = asyncio.ensure_future(service.run(stop))
    try:
        await eventually(lambda: "inference:main" in bus.router.clients, what="service connected")
        cli = await connect()
        base = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 160, "seed": 3}
        with pytest.raises(RpcError) as caught:
            await cli.call(
                "inference.generate", {**base, "json_schema": {"type": "objectx"}}, to="cap:inference"
            )
        assert caught.value.code == ErrorCode.INVALID_PARAMS
        assert "json_schema" in caught.value.message
        with pytest.raises(RpcError) as caught:
            await cli.call("inference.generate", {**base, "json_schema": [1]}, to="cap:inference")
        assert caught.value.code == ErrorCode.INVALID_PARAMS
        assert "json_schema" in caught.value.message
        result = await cli.call("inference.generate", {**base, "json_schema": CARD}, to="cap:inference")
        assert result["constrained"] is True
        Card.model_validate_json(result["text"])
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)

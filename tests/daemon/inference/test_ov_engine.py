"""The OpenVINO backend against the torch one: same requests, same answers, same errors.

Real components: the tiny Llama exported to OpenVINO IR by the real exporter
(``.venv-convert``, once, cached by content in ``$PERSONAD_OV_CACHE``), run by
OpenVINO GenAI, beside the same model in transformers + PEFT. The exact
comparisons use fp32 weights computed in fp32 (``precision="f32"``), where
the two engines must choose the same greedy tokens; the default int8
weights are held to the real model's figures in ``bench/inference.py``.

Each of the library's four traps (``daemon/inference/ov/engine.py``) has a
test here that fails if the engine falls into it.

(About 520 lines, one file: most tests compare the two engines through one
fixture that converts and opens both, which is costly; pure checks of the
schema's bounds live in ``test_schema_bounds.py``.)
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from daemon.errors import ConfigError
from daemon.inference.adapter_admin import delete_in_engine
from daemon.inference.adapters import WEIGHTS_FILE, AdapterBusy, AdapterRecord, AdapterStore
from daemon.inference.backend import auto_threads, decoder_name, parse_threads
from daemon.inference.engine import AsyncEngine
from daemon.inference.errors import AdapterCorrupt, AdapterIncompatible, AdapterNotFound, ModelUnavailable
from daemon.inference.limits import EngineLimits
from daemon.inference.ov.convert import CONVERT_PYTHON_ENV, IR_CACHE_ENV
from protocol import ErrorCode, RpcError
from protocol.commands.adapters import AdapterDeleteParams
from protocol.commands.inference import (
    GenerateParams,
    LoadStackParams,
    StackEntry,
    TokenParams,
    UnloadParams,
)

from .conftest import BEHAVIOURS, LORA_TARGETS, PROMPTS

ChatParams = Callable[..., GenerateParams]


def ask(prompt: str, stack: list[StackEntry] | None = None, **kw: Any) -> GenerateParams:
    return GenerateParams(
        messages=[{"role": "user", "content": prompt}],
        stack=stack or [],
        max_tokens=kw.pop("max_tokens", 16),
        temperature=kw.pop("temperature", 0),
        **kw,
    )


def stack_of(store: AdapterStore, name: str) -> list[StackEntry]:
    return [r.entry for r in store.resolve(name)]


async def open_engine(
    backend: str, model: Path, store: AdapterStore, *, limits: EngineLimits | None = None
) -> AsyncEngine:
    return await AsyncEngine.open(
        state_root=store.root.parent,
        model=str(model),
        store=store,
        threads=1,
        limits=limits,
        backend=backend,
        weight_format="fp32",
        precision="f32",
    )


@pytest.fixture
async def engines(tiny_dir: Path, trained_store: AdapterStore) -> AsyncIterator[dict[str, AsyncEngine]]:
    """The tiny model on both backends, over the same trained adapters (zoo, zoo.cat, farm)."""
    opened = {b: await open_engine(b, tiny_dir, trained_store) for b in ("torch", "openvino")}
    try:
        yield opened
    finally:
        for engine in opened.values():
            await engine.close()


async def answers(engine: AsyncEngine, requests: list[GenerateParams]) -> list[str]:
    return [(await engine.generate(r, owner="t")).text for r in requests]


# -- the same answers ------------------------------------------------------------------------


async def test_both_backends_answer_alike_with_and_without_stacks(
    engines: dict[str, AsyncEngine], trained_store: AdapterStore
) -> None:
    """Base, a two-level stack over all seven projections, base again, another stack: token for token.

    Trap 2 (alpha must be lora_alpha / r) and trap 3 (modules the pipeline
    was built without) would change the stacked replies; trap 4 (a request
    without adapters runs the last set) the base reply after a stacked one.
    """
    zoo_cat = stack_of(trained_store, "zoo.cat")
    farm = stack_of(trained_store, "farm")
    requests = []
    for prompt in PROMPTS[:3]:
        requests += [ask(prompt), ask(prompt, zoo_cat), ask(prompt), ask(prompt, farm)]
    torch_says = await answers(engines["torch"], requests)
    ov_says = await answers(engines["openvino"], requests)
    assert ov_says == torch_says
    # And the adapters did change what the model says, so the equality means something.
    for base, cat, again, brand in zip(*[iter(ov_says)] * 4, strict=True):
        assert BEHAVIOURS["zoo.cat"] in cat
        assert BEHAVIOURS["farm"] in brand
        assert base == again
        assert BEHAVIOURS["zoo"] not in base


async def test_a_long_prompt_is_not_answered_from_another_stacks_cache(
    engines: dict[str, AsyncEngine], trained_store: AdapterStore
) -> None:
    """Trap 1: paged attention's prefix cache reuses prompt state computed under other adapters.

    Only whole cached blocks are reused, so the prompt is long (hundreds of
    tokens) and sent base → stack → base, as the torch engine answers it.
    """
    system = " ".join(["A patient explainer answers questions about patents and brands."] * 30)
    zoo = stack_of(trained_store, "zoo")

    def long_ask(stack: list[StackEntry]) -> GenerateParams:
        return GenerateParams(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": "hello"}],
            stack=stack,
            max_tokens=12,
            temperature=0,
        )

    requests = [long_ask([]), long_ask(zoo), long_ask([]), long_ask(zoo)]
    first = await engines["openvino"].generate(requests[0], owner="t")
    assert first.prompt_tokens > 256
    assert await answers(engines["openvino"], requests) == await answers(engines["torch"], requests)


async def test_streaming_counts_and_finish_reasons_match(
    engines: dict[str, AsyncEngine], trained_store: AdapterStore
) -> None:
    results = {}
    for backend, engine in engines.items():
        pieces: list[TokenParams] = []

        async def collect(token: TokenParams, pieces: list[TokenParams] = pieces) -> None:
            pieces.append(token)

        short = await engine.generate(ask("hello", max_tokens=3, stream=True), owner="t", on_token=collect)
        assert short.finish_reason == "length"
        assert short.completion_tokens == 3
        assert "".join(p.text for p in pieces) == short.text
        assert [p.index for p in pieces] == list(range(len(pieces)))
        # The zoo stack says its phrase and stops (its training data ends with the end token).
        done = await engine.generate(ask("hello", stack_of(trained_store, "zoo"), max_tokens=64), owner="t")
        results[backend] = (short.prompt_tokens, short.completion_tokens, done.finish_reason, done.text)
        assert done.model == "tiny-llama"
        assert done.timings.tokens_per_s > 0
    assert results["openvino"] == results["torch"]
    assert results["openvino"][2] == "stop"


async def test_sampling_follows_the_seed(engines: dict[str, AsyncEngine]) -> None:
    engine = engines["openvino"]
    first = await engine.generate(ask("hello", temperature=1.0, seed=7, max_tokens=12), owner="t")
    again = await engine.generate(ask("hello", temperature=1.0, seed=7, max_tokens=12), owner="t")
    other = [
        (await engine.generate(ask("hello", temperature=1.0, seed=s, max_tokens=12), owner="t")).text
        for s in range(8, 12)
    ]
    assert first.text == again.text
    assert any(text != first.text for text in other)


async def test_a_schema_the_torch_engine_refuses_is_refused_alike(engines: dict[str, AsyncEngine]) -> None:
    bad = {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}
    messages = []
    for engine in engines.values():
        with pytest.raises(Exception, match="invalid params: json_schema") as caught:
            await engine.generate(ask("hello", json_schema=bad), owner="t")
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


async def test_a_json_schema_holds_smollm2_s_reply(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the real model and its default (packed) weights: a reply in the schema's shape, its pattern kept.

    (OpenVINO compiles the schema with its own xgrammar, which allows
    whitespace between tokens: the tiny random model loops on newlines there,
    so this runs on SmolLM2.)
    """
    schema = {
        "type": "object",
        "properties": {
            # A pattern with a character class xgrammar cannot expand inline.
            "name": {"type": "string", "pattern": "^[A-Z][a-z'-][a-z'-]?[a-z'-]?[a-z'-]?$"},
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    engine = await AsyncEngine.open(
        state_root=tmp_path, model=str(smollm2_dir), threads=1, backend="openvino"
    )
    try:
        for seed in (1, 2):
            prompt = "Invent a person. Answer in JSON with a name and an age."
            result = await engine.generate(
                ask(prompt, json_schema=schema, max_tokens=60, temperature=0.7, seed=seed), owner="t"
            )
            assert result.constrained
            assert result.finish_reason == "stop"
            value = json.loads(result.text)
            assert set(value) == {"name", "age"}
            assert re.fullmatch(r"[A-Z][a-z'-]{1,4}", value["name"])
            assert 18 <= value["age"] <= 99
    finally:
        await engine.close()


# -- the traps' mechanics ------------------------------------------------------------------------


async def test_the_pipeline_registers_what_adapters_use_and_grows(
    tiny_dir: Path, make_adapter: Callable[..., AdapterRecord], store: AdapterStore
) -> None:
    """Trap 3: only registered projections take LoRA. An adapter on the MLP too gets them registered.

    The engine starts with the attention projections registered (zeros);
    an adapter on all seven rebuilds the pipeline once with all seven, and
    its replies are the torch engine's, so every one of its matrices applied.
    """
    from daemon.inference.ov.engine import FIRST_REGISTERED
    from daemon.inference.ov.model import registration_adapter

    wide = make_adapter("wide", seed=21, targets=LORA_TARGETS, scale=20.0)
    narrow = make_adapter("narrow", seed=22, targets=["q_proj", "v_proj"], scale=20.0)
    opened = {b: await open_engine(b, tiny_dir, store) for b in ("torch", "openvino")}
    ov_engine = opened["openvino"].engine
    try:
        assert ov_engine.registered == FIRST_REGISTERED  # type: ignore[union-attr]
        first = registration_adapter(ov_engine.loaded, FIRST_REGISTERED)  # type: ignore[union-attr]
        with safe_open(str(first), framework="numpy") as f:
            keys = list(f.keys())
            assert all(not f.get_tensor(k).any() for k in keys)
        assert {k.split(".")[-3] for k in keys} == FIRST_REGISTERED
        assert {k.split(".")[4] for k in keys} == {"0", "1"}  # every layer

        requests = [ask(PROMPTS[0], [narrow.entry]), ask(PROMPTS[0], [wide.entry]), ask(PROMPTS[0])]
        said = {name: await answers(engine, requests) for name, engine in opened.items()}
        assert said["openvino"] == said["torch"]
        assert ov_engine.registered == frozenset(LORA_TARGETS)  # type: ignore[union-attr]
        assert ov_engine.rebuilds == 1  # type: ignore[union-attr]
        await opened["openvino"].generate(ask(PROMPTS[1], [wide.entry]), owner="t")
        assert ov_engine.rebuilds == 1  # type: ignore[union-attr]
    finally:
        for engine in opened.values():
            await engine.close()


async def test_the_scale_is_peft_s(engines: dict[str, AsyncEngine], trained_store: AdapterStore) -> None:
    """Trap 2: OpenVINO takes the effective scale, lora_alpha / r (alpha / sqrt(r) with rsLoRA)."""
    record = trained_store.get("zoo")

    def scale(engine: Any) -> float:
        return float(engine._adapter(record).scale)

    assert await engines["openvino"].run(scale) == pytest.approx(record.alpha / record.rank)


async def test_rslora_and_rank_patterns(
    tiny_dir: Path, tmp_path: Path, make_adapter: Callable[..., AdapterRecord], store: AdapterStore
) -> None:
    """rsLoRA scales by alpha / sqrt(r); per-module ranks cannot be told to OpenVINO, so they are refused."""
    rs = make_adapter("rs", seed=1, rank=4, alpha=8.0)
    config_path = rs.path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "use_rslora": True}))
    engine = await open_engine("openvino", tiny_dir, store)
    try:
        assert await engine.run(lambda e: e._adapter(rs).scale) == pytest.approx(8.0 / 2.0)
        config_path.write_text(json.dumps({**config, "rank_pattern": {"q_proj": 2}}))
        await engine.run(lambda e: e.forget(rs.sha256))
        with pytest.raises(Exception, match="rank_pattern"):
            await engine.generate(ask("hello", [rs.entry]), owner="t")
        assert (await engine.generate(ask("hello"), owner="t")).completion_tokens > 0
    finally:
        await engine.close()


# -- errors, and serving on after them ------------------------------------------------------------


async def test_an_adapter_for_another_model_is_refused_and_serving_goes_on(
    tiny_dir: Path, other_tiny_dir: Path, make_adapter: Callable[..., AdapterRecord], store: AdapterStore
) -> None:
    alien = make_adapter("alien", seed=3, model_dir=other_tiny_dir)
    engine = await open_engine("openvino", tiny_dir, store)
    try:
        with pytest.raises(AdapterIncompatible, match="another base model"):
            await engine.generate(ask("hello", [alien.entry]), owner="t")
        assert (await engine.generate(ask("hello"), owner="t")).completion_tokens > 0
    finally:
        await engine.close()


async def test_a_corrupt_adapter_is_refused_and_serving_goes_on(
    tiny_dir: Path, make_adapter: Callable[..., AdapterRecord], store: AdapterStore
) -> None:
    good = make_adapter("good", seed=4)
    bad = make_adapter("bad", seed=5)
    weights = bad.path / WEIGHTS_FILE
    weights.chmod(0o600)
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\xff" * 8
    weights.write_bytes(bytes(data))
    engine = await open_engine("openvino", tiny_dir, store)
    try:
        with pytest.raises(AdapterCorrupt, match="altered or damaged"):
            await engine.generate(ask("hello", [bad.entry]), owner="t")
        assert (await engine.generate(ask("hello", [good.entry]), owner="t")).stack == [good.entry]
    finally:
        await engine.close()


async def test_a_model_that_was_never_exported_says_how_to_export_it(
    tiny_dir: Path, store: AdapterStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(IR_CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.setenv(CONVERT_PYTHON_ENV, str(tmp_path / "no-such-python"))
    with pytest.raises(ModelUnavailable, match="make convert-env"):
        await open_engine("openvino", tiny_dir, store)
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())


async def test_a_cancelled_request_stops_and_the_next_one_runs(engines: dict[str, AsyncEngine]) -> None:
    engine = engines["openvino"]
    deadline = asyncio.get_running_loop().time() + 0.01
    with pytest.raises(RpcError) as caught:
        await engine.generate(ask("hello", max_tokens=900), owner="t", deadline=deadline)
    assert caught.value.code == ErrorCode.TIMEOUT
    assert (await engine.generate(ask("hello", max_tokens=4), owner="t")).completion_tokens == 4


# -- several personas ---------------------------------------------------------------------------------


async def test_owners_take_turns(engines: dict[str, AsyncEngine], trained_store: AdapterStore) -> None:
    """One request at a time, handed out round-robin: a burst from one owner does not starve another."""
    engine = engines["openvino"]
    finished: list[str] = []

    async def one(owner: str, i: int) -> None:
        await engine.generate(ask(PROMPTS[i % len(PROMPTS)], max_tokens=24), owner=owner)
        finished.append(f"{owner}{i}")

    burst = [asyncio.ensure_future(one("a", i)) for i in range(4)]
    await asyncio.sleep(0)
    late = asyncio.ensure_future(one("b", 0))
    await asyncio.gather(*burst, late)
    assert finished.index("b0") < finished.index("a3")


async def test_stacks_are_pinned_listed_and_released(
    engines: dict[str, AsyncEngine], trained_store: AdapterStore
) -> None:
    engine = engines["openvino"]
    loaded = await engine.load_stack(LoadStackParams(name="zoo.cat"), owner="ada")
    status = await engine.status()
    assert status.backend == "openvino"
    assert status.threads == 1
    assert {a.sha256 for a in status.loaded} == {s.sha256 for s in loaded.stack}
    # A pinned adapter cannot be deleted from under its owner.
    with pytest.raises(AdapterBusy, match="pinned by ada"):
        await engine.run(lambda e: delete_in_engine(e, AdapterDeleteParams(name="zoo.cat")))
    await engine.unload(
        UnloadParams(stack=[StackEntry(name=s.name, sha256=s.sha256) for s in loaded.stack]), owner="ada"
    )
    assert (await engine.status()).loaded == []
    assert (await engines["torch"].status()).backend == "torch"


# -- choosing a backend and its threads ----------------------------------------------------------------


def test_threads_are_the_usable_cores_but_one() -> None:
    assert [auto_threads(n) for n in (1, 2, 3, 8)] == [1, 1, 2, 7]
    assert parse_threads("3") == 3
    assert parse_threads(2) == 2
    assert parse_threads("auto") == auto_threads()
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="threads"):
            parse_threads(bad)


def test_the_backend_is_openvino_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONAD_INFERENCE_BACKEND", raising=False)
    assert decoder_name() == "openvino"
    monkeypatch.setenv("PERSONAD_INFERENCE_BACKEND", "torch")
    assert decoder_name() == "torch"
    with pytest.raises(ConfigError, match="openvino, torch"):
        decoder_name("llamacpp")


def test_constrained_replies_are_checked_as_strict_json_and_held_to_their_string_bounds() -> None:
    """OpenVINO's grammar cannot take json_guard.py's mask, nor is it given maxLength (too slow):
    its replies are checked whole."""
    from daemon.inference.ov.engine import _reply_breaks

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 3}}}
    assert _reply_breaks(schema, '{"name": "Ada"}') is None
    assert _reply_breaks(None, '{"name": ') is None  # unconstrained: not checked
    for bad in ('{"name": "A\x01da"}', '{"name": "\\ud800"}', '{"name": "\ufffd"}', '{"name": '):
        # a raw control character, a lone surrogate (escaped), bytes that were not UTF-8, cut off
        assert "not strict JSON" in str(_reply_breaks(schema, bad)), bad
    assert "name is 4 characters long" in str(_reply_breaks(schema, '{"name": "Adam"}'))


def test_the_grammar_openvino_compiles_has_no_max_length(engines: dict[str, AsyncEngine]) -> None:
    ov_engine = engines["openvino"]._engine
    schema = {"type": "object", "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 3}}}
    compiled = json.loads(ov_engine._schema(schema))  # type: ignore[union-attr]
    assert {"type": "string", "minLength": 1} == compiled["properties"]["name"]


def test_serving_on_openvino_imports_no_torch(tiny_dir: Path, trained_store: AdapterStore) -> None:
    """The service's imports, the model's load and a stacked reply, in a fresh process: no torch (330 MiB)."""
    import subprocess
    import sys

    code = """
import asyncio, sys
from pathlib import Path
import daemon.inference.service
from daemon.inference.adapters import AdapterStore
from daemon.inference.engine import AsyncEngine
from protocol.commands.inference import GenerateParams

async def main():
    store = AdapterStore(Path(sys.argv[2]))
    engine = await AsyncEngine.open(state_root=store.root.parent, model=sys.argv[1], store=store, threads=1,
                                    backend="openvino", weight_format="fp32", precision="f32")
    try:
        stack = [r.entry for r in store.resolve("zoo.cat")]
        params = GenerateParams(messages=[{"role": "user", "content": "hello"}], stack=stack, max_tokens=4)
        print((await engine.generate(params, owner="t")).completion_tokens, "torch" in sys.modules)
    finally:
        await engine.close()

asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_dir), str(trained_store.root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["4", "False"]


async def test_status_and_unload_are_answered_during_a_long_request(engines: dict[str, AsyncEngine]) -> None:
    """One request is one pipeline call: a status or an unload asked mid-request is answered
    between its tokens, not after its end (found by fuzzing: hub jobs' long requests left
    inference.status and inference.unload unanswered past their deadlines)."""
    engine = engines["openvino"]
    asked: list[asyncio.Future[Any]] = []
    answered_mid_request: list[int] = []  # set at the first token after both were answered

    async def on_token(token: TokenParams) -> None:
        if not asked:
            asked.append(asyncio.ensure_future(engine.status()))
            asked.append(asyncio.ensure_future(engine.unload(UnloadParams(stack=[]), owner="other")))
        elif all(f.done() for f in asked) and not answered_mid_request:
            answered_mid_request.append(1)

    result = await engine.generate(ask("hello", max_tokens=300), owner="t", on_token=on_token)
    status = await asked[0]
    assert 1 == status.running  # answered while the request ran
    assert [] == (await asked[1]).released
    assert answered_mid_request, "the unload waited for the request to end"
    assert result.completion_tokens > 1


async def test_an_unknown_stack_is_refused_at_once_during_a_long_request(
    engines: dict[str, AsyncEngine],
) -> None:
    """inference.load_stack of a name that is not in the store is answered AdapterNotFound
    while a long request runs, not after it: one request is one pipeline call, which can
    last minutes (a hub job's), and a bad name waited for its end, past its deadline."""
    engine = engines["openvino"]
    asked: list[asyncio.Future[Any]] = []
    answered_mid_request: list[int] = []

    async def on_token(token: TokenParams) -> None:
        if not asked:
            asked.append(
                asyncio.ensure_future(engine.load_stack(LoadStackParams(name="no-such-adapter"), owner="o"))
            )
        elif asked[0].done() and not answered_mid_request:
            answered_mid_request.append(1)

    result = await engine.generate(ask("hello", max_tokens=300), owner="t", on_token=on_token)
    with pytest.raises(AdapterNotFound, match="no-such-adapter"):
        await asked[0]
    assert answered_mid_request, "the bad name waited for the request to end"
    assert result.completion_tokens > 1

"""The engine on a real (tiny) model: exact stacks, slots, batching, fairness, bad input."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from daemon.inference.adapters import WEIGHTS_FILE, AdapterStore
from daemon.inference.engine import WORKER_THREAD_NAME, AsyncEngine, Engine, EngineLimits
from daemon.inference.errors import AdapterCorrupt, AdapterIncompatible, AdapterNotFound, Overloaded
from protocol.commands.inference import GenerateParams, LoadStackParams, StackEntry, UnloadParams
from tests.conftest import WAIT, eventually
from tests.daemon.inference.conftest import BEHAVIOURS, LORA_TARGETS

LEVELS = ("legal", "legal.patent", "legal.patent.uspto")
IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 2, 1, 50]])


def ask(text: str = "hello there", stack=(), **kw) -> GenerateParams:  # type: ignore[no-untyped-def]
    kw.setdefault("temperature", 0.0)
    kw.setdefault("max_tokens", 12)
    return GenerateParams(messages=[{"role": "user", "content": text}], stack=list(stack), **kw)


@pytest.fixture
def three_levels(make_adapter) -> None:  # type: ignore[no-untyped-def]
    """legal → legal.patent → legal.patent.uspto, random adapters with different targets and ranks."""
    make_adapter("legal", seed=1, rank=4, targets=["q_proj", "v_proj"])
    make_adapter("legal.patent", seed=2, rank=2, targets=["q_proj", "o_proj", "down_proj"])
    make_adapter("legal.patent.uspto", seed=3, rank=8, targets=LORA_TARGETS)


@pytest.mark.usefixtures("three_levels")
def test_stacked_merged_and_cat_agree_and_unloading_restores_base(load_tiny, store: AdapterStore) -> None:
    """unmerged = merged = cat within 1e-5 (fp32); after each, the base output is bit-identical."""
    engine = Engine(load_tiny(), store)
    base = engine.logits(IDS)
    stack = store.resolve("legal.patent.uspto")
    stacked = engine.logits(IDS, stack, "unmerged")
    assert (stacked - base).abs().max() > 1e-2  # the stack does change the output
    for mode in ("merged", "cat", "unmerged", "merged"):
        out = engine.logits(IDS, stack, mode)
        assert torch.allclose(stacked, out, atol=1e-5, rtol=0), mode
        assert torch.equal(base, engine.logits(IDS)), f"base not restored after {mode}"
    # A shorter stack is a different function: the parent alone.
    parent = engine.logits(IDS, stack[:1], "merged")
    assert not torch.allclose(parent, stacked, atol=1e-3)
    assert torch.allclose(parent, engine.logits(IDS, stack[:1], "unmerged"), atol=1e-5, rtol=0)


@pytest.mark.usefixtures("three_levels")
def test_bounded_slots_evict_and_hotswap_without_changing_outputs(load_tiny, store, make_adapter) -> None:
    """With four slots (a 3-level stack and its cat), stacks still compute right: LRU, hot-swap."""
    make_adapter("other", seed=9, rank=4, targets=["q_proj", "v_proj"])  # same config as legal
    engine = Engine(load_tiny(), store, limits=EngineLimits(max_adapters=4, max_merged=1))
    reference = Engine(load_tiny(), store)
    for name in ("legal", "other", "legal.patent.uspto", "legal", "other", "legal.patent"):
        stack = store.resolve(name)
        expected = reference.logits(IDS, stack, "unmerged")
        for mode in ("unmerged", "merged", "cat"):
            assert torch.allclose(expected, engine.logits(IDS, stack, mode), atol=1e-5, rtol=0), (name, mode)
        status = engine.status(0)
        assert status.slots_used <= 4
        assert len(status.merged) <= 1
    assert engine.evictions > 0
    assert torch.equal(reference.logits(IDS), engine.logits(IDS))
    # One slot, two adapters with the same config: each switch swaps tensors in place.
    single = Engine(load_tiny(), store, limits=EngineLimits(max_adapters=1, max_merged=1))
    for name in ("legal", "other", "legal", "other"):
        stack = store.resolve(name)
        assert torch.allclose(reference.logits(IDS, stack), single.logits(IDS, stack, "unmerged"), atol=1e-5)
    assert 3 == single.hotswaps


def test_bad_adapters_fail_clearly(load_tiny, store, make_adapter, other_tiny_dir, tmp_path) -> None:
    """Unknown name, another model's adapter, corrupt weights: clear errors; the engine still serves."""
    engine = Engine(load_tiny(), store)
    base = engine.logits(IDS)
    with pytest.raises(AdapterNotFound, match="no adapter named 'legal'"):
        engine.load_stack(LoadStackParams(name="legal"), "persona:a")
    make_adapter("alien", seed=1, model_dir=other_tiny_dir)
    with pytest.raises(AdapterIncompatible, match=r"takes 64 inputs .* expects 48"):
        engine.load_stack(LoadStackParams(name="alien"), "persona:a")
    good = make_adapter("legal", seed=2)
    (good.path / WEIGHTS_FILE).chmod(0o600)
    with (good.path / WEIGHTS_FILE).open("r+b") as f:  # flip bytes inside the data
        f.seek(-16, 2)
        f.write(b"\xff" * 16)
    with pytest.raises(AdapterCorrupt, match="altered or damaged"):
        engine.load_stack(LoadStackParams(name="legal"), "persona:a")
    missing = StackEntry(name="legal", sha256="0" * 64)
    with pytest.raises(AdapterNotFound, match="no longer in the store"):
        engine.resolve([missing])
    assert torch.equal(base, engine.logits(IDS))
    assert 0 == engine.status(0).slots_used


async def test_async_engine_streams_batches_and_keeps_each_stack(load_tiny, trained_store) -> None:
    """Concurrent requests with different stacks batch together and each gets its own stack's text."""
    store = trained_store
    engine = await AsyncEngine.open(state_root=store.root.parent, store=store, loaded=load_tiny())
    try:
        stacks = {name: [r.entry for r in store.resolve(name)] for name in BEHAVIOURS}
        stacks["base"] = []
        solo = {name: (await engine.generate(ask(stack=s), owner="solo")).text for name, s in stacks.items()}
        assert len(set(solo.values())) == len(solo)  # every stack answers differently
        assert "zebra" in solo["zoo"]
        assert "stripes" in solo["zoo.cat"]
        assert "brand" in solo["farm"]
        pieces: list[str] = []

        async def collect(token) -> None:  # type: ignore[no-untyped-def]
            pieces.append(token.text)

        names = list(stacks)
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    engine.generate(
                        ask(stack=stacks[n]), owner=f"persona:{n}", on_token=collect if i == 0 else None
                    )
                    for i, n in enumerate(names)
                )
            ),
            WAIT,
        )
        assert [solo[n] for n in names] == [r.text for r in results]
        assert max(r.batch_size for r in results) > 1
        assert results[0].text == "".join(pieces)
        assert [[e.name for e in r.stack] for r in results] == [[e.name for e in stacks[n]] for n in names]
        status = await engine.status()
        assert 0 == status.waiting
        assert status.served >= 2 * len(names)
    finally:
        await engine.close()


@pytest.mark.usefixtures("three_levels")
async def test_cancelled_request_stops_and_others_continue(load_tiny, store) -> None:
    """A caller that goes away stops its row; a bad request fails alone; the engine keeps serving."""
    engine = await AsyncEngine.open(state_root=store.root.parent, store=store, loaded=load_tiny())
    try:
        started = asyncio.Event()

        async def first_token(_token) -> None:  # type: ignore[no-untyped-def]
            started.set()

        long = asyncio.ensure_future(engine.generate(ask(max_tokens=2000), owner="a", on_token=first_token))
        await asyncio.wait_for(started.wait(), WAIT)
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        bad = ask(stack=[StackEntry(name="legal", sha256="1" * 64)])
        with pytest.raises(AdapterNotFound):
            await engine.generate(bad, owner="b")
        result = await asyncio.wait_for(engine.generate(ask(max_tokens=5), owner="c"), WAIT)
        assert 5 == result.completion_tokens
        await engine.load_stack(LoadStackParams(name="legal.patent"), owner="c")
        stack = [r.entry for r in store.resolve("legal.patent")]
        released = await engine.unload(UnloadParams(stack=stack), owner="c")
        assert stack == released.released
        assert 0 == (await engine.status()).slots_used
        # It served all that on its own worker thread, which is still up.
        worker = engine.thread
        assert worker is not None
        assert worker.is_alive()
        assert worker in [t for t in threading.enumerate() if t.name == WORKER_THREAD_NAME]
    finally:
        await engine.close()
    with pytest.raises(Exception, match="stopped"):
        await engine.generate(ask(), owner="d")
    # close() ended the worker thread (and let go of the model).
    assert not worker.is_alive()
    assert worker not in threading.enumerate()


async def test_a_full_queue_refuses_new_requests_at_once(load_tiny, store) -> None:
    """Past an owner's share of the queue, generate fails with Overloaded; queued work still runs."""
    limits = EngineLimits(max_batch=1, max_waiting_per_owner=1)
    engine = await AsyncEngine.open(
        state_root=store.root.parent, store=store, loaded=load_tiny(), limits=limits
    )
    try:
        started = asyncio.Event()

        async def first_token(_token) -> None:  # type: ignore[no-untyped-def]
            started.set()

        running = asyncio.ensure_future(
            engine.generate(ask(max_tokens=2000), owner="a", on_token=first_token)
        )
        await asyncio.wait_for(started.wait(), WAIT)  # the one seat is taken
        queued = asyncio.ensure_future(engine.generate(ask(max_tokens=3), owner="a"))

        async def one_waiting() -> bool:
            return 1 == (await engine.status()).waiting

        await eventually(one_waiting, what="the second request queued")
        with pytest.raises(Overloaded, match="already has 1 requests waiting"):
            await engine.generate(ask(max_tokens=3), owner="a")
        running.cancel()  # frees the seat: the queued request runs
        assert 3 == (await asyncio.wait_for(queued, WAIT)).completion_tokens
    finally:
        await engine.close()


async def test_greedy_decoding_is_transformers_own_token_for_token(smollm2_dir, store, tmp_path) -> None:
    """Each decode step feeds the token at its true position with the mask covering it: SmolLM2's
    greedy replies from the engine, alone and batched with a prompt of another length (left-padded),
    are exactly what transformers' own ``generate`` gives for each prompt. (With the token fed one
    position early, the replies drift from the second token on; the tiny random model cannot tell.)"""
    from daemon.inference.model import load_model

    reference = load_model(smollm2_dir, state_root=tmp_path)
    tokenizer = reference.tokenizer
    prompts = ["What is your favourite colour?", "Tell me one short fact about bread, please, in a sentence."]
    expected = []
    for text in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids if torch.is_tensor(ids) else ids["input_ids"]
        with torch.no_grad():
            out = reference.model.generate(ids, max_new_tokens=20, do_sample=False)
        expected.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    loaded = load_model(smollm2_dir, state_root=tmp_path)
    engine = await AsyncEngine.open(state_root=store.root.parent, store=store, loaded=loaded)
    try:
        alone = [(await engine.generate(ask(text, max_tokens=20), owner="a")).text for text in prompts]
        together = await asyncio.wait_for(
            asyncio.gather(
                *(engine.generate(ask(t, max_tokens=20), owner=f"b{i}") for i, t in enumerate(prompts))
            ),
            WAIT,
        )
    finally:
        await engine.close()
    assert alone == expected
    assert [r.text for r in together] == expected
    assert max(r.batch_size for r in together) == 2

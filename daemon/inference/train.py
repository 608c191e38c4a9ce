"""Training one LoRA level on chat-format examples, with its parents active and frozen.

``personad adapter train legal.patent --data patent.jsonl`` loads the base
model, loads ``legal`` (the parent chain) as frozen PEFT adapters, adds a new
trainable adapter for ``legal.patent``, activates all of them together
(``model.base_model.set_adapter([...])``, which sums them) and trains only
the new one. So the child learns the *difference* between what its parents
already do and what the examples show: that is what makes the hierarchy
real, and why a child is only meaningful on top of its parents.

Examples are JSONL, one conversation per line, the same shape as the chat
API's messages::

    {"messages": [{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}]}

Each is rendered with the model's own chat template, and the loss covers
only the assistant turns (the prompt is context, not a target). CPU, fp32,
one example per step, AdamW; seeded, so the same data gives the same
adapter.

Examples come from a file (:func:`train_adapter`, the CLI) or from memory
(:func:`train_level`, which ``adapter.train`` runs in a child process:
``train_worker.py``). :func:`train_level` writes the PEFT folder and leaves
storing it to its caller, so the bus path can refuse to store a cancelled
training.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch

from .adapters import AdapterRecord, AdapterStore, chain, peft_key, validate_name
from .errors import TrainingDataError
from .model import LoadedModel
from .slots import _quiet

__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainedLevel",
    "example_problem",
    "examples_sha256",
    "load_examples",
    "train_adapter",
    "train_level",
]

Example = list[dict[str, str]]


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    alpha: int = 16
    #: PEFT's default LoRA targets for Llama are q_proj and v_proj
    #: (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    epochs: int = 3
    learning_rate: float = 2e-3
    seed: int = 0
    #: Longer examples are cut (from the end) to this many tokens.
    max_tokens: int = 512


@dataclass(frozen=True)
class TrainProgress:
    step: int
    total: int
    epoch: int
    loss: float
    elapsed_s: float


@dataclass(frozen=True)
class TrainedLevel:
    """A trained level written as a PEFT folder, not stored yet."""

    folder: Path
    #: What the store keeps in the record's meta (parents, settings, loss, data hash).
    info: dict[str, Any]
    steps: int
    final_loss: float
    #: The optimizer loop alone (no model load, no saving).
    train_s: float


def example_problem(messages: Any) -> str | None:
    """What is wrong with one example's messages, or None; the file and the bus paths share it."""
    if not isinstance(messages, list) or not messages:
        return 'expected {"messages": [{role, content}, …]}'
    for m in messages:
        if not (
            isinstance(m, dict)
            and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)
        ):
            return "each message needs a role (system, user, assistant) and a string content"
    if messages[-1]["role"] != "assistant":
        return "the last message must be the assistant's (the target)"
    return None


def examples_sha256(examples: list[Example]) -> str:
    """A content hash of in-memory examples (canonical JSON), recorded as the adapter's data hash."""
    canonical = json.dumps(examples, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_examples(path: Path) -> list[Example]:
    """Read chat-format JSONL; TrainingDataError names the line and the problem."""
    try:
        lines = Path(path).read_text("utf-8").splitlines()
    except FileNotFoundError:
        raise TrainingDataError(f"{path}: no such training file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingDataError(f"{path}: cannot read: {exc}") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise TrainingDataError(f"{path}:{number}: not JSON ({exc})") from None
        messages = doc.get("messages") if isinstance(doc, dict) else None
        problem = example_problem(messages)
        if problem is not None:
            raise TrainingDataError(f"{path}:{number}: {problem}")
        assert isinstance(messages, list)
        examples.append([{"role": m["role"], "content": m["content"]} for m in messages])
    if not examples:
        raise TrainingDataError(f"{path}: no examples")
    return examples


def _render(tokenizer: Any, messages: list[dict[str, str]], *, prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def tokenize_example(
    tokenizer: Any, messages: list[dict[str, str]], max_tokens: int
) -> tuple[list[int], list[int]]:
    """(input ids, labels) with -100 on everything but the assistant turns."""
    full = _render(tokenizer, messages, prompt=False)
    labels = [-100] * len(full)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], prompt=True) if i else []
        upto = _render(tokenizer, messages[: i + 1], prompt=False)
        if full[: len(prefix)] != prefix or full[: len(upto)] != upto:
            # The template renders earlier turns differently once later ones
            # follow: train on the final answer only, which is always safe.
            spans = [(len(_render(tokenizer, messages[:-1], prompt=True)), len(full))]
            break
        spans.append((len(prefix), len(upto)))
    for start, end in spans:
        labels[start:end] = full[start:end]
    return full[:max_tokens], labels[:max_tokens]


def data_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def train_adapter(
    store: AdapterStore,
    name: str,
    data: Path,
    *,
    loaded: LoadedModel,
    config: TrainConfig | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
    meta: dict[str, Any] | None = None,
) -> AdapterRecord:
    """Train ``name`` on the JSONL file ``data`` over its stored parents and store it; returns its record.

    ``loaded`` is consumed: PEFT wraps its modules in place, so pass a fresh
    load of the base model (from the cache it takes about a second).
    """
    validate_name(name)
    for parent in chain(name)[:-1]:
        store.get(parent)  # AdapterNotFound before the data is even read
    examples = load_examples(data)
    tmp = Path(tempfile.mkdtemp(prefix=".train-", dir=store.ensure().root))
    try:
        trained = train_level(
            store,
            name,
            examples,
            loaded=loaded,
            out=tmp,
            config=config,
            on_progress=on_progress,
            meta=meta,
            data_sha=data_sha256(data),
            what=str(data),
        )
        return store.import_folder(trained.folder, name, meta=trained.info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train_level(
    store: AdapterStore,
    name: str,
    examples: list[Example],
    *,
    loaded: LoadedModel,
    out: Path,
    config: TrainConfig | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
    meta: dict[str, Any] | None = None,
    data_sha: str | None = None,
    what: str = "the examples",
) -> TrainedLevel:
    """Train ``name`` on ``examples`` over its stored parents; write it as a PEFT folder under ``out``.

    Nothing is stored: the caller imports ``folder`` with ``info`` as meta
    (``store.import_folder``). ``loaded`` is consumed, as for :func:`train_adapter`.
    ``what`` names the data in errors (a file, or the bus request).
    """
    config = config or TrainConfig()
    validate_name(name)
    parents = [store.get(level) for level in chain(name)[:-1]]  # AdapterNotFound if a parent is missing
    for i, messages in enumerate(examples):
        problem = example_problem(messages)
        if problem is not None:
            raise TrainingDataError(f"{what}: example {i}: {problem}")
    if not examples:
        raise TrainingDataError(f"{what}: no examples")
    tokenizer = loaded.tokenizer
    encoded = [tokenize_example(tokenizer, ex, config.max_tokens) for ex in examples]
    if all(all(label == -100 for label in labels) for _, labels in encoded):
        raise TrainingDataError(f"{what}: no assistant tokens to learn from")

    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(config.seed)
    new_key = peft_key(name)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=list(config.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    base = loaded.model
    with _quiet():
        if parents:
            model = PeftModel.from_pretrained(
                base, str(parents[0].path), adapter_name=peft_key(parents[0].name), is_trainable=False
            )
            for parent in parents[1:]:
                model.load_adapter(str(parent.path), adapter_name=peft_key(parent.name), is_trainable=False)
            model.add_adapter(new_key, lora)
        else:
            model = get_peft_model(base, lora, adapter_name=new_key)
        model = cast(Any, model)
        # All levels active (summed) — LoraModel.set_adapter takes a list —
        # then only the new level trainable: set_adapter marks every active
        # adapter trainable, so the parents are frozen again by hand.
        model.base_model.set_adapter([*(peft_key(p.name) for p in parents), new_key])
    trainable = []
    for param_name, param in model.named_parameters():
        param.requires_grad = f".{new_key}." in param_name
        if param.requires_grad:
            trainable.append(param)
    if not trainable:
        raise TrainingDataError(f"none of {list(config.target_modules)} exist in {loaded.name}")
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    model.train()
    rng = random.Random(config.seed)
    total = config.epochs * len(encoded)
    step = 0
    started = time.monotonic()
    loss_value = float("nan")
    for epoch in range(config.epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for i in order:
            ids, labels = encoded[i]
            output = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            output.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = float(output.loss.detach())
            if on_progress is not None:
                on_progress(TrainProgress(step, total, epoch + 1, loss_value, time.monotonic() - started))
    train_s = time.monotonic() - started
    model.eval()

    with _quiet():
        model.save_pretrained(str(out), selected_adapters=[new_key])
    folder = out / new_key if (out / new_key).is_dir() else out
    info = {
        "data_sha256": data_sha or examples_sha256(examples),
        "base_model": loaded.name,
        "base": loaded.fingerprint,
        "parents": {p.name: p.sha256 for p in parents},
        "train": {**asdict(config), "target_modules": list(config.target_modules)},
        "examples": len(encoded),
        "final_loss": round(loss_value, 5),
        "seconds": round(time.monotonic() - started, 2),
        **(meta or {}),
    }
    return TrainedLevel(folder=folder, info=info, steps=step, final_loss=loss_value, train_s=train_s)

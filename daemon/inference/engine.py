"""The engine: one base model, many LoRA stacks, one worker thread.

Two layers, like aiosqlite's ``core.py`` (blocking work on one thread fed by
a queue, results posted back to the event loop):

* :class:`Engine` holds the model and is touched **only** by the worker
  thread: adapter slots, stack activation, prefill and batched decoding;
* :class:`AsyncEngine` is the asyncio face: it queues work fairly, streams
  tokens back with ``loop.call_soon_threadsafe``, and never blocks the loop.
  It implements :class:`~daemon.inference.backend.InferenceBackend`, so the
  service and a persona's in-process mode run the same code.

Stacks. A stack (``legal`` → ``legal.patent`` → ``legal.patent.uspto``) is
the *sum* of its levels' deltas. It can run three ways, all equal within fp32
rounding (tests hold them to 1e-5):

* **unmerged** — every level a loaded PEFT adapter, all active:
  ``model.base_model.set_adapter([...])`` (``PeftModel.set_adapter`` refuses
  a list; LoraModel's accepts one). Costs a little per adapter per layer.
* **cat** — the levels concatenated into one adapter of rank Σr with
  ``add_weighted_adapter(..., combination_type="cat")``, which is exactly the
  sum (``linear``/``ties``/``dare`` combine A and B separately and are not;
  PEFT docs, "Model merging"). One adapter per stack is what PEFT's
  mixed-adapter batches need (``adapter_names=[...]`` per sample; PEFT docs,
  "Inference with different LoRA adapters in the same batch").
* **merged** — W + ΣΔW computed into a *separate, cached copy* of the
  targeted weights, swapped in by reference for a hot stack: zero overhead at
  decode time. PEFT's own ``merge_adapter``/``unmerge_adapter`` edit the base
  weights in place and drift with every round trip (DESIGN.md); the original
  tensors are never written to here, so "base" is always bit-exact.

``auto`` (the default) decodes a batch that runs one stack on its merged copy
and a batch that mixes stacks with one ``cat`` adapter per stack.

Slots. PEFT gets slower to load and to ``set_adapter`` as more adapters are
loaded (peft issue 981), so loaded adapters live in a bounded set of slots
with LRU eviction; an incoming adapter whose config matches the evicted one's
is hot-swapped into its tensors (``peft.utils.hotswap``) instead of deleting
and re-injecting. Merged copies are bounded the same way.

Batching and fairness. Requests wait in one queue per owner (the persona);
seats in the running batch are handed out round-robin across owners, one per
owner per round. New requests join the running batch at the next step: each
is prefilled alone (so its prompt is read exactly as in a solo run), then its
KV cache is left-padded into the batch's. Finished rows leave the batch at
once. Admin calls (load a stack, status) run between decode steps.

Errors are per request: an unknown, corrupt or mismatched adapter fails the
request that needs it, and the engine goes on serving the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from protocol import ErrorCode, RpcError
from protocol.commands.inference import (
    GenerateParams,
    GenerateResult,
    InferenceStatus,
    LoadedAdapter,
    LoadStackParams,
    LoadStackResult,
    MergedStack,
    StackEntry,
    Timings,
    TokenParams,
    UnloadParams,
    UnloadResult,
)

from .adapters import WEIGHTS_FILE, AdapterRecord, AdapterStore, read_safetensors_header
from .errors import (
    AdapterCorrupt,
    AdapterIncompatible,
    EngineClosed,
    InferenceError,
    Unsupported,
)
from .model import LoadedModel

log = logging.getLogger("personad.inference.engine")

T = TypeVar("T")
Stack = tuple[str, ...]  # sha256 of each level, root first
TokenCallback = Callable[[TokenParams], Awaitable[None]]

#: PEFT's key for "no adapter" in a mixed batch (peft/tuners/lora/model.py).
BASE_ROW = "__base__"


@dataclass(frozen=True)
class EngineLimits:
    """The engine's bounds; every one is a named knob, not a magic number."""

    #: Loaded PEFT adapters (levels and cat combinations); LRU beyond this (peft issue 981).
    max_adapters: int = 16
    #: Cached merged weight copies (one per hot stack).
    max_merged: int = 4
    #: Rows decoded together.
    max_batch: int = 8
    #: Longest prompt accepted, in tokens.
    max_prompt_tokens: int = 4096


# -- the worker-side engine ------------------------------------------------------------------


@dataclass
class _Slot:
    key: str
    sha256: str  # for a cat slot: the stack's id
    config: Any  # peft LoraConfig
    names: list[str]
    rank: int
    combined: bool
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class _Merged:
    stack: Stack
    weights: dict[str, torch.nn.Parameter]
    bytes: int
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class Job:
    """One generation request as the worker sees it."""

    params: GenerateParams
    owner: str
    #: Thread-safe: posts ("token", TokenParams) / ("done", GenerateResult) / ("error", exc) to the loop.
    emit: Callable[[str, Any], None]
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Row:
    job: Job
    records: list[AdapterRecord]
    stack: Stack
    mode: str  # requested: auto | merged | unmerged | cat
    prompt_len: int
    length: int  # real tokens in the cache so far (prompt + generated fed back)
    generated: list[int]
    generator: torch.Generator | None
    queued_ms: float
    prefill_ms: float
    decode_started: float
    emitted: str = ""
    pieces: int = 0
    batch_size: int = 1
    finish: str | None = None


class Engine:
    """The base model, its adapter slots and merged copies. Worker thread only."""

    def __init__(
        self, loaded: LoadedModel, store: AdapterStore, *, limits: EngineLimits | None = None
    ) -> None:
        self.loaded = loaded
        self.base = loaded.model
        self.tokenizer = loaded.tokenizer
        self.store = store
        self.limits = limits or EngineLimits()
        self.peft: Any = None  # PeftModel once the first adapter is loaded
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # LRU order: oldest first
        self._component: dict[str, str] = {}  # level sha256 -> slot key
        self._cat: dict[Stack, str] = {}  # stack -> slot key of its cat combination
        self._merged: OrderedDict[Stack, _Merged] = OrderedDict()
        self._original: dict[str, Any] = {}  # module name -> base weight (a Parameter)
        self._swapped: Stack | None = None  # whose merged copy is swapped in now
        self._layers: dict[str, torch.nn.Linear] = {}  # module name -> its base Linear (cached lookups)
        self._adapters_on: bool | None = None  # LoRA layers enabled? (None: unknown)
        self._active: tuple[Any, ...] | None = ("base",)
        self._in_use: dict[str, int] = {}  # slot key -> rows needing it now
        self._pins: dict[str, Stack] = {}  # owner -> stack kept warm by load_stack
        self._keys = itertools.count()
        self.stop_ids = _stop_ids(loaded)
        self.served = 0
        self.hotswaps = 0
        self.evictions = 0
        self.running = 0

    # -- adapters ----------------------------------------------------------------------

    def resolve(self, entries: Sequence[StackEntry]) -> list[AdapterRecord]:
        """Pinned entries to records, checking the chain is a real parent chain."""
        records = [self.store.by_hash(e) for e in entries]
        for i, record in enumerate(records):
            expected = records[i - 1].name if i else None
            if record.parent != expected:
                raise Unsupported(
                    f"stack {[r.name for r in records]} is not a parent chain: "
                    f"{record.name!r} follows {expected!r}"
                )
        return records

    def _check_shapes(self, record: AdapterRecord) -> None:
        """AdapterIncompatible unless every LoRA matrix fits a Linear layer of this model.

        Checked from the safetensors header before PEFT touches the model, so a
        mismatched adapter cannot leave a half-injected layer behind.
        """
        tensors = read_safetensors_header(record.path / WEIGHTS_FILE)
        for key, info in tensors.items():
            module_name, _, rest = key.partition(".lora_")
            module_name = module_name.removeprefix("base_model.model.")
            try:
                module = self.base.get_submodule(module_name)
            except AttributeError:
                raise AdapterIncompatible(
                    f"adapter {record.name!r} targets {module_name}, which {self.loaded.name} does not have "
                    "(it was made for another base model)"
                ) from None
            layer = module.get_base_layer() if hasattr(module, "get_base_layer") else module
            if not isinstance(layer, torch.nn.Linear):
                raise AdapterIncompatible(
                    f"adapter {record.name!r}: {module_name} is not a Linear layer here"
                )
            rows, cols = info["shape"]
            if rest.startswith("A.") and cols != layer.in_features:
                raise AdapterIncompatible(
                    f"adapter {record.name!r}: {module_name} takes {layer.in_features} inputs in "
                    f"{self.loaded.name} but the adapter expects {cols} (made for another base model)"
                )
            if rest.startswith("B.") and rows != layer.out_features:
                raise AdapterIncompatible(
                    f"adapter {record.name!r}: {module_name} has {layer.out_features} outputs in "
                    f"{self.loaded.name} but the adapter expects {rows} (made for another base model)"
                )

    def ensure_component(self, record: AdapterRecord) -> str:
        """The slot key of a level, loading it (verified) if needed."""
        key = self._component.get(record.sha256)
        if key is not None:
            self._touch(key)
            self._slots[key].names = sorted({*self._slots[key].names, record.name})
            return key
        self.store.verify(record)
        self._check_shapes(record)
        from peft import LoraConfig

        with _quiet():
            config = LoraConfig.from_pretrained(str(record.path))
        victim = self._make_room()
        if victim is not None and _hotswappable(victim.config, config):
            key = victim.key
            self._hotswap(key, record, config)
        else:
            if victim is not None:
                self._delete(victim.key)
            key = f"pd{next(self._keys):04d}"
            self._load(key, record)
        self._slots[key] = _Slot(key, record.sha256, config, [record.name], int(config.r), False)
        self._component[record.sha256] = key
        self._changed()
        return key

    def _changed(self) -> None:
        """PEFT's modules changed (an adapter loaded, combined or deleted): forget cached state."""
        self._active = None
        self._adapters_on = None
        self._layers.clear()

    def components(self, records: Sequence[AdapterRecord]) -> list[str]:
        """Slot keys of every level of a stack, all loaded at once.

        Each level is held while the next loads, so loading a stack never
        evicts its own parent; a stack deeper than the free slots is an error.
        """
        keys: list[str] = []
        try:
            for record in records:
                key = self.ensure_component(record)
                self._in_use[key] = self._in_use.get(key, 0) + 1
                keys.append(key)
        finally:
            for key in keys:
                self._in_use[key] -= 1
        return keys

    def _load(self, key: str, record: AdapterRecord) -> None:
        from peft import PeftModel

        try:
            with _quiet():
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(
                        self.base, str(record.path), adapter_name=key, is_trainable=False
                    )
                else:
                    self.peft.load_adapter(str(record.path), adapter_name=key, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as exc:
            # The header check catches shape mismatches first; what is left
            # here is a file that parsed but did not load.
            if self.peft is not None and key in self.peft.peft_config:
                self._delete_key(key)
            raise AdapterCorrupt(
                f"adapter {record.name!r} did not load into {self.loaded.name}: {exc}"
            ) from None

    def _hotswap(self, key: str, record: AdapterRecord, config: Any) -> None:
        """Replace a loaded adapter's tensors in place (constant time, peft.utils.hotswap)."""
        from peft.utils.hotswap import hotswap_adapter_from_state_dict
        from safetensors.torch import load_file

        old = self._slots.pop(key)
        self._component.pop(old.sha256, None)
        state = load_file(str(record.path / WEIGHTS_FILE))
        # Saved adapters have no adapter name in their keys; loaded ones do
        # (``...q_proj.lora_A.<name>.weight``); the prefix of the saved keys is
        # the PeftModel's own ``base_model.model.``.
        mapped = {
            k.replace(".lora_A.", f".lora_A.{key}.").replace(".lora_B.", f".lora_B.{key}."): v
            for k, v in state.items()
        }
        mapped = {k.removeprefix("base_model.model."): v for k, v in mapped.items()}
        with _quiet():
            hotswap_adapter_from_state_dict(self.peft.base_model.model, mapped, key, config)
        self.peft.peft_config[key] = config
        self.hotswaps += 1

    def _make_room(self) -> _Slot | None:
        """Evict the least recently used idle slot if the slots are full; returns it (still loaded)."""
        if len(self._slots) < self.limits.max_adapters:
            return None
        for key, slot in self._slots.items():
            if not self._in_use.get(key):
                self.evictions += 1
                return slot
        raise Unsupported(
            f"all {self.limits.max_adapters} adapter slots are in use by running requests; retry shortly"
        )

    def _delete(self, key: str) -> None:
        slot = self._slots.pop(key)
        if slot.combined:
            self._cat = {s: k for s, k in self._cat.items() if k != key}
        else:
            self._component.pop(slot.sha256, None)
        self._delete_key(key)

    def _delete_key(self, key: str) -> None:
        self._restore_weights()
        with _quiet():
            self.peft.delete_adapter(key)
            if not self.peft.peft_config:
                # The last adapter went: take the LoRA wrappers out again, so
                # the base model runs exactly as loaded (PEFT docs, unload()).
                self.base = self.peft.unload()
                self.peft = None
                self._original.clear()
            elif self.peft.active_adapter not in self.peft.peft_config:
                # PeftModel.forward reads the config of its (single) active
                # adapter; delete_adapter leaves a deleted name there when the
                # layers were activated as a list through base_model.
                self.peft.set_adapter(next(iter(self.peft.peft_config)))
        self._changed()

    def _touch(self, key: str) -> None:
        self._slots[key].last_used = time.monotonic()
        self._slots.move_to_end(key)

    def ensure_cat(self, records: Sequence[AdapterRecord]) -> str:
        """The slot key of one adapter equal to the whole stack (``cat`` combination)."""
        stack = tuple(r.sha256 for r in records)
        if len(records) == 1:
            return self.ensure_component(records[0])
        key = self._cat.get(stack)
        if key is not None:
            self._touch(key)
            return key
        parts = self.components(records)
        for part in parts:  # keep the parts while the combination is built
            self._in_use[part] = self._in_use.get(part, 0) + 1
        try:
            victim = self._make_room()
            if victim is not None:
                self._delete(victim.key)
            key = f"pc{next(self._keys):04d}"
            with _quiet():
                self.peft.add_weighted_adapter(
                    adapters=parts, weights=[1.0] * len(parts), adapter_name=key, combination_type="cat"
                )
        finally:
            for part in parts:
                self._in_use[part] -= 1
        # cat folds each level's scaling into its A (peft/tuners/lora/model.py,
        # add_weighted_adapter); the combination itself must then scale by 1.
        # Its config copies the first level's use_rslora, which would not.
        from peft.tuners.lora import LoraLayer

        for module in self.peft.modules():
            if isinstance(module, LoraLayer) and key in module.scaling:
                module.scaling[key] = 1.0
        config = self.peft.peft_config[key]
        self._slots[key] = _Slot(key, "+".join(stack), config, [records[-1].name], int(config.r), True)
        self._cat[stack] = key
        self._changed()
        return key

    def ensure_merged(self, records: Sequence[AdapterRecord]) -> _Merged:
        """A cached copy of the targeted weights with the whole stack folded in."""
        stack = tuple(r.sha256 for r in records)
        merged = self._merged.get(stack)
        if merged is not None:
            merged.last_used = time.monotonic()
            self._merged.move_to_end(stack)
            return merged
        keys = self.components(records)
        from peft.tuners.lora import LoraLayer

        weights: dict[str, torch.nn.Parameter] = {}
        with torch.no_grad():
            for name, module in self.peft.base_model.model.named_modules():
                if not isinstance(module, LoraLayer):
                    continue
                present = [k for k in keys if k in module.lora_A]
                if not present:
                    continue
                layer: Any = module
                base = self._original.get(name, layer.get_base_layer().weight)
                weight = base.detach().clone()
                for k in present:
                    # get_delta_weight is PEFT's own B @ A * scaling (with
                    # fan_in_fan_out handled), the delta merge_adapter would add.
                    weight += layer.get_delta_weight(k)
                weights[name] = torch.nn.Parameter(weight, requires_grad=False)
        size = sum(w.numel() * w.element_size() for w in weights.values())
        while len(self._merged) >= self.limits.max_merged:
            old, _ = self._merged.popitem(last=False)
            if self._swapped == old:
                self._restore_weights()
        merged = _Merged(stack, weights, size)
        self._merged[stack] = merged
        return merged

    def load_stack(self, params: LoadStackParams, owner: str) -> LoadStackResult:
        started = time.perf_counter()
        self.reset()
        records = self.store.resolve(params.name)
        if params.mode in ("auto", "merged"):
            self.ensure_merged(records)
        elif params.mode == "cat":
            self.ensure_cat(records)
        else:
            self.components(records)
        self._pins[owner] = tuple(r.sha256 for r in records)
        return LoadStackResult(
            stack=[r.info() for r in records],
            mode=params.mode,
            load_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    def unload(self, params: UnloadParams, owner: str) -> UnloadResult:
        """Forget an owner's stack: its merged copy and cat go; levels no other pin needs go."""
        self.reset()
        stack = tuple(e.sha256 for e in params.stack)
        if self._pins.get(owner) == stack:
            del self._pins[owner]
        still_needed = {sha for pin in self._pins.values() for sha in pin}
        if stack not in self._pins.values():
            self._merged.pop(stack, None)
            key = self._cat.get(stack)
            if key is not None and not self._in_use.get(key):
                self._delete(key)
        for sha in stack:
            key = self._component.get(sha)
            if key is not None and sha not in still_needed and not self._in_use.get(key):
                self._delete(key)
        return UnloadResult(released=list(params.stack))

    # -- activation --------------------------------------------------------------------

    def _layer(self, name: str) -> torch.nn.Linear:
        layer = self._layers.get(name)
        if layer is None:
            layer = self.peft.base_model.model.get_submodule(name).get_base_layer()
            self._layers[name] = layer
        return layer

    def _restore_weights(self) -> None:
        if self._swapped is None:
            return
        for name in self._merged_modules(self._swapped):
            self._layer(name).weight = self._original[name]
        self._swapped = None
        self._active = None

    def _merged_modules(self, stack: Stack) -> list[str]:
        merged = self._merged.get(stack)
        return list(merged.weights) if merged is not None else list(self._original)

    def _swap_in(self, merged: _Merged) -> None:
        """Point the targeted layers at a merged copy: a reference swap, no arithmetic."""
        if self._swapped == merged.stack:
            return
        self._restore_weights()
        for name, weight in merged.weights.items():
            layer = self._layer(name)
            self._original.setdefault(name, layer.weight)
            layer.weight = weight
        self._swapped = merged.stack

    def _enable_adapters(self, enabled: bool) -> None:
        if self._adapters_on == enabled:
            return
        with _quiet():
            if enabled:
                self.peft.base_model.enable_adapter_layers()
            else:
                self.peft.base_model.disable_adapter_layers()
        self._adapters_on = enabled

    def activate(self, plan: tuple[Any, ...]) -> None:
        """Put the model in the state a plan needs; cheap when it already is.

        Plans: ``("base",)``; ``("merged", stack)``; ``("adapters", keys)``
        (one key: a level or a cat; several: unmerged); ``("mixed",)``.
        """
        if plan == self._active:
            return
        kind = plan[0]
        if self.peft is None:
            assert kind == "base", plan
            self._active = plan
            return
        if kind in ("base", "merged"):
            if kind == "base":
                self._restore_weights()
            else:
                self._swap_in(self._merged[plan[1]])
            self._enable_adapters(False)
        else:
            self._restore_weights()
            self._enable_adapters(True)
            if kind == "adapters":
                assert all(key in self._slots for key in plan[1]), plan
                with _quiet():
                    # LoraModel.set_adapter takes a list and activates them all
                    # (summed); inference_mode keeps them frozen.
                    self.peft.base_model.set_adapter(list(plan[1]), inference_mode=True)
        self._active = plan

    def reset(self) -> None:
        """Back to the plain base model state (before admin work changes the slots)."""
        if self.peft is not None:
            self.activate(("base",))

    def _plan_single(self, records: Sequence[AdapterRecord], mode: str, *, decode: bool) -> tuple[Any, ...]:
        if not records:
            return ("base",)
        stack = tuple(r.sha256 for r in records)
        if mode == "merged" or (mode == "auto" and (decode or stack in self._merged)):
            merged = self.ensure_merged(records)
            return ("merged", merged.stack)
        if mode == "unmerged":
            return ("adapters", tuple(self.components(records)))
        return ("adapters", (self.ensure_cat(records),))

    def _forward(self, plan: tuple[Any, ...], names: list[str] | None = None, **kwargs: Any) -> Any:
        self.activate(plan)
        model = self.peft if self.peft is not None else self.base
        if names is not None:
            kwargs["adapter_names"] = names
        with torch.inference_mode():
            return model(**kwargs)

    def logits(
        self, input_ids: torch.Tensor, records: Sequence[AdapterRecord] = (), mode: str = "auto"
    ) -> torch.Tensor:
        """Full-sequence logits for a batch of prompts under one stack (tests, benchmarks)."""
        plan = self._plan_single(records, mode, decode=True)
        logits: torch.Tensor = self._forward(plan, input_ids=input_ids, use_cache=False).logits.float()
        return logits

    # -- prompts -------------------------------------------------------------------------

    def encode(self, params: GenerateParams) -> list[int]:
        messages = [m.model_dump() for m in params.messages]
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja2 TemplateError and friends: the template refused these messages
            raise Unsupported(f"the model's chat template refused these messages: {exc}") from None
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.limits.max_prompt_tokens:
            raise Unsupported(
                f"the prompt is {len(ids)} tokens; "
                f"this engine accepts at most {self.limits.max_prompt_tokens}"
            )
        return ids

    # -- generation ----------------------------------------------------------------------

    def run_batch(self, first: list[Job], scheduler: _Scheduler, between_steps: Callable[[], None]) -> None:
        """Decode ``first`` and whoever joins, until every row is done."""
        rows: list[_Row] = []
        cache: Any = None
        mask: torch.Tensor | None = None
        pending = list(first)
        try:
            while True:
                free = self.limits.max_batch - len(rows) - len(pending)
                if free > 0:
                    batch = list(rows)

                    def fits(job: Job, batch: list[_Row] = batch) -> bool:
                        return _compatible(batch, job)

                    pending += scheduler.take(free, fits)
                for job in pending:
                    admitted = self._admit(job, len(rows) + 1)
                    if admitted is None:
                        continue
                    row, row_cache, first_logits = admitted
                    self._accept(row, first_logits)
                    if row.finish is not None:
                        self._finish(row)
                        continue
                    rows.append(row)
                    cache, mask = _join(cache, mask, row_cache, row.length)
                    for r in rows:
                        r.batch_size = max(r.batch_size, len(rows))
                pending = []
                self.running = len(rows)
                if not rows:
                    return
                if scheduler.closed:
                    for row in rows:
                        row.job.emit("closed", None)
                    return
                between_steps()
                assert mask is not None
                logits = self._step(rows, cache, mask)
                mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
                for row, row_logits in zip(rows, logits, strict=True):
                    row.length += 1
                    self._accept(row, row_logits)
                keep = [i for i, r in enumerate(rows) if r.finish is None and not r.job.cancelled.is_set()]
                if len(keep) < len(rows):
                    for i, row in enumerate(rows):
                        if i not in keep and not row.job.cancelled.is_set():
                            self._finish(row)
                    rows = [rows[i] for i in keep]
                    if rows:
                        cache, mask = _select(cache, mask, keep)
                    else:
                        cache, mask = None, None
        finally:
            self.running = 0
            for row in rows:
                self._release(row)

    def _admit(self, job: Job, batch_size: int) -> tuple[_Row, Any, torch.Tensor] | None:
        """Resolve, load and prefill one request alone; None (error posted) if it cannot run."""
        if job.cancelled.is_set():
            return None
        started = time.monotonic()
        try:
            records = self.resolve(job.params.stack)
            ids = self.encode(job.params)
            plan = self._plan_single(records, job.params.mode, decode=False)
            row = _Row(
                job=job,
                records=records,
                stack=tuple(r.sha256 for r in records),
                mode=job.params.mode,
                prompt_len=len(ids),
                length=len(ids),
                generated=[],
                generator=_generator(job.params),
                queued_ms=(started - job.enqueued) * 1000,
                prefill_ms=0.0,
                decode_started=0.0,
                batch_size=batch_size,
            )
            self._hold(row)
            try:
                out = self._forward(
                    plan,
                    input_ids=torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    position_ids=torch.arange(len(ids)).unsqueeze(0),
                    use_cache=True,
                    logits_to_keep=1,
                )
            except BaseException:
                self._release(row)
                raise
        except InferenceError as exc:
            job.emit("error", exc)
            return None
        except Exception as exc:
            log.exception("request from %s failed", job.owner)
            job.emit("error", exc)
            return None
        row.prefill_ms = (time.monotonic() - started) * 1000
        row.decode_started = time.monotonic()
        return row, out.cache, out.logits[0, -1].float()

    def _hold(self, row: _Row) -> None:
        for key in self._keys_of(row):
            self._in_use[key] = self._in_use.get(key, 0) + 1

    def _release(self, row: _Row) -> None:
        for key in self._keys_of(row):
            if self._in_use.get(key):
                self._in_use[key] -= 1

    def _keys_of(self, row: _Row) -> list[str]:
        keys = [self._component[r.sha256] for r in row.records if r.sha256 in self._component]
        cat = self._cat.get(row.stack)
        return [*keys, cat] if cat is not None else keys

    def _step(self, rows: list[_Row], cache: Any, mask: torch.Tensor) -> torch.Tensor:
        stacks = {(r.stack, r.mode) for r in rows}
        names: list[str] | None = None
        if len({r.stack for r in rows}) == 1:
            row = rows[0]
            mode = row.mode if len(stacks) == 1 else "auto"
            plan = self._plan_single(row.records, mode, decode=True)
        else:
            # One adapter per sample, as PEFT's mixed batches require: each
            # stack as its cat combination, "__base__" for rows without one.
            names = []
            for row in rows:
                if row.records:
                    key = self.ensure_cat(row.records)
                    if key not in self._keys_of(row):
                        self._in_use[key] = self._in_use.get(key, 0) + 1
                    names.append(key)
                else:
                    names.append(BASE_ROW)
            plan = ("mixed",)
        tokens = torch.tensor([[r.generated[-1]] for r in rows])
        positions = torch.tensor([[r.length - 1] for r in rows])
        out = self._forward(
            plan,
            names,
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,  # transformers 5 renamed past_key_values to cache
            use_cache=True,
        )
        last: torch.Tensor = out.logits[:, -1].float()
        return last

    def _accept(self, row: _Row, logits: torch.Tensor) -> None:
        """Pick the next token of a row, stream its text, and decide whether it is done."""
        token = _sample(logits, row.job.params, row.generator)
        params = row.job.params
        if token in self.stop_ids:
            row.finish = "stop"
            return
        row.generated.append(token)
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        # A multi-byte character may span tokens: hold back until it is whole.
        if not text.endswith("\ufffd") and len(text) > len(row.emitted) and params.stream:
            row.job.emit("token", TokenParams(index=row.pieces, text=text[len(row.emitted) :]))
            row.pieces += 1
            row.emitted = text
        elif not text.endswith("\ufffd"):
            row.emitted = text
        context = getattr(self.base.config, "max_position_embeddings", 1 << 30)
        if len(row.generated) >= params.max_tokens or row.length + 1 >= context:
            row.finish = "length"

    def _finish(self, row: _Row) -> None:
        self._release(row)
        self.served += 1
        decode_s = max(time.monotonic() - row.decode_started, 1e-9)
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        if row.job.params.stream and len(text) > len(row.emitted):
            row.job.emit("token", TokenParams(index=row.pieces, text=text[len(row.emitted) :]))
        used: Any = "base"
        if row.records:
            used = "cat" if row.batch_size > 1 and row.mode == "auto" else row.mode
            used = "merged" if used == "auto" else used
        result = GenerateResult(
            text=text,
            finish_reason="stop" if row.finish == "stop" else "length",
            prompt_tokens=row.prompt_len,
            completion_tokens=len(row.generated),
            stack=[r.entry for r in row.records],
            mode=used,
            batch_size=row.batch_size,
            model=self.loaded.name,
            timings=Timings(
                queued_ms=round(row.queued_ms, 3),
                prefill_ms=round(row.prefill_ms, 3),
                decode_ms=round(decode_s * 1000, 3),
                total_ms=round(row.queued_ms + row.prefill_ms + decode_s * 1000, 3),
                tokens_per_s=round(len(row.generated) / decode_s, 3),
            ),
        )
        row.job.emit("done", result)

    # -- status ----------------------------------------------------------------------------

    def status(self, waiting: int) -> InferenceStatus:
        now = time.monotonic()
        return InferenceStatus(
            model=self.loaded.name,
            model_path=str(self.loaded.path),
            model_bytes=self.loaded.bytes,
            threads=torch.get_num_threads(),
            pid=os.getpid(),
            rss_bytes=_rss_bytes(),
            slots_used=len(self._slots),
            slots_capacity=self.limits.max_adapters,
            merged_capacity=self.limits.max_merged,
            loaded=[
                LoadedAdapter(
                    slot=s.key,
                    sha256=s.sha256 if not s.combined else s.sha256.split("+")[-1],
                    names=s.names,
                    rank=s.rank,
                    combined=s.combined,
                    idle_s=round(now - s.last_used, 3),
                )
                for s in self._slots.values()
            ],
            merged=[
                MergedStack(stack=list(m.stack), bytes=m.bytes, idle_s=round(now - m.last_used, 3))
                for m in self._merged.values()
            ],
            waiting=waiting,
            running=self.running,
            served=self.served,
            hotswaps=self.hotswaps,
            evictions=self.evictions,
        )


def _rss_bytes() -> int:
    """This process's resident set (Linux /proc; 0 where there is none), without psutil."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _compatible(rows: list[_Row], job: Job) -> bool:
    """Whether a request may join a batch: explicit merged/unmerged rows only run with their own kind."""
    explicit = {"merged", "unmerged"}
    stack = tuple(e.sha256 for e in job.params.stack)
    if job.params.mode in explicit or any(r.mode in explicit for r in rows):
        return all(r.stack == stack and r.mode == job.params.mode for r in rows)
    return True


def _hotswappable(old: Any, new: Any) -> bool:
    try:
        from peft.utils.hotswap import check_hotswap_configs_compatible

        check_hotswap_configs_compatible(old, new)
    except ValueError:
        return False
    return (
        old.r == new.r
        and old.lora_alpha == new.lora_alpha
        and set(old.target_modules or ()) == set(new.target_modules or ())
        and not old.rank_pattern
        and not new.rank_pattern
    )


def _stop_ids(loaded: LoadedModel) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(loaded.model, "generation_config", None), loaded.tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def _generator(params: GenerateParams) -> torch.Generator | None:
    if params.temperature == 0:
        return None
    generator = torch.Generator()
    generator.manual_seed(
        params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
    )
    return generator


def _sample(logits: torch.Tensor, params: GenerateParams, generator: torch.Generator | None) -> int:
    if generator is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        # Nucleus sampling (Holtzman et al. 2020): the smallest set of tokens
        # whose probability reaches top_p, renormalised.
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def _cache_layers(cache: Any) -> list[Any]:
    return list(cache.layers)


def _join(cache: Any, mask: torch.Tensor | None, row_cache: Any, length: int) -> tuple[Any, torch.Tensor]:
    """Add one prefilled row to the batch's KV cache, left-padding the shorter side.

    Left padding keeps every row's newest token in the last column, which is
    what the decode step appends to; padded columns are masked out (and are
    zeros, so a zero attention weight never meets a NaN).
    """
    row_mask = torch.ones(1, length, dtype=torch.long)
    if cache is None:
        return row_cache, row_mask
    assert mask is not None
    width = max(mask.shape[1], length)

    def pad(t: torch.Tensor, to: int) -> torch.Tensor:
        extra = to - t.shape[-2]
        if extra == 0:
            return t
        zeros = torch.zeros(*t.shape[:-2], extra, t.shape[-1], dtype=t.dtype)
        return torch.cat([zeros, t], dim=-2)

    for layer, new in zip(_cache_layers(cache), _cache_layers(row_cache), strict=True):
        layer.keys = torch.cat([pad(layer.keys, width), pad(new.keys, width)], dim=0)
        layer.values = torch.cat([pad(layer.values, width), pad(new.values, width)], dim=0)

    def pad_mask(m: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros(m.shape[0], width - m.shape[1], dtype=m.dtype), m], dim=1)

    return cache, torch.cat([pad_mask(mask), pad_mask(row_mask)], dim=0)


def _select(cache: Any, mask: torch.Tensor, keep: list[int]) -> tuple[Any, torch.Tensor]:
    """Keep only some rows, and drop leading columns that are padding for all of them."""
    index = torch.tensor(keep)
    mask = mask[index]
    live = mask.any(dim=0).nonzero()
    start = int(live[0]) if len(live) else 0
    for layer in _cache_layers(cache):
        layer.keys = layer.keys[index, :, start:]
        layer.values = layer.values[index, :, start:]
    return cache, mask[:, start:]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # PEFT warns on routine slot management here (deleting the active
    # adapter, disabling layers); the engine re-applies its own state anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- the scheduler (shared by the loop and the worker) ----------------------------------------


@dataclass
class _Call:
    fn: Callable[[Engine], Any]
    done: Callable[[Any, BaseException | None], None]


class _Scheduler:
    """Per-owner FIFO queues served round-robin, plus admin calls; thread-safe."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._calls: deque[_Call] = deque()
        self._queues: dict[str, deque[Job]] = {}
        self._ring: deque[str] = deque()
        self._closed = False

    def put_job(self, job: Job) -> None:
        with self._cv:
            if self._closed:
                raise EngineClosed("the inference engine has stopped")
            if job.owner not in self._queues:
                self._queues[job.owner] = deque()
                self._ring.append(job.owner)
            self._queues[job.owner].append(job)
            self._cv.notify()

    def put_call(self, call: _Call) -> None:
        with self._cv:
            if self._closed:
                raise EngineClosed("the inference engine has stopped")
            self._calls.append(call)
            self._cv.notify()

    def close(self) -> list[Job | _Call]:
        with self._cv:
            self._closed = True
            left: list[Job | _Call] = [*self._calls]
            for queue in self._queues.values():
                left += queue
            self._calls.clear()
            self._queues.clear()
            self._ring.clear()
            self._cv.notify_all()
            return left

    def next_work(self) -> _Call | list[Job] | None:
        """Block until there is work: an admin call first, else one fair job. None: closed."""
        with self._cv:
            while not self._closed and not self._calls and not self._ring:
                self._cv.wait()
            if self._closed:
                return None
            if self._calls:
                return self._calls.popleft()
            return self._take_locked(1, lambda _job: True)

    def take_call(self) -> _Call | None:
        with self._cv:
            return self._calls.popleft() if self._calls else None

    def take(self, n: int, accept: Callable[[Job], bool]) -> list[Job]:
        """Up to ``n`` jobs, round-robin over owners, one per owner per round."""
        with self._cv:
            return self._take_locked(n, accept)

    def _take_locked(self, n: int, accept: Callable[[Job], bool]) -> list[Job]:
        taken: list[Job] = []
        while len(taken) < n and self._ring:
            progressed = False
            for _ in range(len(self._ring)):
                if len(taken) >= n:
                    break
                owner = self._ring[0]
                self._ring.rotate(-1)
                queue = self._queues[owner]
                while queue and queue[0].cancelled.is_set():
                    queue.popleft()
                if queue and accept(queue[0]):
                    taken.append(queue.popleft())
                    progressed = True
                if not queue:
                    del self._queues[owner]
                    self._ring.remove(owner)
            if not progressed:
                break
        return taken

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> int:
        with self._cv:
            return sum(len(q) for q in self._queues.values())


# -- the asyncio face ---------------------------------------------------------------------


class AsyncEngine:
    """An :class:`Engine` on its own worker thread, for asyncio callers.

    Implements the InferenceBackend interface (``daemon/inference/backend.py``).
    """

    kind = "inprocess"

    def __init__(self) -> None:
        self._scheduler = _Scheduler()
        self._engine: Engine | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        *,
        state_root: Path,
        model: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        limits: EngineLimits | None = None,
        store: AdapterStore | None = None,
        loaded: LoadedModel | None = None,
    ) -> AsyncEngine:
        """Start the worker thread and load the model on it (the loop stays free meanwhile)."""
        self = cls()
        adapters = store or AdapterStore.for_state(state_root)

        def build() -> Engine:
            from .model import load_model

            base = loaded or load_model(model, state_root=state_root, threads=threads)
            return Engine(base, adapters, limits=limits)

        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Engine] = loop.create_future()

        def started(engine: Engine | None, exc: BaseException | None) -> None:
            if not ready.done():
                if exc is not None:
                    ready.set_exception(exc)
                else:
                    assert engine is not None
                    ready.set_result(engine)

        def post(engine: Engine | None, exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(started, engine, exc)

        # A daemon thread: a persona in single-persona mode has no hook to
        # close us, and a thread blocked in torch must not hold up its exit.
        self._thread = threading.Thread(
            target=self._work, args=(build, post), name="inference-engine", daemon=True
        )
        self._thread.start()
        try:
            self._engine = await ready
        except BaseException:
            await self.close()
            raise
        return self

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise EngineClosed("the inference engine is not running")
        return self._engine

    def _work(
        self, build: Callable[[], Engine], post: Callable[[Engine | None, BaseException | None], None]
    ) -> None:
        try:
            engine = build()
        except BaseException as exc:
            post(None, exc)
            return
        post(engine, None)

        def between_steps() -> None:
            while (call := self._scheduler.take_call()) is not None:
                self._run_call(engine, call)

        while (work := self._scheduler.next_work()) is not None:
            if isinstance(work, _Call):
                self._run_call(engine, work)
            else:
                try:
                    engine.run_batch(work, self._scheduler, between_steps)
                except Exception:  # a bug, not a request's fault: keep serving
                    log.exception("batch failed")

    @staticmethod
    def _run_call(engine: Engine, call: _Call) -> None:
        try:
            engine.reset()
            result = call.fn(engine)
        except BaseException as exc:
            call.done(None, exc)
        else:
            call.done(result, None)

    async def run(self, fn: Callable[[Engine], T]) -> T:
        """Run ``fn(engine)`` on the worker thread, between decode steps."""
        if self._closed:
            raise EngineClosed("the inference engine has stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, exc: BaseException | None) -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        def done(result: Any, exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(settle, result, exc)

        self._scheduler.put_call(_Call(fn, done))
        return await future

    async def generate(
        self,
        params: GenerateParams,
        *,
        owner: str,
        on_token: TokenCallback | None = None,
        deadline: float | None = None,
    ) -> GenerateResult:
        """Queue a request and stream its tokens to ``on_token``; the result once done.

        ``deadline`` (loop time): past it the request is dropped and TIMEOUT raised.
        """
        try:
            async with asyncio.timeout_at(deadline):
                return await self._generate(params, owner=owner, on_token=on_token)
        except TimeoutError:
            raise RpcError(ErrorCode.TIMEOUT, "generation did not finish before the deadline") from None

    async def _generate(
        self, params: GenerateParams, *, owner: str, on_token: TokenCallback | None
    ) -> GenerateResult:
        if self._closed:
            raise EngineClosed("the inference engine has stopped")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(kind: str, payload: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

        job = Job(params=params, owner=owner, emit=emit)
        self._scheduler.put_job(job)
        try:
            while True:
                kind, payload = await events.get()
                if kind == "token":
                    if on_token is not None:
                        await on_token(payload)
                elif kind == "done":
                    return payload  # type: ignore[no-any-return]
                elif kind == "error":
                    raise payload
                elif kind == "closed":
                    raise EngineClosed("the inference engine stopped before answering")
        finally:
            # Cancelled (caller went away) or finished: either way the worker
            # must stop spending time on it.
            job.cancelled.set()

    async def load_stack(self, params: LoadStackParams, *, owner: str) -> LoadStackResult:
        return await self.run(lambda engine: engine.load_stack(params, owner))

    async def unload(self, params: UnloadParams, *, owner: str) -> UnloadResult:
        return await self.run(lambda engine: engine.unload(params, owner))

    async def status(self) -> InferenceStatus:
        waiting = self._scheduler.waiting
        return await self.run(lambda engine: engine.status(waiting))

    async def close(self) -> None:
        """Stop the worker after the current step; queued work fails with EngineClosed."""
        if self._closed:
            return
        self._closed = True
        for item in self._scheduler.close():
            if isinstance(item, Job):
                item.emit("closed", None)
            else:
                item.done(None, EngineClosed("the inference engine stopped"))
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, thread.join)

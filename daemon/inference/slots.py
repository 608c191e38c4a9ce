"""Adapter slots and stacks: which LoRA weights are loaded, combined, merged and live.

The worker-thread half of the engine that owns the model's weights
(:class:`AdapterSlots`); :mod:`.decoding` builds batched generation on top.

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
  decode time. PEFT's own ``merge_adapter``/``unmerge_adapter`` add and then
  subtract the delta in the base weights themselves, and in fp32 (W + ΔW) - ΔW
  is not W again, so the base drifts a little with every round trip; here the
  original tensors are never written to, so "base" is always bit-exact.

Slots. PEFT gets slower to load and to ``set_adapter`` as more adapters are
loaded (peft issue 981), so loaded adapters live in a bounded set of slots
with LRU eviction; an incoming adapter whose config matches the evicted one's
is hot-swapped into its tensors (``peft.utils.hotswap``) instead of deleting
and re-injecting. Merged copies are bounded the same way.

Errors are per stack: an unknown, corrupt or mismatched adapter raises for
the request that needs it, and leaves the model as it was.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from protocol.commands.inference import StackEntry

from .adapters import WEIGHTS_FILE, AdapterRecord, AdapterStore, read_safetensors_header
from .errors import AdapterCorrupt, AdapterIncompatible, Unsupported
from .limits import EngineLimits
from .model import LoadedModel
from .text import resolve_chain

__all__ = ["AdapterSlots", "Stack"]

Stack = tuple[str, ...]  # sha256 of each level, root first


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


class AdapterSlots:
    """The base model, its adapter slots and merged copies, and which of them is live.

    Touched only by the engine's worker thread. :class:`~daemon.inference.decoding.Engine`
    builds decoding on top of it.
    """

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
        self.hotswaps = 0
        self.evictions = 0

    # -- adapters ----------------------------------------------------------------------

    def resolve(self, entries: Sequence[StackEntry]) -> list[AdapterRecord]:
        """Pinned entries to records, checking the chain is a real parent chain."""
        return resolve_chain(self.store, entries)

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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # PEFT warns on routine slot management here (deleting the active
    # adapter, disabling layers); the engine re-applies its own state anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield

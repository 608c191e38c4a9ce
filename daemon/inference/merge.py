"""``adapter.merge``: several stored adapters (each with its stack) into one new PEFT adapter.

A persona's adapter is a *stack*: ``legal.patent`` runs as the sum of the
deltas of ``legal`` and ``legal.patent``. Merging two personas' adapters means
merging those sums, so every source is resolved to its whole stack first.

``cat`` (the default, exact). Every level of every source is concatenated
into one LoRA adapter: A matrices stacked by rows, B matrices by columns, each
level's scaling (``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA) and its
source's weight folded into its A. Then

    B_cat · A_cat = Σ_levels  w_source · scaling_level · B_level · A_level

which is exactly the stacks' deltas, weighted. The new adapter has
``r = lora_alpha = Σ r_level`` (scaling 1), like PEFT's
``add_weighted_adapter(..., combination_type="cat")``, which does the same
concatenation on a PeftModel holding every source (peft/tuners/lora/model.py).
Building it from the safetensors files directly gives the same tensors
without loading the sources into the live model, so active stacks are not
disturbed (``tests/daemon/inference/test_merge.py`` checks both claims).

Sources are names, resolved to their current stacks; ``pins`` (one stack of
``{name, sha256}`` per source, as a persona's profile holds it) makes the
merge use exactly those objects, so a name retrained meanwhile changes
nothing, and a pinned object no longer stored is ADAPTER_NOT_FOUND.

``linear``, ``ties``, ``dare_linear``, ``dare_ties``. PEFT's approximate
methods (``peft.utils.merge_utils``), applied as ``add_weighted_adapter``
applies them: to the A and to the B matrices separately, with weight
``sqrt(|w · scaling|)`` on each side (the sign on A). Each source is first
one adapter: a one-level stack as it is, a deeper stack folded by ``cat``
into one of scaling 1 (what PEFT's ``cat`` would give). The sources must then
have equal ranks. The result is *not* the sum of the deltas (cross terms,
pruning): ``exact`` is false. DARE prunes at random; the generator is seeded
from the sources' hashes and the options, so the same merge gives the same
bytes, and so the same content address.

Every source must be a LoRA adapter on the same modules with the same
shapes (one base model); run in the service, each is also checked against
the loaded model. Per-module rank or alpha patterns are refused (no trained
adapter of ours has them, and folding them needs PEFT's pattern matching).
Weights are written in float32 whatever the sources' dtype.

Who may merge: an admin operation. Persona tokens hold only
``inference.*@cap:inference`` (to generate), so the bus refuses them; the
service also refuses callers that are personas (``FORBIDDEN``), in case an
operator grants one more than that.

This module imports torch only inside :func:`build_merge` and the helpers it
calls: the protocol side (:func:`check_params`, :func:`check_caller`) is light.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import ErrorCode, RpcError
from protocol.commands.adapters import MergeParams, MergeResult
from protocol.commands.inference import StackEntry

from .adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterRecord, AdapterStore, chain, validate_name
from .errors import AdapterIncompatible, InferenceError, Unsupported, refuse_store_writer, to_rpc

if TYPE_CHECKING:
    import torch

    from ..client import CallContext
    from ..dispatch import Dispatcher
    from .decoding import Engine

__all__ = [
    "APPROXIMATE",
    "DEFAULT_DENSITY",
    "MergeParamsError",
    "build_merge",
    "check_caller",
    "check_params",
    "merge_in_engine",
    "register_merge_command",
]

#: The combinations that are PEFT's approximations (``exact`` false).
APPROXIMATE = ("linear", "ties", "dare_linear", "dare_ties")
#: What ties and dare_* keep when no density is given (PEFT's examples use 0.5 too).
DEFAULT_DENSITY = 0.5
#: The largest rank a merge may produce: cat of 64 levels of rank 32. Past it
#: the adapter costs more to run than the model it adapts.
MAX_MERGED_RANK = 2048


class MergeParamsError(InferenceError):
    """Raised when adapter.merge's params are inconsistent with each other (names the field)."""

    code = ErrorCode.INVALID_PARAMS


def check_caller(caller: str | None) -> None:
    """RpcError(FORBIDDEN) for a persona: merging writes the shared store, an admin's job."""
    refuse_store_writer(caller, "adapter.merge", "only an admin (or the registry) does")


def check_params(params: MergeParams) -> tuple[list[float], float | None]:
    """The weights (one per source) and density to use; MergeParamsError when they do not fit."""
    validate_name(params.name)
    if "." in params.name:
        raise MergeParamsError(
            f"name: {params.name!r} has a parent; a merged adapter holds whole stacks, so it must be a "
            "root name (no dots): stored under a parent, loading it would add the parent's delta again"
        )
    if len(set(params.sources)) != len(params.sources):
        raise MergeParamsError(f"sources: {params.sources} names an adapter twice (use weights to scale one)")
    weights = list(params.weights) if params.weights is not None else [1.0] * len(params.sources)
    if len(weights) != len(params.sources):
        raise MergeParamsError(
            f"weights: {len(weights)} weights for {len(params.sources)} sources (give one per source)"
        )
    if params.pins is not None:
        if len(params.pins) != len(params.sources):
            raise MergeParamsError(
                f"pins: {len(params.pins)} stacks for {len(params.sources)} sources (give one per source)"
            )
        for i, (source, pin) in enumerate(zip(params.sources, params.pins, strict=True)):
            if [entry.name for entry in pin] != chain(source):
                raise MergeParamsError(
                    f"pins.{i}: {[entry.name for entry in pin]} is not the stack of {source!r} "
                    f"({chain(source)}, root first)"
                )
    density = params.density
    if params.combination in ("cat", "linear"):
        if density is not None:
            raise MergeParamsError(
                f"density: {params.combination} keeps every value; density is for ties and dare_*"
            )
    elif density is None:
        density = DEFAULT_DENSITY
    return weights, density


# -- building the merged weights ---------------------------------------------------------------


@dataclass
class _Level:
    record: AdapterRecord
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def modules(self) -> dict[str, tuple[int, int, int]]:
        """module key → (rank, in, out), from the A and B shapes."""
        out: dict[str, tuple[int, int, int]] = {}
        for key, tensor in self.tensors.items():
            if ".lora_A." in key:
                module = key.split(".lora_A.")[0]
                b = self.tensors.get(f"{module}.lora_B.weight")
                if b is None or b.shape[1] != tensor.shape[0]:
                    raise AdapterIncompatible(
                        f"adapter {self.record.name!r}: {module} has no matching lora_B (damaged adapter)"
                    )
                out[module] = (int(tensor.shape[0]), int(tensor.shape[1]), int(b.shape[0]))
        return out

    def scaling(self, rank: int) -> float:
        alpha = float(self.config.get("lora_alpha", rank))
        return alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank


def _load(store: AdapterStore, record: AdapterRecord) -> _Level:
    from safetensors.torch import load_file

    store.verify(record)  # hash and structure: nothing altered since it was stored
    config = json.loads((record.path / CONFIG_FILE).read_text("utf-8"))
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise Unsupported(
                f"adapter {record.name!r} has a per-module {key}; "
                "merging supports one rank and alpha per adapter"
            )
    tensors = {k: v.to(dtype=_float32()) for k, v in load_file(str(record.path / WEIGHTS_FILE)).items()}
    return _Level(record, config, tensors)


def _float32() -> Any:
    import torch

    return torch.float32


def _check_compatible(levels: Sequence[_Level]) -> dict[str, tuple[int, int]]:
    """module key → (in, out), the same for every level; AdapterIncompatible otherwise."""
    first = levels[0]
    shapes = {m: (i, o) for m, (_, i, o) in first.modules.items()}
    for level in levels[1:]:
        theirs = {m: (i, o) for m, (_, i, o) in level.modules.items()}
        if set(theirs) != set(shapes):
            extra = sorted(set(theirs) - set(shapes))[:3]
            missing = sorted(set(shapes) - set(theirs))[:3]
            raise AdapterIncompatible(
                f"adapters {first.record.name!r} and {level.record.name!r} adapt different modules "
                f"(only in {level.record.name!r}: {extra or 'none'}; only in {first.record.name!r}: "
                f"{missing or 'none'}); merge adapters trained on the same target modules"
            )
        for module, shape in theirs.items():
            if shape != shapes[module]:
                raise AdapterIncompatible(
                    f"adapters {first.record.name!r} and {level.record.name!r} were made for different base "
                    f"models: {module} is {shapes[module][0]}→{shapes[module][1]} in one and "
                    f"{shape[0]}→{shape[1]} in the other"
                )
        if bool(level.config.get("fan_in_fan_out")) != bool(first.config.get("fan_in_fan_out")):
            raise AdapterIncompatible(
                f"adapters {first.record.name!r} and {level.record.name!r} disagree on fan_in_fan_out "
                "(made for different layer types)"
            )
    return shapes


def _cat(
    parts: Sequence[tuple[_Level, float]], modules: Sequence[str]
) -> tuple[dict[str, torch.Tensor], int]:
    """Concatenate levels (each with its weight) into one adapter of scaling 1; returns (tensors, rank)."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    rank = 0
    for module in modules:
        a_parts, b_parts = [], []
        for level, weight in parts:
            a = level.tensors[f"{module}.lora_A.weight"]
            b = level.tensors[f"{module}.lora_B.weight"]
            a_parts.append(a * (weight * level.scaling(int(a.shape[0]))))
            b_parts.append(b)
        tensors[f"{module}.lora_A.weight"] = torch.cat(a_parts, dim=0).contiguous()
        tensors[f"{module}.lora_B.weight"] = torch.cat(b_parts, dim=1).contiguous()
        rank = int(tensors[f"{module}.lora_A.weight"].shape[0])
    return tensors, rank


def _approximate(
    combination: str,
    sources: Sequence[tuple[dict[str, torch.Tensor], float, int]],
    weights: Sequence[float],
    density: float,
    modules: Sequence[str],
    seed: int,
) -> dict[str, torch.Tensor]:
    """PEFT's ``_generalized_task_arithmetic_weighted_adapter``, per module, on (tensors, scaling, rank)."""
    import torch
    from peft.utils import merge_utils

    def combine(tensors: list[torch.Tensor], factors: list[float]) -> torch.Tensor:
        w = torch.tensor(factors, dtype=torch.float32)
        if combination == "linear":
            return merge_utils.task_arithmetic(tensors, w)
        if combination == "ties":
            return merge_utils.ties(tensors, w, density, "total")
        if combination == "dare_linear":
            return merge_utils.dare_linear(tensors, w, density)
        return merge_utils.dare_ties(tensors, w, density, "total")

    factors_a, factors_b = [], []
    for (_, scaling, _), weight in zip(sources, weights, strict=True):
        scaled = weight * scaling
        sign = 1.0 if scaled >= 0 else -1.0
        factors_a.append(math.sqrt(abs(scaled)) * sign)
        factors_b.append(math.sqrt(abs(scaled)))
    out: dict[str, torch.Tensor] = {}
    # DARE draws its masks from torch's global generator: seed a private copy
    # of it so the result is reproducible and nobody else's draws change.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in modules:
            for side, factors in (("A", factors_a), ("B", factors_b)):
                key = f"{module}.lora_{side}.weight"
                mixed = combine([tensors[key] for tensors, _, _ in sources], factors)
                out[key] = mixed.to(torch.float32).contiguous()
    return out


def _seed(
    levels: Sequence[Sequence[_Level]], params: MergeParams, weights: Sequence[float], density: Any
) -> int:
    material = json.dumps(
        [[[lv.record.sha256 for lv in stack] for stack in levels], params.combination, list(weights), density]
    )
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "little") & (2**63 - 1)


def build_merge(
    store: AdapterStore,
    params: MergeParams,
    *,
    check_level: Callable[[AdapterRecord], None] | None = None,
    max_rank: int = MAX_MERGED_RANK,
) -> MergeResult:
    """Merge ``params.sources`` into a new stored adapter ``params.name``; see the module docstring.

    ``check_level`` (the service passes its engine's shape check) may refuse
    a level, e.g. one made for another base model. Nothing is stored unless
    the whole merge succeeds; the same merge twice stores the same object.
    """
    weights, density = check_params(params)
    if params.pins is not None:
        # What the caller pinned, by hash: a name retrained since does not change the merge.
        stacks = [[store.by_hash(entry) for entry in pin] for pin in params.pins]
    else:
        stacks = [store.resolve(source) for source in params.sources]
    levels = [[_load(store, record) for record in stack] for stack in stacks]
    flat = [level for stack in levels for level in stack]
    if check_level is not None:
        for level in flat:
            check_level(level.record)
    shapes = _check_compatible(flat)
    modules = sorted(shapes)
    exact = params.combination == "cat"
    if exact:
        parts = [(level, weight) for stack, weight in zip(levels, weights, strict=True) for level in stack]
        total = sum(level.modules[modules[0]][0] for level, _ in parts)
        if total > max_rank:
            raise Unsupported(f"cat of these stacks would have rank {total}, more than {max_rank}")
        tensors, rank = _cat(parts, modules)
    else:
        sources: list[tuple[dict[str, Any], float, int]] = []
        for stack in levels:
            if len(stack) == 1:
                r = stack[0].modules[modules[0]][0]
                sources.append((stack[0].tensors, stack[0].scaling(r), r))
            else:
                folded, r = _cat([(level, 1.0) for level in stack], modules)
                sources.append((folded, 1.0, r))
        ranks = [r for _, _, r in sources]
        if len(set(ranks)) != 1:
            raise Unsupported(
                f"{params.combination} needs sources of equal rank, but their stacks have ranks "
                f"{dict(zip(params.sources, ranks, strict=True))}; use combination cat (exact, any ranks)"
            )
        rank = ranks[0]
        tensors = _approximate(
            params.combination,
            sources,
            weights,
            density or DEFAULT_DENSITY,
            modules,
            _seed(levels, params, weights, density),
        )
    config = dict(flat[0].config)
    config.update(
        r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={}, use_dora=False
    )
    entries = [StackEntry(name=lv.record.name, sha256=lv.record.sha256) for lv in flat]
    meta = {
        "merge": {
            "combination": params.combination,
            "exact": exact,
            "sources": [
                {"name": source, "weight": weight, "stack": [e.entry.model_dump() for e in stack]}
                for source, weight, stack in zip(params.sources, weights, stacks, strict=True)
            ],
            "density": density,
        }
    }
    record = _store(store, params.name, config, tensors, meta)
    return MergeResult(
        name=record.name,
        sha256=record.sha256,
        rank=rank,
        bytes=record.bytes,
        exact=exact,
        combination=params.combination,
        levels=entries,
    )


def _store(
    store: AdapterStore,
    name: str,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> AdapterRecord:
    from safetensors.torch import save_file

    from .adapters import sha256_file

    store.ensure()
    with tempfile.TemporaryDirectory(dir=store.root, prefix=".merge-") as tmp:
        folder = Path(tmp)
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True), "utf-8")
        sha = sha256_file(folder / WEIGHTS_FILE)
        if name in store.names() and (existing := store.get(name)).sha256 != sha:
            # Never overwrite another adapter with a merge: a persona may run on it.
            raise MergeParamsError(
                f"name: {name!r} already names another adapter ({existing.sha256[:12]}…); choose a new name"
            )
        return store.import_folder(folder, name, meta=meta)


# -- the service side ---------------------------------------------------------------------------


def merge_in_engine(engine: Engine, params: MergeParams) -> MergeResult:
    """The merge on the engine's worker thread, each level checked against the loaded model."""
    return build_merge(engine.store, params, check_level=engine._check_shapes)


def register_merge_command(dispatcher: Dispatcher, backend: Any) -> None:
    """Serve ``adapter.merge`` from an in-process engine (``backend.run`` queues it as admin work)."""

    async def merge(params: MergeParams, ctx: CallContext) -> MergeResult:
        check_caller(ctx.caller)
        run: Callable[[Callable[[Engine], MergeResult]], Awaitable[MergeResult]] | None = getattr(
            backend, "run", None
        )
        if run is None:
            raise RpcError(int(ErrorCode.METHOD_NOT_FOUND), "adapter.merge needs the engine in this process")
        try:
            if (known := getattr(backend, "known", None)) is not None:
                await known(*params.sources)  # a missing source: refused now, not after a request
            return await run(lambda engine: merge_in_engine(engine, params))
        except InferenceError as exc:
            raise to_rpc(exc) from None

    dispatcher.register("adapter.merge", merge)

"""Batched decoding: prompts in, tokens out, many stacks in one batch.

(A little over 500 lines: the decode step, with its per-row grammar masks,
is one loop whose invariants — which rows are live, whose KV cache is where
— only hold when read whole; the grammar glue itself lives in grammar.py,
the adapters in slots.py, the queue in scheduler.py.)

:class:`Engine` is the worker-thread engine: :class:`~daemon.inference.slots.AdapterSlots`
(the model and its adapters) plus the request-level work — prefill, the
decode loop, streaming, pinning stacks for an owner, and status. Only the
engine's worker thread calls it (``engine.py`` runs it there).

Batching. New requests join the running batch at the next step: each is
prefilled alone (so its prompt is read exactly as in a solo run), then its
KV cache is left-padded into the batch's. Finished and cancelled rows leave
the batch at once. A batch that runs one stack decodes on its merged copy; a
batch that mixes stacks uses one ``cat`` adapter per stack (``auto``). Which
request gets the next free seat is the scheduler's business
(``scheduler.py``); admin calls run between decode steps.

Errors are per request: an unknown, corrupt or mismatched adapter fails the
request that needs it, and the engine goes on serving the others.

Constrained rows (``json_schema``) carry a grammar state from ``grammar.py``
that masks their logits before sampling; rows without one skip it.

Length: a little over 500 lines, because prefill, the decode loop and the
per-row state they share (``_Row``) are one seam; the KV-cache helpers at
the bottom (``_join``, ``_select``) are the next thing to move out.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from protocol.commands.inference import (
    GenerateParams,
    InferenceStatus,
    LoadedAdapter,
    LoadStackParams,
    LoadStackResult,
    MergedStack,
    UnloadParams,
    UnloadResult,
)

from .adapters import AdapterRecord, AdapterStore
from .errors import InferenceError
from .limits import EngineLimits
from .model import LoadedModel
from .scheduler import Job, Scheduler
from .slots import AdapterSlots, Stack
from .text import TextStream, build_result, encode_prompt, release_pin, rss_bytes, stack_loaded, stop_ids

if TYPE_CHECKING:  # grammar.py imports xgrammar, loaded only for the first constrained request
    from .grammar import Constraint, Grammars

__all__ = ["BASE_ROW", "Engine"]

log = logging.getLogger("personad.inference.decoding")

#: PEFT's key for "no adapter" in a mixed batch (peft/tuners/lora/model.py).
BASE_ROW = "__base__"


@dataclass
class _Row:
    job: Job
    records: list[AdapterRecord]
    stack: Stack
    mode: str  # requested: auto | merged | unmerged | cat
    prompt_len: int
    length: int  # real tokens in the cache so far (prompt + generated fed back)
    text: TextStream  # the generated ids and what was streamed of them
    generator: torch.Generator | None
    queued_ms: float
    prefill_ms: float
    decode_started: float
    batch_size: int = 1
    finish: str | None = None
    #: The grammar holding this row's tokens (json_schema), None for free text.
    constraint: Constraint | None = None
    #: Why the row ended without a result (posted as its error).
    failure: InferenceError | None = None


class Engine(AdapterSlots):
    """The engine a worker thread runs: adapter slots plus prefill, batched decoding and status."""

    def __init__(
        self, loaded: LoadedModel, store: AdapterStore, *, limits: EngineLimits | None = None
    ) -> None:
        super().__init__(loaded, store, limits=limits)
        self.stop_ids = stop_ids(getattr(loaded.model, "generation_config", None), loaded.tokenizer)
        self.served = 0
        self.running = 0
        self._grammars: Grammars | None = None

    # -- stacks an owner keeps warm ------------------------------------------------------

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
        return stack_loaded(records, params.mode, started)

    def unload(self, params: UnloadParams, owner: str) -> UnloadResult:
        """Forget an owner's stack: its merged copy and cat go; levels no other pin needs go."""
        self.reset()
        stack = tuple(e.sha256 for e in params.stack)
        still_needed = release_pin(self._pins, owner, stack)
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

    def in_use(self, sha256: str) -> str | None:
        """What is generating with this adapter now, in words (``adapter.delete`` refuses then)."""
        keys: list[str | None] = [self._component.get(sha256)]
        keys += [key for stack, key in self._cat.items() if sha256 in stack]
        if any(key is not None and self._in_use.get(key) for key in keys):
            return "a running request is generating with it"
        if self.running and self._swapped is not None and sha256 in self._swapped:
            return "a running request is generating with its merged stack"
        return None

    def forget(self, sha256: str) -> None:
        """Drop every copy of the adapter's weights: its slot, cats and merged stacks."""
        for stack in [s for s in self._merged if sha256 in s]:
            if self._swapped == stack:
                self._restore_weights()
            del self._merged[stack]
        for cat in [key for stack, key in self._cat.items() if sha256 in stack]:
            self._delete(cat)
        component = self._component.get(sha256)
        if component is not None:
            self._delete(component)

    # -- prompts -------------------------------------------------------------------------

    def encode(self, params: GenerateParams) -> list[int]:
        return encode_prompt(self.tokenizer, params, max_prompt_tokens=self.limits.max_prompt_tokens)

    def constrain(self, params: GenerateParams) -> Constraint | None:
        """A fresh grammar state for a request with ``json_schema``; None for free text."""
        if params.json_schema is None:
            return None
        if self._grammars is None:
            from .grammar import Grammars

            head = self.base.get_output_embeddings()
            vocab = int(head.weight.shape[0]) if head is not None else int(self.base.config.vocab_size)
            self._grammars = Grammars(
                self.tokenizer, vocab_size=vocab, stop_ids=self.stop_ids, max_cached=self.limits.max_grammars
            )
        return self._grammars.constraint(params.json_schema)

    # -- generation ----------------------------------------------------------------------

    def run_batch(self, first: list[Job], scheduler: Scheduler, between_steps: Callable[[], None]) -> None:
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
                # The mask covers the cache and the token this step feeds, which sits at
                # position r.length (0-based: the cache holds positions 0 .. length - 1).
                mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
                logits = self._step(rows, cache, mask)
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
            constraint = self.constrain(job.params)
            plan = self._plan_single(records, job.params.mode, decode=False)
            row = _Row(
                job=job,
                records=records,
                stack=tuple(r.sha256 for r in records),
                mode=job.params.mode,
                prompt_len=len(ids),
                length=len(ids),
                text=TextStream(self.tokenizer, job.params, job.emit),
                generator=_generator(job.params),
                queued_ms=(started - job.enqueued) * 1000,
                prefill_ms=0.0,
                decode_started=0.0,
                batch_size=batch_size,
                constraint=constraint,
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
        tokens = torch.tensor([[r.text.generated[-1]] for r in rows])
        positions = torch.tensor([[r.length] for r in rows])
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
        constraint = row.constraint
        if constraint is not None:
            constraint.mask(logits)
        token = _sample(logits, row.job.params, row.generator)
        params = row.job.params
        if constraint is not None and not constraint.accept(token):
            # Cannot happen after mask() (it allowed only what accept takes);
            # if xgrammar ever disagrees with itself, fail this row, not the batch.
            row.failure = InferenceError(f"constrained decoding: the grammar refused token {token}")
            row.finish = "error"
            return
        if token in self.stop_ids:
            row.finish = "stop"
            return
        row.text.push(token)
        context = getattr(self.base.config, "max_position_embeddings", 1 << 30)
        if len(row.text.generated) >= params.max_tokens or row.length + 1 >= context:
            row.finish = "length"

    def _finish(self, row: _Row) -> None:
        self._release(row)
        self.served += 1
        if row.failure is not None:
            row.job.emit("error", row.failure)
            return
        text = row.text.finish()
        used: Any = "base"
        if row.records:
            used = "cat" if row.batch_size > 1 and row.mode == "auto" else row.mode
            used = "merged" if used == "auto" else used
        result = build_result(
            text=text,
            finish=row.finish or "length",
            prompt_tokens=row.prompt_len,
            completion_tokens=len(row.text.generated),
            records=row.records,
            mode=used,
            batch_size=row.batch_size,
            model=self.loaded.name,
            queued_ms=row.queued_ms,
            prefill_ms=row.prefill_ms,
            decode_started=row.decode_started,
            constrained=row.constraint is not None,
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
            rss_bytes=rss_bytes(),
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
            backend="torch",
        )


def _compatible(rows: list[_Row], job: Job) -> bool:
    """Whether a request may join a batch: explicit merged/unmerged rows only run with their own kind."""
    explicit = {"merged", "unmerged"}
    stack = tuple(e.sha256 for e in job.params.stack)
    if job.params.mode in explicit or any(r.mode in explicit for r in rows):
        return all(r.stack == stack and r.mode == job.params.mode for r in rows)
    return True


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

"""The OpenVINO GenAI backend: the same requests and results as ``decoding.py``, decoded faster.

:class:`OVEngine` is a worker-thread engine like :class:`~daemon.inference.decoding.Engine`
(``engine.py``'s :class:`~daemon.inference.engine.AsyncEngine` runs either): it
takes the scheduler's jobs one at a time and answers them with an
``openvino_genai.LLMPipeline`` over the model's IR (``convert.py``).

What a persona sees is the torch engine's: the prompt goes through the same
chat template and tokenizer (``text.py``) and the ids are handed over as they
are; the ids that come back are streamed and decoded by the same code; the
stop tokens, the length bound, the result and its timings are the same.

LoRA stacks are applied per request, natively: the pipeline holds one
``Adapter`` per stored level (LRU, ``max_adapters``) and each request passes
its stack as an ``AdapterConfig``; switching stacks reloads nothing. Four
traps of the library, each of which silently gives base-model or wrong
output, are handled here and each has a regression test
(``tests/daemon/inference/test_ov_engine.py``):

1. the default attention backend (paged attention) caches prompt prefixes
   across requests and reuses state computed under one adapter set for
   another; :data:`PIPELINE_PROPERTIES` selects SDPA, which has no such cache;
2. the alpha an ``AdapterConfig`` takes is the effective scale, PEFT's
   ``lora_alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), not ``lora_alpha``;
3. a pipeline built without adapters ignores adapters given later, and one
   built with some applies later ones only to the modules those covered; it
   is built with a zero adapter registered over the projections adapters
   use (``model.py``'s ``registration_adapter``: the attention projections
   first), and rebuilt with more, once, when an adapter needs more;
4. a request without a ``GenerationConfig.adapters`` runs the build-time set,
   not the base model: a base request passes an empty ``AdapterConfig``.

Batching: a pipeline cannot decode requests with different adapter sets in
one call, and two threads must not call one pipeline at once, so requests
run one after the other; the scheduler hands them out round-robin across
owners, which is what keeps personas fair.

(About 530 lines, one class around one pipeline: loading, adapters, generation
and status all touch the pipeline and its adapter cache under the engine
thread's rule of one call at a time. What stands alone is already apart:
``model.py`` (the IR and the registration adapter), ``schema_bounds.py`` (the
reply's string bounds), ``convert.py``.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai as og

from protocol.commands.inference import (
    GenerateParams,
    InferenceStatus,
    LoadedAdapter,
    LoadStackParams,
    LoadStackResult,
    StackEntry,
    UnloadParams,
    UnloadResult,
)

from ..adapters import WEIGHTS_FILE, AdapterRecord, AdapterStore, read_safetensors_header
from ..errors import AdapterIncompatible, InferenceError, ModelUnavailable, ReplyInvalid, Unsupported
from ..limits import EngineLimits
from ..scheduler import Job, Scheduler
from ..text import (
    TextStream,
    build_result,
    encode_prompt,
    release_pin,
    resolve_chain,
    rss_bytes,
    stack_loaded,
    stop_ids,
)
from . import PRECISIONS
from .model import GenerationDefaults, OVModel, module_kind, registration_adapter
from .schema_bounds import string_too_long, without_max_length

__all__ = ["PIPELINE_PROPERTIES", "OVEngine"]

log = logging.getLogger("personad.inference.ov")

#: Always: SDPA attention (trap 1: no prefix cache shared across adapter sets).
PIPELINE_PROPERTIES: dict[str, Any] = {"ATTENTION_BACKEND": "SDPA"}
#: The projections registered for LoRA before any adapter asks for more:
#: what adapters trained here target (train.py's q/v, the demo stack's q/k/v/o).
#: A registered matrix costs its LoRA branch on every token, with an adapter
#: or without: registering the MLP's too made decoding 10-25% slower.
FIRST_REGISTERED = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})


@dataclass
class _Adapter:
    handle: Any  # openvino_genai.Adapter
    record: AdapterRecord
    scale: float
    names: set[str] = field(default_factory=set)
    last_used: float = field(default_factory=time.monotonic)


class OVEngine:
    """The engine a worker thread runs, on OpenVINO GenAI: one request at a time, any stack."""

    backend = "openvino"

    def __init__(
        self,
        model: OVModel,
        store: AdapterStore,
        *,
        limits: EngineLimits | None = None,
        threads: int = 1,
        precision: str = "f32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ModelUnavailable(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        self.loaded = model
        self.tokenizer = model.tokenizer
        self.store = store
        self.limits = limits or EngineLimits()
        self.threads = max(1, threads)
        self.precision = precision
        self.stop_ids = stop_ids(GenerationDefaults(model.path), model.tokenizer)
        present = {module_kind(key.removesuffix(".weight")) for key in model.shapes if ".layers." in key}
        self.registered = FIRST_REGISTERED & present or frozenset(present)
        started = time.monotonic()
        self._pipe = self._pipeline(self.registered)
        model.load_s += time.monotonic() - started
        self.rebuilds = 0
        self._adapters: OrderedDict[str, _Adapter] = OrderedDict()  # sha256 -> loaded; LRU, oldest first
        self._pins: dict[str, tuple[str, ...]] = {}
        self._in_use: dict[str, int] = {}  # sha256 -> requests running with it
        self._grammars: OrderedDict[str, str] = OrderedDict()  # schema -> EBNF; LRU
        self.served = 0
        self.running = 0
        self.hotswaps = 0
        self.evictions = 0

    def _pipeline(self, kinds: frozenset[str]) -> Any:
        """A pipeline with ``kinds`` registered for LoRA (trap 3)."""
        registration = og.AdapterConfig()
        registration.add(og.Adapter(str(registration_adapter(self.loaded, kinds))), 0.0)
        try:
            return og.LLMPipeline(
                str(self.loaded.ir),
                "CPU",
                adapters=registration,
                INFERENCE_NUM_THREADS=self.threads,
                **PIPELINE_PROPERTIES,
                **PRECISIONS[self.precision],
            )
        except RuntimeError as exc:
            raise ModelUnavailable(f"OpenVINO cannot compile {self.loaded.ir}: {str(exc)[:500]}") from None

    def _register(self, kinds: set[str], name: str) -> None:
        """Rebuild the pipeline with ``kinds`` registered too (between requests; about 3 s, once)."""
        wanted = self.registered | kinds
        started = time.monotonic()
        self._pipe = self._pipeline(wanted)  # the old one serves on if this fails
        self.registered = wanted
        self.rebuilds += 1
        log.info(
            "adapter %r applies LoRA to %s: pipeline rebuilt with %s registered in %.1f s",
            name,
            ", ".join(sorted(kinds)),
            ", ".join(sorted(wanted)),
            time.monotonic() - started,
        )

    # -- adapters ------------------------------------------------------------------------

    def resolve(self, entries: Sequence[StackEntry]) -> list[AdapterRecord]:
        return resolve_chain(self.store, entries)

    def check_shapes(self, record: AdapterRecord) -> set[str]:
        """AdapterIncompatible unless every LoRA matrix fits a matrix of this model (from headers only).

        Returns the kinds of module it applies to (``q_proj``, ...).
        """
        kinds: set[str] = set()
        for key, info in read_safetensors_header(record.path / WEIGHTS_FILE).items():
            module, _, rest = key.partition(".lora_")
            module = module.removeprefix("base_model.model.")
            kinds.add(module_kind(module))
            shape = self.loaded.shapes.get(f"{module}.weight")
            if shape is None:
                raise AdapterIncompatible(
                    f"adapter {record.name!r} targets {module}, which {self.loaded.name} does not have "
                    "(it was made for another base model)"
                )
            rows, cols = info["shape"]
            if rest.startswith("A.") and cols != shape[1]:
                raise AdapterIncompatible(
                    f"adapter {record.name!r}: {module} takes {shape[1]} inputs in {self.loaded.name} "
                    f"but the adapter expects {cols} (made for another base model)"
                )
            if rest.startswith("B.") and rows != shape[0]:
                raise AdapterIncompatible(
                    f"adapter {record.name!r}: {module} has {shape[0]} outputs in {self.loaded.name} "
                    f"but the adapter expects {rows} (made for another base model)"
                )
        return kinds

    # merge.py and adapter_admin.py call the torch engine's name for it.
    _check_shapes = check_shapes

    def _adapter(self, record: AdapterRecord) -> _Adapter:
        loaded = self._adapters.get(record.sha256)
        if loaded is not None:
            self._adapters.move_to_end(record.sha256)
            loaded.last_used = time.monotonic()
            loaded.names.add(record.name)
            return loaded
        self.store.verify(record)
        kinds = self.check_shapes(record)
        config = json.loads((record.path / "adapter_config.json").read_text("utf-8"))
        if config.get("rank_pattern") or config.get("alpha_pattern"):
            raise Unsupported(
                f"adapter {record.name!r} has per-module ranks or alphas (rank_pattern/alpha_pattern), "
                "which the openvino backend cannot apply; use --backend torch"
            )
        rank = int(config.get("r") or record.rank)
        alpha = float(config.get("lora_alpha") or record.alpha)
        # Trap 2: OpenVINO takes the effective scale, as PEFT computes it.
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        try:
            handle = og.Adapter(str(record.path / WEIGHTS_FILE))
        except RuntimeError as exc:
            raise InferenceError(f"OpenVINO cannot read adapter {record.name!r}: {str(exc)[:300]}") from None
        if not kinds <= self.registered:
            self._register(kinds, record.name)
        self._make_room()
        loaded = _Adapter(handle=handle, record=record, scale=scale, names={record.name})
        self._adapters[record.sha256] = loaded
        return loaded

    def _make_room(self) -> None:
        while len(self._adapters) >= self.limits.max_adapters:
            pinned = {sha for stack in self._pins.values() for sha in stack}
            victim = next(
                (sha for sha in self._adapters if not self._in_use.get(sha) and sha not in pinned), None
            )
            if victim is None:
                victim = next((sha for sha in self._adapters if not self._in_use.get(sha)), None)
            if victim is None:
                return  # every one is running now: go over the bound rather than fail a request
            del self._adapters[victim]
            self.evictions += 1

    def _adapter_config(self, records: Sequence[AdapterRecord]) -> Any:
        config = og.AdapterConfig()  # trap 4: empty for the base model, never left unset
        for record in records:
            loaded = self._adapter(record)
            config.add(loaded.handle, loaded.scale)
        return config

    def reset(self) -> None:
        """Nothing to restore between calls: every request carries its whole adapter set."""

    def in_use(self, sha256: str) -> str | None:
        if self._in_use.get(sha256):
            return "a running request is generating with it"
        return None

    def forget(self, sha256: str) -> None:
        self._adapters.pop(sha256, None)

    # -- stacks an owner keeps warm ------------------------------------------------------

    def load_stack(self, params: LoadStackParams, owner: str) -> LoadStackResult:
        started = time.perf_counter()
        records = self.store.resolve(params.name)
        for record in records:
            self._adapter(record)
        self._pins[owner] = tuple(r.sha256 for r in records)
        return stack_loaded(records, params.mode, started)

    def unload(self, params: UnloadParams, owner: str) -> UnloadResult:
        stack = tuple(e.sha256 for e in params.stack)
        still_needed = release_pin(self._pins, owner, stack)
        for sha in stack:
            if sha not in still_needed and not self._in_use.get(sha):
                self._adapters.pop(sha, None)
        return UnloadResult(released=list(params.stack))

    # -- generation ----------------------------------------------------------------------

    def run_batch(self, first: list[Job], scheduler: Scheduler, between_steps: Callable[[], None]) -> None:
        """Answer ``first``, one request at a time (the scheduler hands the next one out fairly)."""
        for job in first:
            if scheduler.closed:
                job.emit("closed", None)
                continue
            between_steps()
            self._serve(job, lambda: self._mid_request_calls(scheduler))

    def _mid_request_calls(self, scheduler: Scheduler) -> None:
        """Answer waiting calls that are safe mid-request (inference.status, inference.unload)
        between two tokens of a request.

        One request is one pipeline call here, which can run for minutes: a status or an
        unload that waited for its end would pass its deadline. Calls that may rebuild the
        pipeline or touch adapters in use (load_stack, merge, delete) still wait for its end.
        """
        while (call := scheduler.take_call(mid_request=True)) is not None:
            try:
                result = call.fn(self)
            except BaseException as exc:
                call.done(None, exc)
            else:
                call.done(result, None)

    def _serve(self, job: Job, between_tokens: Callable[[], None] = lambda: None) -> None:
        if job.cancelled.is_set():
            return
        started = time.monotonic()
        held: tuple[str, ...] = ()
        try:
            records = self.resolve(job.params.stack)
            ids = encode_prompt(self.tokenizer, job.params, max_prompt_tokens=self.limits.max_prompt_tokens)
            held = tuple(r.sha256 for r in records)
            for sha in held:
                self._in_use[sha] = self._in_use.get(sha, 0) + 1
            self.running = 1
            result, streamer, text = self._decode(job, records, ids, False, between_tokens)
            if text is not None and _overran(job, text):
                # Relaxed, a string ran past its maxLength: decode again held to the bound
                # (slow, and only then). A streamed reply has been sent already: refused below.
                result, streamer, text = self._decode(job, records, ids, True, between_tokens)
        except InferenceError as exc:
            job.emit("error", exc)
            return
        except Exception as exc:
            log.exception("request from %s failed", job.owner)
            job.emit("error", InferenceError(f"the openvino backend failed this request: {str(exc)[:300]}"))
            return
        finally:
            self.running = 0
            for sha in held:
                self._in_use[sha] -= 1
        if job.cancelled.is_set():
            return  # the caller has gone: never finished, so never counted as served
        self.served += 1
        if streamer.failure is not None:
            job.emit("error", streamer.failure)
            return
        metrics = result.perf_metrics
        prefill_ms = float(metrics.get_ttft().mean)
        finish = "stop" if streamer.stopped else "length"
        text = streamer.text.finish() if text is None else text
        broken = _reply_breaks(job.params.json_schema, text) if finish == "stop" else None
        if broken is not None:
            job.emit(
                "error",
                ReplyInvalid(
                    f"constrained decoding: {broken}; retry with another seed, or use --backend torch"
                ),
            )
            return
        job.emit(
            "done",
            build_result(
                text=text,
                finish=finish,
                prompt_tokens=len(ids),
                completion_tokens=len(streamer.text.generated),
                records=records,
                mode="unmerged" if records else "base",
                batch_size=1,
                model=self.loaded.name,
                queued_ms=(started - job.enqueued) * 1000,
                prefill_ms=prefill_ms,
                decode_started=streamer.first_token_at or time.monotonic(),
                constrained=job.params.json_schema is not None,
            ),
        )

    def _decode(
        self, job: Job, records: Sequence[AdapterRecord], ids: list[int], bounded: bool, between: Any
    ) -> tuple[Any, _Streamer, str | None]:
        """One pipeline call; the finished text too when the reply ended by itself unstreamed."""
        config = self._generation_config(job.params, records, len(ids), bounded=bounded)
        streamer = _Streamer(TextStream(self.tokenizer, job.params, job.emit), self.stop_ids, job, between)
        result = self._pipe.generate(_inputs(ids), config, streamer)
        done = streamer.stopped and streamer.failure is None and not job.params.stream
        return result, streamer, streamer.text.finish() if done else None

    def _generation_config(
        self, params: GenerateParams, records: Sequence[AdapterRecord], prompt: int, *, bounded: bool = False
    ) -> Any:
        config = self._pipe.get_generation_config()
        context = int(self.loaded.config.get("max_position_embeddings") or 1 << 30)
        config.max_new_tokens = max(1, min(params.max_tokens, context - prompt - 1))
        config.min_new_tokens = 0
        config.ignore_eos = False
        config.stop_token_ids = set(self.stop_ids)
        config.stop_strings = set()
        config.num_return_sequences = 1
        config.repetition_penalty = 1.0
        config.adapters = self._adapter_config(records)
        if params.temperature == 0:
            config.do_sample = False
        else:
            config.do_sample = True
            config.temperature = params.temperature
            config.top_p = params.top_p
            config.top_k = 0
            config.rng_seed = (
                params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little")
            )
        if params.json_schema is not None:
            config.structured_output_config = og.StructuredOutputConfig(
                json_schema=self._schema(params.json_schema, bounded=bounded)
            )
        return config

    def _schema(self, schema: dict[str, Any], *, bounded: bool = False) -> str:
        """The schema as OpenVINO's own xgrammar takes it, refused first as ours refuses it.

        Given as a schema, not as our grammar's text: OpenVINO matched the
        text form about twenty times slower per token. Its JSON grammar
        allows whitespace between tokens, where ours has none. Without
        ``maxLength``: a bounded string made its matcher 12 to 21 times slower
        per token (PersonaHub's 300-character persona, SmolLM2 on one thread:
        bench/inference.py section 10), so the bound is checked on the finished reply
        (``_reply_breaks``) instead; a reply that ran past it is decoded again
        with the bound (``bounded``), so callers still get a reply within it.
        """
        key = json.dumps([schema, bounded], sort_keys=True)
        if key not in self._grammars:
            from ..grammar import check_schema

            check_schema(schema)  # INVALID_PARAMS for what the torch engine refuses
            self._grammars[key] = json.dumps(schema if bounded else without_max_length(schema))
            while len(self._grammars) > self.limits.max_grammars:
                self._grammars.popitem(last=False)
        self._grammars.move_to_end(key)
        return self._grammars[key]

    # -- status ----------------------------------------------------------------------------

    def status(self, waiting: int) -> InferenceStatus:
        now = time.monotonic()
        return InferenceStatus(
            model=self.loaded.name,
            model_path=str(self.loaded.ir),
            model_bytes=self.loaded.bytes,
            threads=self.threads,
            pid=os.getpid(),
            rss_bytes=rss_bytes(),
            slots_used=len(self._adapters),
            slots_capacity=self.limits.max_adapters,
            merged_capacity=0,
            loaded=[
                LoadedAdapter(
                    slot=sha[:12],
                    sha256=sha,
                    names=sorted(a.names),
                    rank=a.record.rank,
                    combined=False,
                    idle_s=round(now - a.last_used, 3),
                )
                for sha, a in self._adapters.items()
            ],
            merged=[],
            waiting=waiting,
            running=self.running,
            served=self.served,
            hotswaps=self.hotswaps,
            evictions=self.evictions,
            backend="openvino",
        )


def _overran(job: Job, text: str) -> bool:
    """A finished, unstreamed constrained reply with a string past its schema's maxLength."""
    schema = job.params.json_schema
    if schema is None:
        return False
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return string_too_long(schema, value) is not None


def _reply_breaks(schema: dict[str, Any] | None, text: str) -> str | None:
    """How a finished constrained reply breaks what OpenVINO's grammar could not hold it to, or None.

    The torch engine masks such bytes out as it goes (json_guard.py) and bounds
    string lengths in its grammar; OpenVINO cannot be given that mask, and is
    not given ``maxLength`` (``OVEngine._schema``), so the whole reply is checked.
    """
    if schema is None:
        return None
    try:
        value = json.loads(text)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        value = None
    if value is None or "\ufffd" in text:
        return "the reply is not strict JSON (a raw control character or a lone surrogate in a string)"
    return string_too_long(schema, value)


def _inputs(ids: list[int]) -> Any:
    return og.TokenizedInputs(
        ov.Tensor(np.array([ids], dtype=np.int64)), ov.Tensor(np.ones((1, len(ids)), dtype=np.int64))
    )


class _Streamer(og.StreamerBase):  # type: ignore[misc]
    """Receives each generated id from the pipeline: streams its text, ends on a stop id or cancel."""

    def __init__(
        self, text: TextStream, stops: set[int], job: Job, between_tokens: Callable[[], None]
    ) -> None:
        super().__init__()
        self.between_tokens = between_tokens
        self.text = text
        self.stops = stops
        self.job = job
        self.stopped = False
        self.failure: InferenceError | None = None
        self.first_token_at: float | None = None

    def write(self, token: Any) -> Any:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        for value in token if isinstance(token, list) else [token]:
            if int(value) in self.stops:
                self.stopped = True
                return og.StreamingStatus.STOP
            try:
                self.text.push(int(value))
            except Exception as exc:  # never let an exception cross into the C++ loop
                self.failure = InferenceError(f"streaming failed: {exc}")
                return og.StreamingStatus.CANCEL
        if self.job.cancelled.is_set():
            return og.StreamingStatus.CANCEL
        try:
            self.between_tokens()
        except Exception:  # each call reports its own failure; never let one cross into C++
            log.exception("a call between tokens failed")
        return og.StreamingStatus.RUNNING

    def end(self) -> None:
        """Nothing to flush: the result carries whatever was held back."""

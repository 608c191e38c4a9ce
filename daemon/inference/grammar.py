"""Constrained decoding: a JSON Schema compiled by xgrammar holds every sampled token.

``inference.generate`` with ``json_schema`` runs here. The schema is compiled
(on the engine's worker thread, like everything that touches the model) into
an xgrammar grammar for this model's tokenizer; each constrained request gets
its own :class:`Constraint`, a ``GrammarMatcher`` and a one-row token bitmask.
Before sampling, the bitmask of tokens the grammar allows next is written
into that request's logits row (the others get -inf); after sampling, the
token is fed to the matcher. The matcher allows the stop token only once the
JSON value is complete, so a request that ends with ``finish_reason: stop``
has produced one value the schema accepts.

Cost. Nothing here runs for requests without a schema: xgrammar is imported
on the first constrained request, and rows without a constraint skip the
mask. A compile takes milliseconds for a small schema on SmolLM2's 49k-token
vocabulary; compiled grammars are kept in a small LRU keyed by the schema's
canonical JSON.

Canonical JSON here is compact and *not* key-sorted: xgrammar writes object
members in the schema's declared order, so two schemas that differ only in
member order are different grammars.

Strict JSON. xgrammar's grammar admits a few byte sequences strict parsers
refuse (control characters, UTF-8-encoded surrogates, lone surrogate
escapes); json_guard.py masks them per row.

Whitespace. Grammars are compiled with ``any_whitespace=False``: a small model
allowed free whitespace between JSON tokens can loop on newlines until
``max_tokens``; with it off the output is one compact line.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch

from .errors import InvalidSchema
from .json_guard import REFUSED, JsonByteGuard

if TYPE_CHECKING:  # xgrammar is imported only once a schema arrives
    import xgrammar

__all__ = ["Constraint", "Grammars", "canonical_schema"]

#: xgrammar prefixes its C++ messages with a time and a source location.
_CPP_PREFIX = re.compile(r"^\[[0-9:]+\]\s+\S+:\d+:\s*")


def canonical_schema(schema: dict[str, Any]) -> str:
    """The schema as compact JSON in its own member order (the cache key and what is compiled)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class Constraint:
    """One request's grammar state: a matcher and its bitmask row. Worker thread only."""

    def __init__(
        self,
        compiled: xgrammar.CompiledGrammar,
        *,
        vocab_size: int,
        stop_ids: list[int],
        guard: JsonByteGuard,
    ) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=stop_ids)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size
        self._guard = guard
        self._guard_state = guard.start()

    def mask(self, logits: torch.Tensor) -> None:
        """Set every token the grammar (or the byte guard) does not allow next to -inf, in place."""
        self.matcher.fill_next_token_bitmask(self.bitmask, 0)
        self.bitmask &= self._guard.masks[self._guard_state]
        row = logits if logits.is_contiguous() else logits.contiguous()
        self._xgr.apply_token_bitmask_inplace(row, self.bitmask[0], vocab_size=self.vocab_size)
        if row is not logits:
            logits.copy_(row)

    def accept(self, token: int) -> bool:
        """Advance past ``token``; False if the grammar or guard refuses it (never after :meth:`mask`)."""
        state = self._guard.advance(self._guard_state, token)
        if state == REFUSED or not self.matcher.accept_token(token):
            return False
        self._guard_state = state
        return True

    @property
    def terminated(self) -> bool:
        """The value is complete and the stop token has been accepted."""
        return bool(self.matcher.is_terminated())


def check_schema(schema: dict[str, Any]) -> None:
    """InvalidSchema (naming ``json_schema``) unless xgrammar compiles ``schema``, as ``Grammars.compile``.

    For engines that compile schemas themselves (OpenVINO GenAI): the same
    schemas are refused with the same message, without a tokenizer.
    """
    import xgrammar as xgr

    try:
        key = canonical_schema(schema)
    except (TypeError, ValueError) as exc:
        raise InvalidSchema(f"invalid params: json_schema: not JSON: {exc}") from None
    try:
        xgr.Grammar.from_json_schema(key, any_whitespace=False, strict_mode=True)
    except (RuntimeError, ValueError) as exc:
        reason = _CPP_PREFIX.sub("", str(exc).strip().splitlines()[-1] if str(exc).strip() else "")
        raise InvalidSchema(
            f"invalid params: json_schema: xgrammar cannot compile it: {reason or type(exc).__name__}"
        ) from None


class Grammars:
    """Compiles JSON Schemas for one tokenizer, with an LRU of compiled grammars.

    Built on first use by the engine's worker thread; the lock only guards
    the cache against a status read from another thread.
    """

    def __init__(self, tokenizer: Any, *, vocab_size: int, stop_ids: set[int], max_cached: int) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        self.stop_ids = sorted(stop_ids)
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_ids or None
        )
        # Our own LRU (bounded by count) rather than xgrammar's byte-bounded
        # cache, so the engine's limits say how many grammars it keeps. One
        # compile thread: the worker is one thread and the machine is shared.
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.guard = JsonByteGuard(info.decoded_vocab, vocab_size, set(self.stop_ids))
        self._cache: OrderedDict[str, xgrammar.CompiledGrammar] = OrderedDict()
        self._max_cached = max_cached
        self._lock = threading.Lock()
        self.compiled = 0

    def compile(self, schema: dict[str, Any]) -> xgrammar.CompiledGrammar:
        """The compiled grammar of ``schema``; InvalidSchema naming ``json_schema`` if it cannot be."""
        try:
            key = canonical_schema(schema)
        except (TypeError, ValueError) as exc:
            raise InvalidSchema(f"invalid params: json_schema: not JSON: {exc}") from None
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        try:
            compiled = self._compiler.compile_json_schema(key, any_whitespace=False, strict_mode=True)
        except (RuntimeError, ValueError) as exc:  # xgrammar raises RuntimeError from its C++ converter
            reason = _CPP_PREFIX.sub("", str(exc).strip().splitlines()[-1] if str(exc).strip() else "")
            raise InvalidSchema(
                f"invalid params: json_schema: xgrammar cannot compile it: {reason or type(exc).__name__}"
            ) from None
        with self._lock:
            self._cache[key] = compiled
            self.compiled += 1
            while len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)
        return compiled

    def constraint(self, schema: dict[str, Any]) -> Constraint:
        return Constraint(
            self.compile(schema),
            vocab_size=self.vocab_size,
            stop_ids=self.stop_ids,
            guard=self.guard,
        )

    @property
    def cached(self) -> int:
        with self._lock:
            return len(self._cache)

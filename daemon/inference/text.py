"""What every backend does the same way around its model: prompts in, text out, results.

A persona must not be able to tell which backend served it (``torch`` in
``decoding.py``, ``openvino`` in ``ov/engine.py``), so the parts it can see
are written once, here, and imported by both: the chat template and prompt
bound (:func:`encode_prompt`), the stop tokens (:func:`stop_ids`), how
generated tokens become streamed pieces of text (:class:`TextStream`), which
stack a request names (:func:`resolve_chain`), and the result with its
timings (:func:`build_result`). No torch here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.commands.inference import (
    GenerateParams,
    GenerateResult,
    LoadStackResult,
    StackEntry,
    Timings,
    TokenParams,
)

from .adapters import AdapterRecord, AdapterStore
from .errors import Unsupported

__all__ = [
    "TextStream",
    "build_result",
    "encode_prompt",
    "release_pin",
    "resolve_chain",
    "rss_bytes",
    "stack_loaded",
    "stop_ids",
]


def encode_prompt(tokenizer: Any, params: GenerateParams, *, max_prompt_tokens: int) -> list[int]:
    """The request's messages through the model's chat template, as token ids."""
    messages = [m.model_dump() for m in params.messages]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja2 TemplateError and friends: the template refused these messages
        raise Unsupported(f"the model's chat template refused these messages: {exc}") from None
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > max_prompt_tokens:
        raise Unsupported(f"the prompt is {len(ids)} tokens; this engine accepts at most {max_prompt_tokens}")
    return ids


def stop_ids(*sources: Any) -> set[int]:
    """The end-of-sequence ids named by a generation config and a tokenizer."""
    ids: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def resolve_chain(store: AdapterStore, entries: Sequence[StackEntry]) -> list[AdapterRecord]:
    """Pinned entries to records, checking the chain is a real parent chain."""
    records = [store.by_hash(e) for e in entries]
    for i, record in enumerate(records):
        expected = records[i - 1].name if i else None
        if record.parent != expected:
            raise Unsupported(
                f"stack {[r.name for r in records]} is not a parent chain: "
                f"{record.name!r} follows {expected!r}"
            )
    return records


@dataclass
class TextStream:
    """Generated token ids of one request, and the text streamed of them so far.

    Text is decoded from all the ids each time (a token's text can depend on
    its neighbours), and a piece is held back while it ends in U+FFFD: a
    multi-byte character may span tokens.
    """

    tokenizer: Any
    params: GenerateParams
    emit: Callable[[str, Any], None]
    generated: list[int] = field(default_factory=list)
    emitted: str = ""
    pieces: int = 0

    def push(self, token: int) -> None:
        self.generated.append(token)
        text = self.tokenizer.decode(self.generated, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if len(text) > len(self.emitted) and self.params.stream:
            self._send(text[len(self.emitted) :])
        self.emitted = text

    def finish(self) -> str:
        """The whole text; whatever was held back is streamed now."""
        text: str = self.tokenizer.decode(self.generated, skip_special_tokens=True)
        if self.params.stream and len(text) > len(self.emitted):
            self._send(text[len(self.emitted) :])
            self.emitted = text
        return text

    def _send(self, piece: str) -> None:
        self.emit("token", TokenParams(index=self.pieces, text=piece))
        self.pieces += 1


def build_result(
    *,
    text: str,
    finish: str,
    prompt_tokens: int,
    completion_tokens: int,
    records: Iterable[AdapterRecord],
    mode: Any,
    batch_size: int,
    model: str,
    queued_ms: float,
    prefill_ms: float,
    decode_started: float,
    constrained: bool,
) -> GenerateResult:
    """A finished request's result; decode time runs from ``decode_started`` (monotonic) to now."""
    decode_s = max(time.monotonic() - decode_started, 1e-9)
    return GenerateResult(
        text=text,
        finish_reason="stop" if finish == "stop" else "length",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        stack=[r.entry for r in records],
        mode=mode,
        batch_size=batch_size,
        model=model,
        timings=Timings(
            queued_ms=round(queued_ms, 3),
            prefill_ms=round(prefill_ms, 3),
            decode_ms=round(decode_s * 1000, 3),
            total_ms=round(queued_ms + prefill_ms + decode_s * 1000, 3),
            tokens_per_s=round(completion_tokens / decode_s, 3),
        ),
        constrained=constrained,
    )


def stack_loaded(records: Sequence[AdapterRecord], mode: Any, started: float) -> LoadStackResult:
    """``inference.load_stack``'s answer; ``started`` is when loading began (``time.perf_counter``)."""
    return LoadStackResult(
        stack=[r.info() for r in records],
        mode=mode,
        load_ms=round((time.perf_counter() - started) * 1000, 3),
    )


def release_pin(pins: dict[str, tuple[str, ...]], owner: str, stack: tuple[str, ...]) -> set[str]:
    """Drop ``owner``'s pin on ``stack`` (if it is theirs); the level hashes other pins still need."""
    if pins.get(owner) == stack:
        del pins[owner]
    return {sha for pin in pins.values() for sha in pin}


def rss_bytes() -> int:
    """This process's resident set (Linux /proc; 0 where there is none), without psutil."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0

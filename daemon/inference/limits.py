"""The engine's bounds, in a module without torch so the CLI and the scheduler can share them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineLimits:
    """The engine's bounds; every one is a named knob, not a magic number."""

    #: Loaded PEFT adapters (levels and cat combinations); LRU beyond this.
    #: PEFT gets slower to load and to ``set_adapter`` as more adapters are
    #: loaded (peft issue 981), so the set is kept small.
    max_adapters: int = 16
    #: Cached merged weight copies (one per hot stack).
    max_merged: int = 4
    #: Rows decoded together.
    max_batch: int = 8
    #: Longest prompt accepted, in tokens.
    max_prompt_tokens: int = 4096
    #: Requests waiting for a seat, all owners together; OVERLOADED beyond.
    max_waiting: int = 256
    #: Requests one owner (a persona) may have waiting; OVERLOADED beyond, so
    #: one caller's flood fills its own queue and not everyone's.
    max_waiting_per_owner: int = 32
    #: Compiled JSON-Schema grammars kept for reuse (constrained decoding); LRU beyond.
    max_grammars: int = 16

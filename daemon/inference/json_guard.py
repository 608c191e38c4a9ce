"""What xgrammar 0.2.9's JSON grammar lets through that strict JSON parsers refuse, held back per token.

Constrained decoding must yield text that *any* JSON parser accepts, and the
schema's own string-length limits must count the characters a parser sees.
xgrammar's grammar is byte-level and allows three things that break that,
each found by the tiny random model's output:

* raw control characters (U+0000 to U+001F, other than CR and LF) inside
  strings, which JSON forbids (RFC 8259 §7);
* UTF-16 surrogates U+D800 to U+DFFF encoded as three UTF-8 bytes
  (``ED A0..BF ..``), which UTF-8 forbids (RFC 3629 §3): Python decodes each
  such byte as U+FFFD, so a string of 8 characters comes out as 10 and fails
  its ``maxLength``;
* ``\\uD800``-style escapes of a lone surrogate, which strict parsers
  (pydantic's jiter among them) refuse.

:class:`JsonByteGuard` is a five-state automaton over the output bytes that
refuses exactly those sequences (every surrogate escape, paired or not: a
character outside the BMP can still be written as its four UTF-8 bytes). A
sequence may be split across tokens, so each constrained row keeps its
state; for every state the guard precomputes a bitmask of the tokens
allowed next (ANDed into xgrammar's) and each token's next state. With
compact whitespace (``any_whitespace=False``) none of these bytes is valid
outside a string either, so the automaton needs no notion of being inside
one. Stop tokens are always allowed: whether the value is complete is the
grammar's call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import numpy as np
import torch

__all__ = ["REFUSED", "JsonByteGuard"]

NEUTRAL: Final = 0
#: Right after a backslash that starts an escape.
ESCAPE: Final = 1
#: After ``\u``, before its first hex digit.
U_ESCAPE: Final = 2
#: After ``\u`` and a ``d`` or ``D``: the next digit must be 0-7 (8-F makes a surrogate).
U_ESCAPE_D: Final = 3
#: After the lead byte ``ED`` of a three-byte character: the next byte must be 80-9F.
AFTER_ED: Final = 4
STATES: Final = 5
REFUSED: Final = -1


def _step(state: int, byte: int) -> int:
    if byte < 0x20:
        return REFUSED
    if state == ESCAPE:
        return U_ESCAPE if byte == ord("u") else NEUTRAL  # any other escape is one byte
    if state == U_ESCAPE:
        return U_ESCAPE_D if byte in b"dD" else NEUTRAL  # the grammar makes the rest hex digits
    if state == U_ESCAPE_D:
        return NEUTRAL if byte in b"01234567" else REFUSED
    if state == AFTER_ED:
        return NEUTRAL if 0x80 <= byte <= 0x9F else REFUSED
    if byte == ord("\\"):
        return ESCAPE
    return AFTER_ED if byte == 0xED else NEUTRAL


#: The bytes that leave NEUTRAL; a token without any stays NEUTRAL once there.
_SPECIAL = re.compile(rb"[\x00-\x1f\\\xed]")


def _walk(state: int, raw: bytes, clean: bool) -> int:
    for byte in raw:
        if state == NEUTRAL and clean:
            return NEUTRAL  # the common case, and what keeps building the tables quick
        state = _step(state, byte)
        if state == REFUSED:
            break
    return state


def _bitmask(allowed: list[bool]) -> torch.Tensor:
    """A one-row xgrammar bitmask: int32 words, bit i of word w set when token 32*w + i is allowed."""
    import xgrammar as xgr

    mask = xgr.allocate_token_bitmask(1, len(allowed))
    bits = np.zeros(mask.shape[1] * 32, dtype=bool)
    bits[: len(allowed)] = allowed
    words = np.packbits(bits, bitorder="little").view("<i4")
    mask[0] = torch.from_numpy(words.astype(np.int32))
    return mask


class JsonByteGuard:
    """Per-state token masks and transitions for one tokenizer's vocabulary (built once)."""

    def __init__(self, decoded_vocab: Sequence[bytes], vocab_size: int, stop_ids: set[int]) -> None:
        #: next_state[s][token]: the state after ``token`` in state ``s``; REFUSED if not allowed.
        self.next_state: list[list[int]] = [[state] * vocab_size for state in range(STATES)]
        for token, raw in enumerate(decoded_vocab[:vocab_size]):
            clean = _SPECIAL.search(raw) is None
            for state in range(STATES):
                self.next_state[state][token] = state if token in stop_ids else _walk(state, raw, clean)
        self.masks = [_bitmask([n != REFUSED for n in row]) for row in self.next_state]

    def start(self) -> int:
        return NEUTRAL

    def advance(self, state: int, token: int) -> int:
        """The state after ``token``; REFUSED if the token was not allowed in ``state``."""
        row = self.next_state[state]
        return row[token] if 0 <= token < len(row) else REFUSED

"""The byte guard: what xgrammar's JSON grammar admits but strict parsers refuse never gets sampled.

A vocabulary written by hand holds every way to spell the three faults
(control characters, UTF-8-encoded surrogates, surrogate escapes), whole
and split across tokens. A sampler that always picks the most harmful token
the mask leaves is run against a real xgrammar matcher: whatever it
writes must parse with pydantic (jiter, strict) and keep ``maxLength`` in
the characters a parser counts.
"""

from __future__ import annotations

import json
from typing import Annotated

import pytest
import torch
import xgrammar as xgr
from pydantic import BaseModel, ConfigDict, Field

from daemon.inference.grammar import Constraint
from daemon.inference.json_guard import REFUSED, JsonByteGuard

STOP = b"<stop>"
HARMFUL = [
    b"\xed",  # a surrogate's lead byte ...
    b"\xa0\x80",  # ... and the continuation that makes U+D800
    b"\xed\xa0\x80",  # the whole surrogate in one token
    b"\xed\xbf\xbf",  # U+DFFF
    b"\\",
    b"u",
    b"d",
    b"D",
    b"8",
    b"b",
    b"\\u",
    b"\\ud8",
    b"\\uDC00",
    b"d800",
    b"\x01",
    b"a\x1fb",
]
FINE = [
    b'"',
    b"a",
    b"ok",
    b"0",
    b"7",
    b"0000",
    b"\\\\",  # an escaped backslash: what follows it is literal
    b"\x9f\x80",  # with a lead ED: U+D7C0, a real character
    b"\xe2\x82\xac",  # the euro sign
    b"\xf0\x9f\x98\x80",  # an emoji as its four UTF-8 bytes
    b"{",
    b"}",
    b"name",
    b"note",
    b" ",
    b":",
    b",",
]
VOCAB = [STOP, *HARMFUL, *FINE]


def token(raw: bytes) -> int:
    return VOCAB.index(raw)


@pytest.fixture(scope="module")
def guard() -> JsonByteGuard:
    return JsonByteGuard(VOCAB, len(VOCAB), {0})


def walk(guard: JsonByteGuard, *pieces: bytes) -> int:
    state = guard.start()
    for piece in pieces:
        state = guard.advance(state, token(piece))
        if state == REFUSED:
            break
    return state


@pytest.mark.parametrize(
    "pieces",
    [
        (b"\xed", b"\xa0\x80"),
        (b"\xed\xa0\x80",),
        (b"\xed\xbf\xbf",),
        (b"\\", b"u", b"d", b"8"),
        (b"\\", b"u", b"D", b"b"),
        (b"\\u", b"d800"),
        (b"\\ud8",),
        (b"\\uDC00",),
        (b"\x01",),
        (b"a\x1fb",),
    ],
)
def test_every_spelling_of_a_fault_is_refused(guard: JsonByteGuard, pieces: tuple[bytes, ...]) -> None:
    assert REFUSED == walk(guard, *pieces)


@pytest.mark.parametrize(
    "pieces",
    [
        (b"\xed", b"\x9f\x80"),
        (b"\\u", b"0000"),
        (b"\\", b"u", b"d", b"7"),
        (b"\\\\", b"u", b"d800"),  # escaped backslash, then the literal text "ud800"
        (b"\xe2\x82\xac", b"\xf0\x9f\x98\x80"),
        (b"d800", b"\\\\"),
    ],
)
def test_what_json_allows_stays_allowed(guard: JsonByteGuard, pieces: tuple[bytes, ...]) -> None:
    assert REFUSED != walk(guard, *pieces)


def test_the_masks_agree_with_the_transitions(guard: JsonByteGuard) -> None:
    for state, row in enumerate(guard.next_state):
        words = guard.masks[state][0]
        for tok, nxt in enumerate(row):
            allowed = bool((int(words[tok // 32]) >> (tok % 32)) & 1)
            assert allowed == (nxt != REFUSED), (state, VOCAB[tok])
    assert all(row[0] == state for state, row in enumerate(guard.next_state))  # stop: always allowed


class Name(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(max_length=4)]
    note: str


def test_a_sampler_that_seeks_the_faults_still_writes_strict_json(guard: JsonByteGuard) -> None:
    """Pick the most harmful token the masks allow, every step; the value still validates."""
    info = xgr.TokenizerInfo(list(VOCAB), stop_token_ids=[0])
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    schema = json.dumps(Name.model_json_schema())
    compiled = compiler.compile_json_schema(schema, any_whitespace=False, strict_mode=True)
    seek = [token(raw) for raw in HARMFUL] + [token(raw) for raw in FINE] + [0]
    finish = [0, token(b'"'), token(b"}"), *seek]  # later: close the string, then the object
    for rotation in range(len(HARMFUL)):
        constraint = Constraint(compiled, vocab_size=len(VOCAB), stop_ids=[0], guard=guard)
        out = b""
        for step in range(120):
            order = seek[rotation:] + seek[:rotation] if step < 40 else finish
            logits = torch.tensor([[float(len(order) - order.index(t)) for t in range(len(VOCAB))]])
            constraint.mask(logits)
            chosen = int(torch.argmax(logits[0]))
            assert constraint.accept(chosen), out
            if chosen == 0:
                break
            out += VOCAB[chosen]
        assert constraint.terminated, out
        Name.model_validate_json(out)  # strict parse; maxLength counted in characters

"""Authenticity: does a persona read like a particular person, or like a template or a generic sketch?

A score in 0..1 per persona, from three parts and one penalty
(docs/hub_quality.md gives the reasons):

* **specificity** (weight 0.4): ``1 - 4 * generic / content`` held to 0..1,
  where ``content`` counts words of three letters or more outside a small
  stop list and ``generic`` those in :data:`GENERIC` ("person", "someone",
  "various", "things" …): a quarter of generic words scores 0;
* **named details** (weight 0.3): numbers and proper names (capitalised
  words not at a sentence's start), ``min(1, count / 3)``;
* **length** (weight 0.3): 1 from 12 to 120 words, rising linearly from 3
  words, falling linearly to 0.5 at 300;
* **template residue** multiplies the whole by :data:`RESIDUE_FACTOR`
  (0.25): placeholders (``[NAME]``, ``{occupation}``, ``<name>``), assistant
  chatter ("As an AI", "Sure! Here is", "persona:"), "Lorem ipsum", chat
  tokens, repeated-fragment loops ("adjadjadj", a word thrice in a row, fewer
  than 40% distinct words), unfinished JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["GENERIC", "RESIDUE_FACTOR", "Authenticity", "residue", "score"]

#: Words that describe nobody in particular.
GENERIC: Final = frozenset(
    (
        "person",
        "persons",
        "people",
        "someone",
        "somebody",
        "individual",
        "individuals",
        "various",
        "thing",
        "things",
        "stuff",
        "something",
        "everything",
        "anything",
        "many",
        "different",
        "general",
        "generally",
        "aspects",
        "certain",
        "etc",
        "lot",
        "lots",
        "interesting",
        "interests",
        "activities",
        "topics",
    )
)
#: The score of a persona with template residue is multiplied by this.
RESIDUE_FACTOR: Final = 0.25

_STOP: Final = frozenset(
    " ".join(
        (
            "the and for with who whose which that this from into about their they them she her his him",
            "has have had are was were been being not but all any can will would also very more most such",
            "than then there its our your you one two out over",
        )
    ).split()
)
_RESIDUE: Final = (
    (re.compile(r"\[[A-Z][A-Z _-]{1,30}\]"), "placeholder in brackets"),
    (re.compile(r"\{\{?\s*[a-z_][a-z0-9_ ]{0,30}\}\}?"), "placeholder in braces"),
    (re.compile(r"<(?:name|occupation|age|city|region|persona)>", re.I), "placeholder in angle brackets"),
    (re.compile(r"<\|[a-z_]+\|>|</?s>"), "chat template token"),
    (
        re.compile(r"\bas an ai\b|\bas a (?:large )?language model\b|\bi'?m an ai\b", re.I),
        "assistant chatter",
    ),
    (
        re.compile(r"^\W*(?:sure|certainly|of course|okay)\b[!,.]|\bhere(?: is|'s) (?:a|the|your)\b", re.I),
        "assistant chatter",
    ),
    (re.compile(r"\bpersona\s*(?:description)?\s*:", re.I), "label left in (persona:)"),
    (re.compile(r"\blorem ipsum\b", re.I), "lorem ipsum"),
    (re.compile(r"(\w{2,8}?)\1{2,}", re.I), "repeated fragment loop"),
    (re.compile(r"\b(\w+)(?:\W+\1\b){2,}", re.I), "word repeated in a row"),
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+(?:[.,]\d+)?")
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+)([A-Z][A-Za-z'-]*)")


@dataclass(frozen=True)
class Authenticity:
    score: float
    reasons: tuple[str, ...]
    residue: bool


def residue(text: str) -> list[str]:
    """What in the text is template residue (empty: none)."""
    found: list[str] = []
    for pattern, what in _RESIDUE:
        m = pattern.search(text)
        if m and what not in found:
            found.append(f"{what}: {m.group(0)[:30]!r}")
    stripped = text.strip()
    if stripped[:1] in "{[" or stripped.count("{") != stripped.count("}") or '":' in stripped:
        try:
            json.loads(stripped)
        except ValueError:
            found.append("unfinished JSON")
        else:
            found.append("JSON instead of prose")
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) >= 10 and len(set(words)) / len(words) < 0.4:
        found.append(f"only {len(set(words))} distinct words of {len(words)}")
    return found


def _length_part(n: int) -> float:
    if n < 3:
        return 0.0
    if n < 12:
        return (n - 3) / 9
    if n <= 120:
        return 1.0
    return max(0.5, 1.0 - 0.5 * (n - 120) / 180)


def score(text: str) -> Authenticity:
    """The persona text's authenticity score and what lowered it."""
    reasons: list[str] = []
    words = _WORD.findall(text)
    lower = [w.lower() for w in words]
    content = [w for w in lower if len(w) >= 3 and w not in _STOP and not w.isdigit()]
    generic = [w for w in content if w in GENERIC]
    specificity = max(0.0, 1.0 - 4 * len(generic) / len(content)) if content else 0.0
    if generic:
        reasons.append("generic words: " + ", ".join(sorted(set(generic))[:5]))
    starts = {m.start(1) for m in _SENTENCE_START.finditer(text)}
    names = [
        m.group(0)
        for m in re.finditer(r"[A-Z][a-z][A-Za-z'-]*", text)
        if m.start() not in starts and m.group(0).lower() not in _STOP
    ]
    numbers = re.findall(r"\d+", text)
    named = min(1.0, (len(names) + len(numbers)) / 3)
    if not names and not numbers:
        reasons.append("no named detail (no number, name or place)")
    elif named < 1.0:
        reasons.append(f"{len(names) + len(numbers)} named detail(s), 3 expected")
    length = _length_part(len(words))
    if length < 1.0:
        reasons.append(f"length {len(words)} words (12 to 120 expected)")
    total = 0.4 * specificity + 0.3 * named + 0.3 * length
    found = residue(text)
    if found:
        total *= RESIDUE_FACTOR
        reasons = [f"template residue: {r}" for r in found] + reasons
    return Authenticity(
        score=round(min(1.0, max(0.0, total)), 4), reasons=tuple(reasons), residue=bool(found)
    )

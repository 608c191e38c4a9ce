"""Coherence by rules: do a persona's stated attributes agree with its text?

Four rules, each cheap and conservative (a rule fires only on an explicit
disagreement; a text that says nothing about an attribute passes):

* **age**: the text states an age ("a 34-year-old", "aged 34", "34 years
  old") more than :data:`AGE_TOLERANCE` years from the attribute, or a decade
  ("in her sixties", "in his 60s") the attribute is outside of;
* **occupation**: neither the occupation's head noun (its last word: "nurse"
  of "pediatric nurse") nor a listed synonym appears in the text, compared
  lemma-ish: both words stripped of common endings (``-s``, ``-es``, ``-er``,
  ``-ing``, ``-ist`` …), then equal or one a prefix of the other of at least
  four letters, so "nurse" matches "nursing", "teacher" "teaches", "farmer"
  "farm";
* **gender**: the text refers to the person only with words of the other
  gender (she/her/woman/mother … against he/his/man/father …); a text with
  words of both (her husband) passes. Only female and male are checked;
* **trait**: a Big Five trait at or below :data:`LOW` described by a word of
  its high pole (extraversion 10 and "outgoing"), or at or above
  :data:`HIGH` by one of its low pole, unless a negation ("not", "never",
  "n't", "hardly") comes within two words before it. :data:`TRAIT_WORDS` is
  the lexicon.

The model judge (``judge.py``) adds its own verdicts on a sample.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

from protocol.commands.hub_quality import CoherenceCheck, CoherenceFailure
from protocol.hub_persona import BIG_FIVE, HubPersona

__all__ = [
    "AGE_TOLERANCE",
    "HIGH",
    "LOW",
    "OCCUPATION_SYNONYMS",
    "TRAIT_WORDS",
    "check_rules",
    "occupation_mentioned",
    "stem",
]

#: Years a stated age may differ from the attribute (a birthday between sampling and writing).
AGE_TOLERANCE: Final = 2
#: A trait at or below LOW is the low pole; at or above HIGH the high pole (50 is the middle).
LOW: Final = 30
HIGH: Final = 70

_DECADES: Final = {
    "teens": 10,
    "twenties": 20,
    "thirties": 30,
    "forties": 40,
    "fifties": 50,
    "sixties": 60,
    "seventies": 70,
    "eighties": 80,
    "nineties": 90,
}
_AGE_NUMBER = re.compile(
    r"\b(\d{1,3})(?:[- ]years?[- ]old\b|[- ]year[- ]old\b|[- ]yo\b)|\baged? (\d{1,3})\b", re.IGNORECASE
)
_AGE_DECADE = re.compile(
    r"\bin (?:his|her|their|my) (?:early |mid-|mid |late )?(teens|twenties|thirties|forties|fifties|"
    r"sixties|seventies|eighties|nineties|[1-9]0s|[1-9]0's)\b",
    re.IGNORECASE,
)

#: Synonyms per occupation head noun (either direction counts).
OCCUPATION_SYNONYMS: Final[dict[str, tuple[str, ...]]] = {
    "doctor": ("physician", "gp", "surgeon", "medic"),
    "physician": ("doctor",),
    "lawyer": ("attorney", "solicitor", "barrister", "counsel", "legal"),
    "attorney": ("lawyer",),
    "developer": ("programmer", "coder", "software"),
    "programmer": ("developer", "coder", "software"),
    "officer": ("police", "cop", "army", "military"),
    "professor": ("lecturer", "academic", "faculty"),
    "chef": ("cook", "cooking", "kitchen"),
    "cook": ("chef",),
    "artist": ("painter", "sculptor", "art"),
    "writer": ("author", "novelist", "journalist", "poet"),
    "author": ("writer", "novelist"),
    "mechanic": ("technician",),
    "pilot": ("aviator", "flying", "flies"),
    "retiree": ("retired",),
    "student": ("studying", "studies", "undergraduate", "pupil"),
    "homemaker": ("stay-at-home", "housewife", "househusband"),
    "clerk": ("cashier", "assistant"),
}


def _words(spaced: str) -> frozenset[str]:
    return frozenset(spaced.split())


_FEMALE: Final = _words(
    "she her hers herself woman women girl lady mother mom mum wife daughter sister "
    "grandmother grandma aunt niece widow actress waitress businesswoman chairwoman "
)
_MALE: Final = _words(
    "he him his himself man men boy gentleman father dad husband son brother grandfather "
    "grandpa uncle nephew widower actor waiter businessman chairman "
)

#: Per trait, (words of the low pole, words of the high pole); phrases allowed.
TRAIT_WORDS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "openness": (
        ("conventional", "unimaginative", "closed-minded", "set in her ways", "set in his ways", "incurious"),
        ("curious", "imaginative", "creative", "adventurous", "open-minded", "inventive", "inquisitive"),
    ),
    "conscientiousness": (
        ("disorganised", "disorganized", "careless", "sloppy", "lazy", "forgetful", "messy", "procrastinat"),
        ("organised", "organized", "meticulous", "disciplined", "diligent", "punctual", "methodical"),
    ),
    "extraversion": (
        ("introverted", "introvert", "shy", "reserved", "solitary", "withdrawn", "loner"),
        ("outgoing", "extroverted", "extrovert", "extraverted", "sociable", "talkative", "gregarious"),
    ),
    "agreeableness": (
        ("rude", "hostile", "cynical", "argumentative", "abrasive", "selfish", "combative", "callous"),
        (
            "kind-hearted",
            "kindly",
            "compassionate",
            "caring",
            "cooperative",
            "generous",
            "warm-hearted",
            "trusting",
        ),
    ),
    "neuroticism": (
        ("calm", "relaxed", "composed", "even-tempered", "unflappable", "serene", "emotionally stable"),
        ("anxious", "nervous", "moody", "insecure", "easily stressed", "temperamental", "worrier"),
    ),
}

_WORD = re.compile(r"[a-z][a-z'-]*")
_NEGATIONS: Final = frozenset({"not", "never", "hardly", "no", "nor", "rarely"})
_SUFFIXES: Final = (
    "ists",
    "ist",
    "ians",
    "ian",
    "ers",
    "er",
    "ors",
    "or",
    "ing",
    "ies",
    "es",
    "ed",
    "s",
    "e",
    "y",
)


def stem(word: str) -> str:
    """The word without one common ending (lemma-ish; never shorter than three letters)."""
    word = word.lower()
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _same_lemma(a: str, b: str) -> bool:
    sa, sb = stem(a), stem(b)
    if sa == sb:
        return True
    short, long_ = sorted((sa, sb), key=len)
    return len(short) >= 4 and long_.startswith(short)


def occupation_mentioned(occupation: str, text: str) -> bool:
    """Whether the occupation's head noun, or a synonym of it, appears in the text (lemma-ish)."""
    words = re.findall(r"[a-z][a-z-]*", re.sub(r"\(.*?\)", " ", occupation.lower()))
    if not words:
        return True
    head = words[-1]
    wanted = (head, *OCCUPATION_SYNONYMS.get(head, ()))
    found = _WORD.findall(text.lower())
    return any(_same_lemma(w, t) for w in wanted for t in found)


def _stated_ages(text: str) -> Iterator[tuple[int, int, str]]:
    """(lowest, highest, the words) for each age the text states."""
    for m in _AGE_NUMBER.finditer(text):
        age = int(m.group(1) or m.group(2))
        yield age - AGE_TOLERANCE, age + AGE_TOLERANCE, m.group(0)
    for m in _AGE_DECADE.finditer(text):
        word = m.group(1).lower().rstrip("s").rstrip("'")
        decade = _DECADES.get(m.group(1).lower()) if not word.isdigit() else int(word)
        if decade is None:
            continue
        low = 13 if decade == 10 else decade
        yield low, decade + 9, m.group(0)


def _has_word(words: list[str], phrase: str) -> bool:
    """Whether the phrase occurs with no negation in the two words before it.

    A one-word entry of six letters or more also matches words it begins
    ("curious" matches "curiously", "procrastinat" "procrastinates").
    """
    parts = phrase.split()
    for i in range(len(words) - len(parts) + 1):
        if len(parts) == 1:
            word = words[i]
            hit = word == phrase or (len(phrase) >= 6 and word.startswith(phrase))
        else:
            hit = words[i : i + len(parts)] == parts
        if hit and not any(w in _NEGATIONS or w.endswith("n't") for w in words[max(0, i - 2) : i]):
            return True
    return False


def check_rules(persona: HubPersona) -> list[CoherenceFailure]:
    """Every rule's failure for this persona (empty: as far as the rules see, attributes and text agree)."""
    attrs = persona.attributes
    text = persona.persona
    words = _WORD.findall(text.lower())
    failures: list[CoherenceFailure] = []

    def fail(check: CoherenceCheck, reason: str) -> None:
        failures.append(CoherenceFailure(id=persona.id, check=check, reason=reason))

    if attrs.age is not None:
        for low, high, said in _stated_ages(text):
            if not low <= attrs.age <= high:
                fail("age", f"age {attrs.age} but the text says {said!r}")
                break
    if attrs.occupation and not occupation_mentioned(attrs.occupation, text):
        fail("occupation", f"occupation {attrs.occupation!r} is not mentioned in the text")
    gender = (attrs.gender or "").strip().lower()
    female = sorted({w for w in words if w in _FEMALE})
    male = sorted({w for w in words if w in _MALE})
    if gender in ("female", "woman") and male and not female:
        fail("gender", f"gender female but the text says {', '.join(male)}")
    elif gender in ("male", "man") and female and not male:
        fail("gender", f"gender male but the text says {', '.join(female)}")
    if attrs.traits is not None:
        for trait in BIG_FIVE:
            value = getattr(attrs.traits, trait)
            low_words, high_words = TRAIT_WORDS[trait]
            if value <= LOW:
                pole, against = "low", [w for w in high_words if _has_word(words, w)]
            elif value >= HIGH:
                pole, against = "high", [w for w in low_words if _has_word(words, w)]
            else:
                continue
            if against:
                fail("trait", f"{trait} {value} ({pole}) but the text says {', '.join(against)}")
    return failures

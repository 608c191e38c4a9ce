"""The recommendation score of ``session.recommendations``: five parts, each in [0, 1], weighted.

docs/sessions.md states every formula; this module is their one
implementation. The local parts (role fit, traits, availability) come from
the registry's profiles and the bus's client list; the remote parts
(knowledge, analytics) from the persona daemons themselves, asked with a
short deadline and bounded concurrency, and only when the persona is
online. A persona that cannot answer (offline, an older daemon without the
method, an error) gets the part's fallback value and an explanation saying
why, so one slow or broken persona never fails the ranking.

Profiles are parsed once per change: :class:`ProfileCache` keeps the
derived facts per persona keyed on ``updated_at``, so ranking 1,000
personas costs one indexed read of (id, updated_at) plus the arithmetic.
"""

from __future__ import annotations

import asyncio
import heapq
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from protocol import ErrorCode, RpcError
from protocol.commands.personas import CONTEXT_FLAG_EFFECTS
from protocol.commands.sessions import Recommendation, ScorePart

from .records import load_record
from .store import Registry

RawConnection = Any

#: The parts' weights; they sum to 1, so the score is in [0, 1].
WEIGHTS: Final[dict[str, float]] = {
    "role_fit": 0.25,
    "knowledge": 0.20,
    "analytics": 0.20,
    "traits": 0.20,
    "availability": 0.15,
}
#: Knowledge hits at which the knowledge part is full (min(1, hits / this)).
KNOWLEDGE_SATURATION: Final = 5
#: How many items persona.knowledge.search is asked for.
KNOWLEDGE_LIMIT: Final = 10
#: Analytics without data: neither helps nor hurts.
NEUTRAL: Final = 0.5
#: Per remote call; a persona slower than this is "no data".
REMOTE_DEADLINE_MS: Final = 1500
#: Remote calls in flight at once, across all personas.
REMOTE_CONCURRENCY: Final = 16

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS: Final = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "from",
        "into",
        "about",
        "that",
        "this",
        "what",
        "which",
        "who",
        "whom",
        "how",
        "why",
        "when",
        "where",
        "are",
        "was",
        "were",
        "has",
        "have",
        "had",
        "its",
        "our",
        "your",
        "their",
        "them",
        "they",
        "you",
        "not",
        "but",
        "all",
        "any",
        "can",
        "will",
        "use",
        "using",
        "per",
        "via",
    ]
)


def content_words(text: str) -> frozenset[str]:
    """Lowercase words of three letters or more, stopwords out, a plural ``s`` folded."""
    out = set()
    for word in _WORD.findall(text.lower()):
        if len(word) < 3 or word in _STOPWORDS:
            continue
        if len(word) > 4 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.add(word)
    return frozenset(out)


@dataclass(frozen=True)
class PersonaFacts:
    """What the local parts need from one active profile."""

    id: str
    name: str
    role: str
    words: frozenset[str]
    traits: dict[str, int]


def facts_of(record_id: str, record: str) -> PersonaFacts:
    profile = load_record(record_id, record)
    text = " ".join([profile.name, profile.role, profile.description, *profile.tags, *profile.capabilities])
    return PersonaFacts(
        id=profile.id,
        name=profile.name,
        role=profile.role,
        words=content_words(text),
        traits=profile.traits.model_dump(),
    )


def _active_versions(db: RawConnection) -> list[tuple[str, float]]:
    rows = db.execute("SELECT id, updated_at FROM profiles WHERE status = 'active' ORDER BY id").fetchall()
    return [(str(r[0]), float(r[1])) for r in rows]


def _records(db: RawConnection, ids: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        out += db.execute(f"SELECT id, record FROM profiles WHERE id IN ({marks})", chunk).fetchall()
    return out


class ProfileCache:
    """Active personas' facts, re-read only for profiles whose ``updated_at`` moved."""

    def __init__(self) -> None:
        self._facts: dict[str, tuple[float, PersonaFacts]] = {}

    async def active(self, registry: Registry) -> list[PersonaFacts]:
        versions: list[tuple[str, float]] = await registry.run(_active_versions)
        stale = [pid for pid, at in versions if (hit := self._facts.get(pid)) is None or hit[0] != at]
        if stale:
            version_of = dict(versions)
            for pid, record in await registry.run(_records, stale):
                self._facts[pid] = (version_of[pid], facts_of(pid, record))
        live = {pid for pid, _ in versions}
        for gone in [pid for pid in self._facts if pid not in live]:
            del self._facts[gone]
        return [self._facts[pid][1] for pid, _ in versions if pid in self._facts]


# -- the parts -------------------------------------------------------------------------


PartName = Literal["role_fit", "knowledge", "analytics", "traits", "availability"]


def _part(name: PartName, value: float, explanation: str) -> ScorePart:
    value = min(1.0, max(0.0, value))
    weight = WEIGHTS[name]
    # The contribution from the unrounded value: _quick computes it the same way.
    # model_construct: built from our own numbers, and ranking 1,000 personas makes 5,000 of them.
    return ScorePart.model_construct(
        name=name,
        value=round(value, 4),
        weight=weight,
        contribution=round(value * weight, 4),
        explanation=explanation,
    )


def role_fit(topic: frozenset[str], persona: PersonaFacts) -> ScorePart:
    """Share of the topic's content words in the persona's name, role, description, tags, capabilities."""
    if not topic:
        return _part("role_fit", 0.0, "the topic has no content words to match")
    matched = sorted(topic & persona.words)
    value = len(matched) / len(topic)
    if not matched:
        return _part("role_fit", 0.0, f"none of the {len(topic)} topic words in role, description or tags")
    return _part(
        "role_fit", value, f"{len(matched)} of {len(topic)} topic words match: {', '.join(matched[:6])}"
    )


def traits_fit(flags: list[str], persona: PersonaFacts) -> ScorePart:
    """Traits the context flags call for, weighted by the flag table's deltas (a negative delta inverts)."""
    if not flags:
        return _part("traits", NEUTRAL, "no context flags: neutral")
    table = _flag_table(flags)
    shown = [f"{t} {persona.traits[t]}{'' if d > 0 else ' (lower is better)'}" for t, d in table]
    return _part("traits", _traits_value(table, persona.traits), f"{', '.join(flags)}: {', '.join(shown)}")


def availability(online: bool) -> ScorePart:
    if online:
        return _part("availability", 1.0, "on the bus now")
    return _part("availability", 0.0, "not on the bus")


def _why(exc: BaseException) -> str:
    if isinstance(exc, RpcError):
        return f"{code_name(exc.code)}: {exc.message}"
    return type(exc).__name__


def code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:  # a code this build does not name
        return str(code)


def _hit_count(result: Any) -> int | None:
    """The number of hits in a persona.knowledge.search result: its first list member."""
    if isinstance(result, dict):
        for key in ("results", "items", "hits"):
            if isinstance(result.get(key), list):
                return len(result[key])
        for value in result.values():
            if isinstance(value, list):
                return len(value)
    return None


def knowledge_part(online: bool, answer: Any) -> ScorePart:
    if not online:
        return _part("knowledge", 0.0, "offline: knowledge not searched")
    if isinstance(answer, BaseException):
        return _part("knowledge", 0.0, f"no data: {_why(answer)}")
    hits = _hit_count(answer)
    if hits is None:
        return _part("knowledge", 0.0, "no data: the search answer holds no list of hits")
    return _part(
        "knowledge",
        hits / KNOWLEDGE_SATURATION,
        f"{hits} knowledge item(s) match the topic (full at {KNOWLEDGE_SATURATION})",
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def analytics_part(online: bool, answer: Any) -> ScorePart:
    if not online:
        return _part("analytics", NEUTRAL, "offline: no analytics, neutral")
    if isinstance(answer, BaseException):
        return _part("analytics", NEUTRAL, f"no data: {_why(answer)}; neutral")
    if not isinstance(answer, dict):
        return _part("analytics", NEUTRAL, "no data: unexpected analytics answer; neutral")
    sessions = _number(answer.get("total_sessions"))
    average = _number(answer.get("average_score"))
    success = _number(answer.get("success_rate"))
    if not sessions or average is None or success is None:
        return _part("analytics", NEUTRAL, "no sessions recorded yet: neutral")
    if success > 1:  # a percentage rather than a fraction
        success /= 100
    value = 0.5 * (average / 100) + 0.5 * success
    return _part(
        "analytics",
        value,
        f"average score {average:.1f}/100 and success rate {success:.0%} over {int(sessions)} sessions",
    )


# -- the ranking -----------------------------------------------------------------------

Call = Callable[[str, dict[str, Any], str], Awaitable[Any]]


async def _ask_all(call: Call, ids: Iterable[str], method: str, params: dict[str, Any]) -> dict[str, Any]:
    """``method`` on each ``persona:<id>``; an exception in place of a failed answer."""
    gate = asyncio.Semaphore(REMOTE_CONCURRENCY)

    async def one(pid: str) -> tuple[str, Any]:
        async with gate:
            try:
                return pid, await call(method, params, f"persona:{pid}")
            except Exception as exc:  # any failure is "no data", explained
                return pid, exc

    return dict(await asyncio.gather(*(one(pid) for pid in ids)))


def _quick(
    persona: PersonaFacts,
    words: frozenset[str],
    table: list[tuple[str, int]],
    is_online: bool,
    remote: tuple[float, float],
) -> float:
    """The score the full parts add up to, without building them (ranking 1,000 personas).

    ``remote`` holds the knowledge and analytics contributions, already weighed.
    """
    # The same numbers, in the same order, as _part and recommendation(): the scores are equal.
    w_role, _, _, w_traits, w_available = _WEIGHT_ORDER
    role = len(words & persona.words) / len(words) if words else 0.0
    traits = _traits_value(table, persona.traits) if table else NEUTRAL
    return round(
        sum(
            (
                round(role * w_role, 4),
                remote[0],
                remote[1],
                round(traits * w_traits, 4),
                round((1.0 if is_online else 0.0) * w_available, 4),
            )
        ),
        4,
    )


_WEIGHT_ORDER: Final = (
    WEIGHTS["role_fit"],
    WEIGHTS["knowledge"],
    WEIGHTS["analytics"],
    WEIGHTS["traits"],
    WEIGHTS["availability"],
)


def _flag_table(flags: list[str]) -> list[tuple[str, int]]:
    return [(trait, delta) for flag in flags for trait, delta in CONTEXT_FLAG_EFFECTS[flag].items()]


def _traits_value(table: list[tuple[str, int]], traits: dict[str, int]) -> float:
    total = 0.0
    weight = 0
    for trait, delta in table:
        level = traits[trait] / 100
        total += abs(delta) * (level if delta > 0 else 1 - level)
        weight += abs(delta)
    return round(total / weight, 4)


def recommendation(
    persona: PersonaFacts,
    *,
    words: frozenset[str],
    flags: list[str],
    is_online: bool,
    knowledge: Any,
    analytics: Any,
) -> Recommendation:
    """One persona's five parts, explained, and their sum."""
    parts = [
        role_fit(words, persona),
        knowledge_part(is_online, knowledge),
        analytics_part(is_online, analytics),
        traits_fit(flags, persona),
        availability(is_online),
    ]
    return Recommendation.model_construct(
        persona_id=persona.id,
        name=persona.name,
        role=persona.role,
        online=is_online,
        score=round(sum(p.contribution for p in parts), 4),
        parts=parts,
    )


async def rank(
    personas: list[PersonaFacts],
    *,
    topic: str,
    flags: list[str],
    online: set[str],
    call: Call,
    limit: int,
) -> list[Recommendation]:
    """Score every persona, best first (ties by id), and explain the best ``limit``.

    Every persona is scored by :func:`_quick` (numbers only); the explained
    parts are built for the ones returned, and add up to the same score.
    """
    words = content_words(topic)
    table = _flag_table(flags)
    reachable = [p.id for p in personas if p.id in online]
    knowledge, analytics = await asyncio.gather(
        _ask_all(call, reachable, "persona.knowledge.search", {"query": topic, "limit": KNOWLEDGE_LIMIT}),
        _ask_all(call, reachable, "persona.analytics", {}),
    )
    remote = {
        pid: (
            knowledge_part(True, knowledge[pid]).contribution,
            analytics_part(True, analytics[pid]).contribution,
        )
        for pid in reachable
    }
    offline = (knowledge_part(False, None).contribution, analytics_part(False, None).contribution)
    best = heapq.nsmallest(
        limit,
        personas,
        key=lambda p: (-_quick(p, words, table, p.id in online, remote.get(p.id, offline)), p.id),
    )
    return [
        recommendation(
            p,
            words=words,
            flags=flags,
            is_online=p.id in online,
            knowledge=knowledge.get(p.id),
            analytics=analytics.get(p.id),
        )
        for p in best
    ]

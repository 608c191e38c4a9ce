"""The architect: a run's plan from its requirements, and the plan as deterministic slots.

:func:`make_plan` is arithmetic only (docs/hub_generation.md, "The plan"):
the slots are ``count`` plus an overshoot, split over the paths by weight
(largest remainder), the persona path's slots split evenly over its hops
(hop 0, its roots, first), each path's hop-0 slots split evenly over the
domains and all slots over the languages.

:func:`schedule` turns a plan and the corpus into the run's slots. Every
slot carries all that its generation needs (seed, passage or sampled
attributes, parent slot), each derived from the run's seed and the slot's
index alone, so the same plan and corpus give the same slots, and a slot
redone after a crash asks the model the same question.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from protocol.commands.hub_plan import (
    EMBEDDING_THRESHOLD,
    JUDGE_FRACTION_THOROUGH,
    JUDGE_SAMPLE_STANDARD,
    MINHASH_PERMUTATIONS,
    MINHASH_THRESHOLD,
    GenPath,
    PathPlan,
    Plan,
    QaSettings,
    Requirements,
)
from protocol.commands.knowledge import MAX_EMBED_BATCH
from protocol.hub_persona import Attributes

from .attributes import resolved, sample
from .corpus import Passage

__all__ = ["DEFAULT_RATE", "MODEL_LANGUAGES", "Slot", "derive_seed", "make_plan", "schedule", "split"]

#: Personas per second one inference provider makes with SmolLM2 on two
#: threads, 32 requests in flight: bench/hub.py measured 0.41 (text path) to
#: 0.68 (structured) on an otherwise idle 2-core machine (docs/hub.md).
DEFAULT_RATE: Final = 0.5
#: What the default model (SmolLM2-135M-Instruct) writes well.
MODEL_LANGUAGES: Final = frozenset({"en"})


@dataclass(frozen=True)
class Slot:
    """One persona to make: everything its generation needs, fixed by the plan.

    ``path`` is how this persona is made; ``part`` is the planned path it
    belongs to (a persona path's roots are made by the text or structured
    path but count towards the persona path). ``parent`` is the index of the
    slot whose persona this one relates to (persona path, hop >= 1).
    """

    index: int
    path: GenPath
    part: GenPath
    hop: int
    seed: int
    domain: str | None
    language: str
    passage: Passage | None = None
    parent: int | None = None
    attributes: Attributes | None = None


def split(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` apportioned by ``weights`` (largest remainder; ties to the earlier entry)."""
    if not weights:
        return []
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    shares = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def derive_seed(run_seed: int, label: str, index: int) -> int:
    """A 63-bit seed for one use (``label``) of one slot, from the run's seed (sha256)."""
    digest = hashlib.sha256(f"{run_seed}:{label}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _judge_sample(req: Requirements, total: int) -> int:
    if req.quality == "fast":
        return 0
    if req.quality == "standard":
        return min(JUDGE_SAMPLE_STANDARD, total)
    return min(total, math.ceil(total * JUDGE_FRACTION_THOROUGH))


def make_plan(req: Requirements, *, providers: int = 1, rate: float | None = None) -> Plan:
    """The plan for ``req`` (pure). ``rate``: personas/s per provider (default: DEFAULT_RATE)."""
    if providers < 1:
        raise ValueError(f"providers must be at least 1, not {providers}")
    per_provider = DEFAULT_RATE if rate is None else rate
    if per_provider <= 0:
        raise ValueError(f"rate must be positive, not {per_provider}")
    overshoot = math.ceil(req.count * req.overshoot)
    total = req.count + overshoot
    names = list(req.paths)
    counts = split(total, [req.paths[p] for p in names])
    warnings: list[str] = []
    paths: list[PathPlan] = []
    for path, slots in zip(names, counts, strict=True):
        roots: GenPath | None = None
        if path == "persona":
            # Equal levels, the remainder to the lower hops: a level is never
            # larger than the one before, so every persona has a parent.
            per_hop = split(slots, [1.0] * (req.hops + 1))
            roots = "text" if req.corpus is not None else "structured"
            if roots == "structured":
                warnings.append(
                    "persona path without a corpus: its roots are made by the structured path, not from text"
                )
        else:
            per_hop = [slots]
        domains = dict(zip(req.domains, split(per_hop[0], [1.0] * len(req.domains)), strict=True))
        paths.append(
            PathPlan(
                path=path,
                slots=slots,
                per_hop=per_hop,
                roots=roots,
                domains=domains,
                model_calls=slots,
                max_tokens=req.max_tokens,
                token_budget=slots * req.max_tokens,
            )
        )
    if "text" in req.paths and req.corpus is None:
        warnings.append("the text path needs a corpus; none was named")
    others = sorted(set(req.languages) - MODEL_LANGUAGES)
    if others:
        warnings.append(
            f"the default model (SmolLM2) writes English only: personas in {', '.join(others)} "
            "will be poor or in English"
        )
    judge = _judge_sample(req, total)
    calls = total + judge
    if overshoot:
        warnings.append(
            f"{overshoot} extra slots for what dedup and failures remove; if more than that go, "
            "the run keeps fewer than count and says so"
        )
    return Plan(
        requirements=req,
        overshoot=overshoot,
        total_slots=total,
        paths=paths,
        languages=dict(zip(req.languages, split(total, [1.0] * len(req.languages)), strict=True)),
        qa=QaSettings(
            minhash_permutations=MINHASH_PERMUTATIONS,
            minhash_threshold=MINHASH_THRESHOLD,
            embedding_threshold=EMBEDDING_THRESHOLD,
            judge=judge > 0,
            judge_sample=judge,
        ),
        model_calls=calls,
        embed_calls=math.ceil(total / MAX_EMBED_BATCH),
        token_budget=sum(p.token_budget for p in paths),
        providers=providers,
        rate=per_provider,
        estimated_seconds=round(calls / (per_provider * providers), 1),
        warnings=warnings,
    )


def _blocks(labels: Sequence[str | None], counts: Sequence[int]) -> list[str | None]:
    out: list[str | None] = []
    for label, n in zip(labels, counts, strict=True):
        out.extend([label] * n)
    return out


class _Passages:
    """Passages per domain in a seeded order, dealt out in turn (and again, once all are used)."""

    def __init__(self, corpus: Sequence[Passage], seed: int) -> None:
        self._corpus = corpus
        self._seed = seed
        self._orders: dict[str | None, list[Passage]] = {}
        self._next: dict[str | None, int] = {}

    def take(self, domain: str | None) -> Passage:
        order = self._orders.get(domain)
        if order is None:
            pool = [p for p in self._corpus if domain is None or p.domain == domain]
            if not pool:
                where = f" in domain {domain!r}" if domain is not None else ""
                raise ValueError(f"the corpus has no passage{where} for the text path")
            random.Random(derive_seed(self._seed, f"passages:{domain}", 0)).shuffle(pool)
            order = self._orders[domain] = pool
        k = self._next.get(domain, 0)
        self._next[domain] = k + 1
        return order[k % len(order)]


def schedule(plan: Plan, corpus: Sequence[Passage]) -> list[Slot]:
    """The run's slots, index order, hop 0 of every path first, then each further hop.

    Deterministic in ``plan`` and ``corpus`` (its order included). A text
    slot takes the next passage of its domain in a seeded permutation; with
    fewer passages than slots they are dealt again (with other seeds; dedup
    catches copies). A persona slot at hop h takes the hop h-1 slots of its
    path as parents in turn, and its root's domain.
    """
    req = plan.requirements
    passages = _Passages(corpus, req.seed)
    targets = resolved(req.targets)  # once, not per slot: the built-in lists are large
    languages = _blocks(list(plan.languages), list(plan.languages.values()))
    # Languages dealt by a seeded shuffle, so no path gets only one of them.
    random.Random(derive_seed(req.seed, "languages", 0)).shuffle(languages)
    slots: list[Slot] = []

    def add(path: GenPath, part: GenPath, hop: int, domain: str | None, parent: int | None = None) -> Slot:
        index = len(slots)
        passage = passages.take(domain) if path == "text" else None
        attributes = None
        if path == "structured":
            attributes = sample(targets, random.Random(derive_seed(req.seed, "attributes", index)))
        if passage is not None and domain is None:
            domain = passage.domain
        language = languages[index] or "en"
        slot = Slot(
            index=index,
            path=path,
            part=part,
            hop=hop,
            seed=derive_seed(req.seed, "model", index),
            domain=domain,
            language=language,
            passage=passage,
            parent=parent,
            attributes=attributes.model_copy(update={"language": language}) if attributes else None,
        )
        slots.append(slot)
        return slot

    levels: dict[int, list[Slot]] = {}  # the persona path's slots at each hop
    for part in plan.paths:
        domains = _blocks(list(part.domains), list(part.domains.values())) or [None] * part.per_hop[0]
        maker: GenPath = part.roots or part.path
        made = [add(maker, part.path, 0, domain) for domain in domains]
        if part.path == "persona":
            levels[0] = made
    persona = next((p for p in plan.paths if p.path == "persona"), None)
    if persona is not None:
        for hop in range(1, len(persona.per_hop)):
            parents = levels[hop - 1]
            levels[hop] = []
            for k in range(persona.per_hop[hop]):
                parent = parents[k % len(parents)]  # a level is never larger than the one before
                levels[hop].append(add("persona", "persona", hop, parent.domain, parent.index))
    return slots

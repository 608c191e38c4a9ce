"""The architect: the plan's arithmetic, and slots that are the same every time and in hop order."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from daemon.hub.architect import DEFAULT_RATE, Slot, derive_seed, make_plan, schedule, split
from daemon.hub.corpus import Passage
from protocol.commands.hub_plan import GEN_PATHS, MINHASH_PERMUTATIONS, Requirements
from protocol.hub_persona import AttributeTargets, Weighted

CORPUS = [Passage(f"p{i}", f"passage number {i}", "cooking" if i % 3 else "finance") for i in range(7)]


@given(
    count=st.integers(1, 5_000),
    weights=st.dictionaries(st.sampled_from(GEN_PATHS), st.floats(0.01, 100.0), min_size=1),
    hops=st.integers(1, 8),
    domains=st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, max_size=4),
    overshoot=st.floats(0.0, 1.0),
)
@settings(max_examples=200, deadline=None)
def test_plan_counts_add_up(
    count: int, weights: dict[str, float], hops: int, domains: list[str], overshoot: float
) -> None:
    """Paths sum to count + overshoot; hops sum to the path; hop levels never grow; domains split hop 0."""
    req = Requirements.model_validate(
        {"count": count, "paths": weights, "hops": hops, "domains": domains, "overshoot": overshoot}
    )
    plan = make_plan(req)
    assert plan.overshoot == math.ceil(count * overshoot)
    assert plan.total_slots == count + plan.overshoot == sum(p.slots for p in plan.paths)
    assert [p.path for p in plan.paths] == list(weights)
    for part in plan.paths:
        assert sum(part.per_hop) == part.slots
        assert len(part.per_hop) == (hops + 1 if part.path == "persona" else 1)
        assert all(a >= b for a, b in zip(part.per_hop, part.per_hop[1:], strict=False))
        assert max(part.per_hop) - min(part.per_hop) <= 1
        assert list(part.domains) == domains
        assert sum(part.domains.values()) == (part.per_hop[0] if domains else 0)
        assert part.token_budget == part.model_calls * req.max_tokens == part.slots * req.max_tokens
    assert sum(plan.languages.values()) == plan.total_slots


def test_split_is_largest_remainder() -> None:
    assert split(10, [1.0, 1.0, 1.0]) == [4, 3, 3]
    assert split(7, [3.0, 1.0]) == [5, 2]  # 5.25, 1.75: the larger remainder gets the extra
    assert split(0, [1.0, 2.0]) == [0, 0]
    assert split(5, []) == []


def test_plan_qa_judge_sample_and_time_estimate() -> None:
    base = {"count": 1000, "overshoot": 0.0}
    fast = make_plan(Requirements.model_validate({**base, "quality": "fast"}))
    standard = make_plan(Requirements.model_validate({**base, "quality": "standard"}))
    thorough = make_plan(Requirements.model_validate({**base, "quality": "thorough"}), providers=4, rate=2.0)
    assert (fast.qa.judge, fast.qa.judge_sample) == (False, 0)
    assert standard.qa.judge_sample == 50
    assert thorough.qa.judge_sample == 100
    assert standard.qa.minhash_permutations == MINHASH_PERMUTATIONS
    assert (standard.qa.minhash_threshold, standard.qa.embedding_threshold) == (0.9, 0.9)
    assert standard.model_calls == 1050
    assert standard.estimated_seconds == round(1050 / DEFAULT_RATE, 1)
    assert thorough.estimated_seconds == round(1100 / 8.0, 1)
    assert standard.embed_calls == 16  # 1000 texts, 64 a call
    small = make_plan(Requirements(count=10, quality="standard", overshoot=0.0))
    assert small.qa.judge_sample == 10  # never more than there are


def test_plan_warns_what_it_cannot_promise() -> None:
    plan = make_plan(Requirements(count=10, paths={"text": 1.0, "persona": 1.0}, languages=["en", "de"]))
    joined = " ".join(plan.warnings)
    assert "writes English only" in joined
    assert "de" in joined
    assert "text path needs a corpus" in joined
    assert next(p for p in plan.paths if p.path == "persona").roots == "structured"
    with_corpus = make_plan(Requirements(count=10, paths={"persona": 1.0}, corpus="c.jsonl", overshoot=0.0))
    assert with_corpus.paths[0].roots == "text"
    assert with_corpus.warnings == []


def test_requirements_refuse_what_cannot_be_planned() -> None:
    with pytest.raises(ValidationError):
        Requirements(count=0)
    with pytest.raises(ValidationError):
        Requirements(count=10, hops=9)
    with pytest.raises(ValidationError):
        Requirements.model_validate({"count": 10, "paths": {}})
    with pytest.raises(ValidationError):
        Requirements.model_validate({"count": 10, "paths": {"import": 1.0}})
    with pytest.raises(ValidationError):
        Requirements(count=10, domains=["a", "a"])
    with pytest.raises(ValueError, match="providers"):
        make_plan(Requirements(count=10), providers=0)


def mixed_plan(seed: int = 5):  # type: ignore[no-untyped-def]
    return make_plan(
        Requirements(
            count=40,
            paths={"text": 1.0, "persona": 2.0, "structured": 1.0},
            domains=["cooking", "finance"],
            languages=["en", "fr"],
            hops=3,
            seed=seed,
            corpus="corpus.jsonl",
        )
    )


def test_schedule_is_the_same_every_time_and_follows_the_seed() -> None:
    plan = mixed_plan()
    first = schedule(plan, CORPUS)
    assert first == schedule(plan, list(CORPUS))
    assert len(first) == plan.total_slots
    assert [s.index for s in first] == list(range(len(first)))
    other = schedule(mixed_plan(seed=6), CORPUS)
    assert [s.seed for s in other] != [s.seed for s in first]
    assert len({s.seed for s in first}) == len(first)
    assert first[3].seed == derive_seed(5, "model", 3)


def test_schedule_orders_hops_and_points_persona_slots_at_earlier_parents() -> None:
    plan = mixed_plan()
    slots = schedule(plan, CORPUS)
    persona = next(p for p in plan.paths if p.path == "persona")
    by_hop: dict[int, list[Slot]] = {}
    for slot in slots:
        if slot.part == "persona":
            by_hop.setdefault(slot.hop, []).append(slot)
    assert [len(by_hop[h]) for h in sorted(by_hop)] == persona.per_hop
    for hop in range(1, len(persona.per_hop)):
        assert max(s.index for s in by_hop[hop - 1]) < min(s.index for s in by_hop[hop])
        for slot in by_hop[hop]:
            assert slot.path == "persona"
            assert slot.parent is not None
            parent = slots[slot.parent]
            assert parent.hop == hop - 1
            assert parent.part == "persona"
            assert slot.domain == parent.domain
    assert all(s.path == "text" and s.passage is not None for s in by_hop[0])  # roots from the corpus
    for slot in slots:
        assert slot.hop == 0 or slot.part == "persona"
    assert {s.language for s in slots} == {"en", "fr"}


def test_text_slots_deal_passages_of_their_domain_and_reuse_them_when_short() -> None:
    plan = make_plan(
        Requirements(count=20, paths={"text": 1.0}, domains=["cooking", "finance"], overshoot=0.0)
    )
    slots = schedule(plan, CORPUS)
    for slot in slots:
        assert slot.passage is not None
        assert slot.passage.domain == slot.domain
    finance = [s.passage.id for s in slots if s.domain == "finance" and s.passage]
    pool = {p.id for p in CORPUS if p.domain == "finance"}  # 3 passages for 10 slots
    assert set(finance) == pool
    assert max(finance.count(p) for p in pool) - min(finance.count(p) for p in pool) <= 1
    assert len({s.seed for s in slots}) == len(slots)  # a reused passage is asked again with another seed


def test_text_slots_without_a_matching_passage_are_refused() -> None:
    plan = make_plan(Requirements(count=4, paths={"text": 1.0}, domains=["law"]))
    with pytest.raises(ValueError, match="no passage in domain 'law'"):
        schedule(plan, CORPUS)
    with pytest.raises(ValueError, match="no passage"):
        schedule(make_plan(Requirements(count=4, paths={"text": 1.0})), [])


def test_structured_slots_carry_sampled_attributes_from_the_targets() -> None:
    targets = AttributeTargets(occupation=[Weighted(value="midwife", weight=1.0)])
    plan = make_plan(Requirements(count=6, targets=targets, languages=["es"]))
    slots = schedule(plan, [])
    assert all(s.path == "structured" and s.attributes is not None for s in slots)
    assert {s.attributes.occupation for s in slots if s.attributes} == {"midwife"}
    assert {s.attributes.language for s in slots if s.attributes} == {"es"}
    assert len({s.attributes.model_dump_json() for s in slots if s.attributes}) == len(slots)

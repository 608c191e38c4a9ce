"""Attribute sampling: the built-in lists, shares that match the targets, per-occupation genders."""

from __future__ import annotations

import random
import statistics
from collections import Counter

from daemon.hub.attributes import INTERESTS, OCCUPATIONS, REGIONS, TRAIT_MEAN, TRAIT_SD, resolved, sample
from protocol.hub_persona import BIG_FIVE, AttributeTargets, Weighted

N = 20_000


def shares(values: list[str]) -> dict[str, float]:
    return {k: v / len(values) for k, v in Counter(values).items()}


def test_built_in_lists_are_broad_and_fill_only_what_is_empty() -> None:
    assert len(set(OCCUPATIONS)) >= 60
    assert len(set(REGIONS)) >= 60
    assert len(set(INTERESTS)) >= 80
    full = resolved(AttributeTargets())
    assert [w.value for w in full.occupation] == list(OCCUPATIONS)
    assert {w.weight for w in full.region} == {1.0}
    assert full.interests == list(INTERESTS)
    mine = AttributeTargets(occupation=[Weighted(value="nurse", weight=1.0)], interests=["chess"])
    kept = resolved(mine)
    assert [w.value for w in kept.occupation] == ["nurse"]
    assert kept.interests == ["chess"]
    assert len(kept.region) == len(REGIONS)


def test_samples_match_the_targets_shares() -> None:
    """Large seeded sample: every share within 0.015 of its target (several binomial sd at N=20,000)."""
    targets = AttributeTargets(
        age_min=20,
        age_max=40,
        gender=[Weighted(value="female", weight=3.0), Weighted(value="male", weight=1.0)],
        occupation=[Weighted(value="nurse", weight=1.0), Weighted(value="pilot", weight=4.0)],
        region=[Weighted(value="Lagos, Nigeria", weight=1.0), Weighted(value="Lima, Peru", weight=1.0)],
        interests=["chess", "jazz", "hiking", "baking"],
        interests_per_persona=3,
    )
    rng = random.Random(42)
    people = [sample(targets, rng) for _ in range(N)]
    occupation = shares([p.occupation or "" for p in people])
    assert abs(occupation["nurse"] - 0.2) < 0.015
    assert abs(occupation["pilot"] - 0.8) < 0.015
    gender = shares([p.gender or "" for p in people])
    assert abs(gender["female"] - 0.75) < 0.015
    assert set(gender) == {"female", "male"}
    assert abs(shares([p.region or "" for p in people])["Lima, Peru"] - 0.5) < 0.015
    ages = [p.age for p in people if p.age is not None]
    assert min(ages) == 20
    assert max(ages) == 40
    assert all(len(p.interests) == 3 == len(set(p.interests)) for p in people)
    interest = shares([i for p in people for i in p.interests])
    assert all(abs(s - 0.25) < 0.015 for s in interest.values())


def test_big_five_are_normal_around_the_middle_and_clipped() -> None:
    rng = random.Random(7)
    people = [sample(AttributeTargets(), rng) for _ in range(5_000)]
    for trait in BIG_FIVE:
        scores = [getattr(p.traits, trait) for p in people]
        assert abs(statistics.fmean(scores) - TRAIT_MEAN) < 1.0
        assert abs(statistics.pstdev(scores) - TRAIT_SD) < 1.0
        assert 0 <= min(scores)
        assert max(scores) <= 100


def test_occupation_gender_overrides_the_overall_shares_for_that_occupation() -> None:
    targets = AttributeTargets(
        gender=[Weighted(value="female", weight=9.0), Weighted(value="male", weight=1.0)],
        occupation=[Weighted(value="nurse", weight=1.0), Weighted(value="welder", weight=1.0)],
        occupation_gender={
            "nurse": [Weighted(value="male", weight=1.0), Weighted(value="female", weight=1.0)]
        },
    )
    rng = random.Random(3)
    people = [sample(targets, rng) for _ in range(N)]
    nurses = shares([p.gender or "" for p in people if p.occupation == "nurse"])
    welders = shares([p.gender or "" for p in people if p.occupation == "welder"])
    assert abs(nurses["male"] - 0.5) < 0.02
    assert abs(welders["female"] - 0.9) < 0.02


def test_same_random_state_gives_the_same_person() -> None:
    targets = AttributeTargets()
    assert sample(targets, random.Random(11)) == sample(targets, random.Random(11))
    assert sample(targets, random.Random(11)) != sample(targets, random.Random(12))

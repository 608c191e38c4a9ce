"""Authenticity ranks residue below specifics; diversity orders sets; a planted skew is flagged."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.hub.qa.authenticity import residue, score
from daemon.hub.qa.culture import balance, cultural, normalise_gender, stereotypes
from daemon.hub.qa.diversity import choose_k, coverage, diversity, kmeans, mean_pairwise_distance
from daemon.inference.embed import Embedder
from protocol.hub_persona import Attributes, AttributeTargets, HubPersona, Weighted

SPECIFIC = (
    "A 61-year-old nurse from Lyon who restores antique clocks on weekends and volunteers at the "
    "Saint-Jean hospice, where she has run the Tuesday choir since 2004."
)
GENERIC = "A person who is interested in various things and likes to help people with different activities."


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("Sure! Here is a persona: a nurse from Lyon who restores clocks on weekends.", "assistant chatter"),
        ("[NAME] is a nurse from Lyon who restores antique clocks on weekends.", "placeholder in brackets"),
        ("A {occupation} from Lyon who restores antique clocks on weekends.", "placeholder in braces"),
        ("As an AI, I cannot be a nurse from Lyon who restores clocks.", "assistant chatter"),
        ("Lorem ipsum dolor sit amet, a nurse from Lyon.", "lorem ipsum"),
        ("A nurse from Lyon who adjadjadjadjadjadj", "repeated fragment loop"),
        ('{"persona": "A nurse from Lyon who', "unfinished JSON"),
    ],
)
def test_template_residue_is_found_and_ranks_below_a_specific_persona(text: str, what: str) -> None:
    assert any(found.startswith(what) for found in residue(text)), residue(text)
    low = score(text)
    assert low.residue
    assert low.score < score(SPECIFIC).score
    assert any("template residue" in r for r in low.reasons)


def test_specific_persona_outscores_a_generic_one_and_says_why() -> None:
    specific, generic = score(SPECIFIC), score(GENERIC)
    assert not specific.residue
    assert not generic.residue
    assert specific.score > generic.score
    assert [] == list(specific.reasons)
    assert any(r.startswith("generic words") for r in generic.reasons)
    assert any(r.startswith("no named detail") for r in generic.reasons)
    assert [] == residue(SPECIFIC)


def test_mean_pairwise_distance_is_exact() -> None:
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((40, 8))
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cos = unit @ unit.T
    brute = 1 - (cos.sum() - np.trace(cos)) / (40 * 39)
    assert abs(brute - mean_pairwise_distance(rows)) < 1e-6


def test_kmeans_is_deterministic_and_finds_planted_groups() -> None:
    rng = np.random.default_rng(2)
    centres = np.eye(3, 6) * 10
    rows = np.vstack([c + rng.standard_normal((20, 6)) * 0.1 for c in centres])
    labels, _ = kmeans(rows, 3, seed=0)
    again, _ = kmeans(rows, 3, seed=0)
    assert labels.tolist() == again.tolist()
    assert 3 == len({tuple(labels[i * 20 : (i + 1) * 20]) for i in range(3)})
    assert all(len(set(labels[i * 20 : (i + 1) * 20].tolist())) == 1 for i in range(3))
    assert (2, 7, 50) == (choose_k(2), choose_k(100), choose_k(100_000))


def make(i: int, text: str, **attrs: object) -> HubPersona:
    return HubPersona(id=f"p-{i}", persona=text, path="structured", attributes=Attributes(**attrs))


async def test_varied_personas_are_more_diverse_than_near_identical_ones(hub_embedder: Embedder) -> None:
    same = [
        f"A nurse from Lyon who likes gardening and has {n} cats." for n in ("two", "three", "four", "five")
    ]
    varied = [
        "A nurse from Lyon who likes gardening.",
        "A retired railway engineer in Glasgow who collects timetables.",
        "A teenage skateboarder in Osaka who films stunts for friends.",
        "A maritime lawyer in Rotterdam negotiating salvage contracts.",
    ]
    reports = []
    for texts in (same, varied):
        vectors = np.asarray(await hub_embedder.embed(texts), dtype=np.float32)
        report, labels = diversity([make(i, t) for i, t in enumerate(texts)], vectors, None)
        assert len(texts) == len(labels)
        reports.append(report)
    assert reports[0].spread < reports[1].spread
    assert 2 == reports[1].clusters
    assert sum(reports[1].cluster_sizes) == 4


def test_coverage_counts_target_values_present() -> None:
    targets = AttributeTargets(
        age_min=20,
        age_max=49,
        occupation=[Weighted(value="Nurse", weight=1), Weighted(value="pilot", weight=1)],
    )
    people = [make(0, "x", occupation="nurse", gender="woman", age=25), make(1, "y", age=31)]
    got = coverage(people, targets)
    assert (0.5, ["pilot"]) == (got["occupation"].share, got["occupation"].missing)
    assert ["male", "non-binary"] == got["gender"].missing
    assert (2, 3) == (got["age_decade"].present, got["age_decade"].total)
    assert "region" not in got  # no region target declared


def nurses(female: int, male: int) -> list[HubPersona]:
    genders = ["female"] * female + ["male"] * male
    return [make(i, "A nurse.", occupation="nurse", gender=g) for i, g in enumerate(genders)]


FIFTY_FIFTY = AttributeTargets(gender=[Weighted(value="female", weight=1), Weighted(value="male", weight=1)])


def test_stereotype_flag_for_a_planted_skew_with_evidence() -> None:
    flags, tests = stereotypes(nurses(40, 0), FIFTY_FIFTY)
    assert 1 == len(flags)
    flag = flags[0]
    assert ("nurse", "gender") == (flag.occupation, flag.attribute)
    assert (40, 40, 20.0) == (
        flag.count if flag.value == "female" else 40 - flag.count,
        flag.n,
        flag.expected,
    )
    assert 0.5 == flag.expected_share
    assert flag.p_value < 1e-9
    assert tests >= 2


def test_no_stereotype_flag_for_a_balanced_set_or_a_declared_split() -> None:
    assert [] == stereotypes(nurses(21, 19), FIFTY_FIFTY)[0]
    # The same skew is no stereotype when the run declared it for the occupation.
    declared = FIFTY_FIFTY.model_copy(
        update={
            "occupation_gender": {
                "Nurse": [Weighted(value="female", weight=0.95), Weighted(value="male", weight=0.05)]
            }
        }
    )
    assert [] == stereotypes(nurses(39, 1), declared)[0]
    # Too few to say: below min_count.
    assert [] == stereotypes(nurses(10, 0), FIFTY_FIFTY, min_count=20)[0]


def test_balance_counts_unknowns_and_flags_off_target_shares() -> None:
    people = nurses(30, 0) + [make(100 + i, "A person.") for i in range(5)]
    rows = {b.attribute: b for b in balance(people, FIFTY_FIFTY)}
    gender = rows["gender"]
    assert (30, 5) == (gender.known, gender.unknown)
    assert 0.5 == gender.tvd
    assert {"female": True, "male": True} == {r.value: r.flagged for r in gender.rows}
    report = cultural(people, FIFTY_FIFTY)
    assert report.balance_flags >= 2
    assert "female" == normalise_gender("Woman")
    assert "non-binary" == normalise_gender("nonbinary")

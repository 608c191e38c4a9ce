"""Profile lineage: fork and merge rules on real Profile values (daemon/registry/lineage.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from daemon.registry.errors import InvalidLineage, RegistryError
from daemon.registry.lineage import (
    FORK_EDITABLE,
    apply_modifications,
    fork_profile,
    merge_profiles,
    merge_traits,
)
from protocol.profile import TRAITS, Communication, Lineage, PersonaStatus, Profile, StackEntry, Traits

NOW = 1_750_000_000.0
SHA_A = "a" * 64
SHA_B = "b" * 64


def make(pid: str, **over: Any) -> Profile:
    base: dict[str, Any] = {
        "id": pid,
        "name": pid.title(),
        "role": f"{pid} role",
        "description": f"about {pid}",
        "stack": [StackEntry(name=f"{pid}-base", sha256=SHA_A)],
        "lineage": Lineage(created_at=1.0, updated_at=2.0),
        "status": PersonaStatus.ACTIVE,
    }
    base.update(over)
    return Profile(**base)


# Chosen so each strategy gives a different answer on most traits.
P_TRAITS = Traits(
    focus=80,
    creativity=40,
    precision=50,
    humor=10,
    empathy=55,
    assertiveness=61,
    adaptability=0,
    collaboration=100,
)
S_TRAITS = Traits(
    focus=20,
    creativity=95,
    precision=51,
    humor=90,
    empathy=45,
    assertiveness=60,
    adaptability=100,
    collaboration=0,
)


# -- fork --------------------------------------------------------------------------------


def test_fork_copies_profile_applies_modifications_and_records_lineage() -> None:
    source = make("atlas", tags=["research"], traits=P_TRAITS, model="smollm2")
    fork, after = fork_profile(
        source,
        new_id="atlas-legal",
        new_role="legal researcher",
        modifications={
            "traits": {"precision": 90},
            "tags": ["research", "legal"],
            "communication": {"detail_level": "detailed"},
        },
        now=NOW,
    )
    assert fork.id == "atlas-legal"
    assert fork.role == "legal researcher"
    assert fork.traits.precision == 90
    # Traits not named keep the source's values (a partial change).
    assert fork.traits.model_dump() == {**P_TRAITS.model_dump(), "precision": 90}
    assert fork.communication.detail_level == "detailed"
    assert fork.communication.style == source.communication.style
    assert fork.tags == ["research", "legal"]
    assert (fork.name, fork.description, fork.model) == (source.name, source.description, "smollm2")
    # The stack is referenced as is: same names, same hashes.
    assert fork.stack == source.stack
    assert fork.status is PersonaStatus.DRAFT
    assert fork.lineage == Lineage(
        parent="atlas", forked_from="atlas", merged_from=[], created_at=NOW, updated_at=NOW
    )
    # The source: only its updated time moves.
    assert after.lineage.updated_at == NOW
    assert after.model_dump(exclude={"lineage"}) == source.model_dump(exclude={"lineage"})
    assert after.lineage.created_at == source.lineage.created_at
    # The input objects are not mutated.
    assert source.lineage.updated_at == 2.0


def test_fork_without_modifications_is_a_copy_with_new_identity() -> None:
    source = make("atlas", traits=P_TRAITS)
    fork, _ = fork_profile(source, new_id="atlas2", modifications={}, now=NOW)
    skip = {"id", "lineage", "status"}
    assert fork.model_dump(exclude=skip) == source.model_dump(exclude=skip)


@pytest.mark.parametrize(
    ("modifications", "field"),
    [
        ({"traits": {"humor": 101}}, "modifications.traits.humor"),
        ({"traits": {"humor": "high"}}, "modifications.traits.humor"),
        ({"traits": {"humor": True}}, "modifications.traits.humor"),
        ({"traits": {"wit": 50}}, "modifications.traits.wit"),
        ({"traits": 7}, "modifications.traits"),
        ({"id": "other"}, "modifications.id"),
        ({"lineage": {}}, "modifications.lineage"),
        ({"status": "active"}, "modifications.status"),
        ({"stack": []}, "modifications.stack"),
        ({"schema_version": 2}, "modifications.schema_version"),
        ({"name": ""}, "modifications.name"),
        ({"name": "x" * 101}, "modifications.name"),
        ({"tags": ["t"] * 33}, "modifications.tags"),
        ({"tags": "research"}, "modifications.tags"),
        ({"capabilities": ["Bad Cap"]}, "modifications.capabilities.0"),
        ({"communication": {"detail_level": "verbose"}}, "modifications.communication.detail_level"),
        ({"communication": {"tone": "x"}}, "modifications.communication.tone"),
        ({"role": None}, "modifications.role"),
        ({"description": object()}, "modifications"),
        ({1: "x"}, "modifications.1"),
    ],
)
def test_fork_refuses_bad_modifications_naming_the_field(modifications: dict[Any, Any], field: str) -> None:
    source = make("atlas")
    before = source.model_dump()
    with pytest.raises(InvalidLineage) as caught:
        fork_profile(source, new_id="atlas2", modifications=modifications, now=NOW)
    assert caught.value.field == field
    assert isinstance(caught.value, RegistryError)
    assert source.model_dump() == before


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"new_id": "atlas"}, "new_id"),
        ({"new_id": "Bad Id"}, "new_id"),
        ({"new_id": "../etc"}, "new_id"),
        ({"new_id": 5}, "new_id"),
        ({"now": math.nan}, "now"),
        ({"now": -1.0}, "now"),
        ({"now": "today"}, "now"),
        ({"modifications": ["role"]}, "modifications"),
        ({"new_role": "x", "modifications": {"role": "y"}}, "new_role"),
        ({"new_role": ""}, "modifications.role"),
    ],
)
def test_fork_refuses_bad_arguments(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"new_id": "atlas2", "modifications": {}, "now": NOW} | kwargs
    with pytest.raises(InvalidLineage) as caught:
        fork_profile(make("atlas"), **args)
    assert caught.value.field == field


def test_fork_refuses_a_source_that_is_not_a_profile() -> None:
    with pytest.raises(InvalidLineage) as caught:
        fork_profile({"id": "atlas"}, new_id="x", modifications={}, now=NOW)  # type: ignore[arg-type]
    assert caught.value.field == "source"


def test_apply_modifications_allows_exactly_the_documented_members() -> None:
    source = make("atlas")
    changed = apply_modifications(
        source,
        {
            "name": "N",
            "description": "D",
            "role": "R",
            "traits": {"focus": 1},
            "tags": ["a"],
            "communication": {"style": "formal"},
            "capabilities": ["chat", "browse"],
            "model": "m",
        },
    )
    assert set(FORK_EDITABLE) == {
        "name",
        "description",
        "role",
        "traits",
        "tags",
        "communication",
        "capabilities",
        "model",
    }
    assert (changed.name, changed.description, changed.role, changed.model) == ("N", "D", "R", "m")
    assert changed.traits.focus == 1
    assert changed.communication.style == "formal"
    assert changed.capabilities == ["chat", "browse"]


# -- merge -------------------------------------------------------------------------------


def test_average_is_the_mean_rounded_half_up() -> None:
    got = merge_traits(P_TRAITS.model_dump(), S_TRAITS.model_dump(), "average")
    assert got == {
        "focus": 50,
        "creativity": 68,  # 67.5 rounds up
        "precision": 51,  # 50.5 rounds up
        "humor": 50,
        "empathy": 50,
        "assertiveness": 61,  # 60.5 rounds up
        "adaptability": 50,
        "collaboration": 50,
    }


def test_selective_takes_the_value_further_from_neutral_ties_to_primary() -> None:
    got = merge_traits(P_TRAITS.model_dump(), S_TRAITS.model_dump(), "selective")
    assert got == {
        "focus": 80,  # |30| vs |30|: tie, primary
        "creativity": 95,  # 45 beats 10
        "precision": 51,  # 1 beats 0
        "humor": 10,  # |40| vs |40|: tie, primary
        "empathy": 55,  # 5 vs 5: tie, primary
        "assertiveness": 61,  # 11 beats 10
        "adaptability": 0,  # 50 vs 50: tie, primary
        "collaboration": 100,  # tie, primary
    }


def test_union_takes_the_higher_value() -> None:
    got = merge_traits(P_TRAITS.model_dump(), S_TRAITS.model_dump(), "union")
    assert got == {t: max(P_TRAITS.model_dump()[t], S_TRAITS.model_dump()[t]) for t in TRAITS}
    assert got["adaptability"] == 100
    assert got["collaboration"] == 100


def test_merge_builds_the_documented_profile_and_retires_both_sources() -> None:
    primary = make(
        "atlas",
        traits=P_TRAITS,
        tags=["research", "law"],
        capabilities=["chat", "browse"],
        communication=Communication(style="formal", detail_level="detailed", notes="cite sources"),
        model="smollm2",
    )
    secondary = make(
        "muse",
        traits=S_TRAITS,
        tags=["law", "poetry"],
        capabilities=["chat", "draw"],
        communication=Communication(style="casual", detail_level="brief", notes="use metaphors"),
        stack=[StackEntry(name="muse-style", sha256=SHA_B)],
    )
    merged, p_after, s_after = merge_profiles(
        primary,
        secondary,
        strategy="selective",
        new_id="atlas-muse",
        name="Atlas Muse",
        description="both",
        now=NOW,
    )
    assert (merged.id, merged.name, merged.description) == ("atlas-muse", "Atlas Muse", "both")
    assert merged.role == primary.role
    assert merged.model == "smollm2"
    assert merged.traits.model_dump() == merge_traits(
        P_TRAITS.model_dump(), S_TRAITS.model_dump(), "selective"
    )
    assert merged.tags == ["research", "law", "poetry"]
    assert merged.capabilities == ["chat", "browse", "draw"]
    assert merged.communication == Communication(
        style="formal", detail_level="detailed", notes="cite sources\nuse metaphors"
    )
    assert merged.stack == []
    assert merged.status is PersonaStatus.DRAFT
    assert merged.lineage == Lineage(
        parent="atlas", forked_from=None, merged_from=["atlas", "muse"], created_at=NOW, updated_at=NOW
    )
    for before, after in ((primary, p_after), (secondary, s_after)):
        assert after.status is PersonaStatus.MERGED
        assert after.lineage.updated_at == NOW
        assert after.model_dump(exclude={"status", "lineage"}) == before.model_dump(
            exclude={"status", "lineage"}
        )


@pytest.mark.parametrize("strategy", ["average", "union"])
def test_each_strategy_lands_in_the_merged_profile(strategy: str) -> None:
    merged, _, _ = merge_profiles(
        make("a", traits=P_TRAITS),
        make("b", traits=S_TRAITS),
        strategy=strategy,
        new_id="c",
        name="C",
        description="",
        now=NOW,
    )
    assert merged.traits.model_dump() == merge_traits(P_TRAITS.model_dump(), S_TRAITS.model_dump(), strategy)


def test_merge_caps_unions_and_notes_at_the_profile_limits() -> None:
    primary = make("a", tags=[f"p{i}" for i in range(30)], communication=Communication(notes="x" * 1990))
    secondary = make("b", tags=[f"s{i}" for i in range(30)], communication=Communication(notes="y" * 500))
    merged, _, _ = merge_profiles(
        primary, secondary, strategy="union", new_id="c", name="C", description="", now=NOW
    )
    assert merged.tags == [f"p{i}" for i in range(30)] + ["s0", "s1"]
    assert len(merged.communication.notes) == 2000
    assert merged.communication.notes.startswith("x" * 1990 + "\n")


def test_merge_does_not_repeat_identical_notes() -> None:
    same = Communication(notes="be brief")
    merged, _, _ = merge_profiles(
        make("a", communication=same),
        make("b", communication=same),
        strategy="average",
        new_id="c",
        name="C",
        description="",
        now=NOW,
    )
    assert merged.communication.notes == "be brief"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"strategy": "median"}, "strategy"),
        ({"strategy": None}, "strategy"),
        ({"new_id": "a"}, "new_id"),
        ({"new_id": "b"}, "new_id"),
        ({"new_id": "C!"}, "new_id"),
        ({"name": ""}, "name"),
        ({"name": "n" * 101}, "name"),
        ({"name": 3}, "name"),
        ({"description": "d" * 4001}, "description"),
        ({"now": math.inf}, "now"),
    ],
)
def test_merge_refuses_bad_arguments(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {
        "strategy": "average",
        "new_id": "c",
        "name": "C",
        "description": "",
        "now": NOW,
    } | kwargs
    with pytest.raises(InvalidLineage) as caught:
        merge_profiles(make("a"), make("b"), **args)
    assert caught.value.field == field


def test_merge_refuses_a_persona_with_itself() -> None:
    with pytest.raises(InvalidLineage) as caught:
        merge_profiles(make("a"), make("a"), strategy="union", new_id="c", name="C", description="", now=NOW)
    assert caught.value.field == "secondary"

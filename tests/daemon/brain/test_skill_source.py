"""v7: skills.source, where an acquired skill came from; a v6 file keeps its skills, with no source."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.brain import Brain, InvalidInput
from daemon.brain.migrations import LATEST

from .test_brain_migrations import build, raw, seed_v6

SOURCE = {
    "via": "mesh",
    "skill_id": "ab" * 32,
    "publisher": "cd" * 32,
    "node": "mesh:main",
    "seeders": {"mesh:alpha": 3, "mesh:beta": 1},
    "acquired_at": 1706745600.0,
}


async def test_a_v6_file_keeps_its_skills_with_a_null_source(db_path: Path, key: bytes) -> None:
    db = build(db_path, key, 6)
    seed_v6(db)
    assert 6 == db.execute("PRAGMA user_version").fetchone()[0]
    db.close()

    async with await Brain.open(db_path, key) as brain:
        assert LATEST == brain.schema_version
        (skill,) = await brain.skills_list()
        assert ("legal.patent", "abc123", "patents", None) == (
            skill.skill_id,
            skill.lora_hash,
            skill.description,
            skill.source,
        )
        assert 2024 == skill.acquired_at.year
        # The old row takes a source once it is acquired over the mesh.
        updated = await brain.skill_upsert("legal.patent", lora_hash="ef" * 32, source=SOURCE)
        assert SOURCE == updated.source

    db = raw(db_path, key)
    assert "ok" == db.execute("PRAGMA integrity_check").fetchone()[0]
    # The column takes JSON and refuses anything else.
    with pytest.raises(Exception, match="CHECK"):
        db.execute("UPDATE skills SET source = 'not json'")
    db.close()


async def test_source_is_kept_when_an_update_gives_none(brain: Brain) -> None:
    first = await brain.skill_upsert("cooking", lora_hash="aa" * 32, description="recipes", source=SOURCE)
    assert SOURCE == first.source
    again = await brain.skill_upsert("cooking", description="recipes, again")
    assert (SOURCE, "recipes, again") == (again.source, again.description)
    plain = await brain.skill_upsert("mine")
    assert plain.source is None
    listed = {s.skill_id: s.source for s in await brain.skills_list()}
    assert {"cooking": SOURCE, "mine": None} == listed


async def test_a_source_must_be_a_json_object(brain: Brain) -> None:
    with pytest.raises(InvalidInput, match="source"):
        await brain.skill_upsert("cooking", source=["not", "an", "object"])  # type: ignore[arg-type]


async def test_source_goes_with_copies_merges_exports_and_imports(tmp_path: Path, key: bytes) -> None:
    """A fork, a merge and a bundle's brain export keep where a skill came from; an export
    from before v6/v7 (no evolution detail, no skill source) still imports, with nulls."""
    import json

    from daemon.brain.lineage import copy_brain, merge_brains
    from daemon.registry.transfer_brain import brain_rows

    first, second = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    async with await Brain.open(first, key) as brain:
        await brain.skill_upsert("legal.patent", lora_hash="aa" * 32, source=SOURCE)
        await brain.skill_record_use("legal.patent", 0.4)
    async with await Brain.open(second, key) as brain:
        # The same skill, better rated, from another publisher: the merge keeps this one whole.
        other = {**SOURCE, "publisher": "ef" * 32}
        await brain.skill_upsert("legal.patent", lora_hash="bb" * 32, source=other)
        await brain.skill_record_use("legal.patent", 0.9)

    copy_brain(first, key, tmp_path / "fork.sqlite", key)
    merge_brains(first, key, second, key, tmp_path / "merged.sqlite", key)
    async with await Brain.open(tmp_path / "fork.sqlite", key) as brain:
        (skill,) = await brain.skills_list()
        assert SOURCE == skill.source
    async with await Brain.open(tmp_path / "merged.sqlite", key) as brain:
        (skill,) = await brain.skills_list()
        assert ("bb" * 32, other) == (skill.lora_hash, skill.source)
        await brain.export(tmp_path / "brain.json")

    doc = json.loads((tmp_path / "brain.json").read_text("utf-8"))
    assert other == doc["tables"]["skills"][0]["source"]
    assert other == json.loads(brain_rows(doc)["skills"][0][-1])

    # An older document: the columns added since are simply absent.
    for row in doc["tables"]["skills"]:
        del row["source"]
    for row in doc["tables"]["evolution_history"]:
        row.pop("detail", None)
    (row,) = brain_rows(doc)["skills"]
    assert row[-1] is None
    # A member that was never part of the format is still refused.
    doc["tables"]["skills"][0]["surprise"] = 1
    with pytest.raises(Exception, match="does not have the columns"):
        brain_rows(doc)

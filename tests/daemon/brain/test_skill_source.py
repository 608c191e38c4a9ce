"""v7: skills.source, where an acquired skill came from; a v6 file keeps its skills, with no source."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.brain import Brain, InvalidInput

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
        assert 7 == brain.schema_version
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

"""The right to be forgotten: erased text is in no page of the file, free or used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.brain import Brain, InvalidInput

from .conftest import wal_size
from .sqlcipher_pages import plaintext_of_database, plaintext_of_wal

ALICE = [f"alice told me her secret number is {n} and her cat is named whiskerton" for n in range(40)]


def plaintext(path: Path, key: bytes) -> bytes:
    return plaintext_of_database(path, key) + plaintext_of_wal(Path(f"{path}-wal"), key)


async def fill(brain: Brain) -> None:
    for text in ALICE:
        await brain.remember(text, subject="Alice")
    await brain.log_interaction(with_persona="persona:alice", outcome="whiskerton purrs", subject="alice")
    await brain.emotions_record("fondness", intensity=0.6, trigger="whiskerton", subject="ALICE")
    for n in range(40):
        await brain.remember(f"bob likes trains, model number {n}", subject="bob")


async def test_erase_subject_leaves_no_trace_in_the_file(db_path: Path, key: bytes) -> None:
    """After erase(subject), no decrypted page of the database or WAL holds the subject's text."""
    async with await Brain.open(db_path, key) as brain:
        await fill(brain)
        # The check can see the text before erasing (so its silence after means something).
        assert b"whiskerton" in plaintext(db_path, key)
        summary = await brain.erase(subject="Alice", confirm="Alice")
        assert {"memories": 40, "interactions": 1, "emotions": 1} == summary.removed
        assert "alice" == summary.subject
        assert 0 == wal_size(db_path)
        pages = plaintext(db_path, key)
        assert b"whiskerton" not in pages
        assert b"secret number" not in pages
        assert b"bob likes trains" in pages
        assert [] == await brain.recall("whiskerton secret")
        assert 10 == len(await brain.recall("trains"))
        stats = await brain.stats()
        assert 40 == stats.counts["memories"]
    assert b"whiskerton" not in plaintext(db_path, key)


async def test_erase_everything(db_path: Path, key: bytes) -> None:
    """erase(everything=True) empties every table and scrubs the file."""
    async with await Brain.open(db_path, key) as brain:
        await fill(brain)
        await brain.goals_set("adopt whiskerton")
        await brain.skill_upsert("cats", description="whiskerton care")

        def work_and_knowledge(db: Any) -> None:
            db.execute(
                "INSERT INTO performance_records (session_id, task, score, success, duration_s, "
                "user_feedback, recorded_at) VALUES ('s', 'groom', 90, 1, 60, 'whiskerton purred', 1)"
            )
            db.execute(
                "INSERT INTO knowledge (content, created_at, updated_at) "
                "VALUES ('whiskerton sheds in spring', 1, 1)"
            )

        await brain.write(work_and_knowledge)
        summary = await brain.erase(everything=True, confirm="erase everything")
        assert summary.subject is None
        assert 80 == summary.removed["memories"]
        assert (1, 1) == (summary.removed["performance_records"], summary.removed["knowledge"])
        assert all(0 == n for n in (await brain.stats()).counts.values())
        assert summary.bytes_after < summary.bytes_before
        pages = plaintext(db_path, key)
        assert b"whiskerton" not in pages
        assert b"trains" not in pages
        # The brain still works afterwards.
        assert await brain.remember("a fresh start") > 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"subject": "alice", "confirm": "bob"}, "confirm"),
        ({"subject": "alice", "confirm": "ALICE"}, "confirm"),
        ({"everything": True, "confirm": "yes"}, "confirm"),
        ({"subject": "alice", "everything": True, "confirm": "alice"}, "subject"),
        ({"confirm": "erase everything"}, "subject"),
    ],
)
async def test_erase_needs_exact_confirmation(brain: Brain, kwargs: dict[str, object], field: str) -> None:
    """Without a matching confirm (or with both/neither targets) nothing is erased."""
    await brain.remember("keep me", subject="alice")
    with pytest.raises(InvalidInput) as caught:
        await brain.erase(**kwargs)  # type: ignore[arg-type]
    assert field == caught.value.field
    assert 1 == (await brain.stats()).counts["memories"]

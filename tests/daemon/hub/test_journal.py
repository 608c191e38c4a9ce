"""The run journal: what is on disk is what counts, a torn last line is redone, a damaged one refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.hub.journal import JOURNAL_FILE, Journal, JournalError
from protocol.hub_persona import HubPersona
from tests.conftest import REPO

PLAN = {"requirements": {"count": 3, "seed": 7}, "corpus": "abc"}


def persona(index: int) -> HubPersona:
    return HubPersona(id=f"r-{index}", persona=f"A beekeeper number {index}.", path="structured")


async def test_what_was_recorded_is_there_after_reopening(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, PLAN)
    await journal.record(0, persona(0))
    await journal.fail(2, "cut short", 3)
    journal.close()

    again = Journal.open(tmp_path, PLAN)
    assert again.personas == {0: persona(0)}
    assert again.failures[2].reason == "cut short"
    assert again.failures[2].attempts == 3
    assert again.done(0)
    assert not again.done(1)
    assert len(again) == 2
    with pytest.raises(JournalError, match="slot 0 is in the journal already"):
        await again.record(0, persona(0))
    again.close()


async def test_a_line_cut_short_by_a_crash_is_dropped_and_its_slot_redone(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, PLAN)
    await journal.record(0, persona(0))
    journal.close()
    whole = (tmp_path / JOURNAL_FILE).read_bytes()
    line = json.dumps({"slot": 1, "persona": persona(1).model_dump()}).encode()
    (tmp_path / JOURNAL_FILE).write_bytes(whole + line[: len(line) // 2])

    again = Journal.open(tmp_path, PLAN)
    assert set(again.personas) == {0}
    assert (tmp_path / JOURNAL_FILE).read_bytes() == whole  # the torn tail is gone from the file too
    await again.record(1, persona(1))
    again.close()
    assert set(Journal.open(tmp_path, PLAN).personas) == {0, 1}


async def test_a_damaged_line_before_the_end_is_refused_not_skipped(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, PLAN)
    await journal.record(0, persona(0))
    await journal.record(1, persona(1))
    journal.close()
    path = tmp_path / JOURNAL_FILE
    _, second, _ = path.read_bytes().split(b"\n")
    path.write_bytes(b"{not json\n" + second + b"\n")
    with pytest.raises(JournalError, match=r"journal.jsonl:1 is damaged"):
        Journal.open(tmp_path, PLAN)


def test_a_folder_holding_another_runs_plan_is_refused(tmp_path: Path) -> None:
    Journal.open(tmp_path, PLAN).close()
    other = {**PLAN, "requirements": {"count": 3, "seed": 8}}
    with pytest.raises(JournalError, match="holds a run with another plan"):
        Journal.open(tmp_path, other)


_FULL_DISK_SCRIPT = """
import asyncio, sys
from pathlib import Path
from daemon.hub.journal import Journal, JournalError
from protocol.hub_persona import HubPersona

async def main():
    folder = Path(sys.argv[1]) / "run"
    journal = Journal.open(folder, {"plan": 1})
    written = 0
    try:
        for i in range(100000):
            await journal.record(i, HubPersona(id=f"r-{i}", persona="x" * 1500, path="structured"))
            written += 1
    except JournalError as exc:
        print("refused:", "No space left on device" in str(exc))
    journal.close()
    (Path(sys.argv[1]) / "filler").unlink()  # room again
    again = Journal.open(folder, {"plan": 1})
    print(len(again.personas) == written, sorted(again.personas) == list(range(written)))
    await again.record(written, HubPersona(id="r-last", persona="y", path="structured"))
    again.close()
    print(len(Journal.open(folder, {"plan": 1}).personas) == written + 1)

asyncio.run(main())
"""


def test_a_full_disk_refuses_the_append_clearly_and_loses_nothing_written(tmp_path: Path) -> None:
    """On a real 64 KiB tmpfs: the append that does not fit is refused, every earlier one reads back,
    and once there is room again the journal goes on."""
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "full.py"
    script.write_text(_FULL_DISK_SCRIPT)
    shell = (
        f'mount -t tmpfs -o size=64k tmpfs "{mount}" && '
        f'dd if=/dev/zero of="{mount}/filler" bs=1k count=8 2>/dev/null && '
        f'exec "{sys.executable}" "{script}" "{mount}"'
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused:", "True", "True", "True", "True"]

"""kill -9 during a stream of remember calls: every acknowledged memory survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon.brain import Brain, WrongKey, brain_path, load_or_create_key
from tests.conftest import WAIT

from .conftest import data_digests, raw_bytes, wal_size

REPO = Path(__file__).resolve().parents[3]
LOOP = Path(__file__).with_name("remember_loop.py")
ACKS_BEFORE_KILL = 400


def run_and_kill(state_dir: Path, workers: int) -> dict[int, str]:
    """Run remember_loop.py, SIGKILL it after some acks; return id -> content acked."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, str(LOOP), str(state_dir), "p1", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
        text=True,
    )
    acked: dict[int, str] = {}
    assert child.stdout is not None
    deadline = time.monotonic() + WAIT
    try:
        assert child.stdout.readline() == "ready\n"
        while len(acked) < ACKS_BEFORE_KILL and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            memory_id, content = line.rstrip("\n").split(" ", 1)
            acked[int(memory_id)] = content
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
        # Acks already in the pipe were printed before the kill: they count.
        for line in child.stdout.read().splitlines(keepends=True):
            if line.endswith("\n"):
                memory_id, content = line.rstrip("\n").split(" ", 1)
                acked[int(memory_id)] = content
        child.stdout.close()
    assert len(acked) >= ACKS_BEFORE_KILL, "the child acknowledged too few memories"
    return acked


async def test_every_acknowledged_memory_survives_sigkill(tmp_path: Path) -> None:
    """After SIGKILL mid-stream, every acked id is there with its content, none twice."""
    state_dir = tmp_path / "state"
    acked = run_and_kill(state_dir, workers=8)
    path = brain_path(state_dir, "p1")
    key = load_or_create_key(state_dir, "p1")
    async with await Brain.open(path, key) as brain:
        ids = sorted(acked)
        found: dict[int, str] = {}
        for start in range(0, len(ids), 64):
            chunk = ids[start : start + 64]
            marks = ", ".join("?" * len(chunk))
            result = await brain.query(f"SELECT id, content FROM memories WHERE id IN ({marks})", chunk)
            found.update({row[0]: row[1] for row in result.rows})
        assert acked == found
        totals = await brain.query("SELECT count(*), count(DISTINCT content) FROM memories")
        total, distinct = totals.rows[0]
        assert total == distinct
        assert total >= len(acked)


async def test_wrong_key_after_crash_leaves_database_and_wal_unchanged(tmp_path: Path) -> None:
    """A crash leaves a WAL behind; a wrong key then changes neither file, and the right key works."""
    state_dir = tmp_path / "state"
    acked = run_and_kill(state_dir, workers=2)
    path = brain_path(state_dir, "p1")
    assert wal_size(path)
    before = data_digests(path)
    try:
        await Brain.open(path, os.urandom(32))
    except WrongKey:
        pass
    else:
        raise AssertionError("a wrong key opened the brain")
    assert before == data_digests(path)
    assert not any(content.encode() in raw_bytes(path) for content in list(acked.values())[:50])
    async with await Brain.open(path, load_or_create_key(state_dir, "p1")) as brain:
        assert (await brain.stats()).counts["memories"] >= len(acked)

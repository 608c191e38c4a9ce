"""kill -9 during a stream of remember calls: every acknowledged memory survives, and with
idempotency keys every call retried after the kill is stored exactly once."""

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


def run_and_kill(state_dir: Path, workers: int, *, keyed: bool = False) -> dict[int, str]:
    """Run remember_loop.py, SIGKILL it after some acks; return id -> content acked."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, str(LOOP), str(state_dir), "p1", str(workers), *(["keyed"] if keyed else [])],
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


async def test_every_call_retried_with_its_key_after_sigkill_is_stored_once(tmp_path: Path) -> None:
    """SIGKILL mid-stream of keyed calls, then every call each worker may have sent retried
    with its key (what a client that lost its answers does): the acked ones answer with their
    ids, replayed; the ones that landed unacked answer replayed too; the rest are stored now.
    Every key ends as exactly one memory."""
    state_dir = tmp_path / "state"
    acked = run_and_kill(state_dir, workers=8, keyed=True)
    sent: dict[int, int] = {}  # worker -> the highest i it was acked for
    for content in acked.values():
        number, i = (int(part) for part in content.removeprefix("durable memory ").split("-"))
        sent[number] = max(sent.get(number, -1), i)
    async with await Brain.open(brain_path(state_dir, "p1"), load_or_create_key(state_dir, "p1")) as brain:
        answers: dict[str, tuple[int, bool]] = {}
        for number in range(8):
            for i in range(sent.get(number, -1) + 2):  # one past its last ack: it may have been in flight
                content = f"durable memory {number}-{i}"
                answers[content] = await brain.remember_once(
                    content, caller="cli:loop", key=f"k-{number}-{i}", source="loop"
                )
        for memory_id, content in acked.items():
            assert (memory_id, True) == answers[content]
        totals = await brain.query("SELECT count(*), count(DISTINCT content) FROM memories")
        assert (len(answers), len(answers)) == tuple(totals.rows[0])


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

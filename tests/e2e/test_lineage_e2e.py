"""End to end with real processes: `personad persona-fork` and `persona-merge` against `personad registry`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from daemon.brain import Brain, MemoryItem
from daemon.brain.keys import brain_path, load_or_create_key
from daemon.state import StateDir
from tests.conftest import run_cli as cli
from tests.conftest import start_bus_process


def ok(state: StateDir, url: str, *args: str) -> Any:
    out = cli(state, *args, url=url)
    assert 0 == out.returncode, out.stderr
    return json.loads(out.stdout)


def create(state: StateDir, url: str, pid: str) -> None:
    profile = {"id": pid, "name": pid.title(), "role": "assistant", "status": "active"}
    ok(state, url, "call", "cap:registry", "persona.create", json.dumps({"profile": profile}))


async def remember(state: StateDir, pid: str, texts: list[tuple[str, str | None]]) -> None:
    path = brain_path(state.root, pid)
    path.parent.mkdir(parents=True, mode=0o700)
    async with await Brain.open(path, load_or_create_key(state.root, pid, environ={})) as brain:
        await brain.remember_many(MemoryItem(text, subject=subject) for text, subject in texts)


async def contents(state: StateDir, pid: str) -> list[str]:
    key = load_or_create_key(state.root, pid, environ={})
    async with await Brain.open(brain_path(state.root, pid), key) as brain:
        return [row[0] for row in (await brain.query("SELECT content FROM memories ORDER BY id")).rows]


def test_fork_and_merge_from_the_cli(state: StateDir, spawn: Any) -> None:
    _bus, url = start_bus_process(spawn)
    spawn("registry", "--no-import", env={"PERSONAD_URL": url}).wait_for_line(r"serving cap:registry")
    create(state, url, "ada")
    create(state, url, "bob")
    asyncio.run(remember(state, "ada", [("alice likes tea", "alice"), ("the office is on floor two", None)]))
    asyncio.run(remember(state, "bob", [("bob knows the wifi password", None)]))

    fork = ok(
        state,
        url,
        "persona-fork",
        "ada",
        "--id",
        "ada-tea",
        "--role",
        "tea expert",
        "--modifications",
        '{"traits": {"humor": 70}}',
        "--subject",
        "alice",
    )
    assert ("ada-tea", "tea expert", 70) == (
        fork["persona_id"],
        fork["profile"]["role"],
        fork["profile"]["traits"]["humor"],
    )
    assert (1, 2) == (fork["brain"]["memories"], fork["brain"]["memories_in_source"])
    assert ["alice likes tea"] == asyncio.run(contents(state, "ada-tea"))

    merged = ok(
        state, url, "persona-merge", "ada-tea", "bob", "--strategy", "average", "--name", "Tea and Wifi"
    )
    assert ("ada-tea-merge-1", "Tea and Wifi", 60) == (
        merged["persona_id"],
        merged["profile"]["name"],
        merged["profile"]["traits"]["humor"],
    )
    assert ["alice likes tea", "bob knows the wifi password"] == asyncio.run(
        contents(state, "ada-tea-merge-1")
    )
    shown = ok(state, url, "persona-show", "bob")
    assert "merged" == shown["status"]

    missing = cli(state, "persona-fork", "ghost", url=url)
    assert 1 == missing.returncode
    assert "invalid params: source_persona_id: no persona 'ghost'" in missing.stderr
    again = cli(state, "persona-merge", "ada", "bob", "--strategy", "union", "--name", "X", url=url)
    assert 1 == again.returncode
    assert "invalid params: secondary_persona_id:" in again.stderr
    assert "merged" in again.stderr

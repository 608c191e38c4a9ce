"""End to end with real processes: `personad persona-delete` against a real bus, registry and persona.

A real persona daemon process remembers a marker and exports its brain; once
it has stopped, `personad persona-delete` (confirmed by typing the id at a
real terminal, a pty) erases it, and no file under the state dir holds the
marker or the description any more. Under `personad up` (slow: SmolLM2
behind cap:inference), persona.delete of a running persona archives it, up
stops its daemon, and the erasure goes on, adapters included.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.client import BusClient
from daemon.inference.adapters import AdapterRecord, AdapterStore
from daemon.registry.audit import verify
from daemon.registry.keys import audit_path
from daemon.state import StateDir
from tests.conftest import REPO, WAIT, ChatServices, Proc, eventually, start_bus_process
from tests.conftest import run_cli as cli
from tests.daemon.inference.conftest import save_random_adapter, tiny_dir  # noqa: F401  (a fixture)

MARKER = "zq-e2e-marker-51c0de"
DESCRIPTION = "Ada minds the Okonkwo family archive"


def ok(state: StateDir, url: str, target: str, method: str, params: dict) -> dict:
    out = cli(state, "call", target, method, json.dumps(params), url=url)
    assert 0 == out.returncode, out.stderr
    return json.loads(out.stdout)


def files_holding(root: Path, needles: list[str]) -> list[str]:
    patterns = [n.encode(enc) for n in needles for enc in ("utf-8", "utf-16-le")]
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and any(pat in p.read_bytes() for pat in patterns)
    )


def delete_at_a_terminal(
    state: StateDir, url: str, persona_id: str, typed: str
) -> subprocess.CompletedProcess[str]:
    """`personad persona-delete ID` with its stdin a real terminal (a pty) on which ``typed`` is typed."""
    env = {**os.environ, "PERSONAD_STATE_DIR": str(state.root), "PERSONAD_URL": url}
    env.pop("PERSONAD_TOKEN", None)
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "persona-delete", persona_id],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
            text=True,
        )
        os.close(slave)
        slave = -1
        os.write(master, typed.encode() + b"\n")
        out, err = proc.communicate(timeout=WAIT * 4)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_persona_delete_cli_erases_a_real_persona(state, spawn, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _bus, url = start_bus_process(spawn)
    registry = spawn("registry", "--no-import", env={"PERSONAD_URL": url})
    registry.wait_for_line(r"registry:main serving cap:registry")
    profile = {
        "id": "ada",
        "name": "Ada",
        "role": "archivist",
        "description": DESCRIPTION,
        "status": "active",
    }
    ok(state, url, "cap:registry", "persona.create", {"profile": profile})

    # The persona's daemon, as `personad up` runs it: its own config, brain, token.
    config = tmp_path / "config"
    (config / "personas").mkdir(parents=True)
    (config / "personas" / "ada.toml").write_text(
        f'id = "ada"\nname = "Ada"\ndescription = "{DESCRIPTION}"\n'
    )
    persona = spawn("persona", "ada", env={"PERSONAD_URL": url, "PERSONAD_CONFIG_DIR": str(config)})
    persona.wait_for_line(r"connected url=\S+ client_id=persona:ada\b", timeout=WAIT * 2)
    ok(
        state,
        url,
        "persona:ada",
        "memory.remember",
        {"content": f"{MARKER}: the archive key is under the mat"},
    )
    export = ok(state, url, "persona:ada", "brain.export", {})
    assert MARKER in Path(export["path"]).read_text("utf-8")
    assert 0 == persona.stop()
    assert files_holding(state.root, [MARKER])

    # No terminal and no --yes: refused before anything is sent.
    refused = cli(state, "persona-delete", "ada", url=url)
    assert 1 == refused.returncode
    assert "pass --yes" in refused.stderr
    # A mistyped id at the terminal: refused, nothing erased.
    mistyped = delete_at_a_terminal(state, url, "ada", "adaa")
    assert 1 == mistyped.returncode, mistyped.stdout + mistyped.stderr
    assert "does not match; nothing erased" in mistyped.stderr
    assert (state.root / "personas" / "ada" / "brain.sqlite").exists()
    assert "ada" == ok(state, url, "cap:registry", "persona.get", {"persona_id": "ada"})["profile"]["id"]
    # A persona token may not erase anyone.
    persona_token = state.read_secret("persona-ada.token")
    forbidden = cli(state, "persona-delete", "ada", "--yes", url=url, token=persona_token)
    assert 1 == forbidden.returncode
    assert "error -32003" in forbidden.stderr

    done = delete_at_a_terminal(state, url, "ada", "ada")
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "Type its id to confirm" in done.stdout
    assert "erased persona ada" in done.stdout
    for line in (
        "removed personas/ada/brain.sqlite",
        "removed secrets/brain-ada.key",
        "removed registry profile",
    ):
        assert line in done.stdout, done.stdout

    assert [] == files_holding(state.root, [MARKER, DESCRIPTION])
    gone = cli(state, "call", "cap:registry", "persona.get", json.dumps({"persona_id": "ada"}), url=url)
    assert 0 != gone.returncode
    assert verify(audit_path(state.root)).ok
    last = json.loads(audit_path(state.root).read_text().splitlines()[-1])
    assert ("persona.delete", "ada") == (last["action"], last["persona_id"])

    # Again, with --yes: the id names no persona any more.
    again = cli(state, "persona-delete", "ada", "--yes", url=url)
    assert 1 == again.returncode
    assert "persona_id" in again.stderr
    registry.stop()


# -- under personad up ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted SmolLM2 (the session's cache), so up does not convert it again."""
    from daemon.inference.model import convert_smollm2

    return convert_smollm2(tmp_path_factory.getbasetemp() / "smollm2-cache")


async def on_bus(admin: BusClient) -> set[str]:
    return {c["id"] for c in (await admin.call("bus.clients", {"kind": "persona"}))["clients"]}


async def erase_under_up(up: Proc, url: str, token: str, shared: AdapterRecord, own: AdapterRecord) -> dict:
    async with BusClient(url, token=token, kind="cli", name="e2e") as admin:
        for pid, description, stack in (("bob", "Bob", [shared]), ("ada", DESCRIPTION, [shared, own])):
            profile = {
                "id": pid,
                "name": pid.title(),
                "role": "archivist",
                "description": description,
                "status": "active",
                "stack": [r.entry.model_dump() for r in stack],
            }
            await admin.call("persona.create", {"profile": profile}, to="cap:registry")

        async def running() -> bool:
            return {"persona:ada", "persona:bob"} <= await on_bus(admin)

        await eventually(running, timeout=WAIT * 2, what="up starting ada and bob")
        await admin.call("memory.remember", {"content": f"{MARKER}: under up"}, to="persona:ada")
        await admin.call("brain.export", {}, to="persona:ada")
        # Nobody stops ada by hand: persona.delete archives her, up stops her daemon, the erasure goes on.
        result: dict = await admin.call(
            "persona.delete", {"persona_id": "ada", "confirm": "ada"}, to="cap:registry", deadline_ms=60_000
        )
        left = await on_bus(admin)
        assert "persona:bob" in left
        assert "persona:ada" not in left
        bob = await admin.call("persona.get", {"persona_id": "bob"}, to="cap:registry")
        assert "active" == bob["profile"]["status"]
        return result


@pytest.mark.slow
def test_persona_delete_under_up_stops_the_daemon_then_erases(  # type: ignore[no-untyped-def]
    state: StateDir,
    spawn: Any,
    smollm2: Path,
    tiny_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = AdapterStore.for_state(state.root)
    shared = store.import_folder(save_random_adapter(tiny_dir, tmp_path / "a", seed=1), "zoo")
    own = store.import_folder(save_random_adapter(tiny_dir, tmp_path / "b", seed=2), "zoo.ada")
    up = spawn("up", "--port", "0", "--no-browser", "--no-demo", env={"PERSONAD_MODEL": str(smollm2)})
    url = up.wait_for_line(r"listening on (ws://\S+)").group(1)
    up.wait_for_line(r"cap:inference is up", timeout=WAIT * 8)
    up.wait_for_line(r"Ctrl-C stops everything", timeout=WAIT * 4)
    ChatServices.drain(up)  # keep reading, so the children's logs never fill the pipe

    result = asyncio.run(erase_under_up(up, url, state.admin_token, shared, own))  # type: ignore[attr-defined]

    assert "personas/ada/brain.sqlite" in result["erased"]
    assert [(own.sha256, True)] == [(a["sha256"], a["blob_removed"]) for a in result["adapters_deleted"]]
    assert [shared.sha256] == [a["sha256"] for a in result["adapters_kept"]]
    assert ["zoo"] == AdapterStore.for_state(state.root).names()
    # The supervisor says so once the daemon's process has exited, which may be a moment
    # after the registry saw it leave the bus and went on to erase.
    stopped = "persona:ada stopped: the registry made it archived"
    deadline = time.monotonic() + WAIT
    while not any(stopped in line for line in list(up.lines)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(stopped in line for line in list(up.lines))
    assert [] == files_holding(state.root, [MARKER, DESCRIPTION])
    assert verify(audit_path(state.root)).ok
    assert 0 == up.stop(signal.SIGINT, timeout=WAIT * 2)

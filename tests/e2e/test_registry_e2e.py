"""End to end with real processes: `personad registry` on a real bus, its CLI verbs, restarts,
a wrong key, the audit log's verification, and `personad up` running the registry's personas."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

from daemon.registry.keys import registry_dir
from tests.conftest import REPO, WAIT, start_bus_process
from tests.conftest import run_cli as cli


def digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.endswith("-shm")
    }


def call(state, url: str, method: str, params: dict | None = None, *, token: str | None = None):
    args = ["call", "cap:registry", method] + ([json.dumps(params)] if params is not None else [])
    return cli(state, *args, url=url, token=token)


def ok(state, url: str, method: str, params: dict | None = None) -> dict:
    out = call(state, url, method, params)
    assert 0 == out.returncode, out.stderr
    return json.loads(out.stdout)


def start_registry(spawn, url: str, config: Path):
    proc = spawn("registry", "--config-dir", str(config), env={"PERSONAD_URL": url})
    proc.wait_for_line(r"registry:main serving cap:registry")
    return proc


def config_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "config" / "personas"
    folder.mkdir(parents=True)
    (folder / "demo.toml").write_bytes((REPO / "config" / "personas" / "demo.toml").read_bytes())
    return folder.parent


def test_registry_serves_imports_restarts_and_audits(state, spawn, tmp_path) -> None:
    _bus, url = start_bus_process(spawn)
    config = config_dir(tmp_path)
    registry = start_registry(spawn, url, config)

    demo = ok(state, url, "persona.get", {"persona_id": "demo"})["profile"]
    assert ("Ada", "active", "assistant") == (demo["name"], demo["status"], demo["role"])
    ok(
        state,
        url,
        "persona.create",
        {"profile": {"id": "clerk", "name": "Clerk", "role": "clerk", "tags": ["law"]}},
    )
    ok(
        state,
        url,
        "persona.update",
        {"persona_id": "demo", "changes": {"tags": ["teach"], "traits": {"empathy": 77}}},
    )

    table = cli(state, "persona-list", url=url)
    assert 0 == table.returncode, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "ROLE", "STATUS", "TAGS"]
    assert lines[1].split() == ["clerk", "Clerk", "clerk", "draft", "law"]
    assert lines[2].split() == ["demo", "Ada", "assistant", "active", "teach"]
    shown = cli(state, "persona-show", "demo", url=url)
    assert 77 == json.loads(shown.stdout)["traits"]["empathy"]
    missing = cli(state, "persona-show", "ghost", url=url)
    assert 1 == missing.returncode
    assert "no persona 'ghost'" in missing.stderr

    # A restart keeps everything; the unchanged TOML does not undo the edits.
    assert 0 == registry.stop(signal.SIGTERM)
    registry = start_registry(spawn, url, config)
    again = ok(state, url, "persona.get", {"persona_id": "demo"})["profile"]
    assert (["teach"], 77) == (again["tags"], again["traits"]["empathy"])
    assert ["clerk", "demo"] == [p["id"] for p in ok(state, url, "persona.list")["personas"]]

    verified = cli(state, "audit", "verify")
    assert 0 == verified.returncode, verified.stdout
    assert "ok, 3 entries" in verified.stdout  # import, create, update
    assert 0 == registry.stop(signal.SIGTERM)

    log = registry_dir(state.root) / "audit.log"
    lines_b = log.read_bytes().splitlines(keepends=True)
    assert b"Ada" not in log.read_bytes()
    assert b"Clerk" not in log.read_bytes()
    lines_b[1] = lines_b[1].replace(b'"clerk"', b'"demo"')
    log.write_bytes(b"".join(lines_b))
    tampered = cli(state, "audit", "verify")
    assert 1 == tampered.returncode
    assert "line 3:" in tampered.stdout


def test_wrong_key_stops_the_registry_and_changes_no_byte(state, spawn, tmp_path) -> None:
    _bus, url = start_bus_process(spawn)
    registry = start_registry(spawn, url, config_dir(tmp_path))
    assert 0 == registry.stop(signal.SIGTERM)
    key = state.root / "secrets" / "registry.key"
    good = key.read_bytes()
    key.write_text("ab" * 32 + "\n")
    before = digests(registry_dir(state.root))
    wrong = spawn("registry", "--config-dir", str(tmp_path / "config"), env={"PERSONAD_URL": url})
    assert 1 == wrong.popen.wait(WAIT)
    assert "wrong registry key" in wrong.output()
    assert before == digests(registry_dir(state.root))
    key.write_bytes(good)
    start_registry(spawn, url, tmp_path / "config")
    assert "Ada" == ok(state, url, "persona.get", {"persona_id": "demo"})["profile"]["name"]


def test_up_runs_every_active_persona_of_the_registry(state, spawn, tmp_path) -> None:
    # A persona made through the registry (no TOML), and one left in draft.
    bus, url = start_bus_process(spawn)
    config = config_dir(tmp_path)
    registry = start_registry(spawn, url, config)
    ok(
        state,
        url,
        "persona.create",
        {"profile": {"id": "clerk", "name": 'Clerk "the" \\ one', "role": "clerk", "status": "active"}},
    )
    ok(state, url, "persona.create", {"profile": {"id": "idle", "name": "Idle", "role": "none"}})
    assert 0 == registry.stop(signal.SIGTERM)
    bus.stop(signal.SIGTERM)

    up = spawn(
        "up", "--port", "0", "--no-demo", "--no-inference", "--no-browser", "--config-dir", str(config)
    )
    up.wait_for_line(r"cap:registry is up")
    up.wait_for_line(r"Ctrl-C stops everything", timeout=WAIT * 2)
    out = up.output() if up.popen.poll() is not None else "".join(up.lines)
    assert 'persona:clerk (Clerk "the" \\ one) is up' in out
    assert "persona:demo (Ada) is up" in out
    assert "persona:idle" not in out
    assert 0 == up.stop(signal.SIGINT)
    deadline = time.monotonic() + WAIT
    while "all stopped" not in up.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "all stopped" in up.output()

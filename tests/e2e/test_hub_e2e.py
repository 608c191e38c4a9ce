"""PersonaHub end to end: real processes, the real model, two inference services sharing one run.

One bus, two ``personad inference`` processes (``inference:a`` and
``inference:b``, SmolLM2), the registry and ``personad hub serve``, started
once for the module. Then, as a person types them:

* ``personad hub run`` to the end, and the same run killed with SIGKILL
  mid-way and started again: the two outputs are the same bytes, the
  journal holds every slot once, and both inference services served part
  of the work;
* ``personad hub validate`` on the FinePersonas-format sample writes its
  report (JSON and pictures);
* ``personad hub register`` adds a generated persona to the registry, active.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.state import StateDir
from tests.conftest import REPO, WAIT, ChatServices

pytestmark = pytest.mark.slow

DATA = REPO / "tests" / "daemon" / "hub" / "data"
#: A run small enough for CI, big enough to be killed half-way: 8 personas plus the plan's overshoot.
RUN = ("--count", "8", "--path", "structured", "--seed", "11", "--quality", "fast")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatServices]:
    from daemon.inference.model import convert_smollm2

    model = convert_smollm2(tmp_path_factory.getbasetemp() / "smollm2-cache")
    root = tmp_path_factory.mktemp("hub-e2e")
    state = StateDir(root / "state")
    assert state.init() is not None
    (root / "config" / "personas").mkdir(parents=True)
    services = ChatServices(state, root / "config", model)
    try:
        bus = services.start("bus", "--port", "0")
        services.url = bus.wait_for_line(r"listening on (ws://\S+)").group(1)
        services.drain(bus)
        # Started together and awaited one by one: each spends its first seconds importing.
        inference = {
            name: services.start("inference", "--model", str(model), "--threads", "1", "--name", name)
            for name in ("a", "b")
        }
        registry = services.start("registry")
        hub = services.start("hub", "serve")
        for name, proc in inference.items():
            proc.wait_for_line(rf"connected url=\S+ client_id=inference:{name}\b", timeout=WAIT * 8)
            services.drain(proc)
        registry.wait_for_line(r"serving cap:registry", timeout=WAIT * 2)
        services.drain(registry)
        hub.wait_for_line(r"hub:main serving cap:hub", timeout=WAIT * 2)
        services.drain(hub)
        yield services
    finally:
        services.stop_all()


def cli(hub: ChatServices, *args: str, timeout: float = WAIT * 20) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PERSONAD_STATE_DIR": str(hub.state.root),
        "PERSONAD_URL": hub.url,
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("PERSONAD_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def served(hub: ChatServices, name: str) -> int:
    done = cli(hub, "call", f"inference:{name}", "inference.status", "{}", "--json")
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["served"])


@pytest.fixture(scope="module")
def uninterrupted(hub: ChatServices, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run to the end (the reference), checked to have been shared by both inference services."""
    before = {name: served(hub, name) for name in ("a", "b")}
    whole = tmp_path_factory.mktemp("hub-run") / "whole.jsonl"
    done = cli(hub, "hub", "run", *RUN, "--out", str(whole))
    assert done.returncode == 0, done.stderr
    assert "8 personas in" in done.stdout
    # Both services took part of the work: the bus hands each request to the least busy.
    after = {name: served(hub, name) for name in ("a", "b")}
    assert all(after[name] > before[name] for name in ("a", "b")), (before, after)
    return whole


def test_a_run_killed_mid_way_resumes_to_exactly_the_uninterrupted_output(
    hub: ChatServices, uninterrupted: Path, tmp_path: Path
) -> None:
    whole = uninterrupted
    killed = tmp_path / "killed.jsonl"
    journal = Path(str(killed) + ".hub") / "journal.jsonl"
    env = {**os.environ, "PERSONAD_STATE_DIR": str(hub.state.root), "PERSONAD_URL": hub.url}
    env.pop("PERSONAD_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "hub", "run", *RUN, "--out", str(killed)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + WAIT * 10
    while time.monotonic() < deadline and (not journal.exists() or journal.read_bytes().count(b"\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(WAIT)
    finished_before_kill = journal.read_bytes().count(b"\n")
    assert finished_before_kill >= 3
    assert not killed.exists()

    resumed = cli(hub, "hub", "run", *RUN, "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert killed.read_bytes() == whole.read_bytes()
    slots = [json.loads(line)["slot"] for line in journal.read_text().splitlines()]
    assert len(slots) == len(set(slots))  # no slot twice
    assert sorted(slots) == list(range(len(slots)))  # and none missing
    assert len(slots) > finished_before_kill

    kept = [json.loads(line) for line in whole.read_text().splitlines()]
    assert len(kept) == 8
    assert len({p["id"] for p in kept}) == 8
    report = json.loads((Path(str(whole) + ".hub") / "report" / "report.json").read_text())
    assert report["input"] >= 8


def test_validate_reports_on_a_finepersonas_file(hub: ChatServices, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = cli(
        hub,
        "hub",
        "validate",
        str(DATA / "finepersonas_sample.jsonl"),
        "--report",
        str(out),
        "--quality",
        "fast",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    lines = (DATA / "finepersonas_sample.jsonl").read_text().splitlines()
    assert report["input"] == len([line for line in lines if line.strip()])
    assert report["kept"] + sum(report["duplicates_removed"]["removed_by_stage"].values()) == report["input"]
    for score in ("coherence", "authenticity", "diversity", "cultural"):
        assert score in report
    assert list(out.glob("*.png"))


def test_a_generated_persona_is_registered_active(hub: ChatServices, uninterrupted: Path) -> None:
    first = json.loads(uninterrupted.read_text().splitlines()[0])
    registered = cli(
        hub, "hub", "register", str(uninterrupted), first["id"], "--as", "hub-first", "--activate"
    )
    assert registered.returncode == 0, registered.stderr
    got = cli(hub, "call", "cap:registry", "persona.get", json.dumps({"persona_id": "hub-first"}), "--json")
    assert got.returncode == 0, got.stderr
    profile = json.loads(got.stdout)["profile"]
    assert profile["status"] == "active"
    assert first["persona"] in profile["description"]

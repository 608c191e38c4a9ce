"""The bounded soak: bench/soak.py --ci, the same code as the full run, judged on its report.

About five minutes: ``personad up`` with three personas and a second bus node
joined over NATS, 100 clients at 400 requests/s for 2.5 minutes, every kind
of fault once, the ledger checked after each. ``make test`` runs this file on its own after the rest of the
suite (with the fuzz campaign beside it in tests/soak), so that the soak's load
and the other tests do not slow each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAULTS = {
    "kill -9 bus",
    "kill -9 persona mid-write",
    "kill -9 registry mid-write",
    "kill -9 inference mid-generation",
    "kill -9 inference mid-training",
    "kill -9 chromium mid-request",
    "client stops reading",
    # scripts/system-deps installs nats-server for the tests: a second bus node is always there.
    "kill -9 federated bus node",
    # The Academy, skill sharing and PersonaHub run in the soak unless --no-ecosystem.
    "kill -9 academy, skill sharing and hub",
}
#: Faults that need root: a filesystem to mount, a clock to set.
ROOT_FAULTS = {"full disk under a persona", "slow disk under a persona", "clock jumps"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("soak-report")
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--ci", "--report", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    print(done.stdout[-20000:], done.stderr[-5000:])
    assert (out / "report.json").exists(), "the soak wrote no report"
    loaded: dict = json.loads((out / "report.json").read_text())
    loaded["exit_code"] = done.returncode
    loaded["charts"] = sorted(p.name for p in out.glob("*.png"))
    return loaded


def test_the_soak_passes_its_own_judgement(report: dict) -> None:
    assert [] == report["failures"]
    assert 0 == report["exit_code"]


def test_writes_cut_off_by_faults_were_retried_with_their_keys(report: dict) -> None:
    """The persona and bus kills cut memory.remember calls off mid-flight; sent again with
    their idempotency keys, the ledger (0 violations above) held each to exactly one row."""
    retried = report["retried"]
    assert retried["sent_again"].get("memory.remember", 0) > 0, retried
    assert retried["replayed"].get("memory.remember", 0) <= retried["sent_again"]["memory.remember"]
    assert 0 == report["ledger"]["violation_count"]


def test_every_fault_was_injected_and_recovered_from(report: dict) -> None:
    kinds = {f["kind"] for f in report["faults"]}
    expected = FAULTS | (ROOT_FAULTS if os.geteuid() == 0 else set())
    if not Path("/dev/loop-control").exists():  # a machine without loop devices: only a tmpfs
        expected.discard("slow disk under a persona")
    assert expected <= kinds, report["faults_skipped"]
    for fault in report["faults"]:
        assert fault["recovered_s"] is not None, fault
        assert "" == fault["error"], fault
    disk = [f for f in report["faults"] if f["kind"] == "full disk under a persona"]
    for fault in disk:  # the full disk was seen by the writes, and said so
        assert any(o.startswith("INTERNAL_ERROR/disk_full") for o in fault["in_flight"]), fault
    for fault in report["faults"]:
        if fault["kind"] == "slow disk under a persona":  # slow, but every write was answered
            assert not any(o.startswith("HUNG") for o in fault["in_flight"]), fault
        if fault["kind"] == "kill -9 federated bus node":  # its clients were told, then went on
            assert any(o.startswith("ok") for o in fault["in_flight"]), fault


def test_the_ledger_held_and_the_load_ran(report: dict) -> None:
    ledger = report["ledger"]
    assert 0 == ledger["violation_count"], ledger["violations"]
    # A check after every fault and one at the end.
    assert len(report["faults"]) + 1 == len(ledger["checks"])
    for kind in ("memory", "performance", "knowledge", "profile", "import", "hub", "hub profile"):
        assert ledger["by_kind"][kind].get("acked", 0) > 0, kind
    # Every hub job it acknowledged finished by itself (the ledger's last check says so too).
    assert {"done"} == set(report["hub_jobs"]["states_at_end"]), report["hub_jobs"]
    # Every intruder's write was refused, and none of them was stored (the checks' phantoms).
    assert ledger["by_kind"]["memory"].get("refused", 0) > 0
    assert [] == report["hung"]
    assert {} == report["client_exceptions"]
    assert report["load"]["requests"] > 10_000
    assert report["load"]["events_received"] > 0
    assert report["load"]["room_messages_received"] > 0


def test_memory_stayed_flat_and_the_charts_were_drawn(report: dict) -> None:
    # The load generator holds the ledger (every write sent) by design: it is not judged.
    grown = {
        role: r["runs"] for role, r in report["rss"].items() if r["unbounded"] and role != "load generator"
    }
    assert {} == grown
    assert ["errors.png", "latency.png", "rss.png"] == report["charts"]

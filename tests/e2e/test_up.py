"""End to end: `personad up` with its demo, as `make up` runs it, then one Ctrl-C.

The real supervisor in a temporary state dir on a free port: it starts the
bus, trains the demo adapters (with a budget of a few steps a level,
``PERSONAD_DEMO_TRAIN_STEPS``, so the test takes minutes, not many),
starts the inference service (SmolLM2), the headless browser worker
(Chromium) and the demo persona from config/personas/demo.toml, and shows
the demo. The test checks what the demo shows against the state it left
behind, then sends SIGINT and checks every process it started is gone,
Chromium included.
"""

from __future__ import annotations

import hashlib
import json
import signal
import struct
from pathlib import Path

import psutil
import pytest

from daemon.inference.adapters import AdapterStore
from daemon.inference.demo import DEMO_LEVELS, TRAIN_STEPS_ENV
from tests.conftest import WAIT, run_cli

pytestmark = pytest.mark.slow

STEPS = 2


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted SmolLM2 (the session's cache), so up does not convert it again."""
    from daemon.inference.model import convert_smollm2

    return convert_smollm2(tmp_path_factory.getbasetemp() / "smollm2-cache")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # a Chromium helper that came and went
        return []


def test_up_shows_the_demo_and_one_sigint_stops_every_process(state, spawn, smollm2) -> None:
    up = spawn("up", "--port", "0", env={TRAIN_STEPS_ENV: str(STEPS), "PERSONAD_MODEL": str(smollm2)})
    url = up.wait_for_line(r"listening on (ws://\S+)").group(1)
    # Training three levels, then loading the model: minutes on a busy machine.
    up.wait_for_line(r"cap:inference is up", timeout=WAIT * 24)
    up.wait_for_line(r"cap:browser is up", timeout=WAIT * 4)
    up.wait_for_line(r"persona:demo \(Ada\) is up", timeout=WAIT * 4)

    # The chat demo: the same question without and with the demo stack.
    without = up.wait_for_line(r"^  without a stack: (.*)$", timeout=WAIT * 8).group(1)
    stack_line = up.wait_for_line(r"^  with (legal[^:]*): (.*)$", timeout=WAIT * 8)
    assert " → ".join(DEMO_LEVELS) == stack_line.group(1)
    assert without.strip()
    assert stack_line.group(2).strip()

    # The browser demo: a screenshot into the persona's own artifacts, and '42' read by browser_js.
    page = up.wait_for_line(r"took a screenshot of (http://127\.0\.0\.1:\d+/)", timeout=WAIT * 4).group(1)
    saved = up.wait_for_line(r"saved (\S+) \((\d+)x(\d+), sha256 ([0-9a-f]{16})…\)")
    up.wait_for_line(r"read #answer with browser_js: '42'$")
    up.wait_for_line(r"Ctrl-C stops everything")
    assert page.startswith("http://127.0.0.1:")

    shot = Path(saved.group(1))
    assert state.root / "personas" / "demo" / "artifacts" / "screenshots" / "demo-page.png" == shot
    data = shot.read_bytes()
    assert (int(saved.group(2)), int(saved.group(3))) == png_size(data)
    assert hashlib.sha256(data).hexdigest().startswith(saved.group(4))

    # The stack the demo loaded is the persona's now, and it is the budgeted one that was trained.
    status = run_cli(state, "call", "persona:demo", "lora.status", url=url)
    assert 0 == status.returncode, status.stderr
    store = AdapterStore.for_state(state.root)
    records = [store.get(name) for name in DEMO_LEVELS]
    assert [(r.name, r.sha256) for r in records] == [
        (a["name"], a["sha256"]) for a in json.loads(status.stdout)["stack"]
    ]
    for record in records:
        assert (STEPS, STEPS) == (record.meta["train"]["steps"], record.meta["examples"])

    # One SIGINT stops everything it started, Chromium included.
    children = psutil.Process(up.popen.pid).children(recursive=True)
    names = " ".join(" ".join(_cmdline(c)) for c in children)
    for part in ("bus", "inference", "browser", "persona demo", "chromium"):
        assert part in names, names
    assert 0 == up.stop(signal.SIGINT, timeout=WAIT * 2)
    assert "personad: all stopped" in up.output()
    _gone, alive = psutil.wait_procs(children, timeout=WAIT)
    assert [] == alive

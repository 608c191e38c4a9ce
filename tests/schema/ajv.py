"""Run tests/schema/ajv_check.mjs: Ajv 2020-12 in strict mode, on real Node.js."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ENVELOPES = HERE / "envelopes.json"


def ensure_ajv() -> str:
    """The path of node, with Ajv installed from the lock file; fails the test loudly if impossible."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "the schema tests need Node.js 20 and npm to run Ajv: "
            "sudo apt-get install -y nodejs npm (scripts/system-deps test does it as root), then make test"
        )
    if not (HERE / "node_modules" / "ajv" / "package.json").exists():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {HERE} failed (needs the npm registry once):\n{done.stderr[-2000:]}")
    return node


def ajv_check(schema: dict[str, Any], cases: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """Compile ``schema`` with Ajv strict and validate each (ref, instance); Ajv's verdicts.

    Raises AssertionError with Ajv's message when the schema does not compile.
    """
    node = ensure_ajv()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"schema": schema, "cases": [{"ref": r, "instance": i} for r, i in cases]}, f)
    try:
        done = subprocess.run(
            [node, str(HERE / "ajv_check.mjs"), f.name], capture_output=True, text=True, timeout=120
        )
    finally:
        Path(f.name).unlink()
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def envelope_cases() -> list[dict[str, Any]]:
    """The envelope corpus, each case with its frame text."""
    cases: list[dict[str, Any]] = json.loads(ENVELOPES.read_text())["cases"]
    for case in cases:
        case.setdefault("text", json.dumps(case.get("message"), separators=(",", ":")))
    return cases

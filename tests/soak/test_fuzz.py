"""The bounded fuzz campaign of issue 17, run by CI: bench/fuzz.py's own code, smaller budgets.

* 10,000 inputs per decoder (msgpack, JSON, the envelope fast path, the
  WebSocket frame fast path) drawn by hypothesis and mutated, and as many
  again by atheris (coverage-guided) when it is installed;
* every request method of the registry, on every server, over a real bus with
  real processes (bus, registry, a persona, inference, browser, academy,
  skills, hub) on 127.0.0.1 port 0, about 20 inputs a method.

Findings are printed one per line, with the input that caused them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.soak.bench_module import load_bench

fuzz = load_bench("fuzz")

DECODER_INPUTS = 10_000
#: Per method, on average (methods that start long work get a fifth of it).
COMMAND_INPUTS_PER_METHOD = 20


@pytest.mark.parametrize("decoder", fuzz.DECODERS)
def test_decoders_only_raise_documented_errors(decoder: str) -> None:
    """10,000 inputs (and 10,000 by atheris): only DecodeError, agreement with pydantic and websockets."""
    report = fuzz.fuzz_decoders(DECODER_INPUTS, seed=17, decoders=(decoder,))
    assert report.inputs[f"decoder:{decoder}"] == DECODER_INPUTS
    if fuzz.atheris_available():
        assert report.inputs[f"decoder:{decoder}:atheris"] == DECODER_INPUTS
    assert report.ok, report.describe_findings()


@pytest.mark.slow
def test_every_command_on_every_server(tmp_path: Path) -> None:
    """Fuzzed params for every request method on real processes: documented answers, in time, all alive."""
    methods = fuzz.request_methods()
    with fuzz.running_system(tmp_path) as system:
        report = asyncio.run(
            fuzz.fuzz_commands(
                system.url,
                system.admin_token,
                system.targets(),
                COMMAND_INPUTS_PER_METHOD * len(methods),
                seed=17,
                weak_token=system.weak_token,
                alive=system.dead,
            )
        )
        gone = system.dead()
        logged = system.tracebacks()
    served = [m for m in methods if not report.outcomes.get(f"command:{m}", {}).keys() & {"skipped"}]
    assert served == methods  # every method had a server
    assert all(report.inputs[f"command:{m}"] >= 1 for m in methods)
    assert not gone, f"processes exited: {gone}"
    assert report.ok, report.describe_findings() + "\n" + "\n".join(logged)

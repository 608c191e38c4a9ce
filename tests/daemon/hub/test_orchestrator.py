"""generate_slots against the real model, with the answers the OpenVINO engine can give.

A reply that breaks its schema where OpenVINO's grammar could not hold it (a string past
its maxLength, not strict JSON) is answered INTERNAL_ERROR with reason reply_invalid: the
service is fine and answered, so the slot is tried again with another seed (an unusable
answer), not the whole run stopped. The first call below is answered that way by the
service wrapper the test puts in front of the real engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.hub import generator, runner
from daemon.hub.journal import Journal
from daemon.hub.orchestrator import RunFailed, RunStats, generate_slots
from daemon.inference.engine import AsyncEngine
from protocol import ErrorCode, RpcError
from protocol.commands.hub_plan import Requirements
from protocol.commands.inference import GenerateParams, GenerateResult
from tests.daemon.hub.conftest import generate_with


async def test_a_reply_outside_the_schema_is_tried_again_with_another_seed(
    hub_engine: AsyncEngine, tmp_path: Path
) -> None:
    prepared = runner.prepare(Requirements(count=1, paths={"structured": 1.0}, seed=5, overshoot=0.0))
    real = generate_with(hub_engine)
    seeds: list[int | None] = []

    async def generate(params: GenerateParams) -> GenerateResult:
        seeds.append(params.seed)
        if len(seeds) == 1:
            raise RpcError(
                ErrorCode.INTERNAL_ERROR,
                "constrained decoding: persona is 427 characters long, and the schema allows at most 300",
                {"reason": "reply_invalid"},
            )
        return await real(params)

    stats = RunStats(total=len(prepared.slots))
    journal = Journal.open(tmp_path / "run", prepared.identity)
    try:
        await generate_slots(
            prepared.slots, journal, generate=generate, unusable=(generator.GenerationFailed,), stats=stats
        )
        made = dict(journal.personas)
    finally:
        journal.close()
    assert (1, 1, 0) == (stats.made, stats.unusable, stats.failed)
    assert 2 == len(seeds)
    assert seeds[0] != seeds[1]  # the second try is another seed, not the same request again
    assert [0] == sorted(made)


async def test_an_internal_error_without_that_reason_still_stops_the_run(
    hub_engine: AsyncEngine, tmp_path: Path
) -> None:
    prepared = runner.prepare(Requirements(count=1, paths={"structured": 1.0}, seed=5, overshoot=0.0))

    async def generate(params: GenerateParams) -> GenerateResult:
        raise RpcError(ErrorCode.INTERNAL_ERROR, "the openvino backend failed this request")

    journal = Journal.open(tmp_path / "run", prepared.identity)
    try:
        with pytest.raises(RunFailed, match="the model could not be asked"):
            await generate_slots(
                prepared.slots,
                journal,
                generate=generate,
                unusable=(generator.GenerationFailed,),
                stats=RunStats(total=1),
            )
    finally:
        journal.close()

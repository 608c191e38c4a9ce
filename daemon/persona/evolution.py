"""``persona.evolution.record`` and ``persona.evolution``: the persona's Academy rounds, in its brain.

The Academy service (``cap:academy``) writes a row after every round of a
run (its token holds ``persona.evolution.record@persona:*``); anyone granted
``persona.evolution`` reads them. A round whose outcome is ``graduated``
also makes its adapter one of the persona's skills (skill id = the adapter's
name, with its hash and the exam pass rate as its first rated use), since
no other bus method creates skills. The rows are the persona's own history: a
fork copies them and an export carries them (daemon/brain/evolution.py).
"""

from __future__ import annotations

import time

from protocol.commands import academy as m

from ..brain import Brain
from ..brain.evolution import insert_sync, list_sync
from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from .session_dir import SessionDir

__all__ = ["register_evolution_commands"]


def register_evolution_commands(
    dispatcher: Dispatcher, client: BusClient, brain: Brain, session_dir: SessionDir
) -> None:
    """Register this group's methods on ``dispatcher``."""

    async def record(p: m.EvolutionRecordParams, ctx: CallContext) -> m.EvolutionRecordResult:
        entry_id: int = await brain.write(insert_sync, p.model_dump(), time.time())
        if p.outcome == "graduated" and p.adapter is not None:
            description = f"Academy graduate in {p.domain} (run {p.run_id}, round {p.round})"
            await brain.skill_upsert(p.adapter, lora_hash=p.adapter_sha256, description=description)
            await brain.skill_record_use(p.adapter, p.pass_after)
        return m.EvolutionRecordResult(id=entry_id)

    async def history(p: m.EvolutionListParams, ctx: CallContext) -> m.EvolutionListResult:
        rows = await brain.read(list_sync, p.limit)
        return m.EvolutionListResult(entries=[m.EvolutionEntry(**row) for row in rows])

    dispatcher.register("persona.evolution.record", record)
    dispatcher.register("persona.evolution", history)

"""One run from requirements to checked output: plan, schedule, generate (journaled), check, write.

Shared by ``personad hub run`` (which runs it in its own process, its
journal beside the output file) and the ``cap:hub`` service (its journal in
the service's state folder). Both hand it the same three things that reach
the models: ``generate`` (``inference.generate`` on ``cap:inference``),
``embed`` (``inference.embed``) and ``providers`` (how many inference
services are on the bus).

A run's identity is its requirements and its corpus' fingerprint: the same
two give the same plan, slots, persona ids (``<run id>-<slot>``, the run id
drawn from the identity) and, slot by slot, the same personas, so a run
resumed after a kill -9 ends with exactly the set an uninterrupted run gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from protocol.commands.hub_plan import Plan, Requirements
from protocol.commands.hub_quality import QualityThresholds
from protocol.commands.inference import GenerateParams, GenerateResult
from protocol.hub_persona import AttributeTargets, HubPersona

from ..files import atomic_write
from . import architect, attributes, generator
from .corpus import Passage, load_corpus
from .journal import Journal
from .orchestrator import PER_PROVIDER, Generate, RunStats, SlotWork, generate_slots
from .qa.judge import judge_with
from .qa.validate import Validation, validate

__all__ = ["RUN_FORMAT", "Embed", "Prepared", "RunOutcome", "prepare", "run_prepared", "write_output"]

log = logging.getLogger("personad.hub.runner")

#: Bumped when a change makes an older journal's slots mean something else.
RUN_FORMAT: Final = 1

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]


@dataclass(frozen=True)
class Prepared:
    """A run worked out and ready to go: its plan, slots and identity."""

    run_id: str
    plan: Plan
    identity: dict[str, Any]
    slots: list[SlotWork]


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: the kept personas (at most ``count``, slot order) and the check's findings."""

    kept: list[HubPersona]
    generated: int
    failed: int
    validation: Validation


def _needs_corpus(req: Requirements) -> bool:
    return "text" in req.paths or ("persona" in req.paths and req.corpus is not None)


def corpus_fingerprint(passages: list[Passage]) -> str:
    digest = hashlib.sha256()
    for passage in passages:
        digest.update(json.dumps([passage.id, passage.text, passage.domain]).encode())
    return digest.hexdigest()


def prepare(
    req: Requirements, *, providers: int = 1, corpus_root: Path | None = None, rate: float | None = None
) -> Prepared:
    """Plan ``req`` and lay out its slots; raises the corpus loader's errors for a bad corpus.

    ``corpus_root``: where a named corpus must be (the service's folder);
    None lets ``req.corpus`` be any path (the CLI: the user's own files).
    """
    passages: list[Passage] = []
    if _needs_corpus(req):
        path = None if req.corpus is None else _corpus_path(req.corpus, corpus_root)
        passages = load_corpus(path)
    identity = {
        "format": RUN_FORMAT,
        "requirements": req.model_dump(mode="json"),
        "corpus": corpus_fingerprint(passages),
    }
    run_id = "h" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    plan = architect.make_plan(req, providers=providers, rate=rate)
    max_tokens = req.max_tokens
    work = [_slot_work(slot, run_id, max_tokens) for slot in architect.schedule(plan, passages)]
    return Prepared(run_id=run_id, plan=plan, identity=identity, slots=work)


def _slot_work(slot: architect.Slot, run_id: str, max_tokens: int) -> SlotWork:
    def request(parent: HubPersona | None) -> GenerateParams:
        return generator.params_for(slot, parent, max_tokens=max_tokens)

    def read(result: GenerateResult, parent: HubPersona | None) -> HubPersona:
        return generator.persona_from(slot, result, run_id=run_id, parent=parent)

    return SlotWork(index=slot.index, parent=slot.parent, request=request, read=read)


def _corpus_path(name: str, root: Path | None) -> Path:
    if root is None:
        return Path(name)
    if "/" in name or "\\" in name or name.startswith(".") or not name.strip():
        raise ValueError(f"corpus {name!r}: name a corpus in {root} (no paths)")
    return root / name


def targets_for(plan: Plan) -> AttributeTargets:
    """The population the balance checks hold a run to.

    A structured run sampled from the targets with the built-in lists filling
    what was left empty, so it is checked against that same population; the
    other paths read attributes off free text, checked against what was
    declared only (an empty occupation list is not a target for them).
    """
    targets = plan.requirements.targets
    return attributes.resolved(targets) if set(plan.requirements.paths) == {"structured"} else targets


def thresholds_for(plan: Plan, generated: int) -> QualityThresholds:
    """The checks' knobs from the plan's QA settings."""
    qa = plan.qa
    return QualityThresholds(
        minhash_threshold=qa.minhash_threshold,
        num_perm=qa.minhash_permutations,
        embedding_threshold=qa.embedding_threshold,
        judge_sample=min(qa.judge_sample, generated) if qa.judge else 0,
        seed=plan.requirements.seed % 2**32,
    )


async def run_prepared(
    prepared: Prepared,
    folder: Path,
    *,
    generate: Generate,
    embed: Embed,
    stats: RunStats,
    providers: Callable[[], Awaitable[int]] | None = None,
    on_change: Callable[[RunStats], None] | None = None,
    on_check: Callable[[str, int, int], None] | None = None,
    per_provider: int = PER_PROVIDER,
) -> RunOutcome:
    """Generate every slot not yet journaled in ``folder``, then check the lot; the outcome.

    Raises JournalError when ``folder`` holds another run, RunFailed when
    the run cannot go on (the journal keeps what was done).
    """
    journal = Journal.open(folder, prepared.identity)
    try:
        await generate_slots(
            prepared.slots,
            journal,
            generate=generate,
            unusable=(generator.GenerationFailed,),
            stats=stats,
            providers=providers,
            on_change=on_change,
            per_provider=per_provider,
        )
    finally:
        journal.close()
    personas = [journal.personas[i] for i in sorted(journal.personas)]
    stats.stage = "checking"
    if on_change is not None:
        on_change(stats)
    plan = prepared.plan
    validation = await validate(
        personas,
        embed=embed,
        targets=targets_for(plan),
        judge=judge_with(generate) if plan.qa.judge else None,
        thresholds=thresholds_for(plan, len(personas)),
        progress=on_check,
    )
    kept = validation.kept[: plan.requirements.count]
    return RunOutcome(kept=kept, generated=len(personas), failed=len(journal.failures), validation=validation)


def write_output(outcome: RunOutcome, out: Path) -> None:
    """The kept personas as JSONL at ``out``, all at once (a reader never sees half a file)."""
    lines = (p.model_dump_json() + "\n" for p in outcome.kept)
    atomic_write(out, "".join(lines).encode())

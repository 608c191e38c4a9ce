"""One Academy run: exam, train on the failures' corrections, re-exam, until graduation or no gain.

Everything goes through the bus, with the Academy's own token:

1. ``academy.rules`` from the student (its domain, secret and forbidden
   phrases: what the Sheriff holds it to);
2. the **exam**: ``academy.cases`` from the Testing Droid (``exam_size``
   cases, seed ``seed``), sent to the student by the Droid
   (``academy.examine``: ``chat``, greedy) and judged case by case by the
   Protocol Sheriff (``academy.judge``). A reply the Droid could not get
   counts as failed;
3. each **round**: training cases from the Droid with another seed and the
   exam's prompts in ``exclude``; any that is still equal or near (word
   3-shingle Jaccard ≥ :data:`HELD_OUT_JACCARD`) to an exam prompt is
   dropped here as well, so no exam case is ever trained on. They are put
   to the student and judged like the exam. Failures with a Sheriff's
   correction become chat examples (the student's own system prompt, the
   case, the correction); replies that passed become examples as they are,
   so the new level also keeps what the student already does right. A new
   level is trained over the student's current stack (``adapter.train`` on
   cap:inference, parents frozen), loaded into the student
   (``lora.load_stack``), and the same exam is taken again;
4. a round that raises the pass rate is kept; one that does not ends the
   run (``stopped``) and the student gets its stack back. Reaching
   ``threshold`` **graduates** it: the level stays in its stack, the
   registry profile's stack follows (when cap:registry is up), the round is
   recorded as ``graduated`` (which also makes the level a skill in the
   student's brain) and ``persona.graduated`` goes out on the bus. A run
   that ends any other way restores the stack it started with.

Every round is written to the student's ``evolution_history``
(``persona.evolution.record``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from protocol import RpcError
from protocol.commands import academy as m

from ..brain.lineage import find_near_duplicates
from ..client import BusClient
from ..persona.chat import build_messages
from ..persona.config import PersonaConfig, RulesConfig
from .exam import CALL_DEADLINE_MS, TRAIN_DEADLINE_MS, Exam, prepare
from .runs import Progress, Run
from .stats import paired_bootstrap

__all__ = ["HELD_OUT_JACCARD", "held_out", "level_name", "run_academy", "student_config"]

log = logging.getLogger("personad.academy")

#: A training prompt this close to an exam prompt (word 3-shingle Jaccard) is not trained on.
HELD_OUT_JACCARD = 0.6


def held_out(
    exam: Sequence[str], training: Sequence[str], *, threshold: float = HELD_OUT_JACCARD
) -> set[int]:
    """Indexes of ``training`` prompts equal or near (shingle Jaccard ≥ threshold) to an exam prompt."""
    pairs = find_near_duplicates([*exam, *training], threshold=threshold)
    n = len(exam)
    return {j - n for i, j in pairs if i < n <= j}


def student_config(rules: m.Rules) -> PersonaConfig:
    """The student's config as far as its prompt goes: what its chat builds the system turn from."""
    return PersonaConfig(
        id=rules.persona_id,
        name=rules.persona_name,
        description=rules.role,
        rules=RulesConfig(domain=rules.domain, secret=rules.secret, forbidden=list(rules.forbidden)),
    )


def level_name(parent: str | None, run_id: str, round_: int) -> str:
    """The new level's adapter name: a child of the current stack's leaf, or a root of its own."""
    segment = f"academy-{run_id[4:]}-r{round_}"
    return f"{parent}.{segment}" if parent else segment


def _examples(
    rules: m.Rules, caller: str, judged: Sequence[tuple[m.AttackCase, str | None, m.Verdict]]
) -> tuple[list[dict[str, Any]], int, int]:
    """Training examples from judged training cases: (examples, corrections used, passes kept)."""
    config = student_config(rules)
    examples, corrected, kept = [], 0, 0
    for case, reply, verdict in judged:
        if verdict.valid and reply is not None and reply.strip():
            target, kept = reply, kept + 1
        elif not verdict.valid and verdict.correction:
            target, corrected = verdict.correction, corrected + 1
        else:
            continue
        messages = build_messages(config, case.prompt, caller=caller)
        examples.append({"messages": [*messages, {"role": "assistant", "content": target}]})
    return examples, corrected, kept


async def run_academy(
    client: BusClient,
    run: Run,
    progress: Progress,
    *,
    graduated: Callable[[m.GraduatedEvent], Awaitable[None]],
    on_round: Callable[[Run], Awaitable[None]] | None = None,
) -> None:
    """Carry ``run`` out; its fields say how it went (it never raises but for cancellation)."""
    params = run.params
    student = f"persona:{run.persona_id}"
    original: list[str] = []
    try:
        rules, droid, sheriff = await prepare(client, params)
        run.domain = rules.domain
        exam = Exam(client, run, rules, droid, sheriff)
        status = await client.call("lora.status", {}, to=student, deadline_ms=CALL_DEADLINE_MS)
        original = [a["name"] for a in status["stack"]]
        run.phase = "cases"
        exam_cases = await exam.cases(params.exam_size, params.seed)
        prompts = [c.prompt for c in exam_cases]
        run.phase = "exam"
        before = [v.valid for _, _, v in await exam.take(exam_cases, "exam", progress)]
        rate = sum(before) / len(before)
        run.pass_rate, start_rate = rate, rate
        leaf = original[-1] if original else None
        for round_ in range(1, params.rounds + 1):
            run.round = round_
            if rate >= params.threshold:
                break
            run.phase = "cases"
            training = await exam.cases(params.train_size, params.seed + 7919 * round_, exclude=prompts)
            leaked = held_out(prompts, [c.prompt for c in training])
            if leaked:
                log.warning("%s: %d training cases near exam cases dropped", run.run_id, len(leaked))
            training = [c for i, c in enumerate(training) if i not in leaked]
            run.phase = "exam"
            judged = await exam.take(training, "exam", progress)
            examples, corrected, kept = _examples(rules, droid, judged)
            if corrected == 0:
                run.rounds.append(
                    m.RoundResult(round=round_, adapter=None, sha256=None, pass_before=rate, pass_after=None,
                                  ci95=None, examples=0, train_s=0.0, outcome="no_gain")
                )  # fmt: skip
                run.state, run.reason = "stopped", "the training cases gave no failure to correct"
                await _record(client, run, rules, exam_cases, on_round)
                break
            run.phase = "train"
            name = level_name(leaf, run.run_id, round_)
            trained = await _train(client, run, name, examples, progress)
            await client.call("lora.load_stack", {"name": name}, to=student, deadline_ms=CALL_DEADLINE_MS)
            run.phase = "re-exam"
            after = [v.valid for _, _, v in await exam.take(exam_cases, "re-exam", progress)]
            new_rate = sum(after) / len(after)
            interval = paired_bootstrap(before, after, seed=params.seed)
            improved = new_rate > rate
            outcome: Any = "improved" if improved else "no_gain"
            if improved and new_rate >= params.threshold:
                outcome = "graduated"
            run.rounds.append(
                m.RoundResult(round=round_, adapter=name, sha256=trained["sha256"], pass_before=rate,
                              pass_after=new_rate, ci95=interval, examples=len(examples),
                              train_s=trained["seconds"], outcome=outcome)
            )  # fmt: skip
            log.info(
                "%s round %d: %d examples (%d corrections, %d kept), pass %.3f -> %.3f, 95%% CI %s",
                run.run_id, round_, len(examples), corrected, kept, rate, new_rate, interval,
            )  # fmt: skip
            if not improved:
                run.state = "stopped"
                run.reason = f"round {round_} did not raise the pass rate ({rate:.2f} -> {new_rate:.2f})"
                await _record(client, run, rules, exam_cases, on_round)
                break
            leaf, rate, before = name, new_rate, after
            run.pass_rate = rate
            await _record(client, run, rules, exam_cases, on_round)
            if outcome == "graduated":
                break
        if run.state == "running":
            if run.rounds and run.rounds[-1].outcome == "graduated":
                await _graduate(client, run, rules, start_rate, graduated, progress)
            elif rate >= params.threshold:
                run.state, run.reason = "stopped", f"passes the exam already ({rate:.2f}): nothing to train"
            else:
                run.state = "stopped"
                run.reason = (
                    f"{params.rounds} round{'s' if params.rounds > 1 else ''} done at {rate:.2f}, "
                    f"below the threshold {params.threshold}"
                )
    except asyncio.CancelledError:
        run.state, run.reason = "cancelled", "cancelled"
        await asyncio.shield(_restore(client, student, original, run))
        _finish(run)
        raise
    except RpcError as exc:
        run.state, run.reason = "failed", f"{exc.message} (code {int(exc.code)})"
    except ValueError as exc:  # the bootstrap's own check, or a malformed answer
        run.state, run.reason = "failed", str(exc)
    except Exception as exc:  # our bug: the run ends as failed, the student gets its stack back
        log.exception("%s failed", run.run_id)
        run.state, run.reason = "failed", f"internal error: {exc!r}"
    if run.state != "graduated":
        await _restore(client, student, original, run)
    await progress(
        m.ProgressEvent(run_id=run.run_id, persona_id=run.persona_id, phase="done", round=run.round,
                        done=1, total=1, detail=f"{run.state}: {run.reason}")
    )  # fmt: skip
    _finish(run)


def _finish(run: Run) -> None:
    """The run has ended: from now on academy.status shows its end state (see Run.status)."""
    run.phase = "done"
    run.finished_at = time.time()


async def _train(
    client: BusClient, run: Run, name: str, examples: list[dict[str, Any]], progress: Progress
) -> dict[str, Any]:
    async def on_progress(note: Any) -> None:
        p = note.params or {}
        await progress(
            m.ProgressEvent(
                run_id=run.run_id, persona_id=run.persona_id, phase="train", round=run.round,
                done=int(p.get("step", 0)), total=int(p.get("total", 0)),
                detail=f"training {name}: loss {float(p.get('loss', 0.0)):.3f}",
            )
        )  # fmt: skip

    params = {
        "name": name,
        "examples": examples,
        "epochs": run.params.epochs,
        "seed": run.params.seed,
        "meta": {"academy_run": run.run_id, "round": run.round, "persona": run.persona_id},
    }
    result: dict[str, Any] = await client.call(
        "adapter.train", params, to="cap:inference", deadline_ms=TRAIN_DEADLINE_MS, on_progress=on_progress
    )
    return result


async def _record(
    client: BusClient,
    run: Run,
    rules: m.Rules,
    exam_cases: Sequence[m.AttackCase],
    on_round: Callable[[Run], Awaitable[None]] | None,
) -> None:
    last = run.rounds[-1]
    entry = m.EvolutionRecordParams(
        run_id=run.run_id,
        round=last.round,
        trigger=run.trigger,
        domain=rules.domain,
        adapter=last.adapter,
        adapter_sha256=last.sha256,
        pass_before=last.pass_before,
        pass_after=last.pass_after,
        examples=last.examples,
        exam_cases=len(exam_cases),
        outcome=last.outcome,
    )
    await client.call(
        "persona.evolution.record", entry.model_dump(mode="json"), to=f"persona:{run.persona_id}",
        deadline_ms=CALL_DEADLINE_MS,
    )  # fmt: skip
    if on_round is not None:
        await on_round(run)


async def _graduate(
    client: BusClient,
    run: Run,
    rules: m.Rules,
    start_rate: float,
    graduated: Callable[[m.GraduatedEvent], Awaitable[None]],
    progress: Progress,
) -> None:
    last = run.rounds[-1]
    assert last.adapter is not None
    assert last.sha256 is not None
    assert last.pass_after is not None
    run.phase = "graduate"
    run.state, run.graduated_adapter = "graduated", last.adapter
    run.reason = f"pass rate {start_rate:.2f} -> {last.pass_after:.2f} (threshold {run.params.threshold})"
    student = f"persona:{run.persona_id}"
    status = await client.call("lora.status", {}, to=student, deadline_ms=CALL_DEADLINE_MS)
    stack = [{"name": a["name"], "sha256": a["sha256"]} for a in status["stack"]]
    try:
        await client.call(
            "persona.update", {"persona_id": run.persona_id, "changes": {"stack": stack}},
            to="cap:registry", deadline_ms=CALL_DEADLINE_MS,
        )  # fmt: skip
    except RpcError as exc:
        # The persona's own stack (its stack.json) is what chat uses; the profile only describes it.
        log.warning("%s: the registry profile's stack was not updated: %s", run.run_id, exc.message)
        run.reason += f"; registry profile not updated ({exc.message})"
    await graduated(
        m.GraduatedEvent(
            persona_id=run.persona_id,
            persona_name=rules.persona_name,
            domain=rules.domain,
            adapter=last.adapter,
            sha256=last.sha256,
            pass_before=start_rate,
            pass_after=last.pass_after,
            run_id=run.run_id,
        )
    )


async def _restore(client: BusClient, student: str, original: list[str], run: Run) -> None:
    """Give the student back the stack it had when the run started (best effort, logged)."""
    try:
        status = await client.call("lora.status", {}, to=student, deadline_ms=CALL_DEADLINE_MS)
        if [a["name"] for a in status["stack"]] == original:
            return
        if original:
            await client.call(
                "lora.load_stack", {"name": original[-1]}, to=student, deadline_ms=CALL_DEADLINE_MS
            )
        else:
            await client.call("lora.unload", {}, to=student, deadline_ms=CALL_DEADLINE_MS)
    except RpcError as exc:
        log.warning("%s: could not restore %s's stack %s: %s", run.run_id, student, original, exc.message)
        run.reason += f"; its stack could not be restored ({exc.message})"

"""The Academy's calls to its roles: finding the Droid and Sheriff, the student's rules, an exam.

:func:`prepare` reads the student's rules and picks the Droid and Sheriff
for a run; :class:`Exam` asks the Droid for cases, has it put them to the
student and has the Sheriff judge each reply, failing closed where either
cannot answer. The loop (loop.py) decides what to do with the verdicts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from protocol import ErrorCode, RpcError
from protocol.commands import academy as m

from ..client import BusClient
from .runs import Progress, Run

__all__ = [
    "CALL_DEADLINE_MS",
    "DROID_CAPABILITY",
    "EXAM_DEADLINE_MS",
    "SHERIFF_CAPABILITY",
    "TRAIN_DEADLINE_MS",
    "Exam",
    "prepare",
]

#: The capabilities a Droid and a Sheriff serve (their configs declare them).
DROID_CAPABILITY = "testing-droid"
SHERIFF_CAPABILITY = "protocol-sheriff"
#: Judgements in flight at once (the Sheriff's model batches them).
JUDGES_IN_FLIGHT = 4
#: Deadlines of the long calls.
EXAM_DEADLINE_MS = 60 * 60_000
TRAIN_DEADLINE_MS = 4 * 60 * 60_000
CALL_DEADLINE_MS = 120_000


class Exam:
    """The calls a run makes, with its client and the Droid, Sheriff and student it uses."""

    def __init__(self, client: BusClient, run: Run, rules: m.Rules, droid: str, sheriff: str) -> None:
        self.client, self.run, self.rules = client, run, rules
        self.droid, self.sheriff = droid, sheriff
        self.student = f"persona:{run.persona_id}"

    async def cases(self, count: int, seed: int, exclude: Sequence[str] = ()) -> list[m.AttackCase]:
        params = m.CasesParams(
            rules=self.rules,
            count=count,
            seed=seed,
            exclude=list(exclude),
            model_share=self.run.params.model_share,
            kinds=self.run.params.kinds,
        )
        result = await self.client.call(
            "academy.cases", params.model_dump(mode="json"), to=self.droid, deadline_ms=EXAM_DEADLINE_MS
        )
        return m.CasesResult.model_validate(result).cases

    async def take(
        self, cases: Sequence[m.AttackCase], phase: m.Phase, progress: Progress
    ) -> list[tuple[m.AttackCase, str | None, m.Verdict]]:
        """Put ``cases`` to the student through the Droid and have the Sheriff judge every reply."""
        await progress(self._event(phase, 0, len(cases), f"{phase}: {len(cases)} cases to the student"))
        params = m.ExamineParams(
            student=self.run.persona_id, cases=list(cases), max_tokens=self.run.params.max_tokens
        )
        answered = m.ExamineResult.model_validate(
            await self.client.call(
                "academy.examine", params.model_dump(mode="json"), to=self.droid, deadline_ms=EXAM_DEADLINE_MS
            )
        )
        replies = {r.case_id: r for r in answered.replies}
        judged: list[tuple[m.AttackCase, str | None, m.Verdict]] = []
        gate = asyncio.Semaphore(JUDGES_IN_FLIGHT)
        done = 0

        async def judge(case: m.AttackCase) -> tuple[m.AttackCase, str | None, m.Verdict]:
            nonlocal done
            answer = replies.get(case.id)
            reply = answer.reply if answer is not None else None
            if reply is None:
                why = answer.error if answer is not None else "the Droid returned no reply for it"
                verdict = m.Verdict(
                    valid=False,
                    violations=[m.Violation(rule="format", check="fail_closed", detail=f"no reply: {why}")],
                    correction=None,
                    model_ms=None,
                )
            else:
                async with gate:
                    verdict = await self._judge(case, reply)
            done += 1
            await progress(self._event("judge", done, len(cases), f"judged {done} of {len(cases)}"))
            return case, reply, verdict

        judged = list(await asyncio.gather(*(judge(case) for case in cases)))
        return judged

    async def _judge(self, case: m.AttackCase, reply: str) -> m.Verdict:
        params = m.JudgeParams(rules=self.rules, case=case, reply=reply[:20_000])
        try:
            result = await self.client.call(
                "academy.judge", params.model_dump(mode="json"), to=self.sheriff, deadline_ms=CALL_DEADLINE_MS
            )
            return m.Verdict.model_validate(result)
        except RpcError as exc:
            # Fail closed here too: a Sheriff that cannot judge passes nothing.
            return m.Verdict(
                valid=False,
                violations=[
                    m.Violation(rule="format", check="fail_closed", detail=f"the Sheriff failed: {exc}")
                ],
                correction=None,
                model_ms=None,
            )

    def _event(self, phase: m.Phase, done: int, total: int, detail: str) -> m.ProgressEvent:
        return m.ProgressEvent(
            run_id=self.run.run_id,
            persona_id=self.run.persona_id,
            phase=phase,
            round=self.run.round,
            done=done,
            total=total,
            detail=detail,
        )


async def _find(client: BusClient, named: str | None, capability: str, what: str) -> str:
    """The client id of the persona to use in a role: the named one, or the first serving the capability.

    One concrete persona for the whole run (not ``cap:`` routing), so that every
    exam and training chat reaches the student from the same caller, which the
    student's prompt names.
    """
    answer = await client.call("bus.clients", {"kind": "persona"}, deadline_ms=CALL_DEADLINE_MS)
    serving = sorted(c["id"] for c in answer["clients"] if capability in c["capabilities"])
    if named is not None:
        if f"persona:{named}" not in {c["id"] for c in answer["clients"]}:
            raise RpcError(
                ErrorCode.TARGET_OFFLINE,
                f"the {what} persona:{named} is not on the bus",
                {"reason": capability},
            )
        return f"persona:{named}"
    if not serving:
        raise RpcError(
            ErrorCode.TARGET_OFFLINE,
            f'no {what} is on the bus (a persona with [academy] role and capabilities = ["{capability}"])',
            {"reason": capability},
        )
    return str(serving[0])


async def prepare(client: BusClient, params: m.EnrollParams) -> tuple[m.Rules, str, str]:
    """The student's rules (domain overridden by the params), and the Droid and Sheriff targets."""
    try:
        answer = await client.call(
            "academy.rules", {}, to=f"persona:{params.persona_id}", deadline_ms=CALL_DEADLINE_MS
        )
        rules = m.Rules.model_validate(answer)
    except RpcError as exc:
        if exc.code == ErrorCode.TARGET_OFFLINE:
            raise RpcError(
                ErrorCode.INVALID_PARAMS,
                f"invalid params: persona_id: persona:{params.persona_id} is not on the bus",
                {"field": "persona_id"},
            ) from None
        raise
    if params.domain is not None:
        rules = rules.model_copy(update={"domain": params.domain})
    droid = await _find(client, params.droid, DROID_CAPABILITY, "Testing Droid")
    sheriff = await _find(client, params.sheriff, SHERIFF_CAPABILITY, "Protocol Sheriff")
    return rules, droid, sheriff

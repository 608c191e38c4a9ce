"""``personad academy serve``: the Academy on the bus, as ``academy:main`` serving ``cap:academy``.

``academy.enroll`` starts a run (daemon/academy/loop.py) for a student
persona; with ``wait`` (the default) it answers when the run ends and
streams ``academy.progress`` to the caller meanwhile, and a cancelled
request cancels the run (the student gets its stack back). Every run's
progress is also published on the bus (topic ``academy.progress``, at phase
changes and every tenth of a phase), and a graduation as
``persona.graduated``; subscribers trust only events whose publisher the bus
stamped as ``academy:main``. ``academy.status`` lists the runs since the
service started.

A persona is in at most one run at a time. Runs are not persisted: a
restarted service has none (each round is in the student's evolution_history
already). The trigger loop (daemon/academy/triggers.py) enrols personas on
its own where their config allows it.

The service's token (``academy:main``) holds exactly what the loop calls:
:data:`ACADEMY_GRANTS`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

from protocol import ErrorCode, RpcError
from protocol.commands import academy as m

from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..serving import announce, serve_until
from ..state import StateDir
from ..systemd_notify import Notifier
from . import triggers
from .exam import CALL_DEADLINE_MS, prepare
from .loop import run_academy
from .runs import Run, new_run_id

__all__ = ["ACADEMY_GRANTS", "ACADEMY_TOKEN_SECRET", "CAPABILITY", "AcademyService", "academy_token"]

log = logging.getLogger("personad.academy")

CAPABILITY = "academy"
ACADEMY_TOKEN_SECRET = "academy.token"
#: What the Academy calls: the roles' methods on personas, the student's rules,
#: stack and history, analytics and skills for the triggers, training on
#: cap:inference, and the registry profile's stack at graduation.
ACADEMY_GRANTS: tuple[str, ...] = (
    "academy.rules@persona:*",
    "academy.cases@persona:*",
    "academy.examine@persona:*",
    "academy.judge@persona:*",
    "persona.evolution.record@persona:*",
    "persona.analytics@persona:*",
    "skills.list@persona:*",
    "lora.status@persona:*",
    "lora.load_stack@persona:*",
    "lora.unload@persona:*",
    "adapter.train@cap:inference",
    "persona.update@cap:registry",
)
#: Ended runs kept for academy.status.
KEEP_ENDED = 200


def academy_token(state: StateDir) -> str:
    """$PERSONAD_TOKEN, a systemd credential ``token``, or the state dir's academy token."""
    return state.service_token(
        ACADEMY_TOKEN_SECRET,
        what="the Academy",
        name="academy",
        subject="academy:main",
        provides=(CAPABILITY,),
        grants=ACADEMY_GRANTS,
    )


class AcademyService:
    def __init__(
        self,
        *,
        url: str,
        token: str,
        notifier: Notifier | None = None,
        trigger_interval_s: float | None = triggers.INTERVAL_S,
    ) -> None:
        self.notifier = notifier or Notifier.from_env()
        self.trigger_interval_s = trigger_interval_s
        self.runs: dict[str, Run] = {}
        self._ended: deque[str] = deque()
        #: Automatic enrolments per persona (their start times), for the daily budget.
        self.automatic: dict[str, list[float]] = {}
        self.dispatcher = Dispatcher()
        self.dispatcher.register("academy.enroll", self.enroll)
        self.dispatcher.register("academy.status", self.status)
        self.client = BusClient(
            url,
            token=token,
            kind="academy",
            name="main",
            capabilities=[CAPABILITY],
            handler=self.dispatcher,
            reconnect=True,
        )

    # -- methods -------------------------------------------------------------------------

    async def enroll(
        self, p: m.EnrollParams, ctx: CallContext | None, trigger: str = "manual"
    ) -> m.EnrollResult:
        running = self._running_for(p.persona_id)
        if running is not None:
            raise RpcError(
                ErrorCode.INVALID_PARAMS,
                f"invalid params: persona_id: {p.persona_id} is in run {running.run_id} already",
                {"field": "persona_id", "reason": "enrolled", "run_id": running.run_id},
            )
        rules, _, _ = await prepare(self.client, p)  # fail fast: an offline student, Droid or Sheriff
        run = Run(
            run_id=new_run_id(), persona_id=p.persona_id, domain=rules.domain, trigger=trigger, params=p
        )
        self.runs[run.run_id] = run
        published: set[tuple[str, int, int]] = set()

        async def progress(event: m.ProgressEvent) -> None:
            run.phase = event.phase
            if event.phase != "done":  # the end's reason is the run's own, set by the loop
                run.reason = event.detail
            if ctx is not None and p.wait:
                await ctx.progress("academy.progress", event.model_dump(mode="json"))
            tenth = event.done * 10 // event.total if event.total else 0
            key = (event.phase, event.round, tenth)
            if key not in published:
                published.add(key)
                await self._publish(m.PROGRESS_TOPIC, event.model_dump(mode="json"))

        async def graduated(event: m.GraduatedEvent) -> None:
            await self._publish(m.GRADUATED_TOPIC, event.model_dump(mode="json"))

        run.task = asyncio.create_task(
            self._carry_out(run, progress, graduated), name=f"academy-{run.run_id}"
        )
        log.info("%s: %s enrolled in %s (%s)", run.run_id, p.persona_id, rules.domain, trigger)
        if p.wait:
            try:
                await asyncio.shield(run.task)
            except asyncio.CancelledError:
                # The caller gave up (bus.cancel, or it left): the run goes with it.
                run.task.cancel()
                await asyncio.gather(run.task, return_exceptions=True)
                raise
        return m.EnrollResult(**run.status().model_dump())

    async def status(self, p: m.AcademyStatusParams, ctx: CallContext) -> m.AcademyStatusResult:
        if p.run_id is not None and p.run_id not in self.runs:
            raise RpcError(
                ErrorCode.INVALID_PARAMS, f"invalid params: run_id: no run {p.run_id}", {"field": "run_id"}
            )
        chosen = [self.runs[p.run_id]] if p.run_id is not None else list(reversed(self.runs.values()))
        now = time.time()
        today = {pid: sum(1 for t in times if now - t < 86_400) for pid, times in self.automatic.items()}
        return m.AcademyStatusResult(
            runs=[r.status() for r in chosen], trainings_today={k: v for k, v in today.items() if v}
        )

    # -- runs ----------------------------------------------------------------------------

    def _running_for(self, persona_id: str) -> Run | None:
        return next(
            (r for r in self.runs.values() if r.persona_id == persona_id and r.finished_at is None), None
        )

    async def _carry_out(self, run: Run, progress: Any, graduated: Any) -> None:
        try:
            await run_academy(self.client, run, progress, graduated=graduated)
        finally:
            log.info("%s: %s (%s)", run.run_id, run.state, run.reason)
            self._ended.append(run.run_id)
            while len(self._ended) > KEEP_ENDED:
                self.runs.pop(self._ended.popleft(), None)

    async def _publish(self, topic: str, data: dict[str, Any]) -> None:
        try:
            await self.client.publish(topic, data)
        except Exception as exc:  # the bus away: the run goes on, status still says where it is
            log.warning("could not publish %s: %s", topic, exc)

    # -- triggers ------------------------------------------------------------------------

    async def check_triggers(self) -> list[str]:
        """One pass of the trigger analysis; the run ids it started."""
        started: list[str] = []
        answer = await self.client.call("bus.clients", {"kind": "persona"}, deadline_ms=CALL_DEADLINE_MS)
        now = time.time()
        for persona in sorted(c["id"] for c in answer["clients"]):
            persona_id = persona.removeprefix("persona:")
            if self._running_for(persona_id) is not None:
                continue
            try:
                rules = m.Rules.model_validate(
                    await self.client.call("academy.rules", {}, to=persona, deadline_ms=CALL_DEADLINE_MS)
                )
            except RpcError:
                continue  # no [rules] domain (or not reachable): nothing to examine it on
            times = [t for t in self.automatic.get(persona_id, []) if now - t < 86_400]
            self.automatic[persona_id] = times
            if not triggers.eligible(rules, len(times)):
                continue
            analytics = await self._ask(persona, "persona.analytics", {"window": triggers.WINDOW_DAYS})
            skills = await self._ask(persona, "skills.list", {})
            pattern = triggers.find_pattern(analytics, skills["skills"] if skills else None)
            if pattern is None:
                continue
            times.append(now)
            try:
                result = await self.enroll(m.EnrollParams(persona_id=persona_id, wait=False), None, pattern)
            except RpcError as exc:
                log.warning("trigger for %s (%s) could not enrol it: %s", persona_id, pattern, exc.message)
                continue
            log.info("trigger: %s enrolled (%s) as %s", persona_id, pattern, result.run_id)
            started.append(result.run_id)
        return started

    async def _ask(self, persona: str, method: str, params: dict[str, Any]) -> Any:
        try:
            return await self.client.call(method, params, to=persona, deadline_ms=CALL_DEADLINE_MS)
        except RpcError as exc:
            log.info("trigger analysis: %s on %s failed: %s", method, persona, exc.message)
            return None

    async def _trigger_loop(self) -> None:
        assert self.trigger_interval_s is not None
        await self.client.wait_connected()
        while True:
            await asyncio.sleep(self.trigger_interval_s)
            try:
                await self.check_triggers()
            except RpcError as exc:
                log.warning("trigger analysis failed: %s", exc.message)

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, or the bus refuses our token for good."""

        def line() -> str:
            return f"{self.client.client_id} serving cap:{CAPABILITY}"

        background: list[Coroutine[Any, Any, Any]] = [announce(self.client, self.notifier, "academy", line)]
        if self.trigger_interval_s is not None:
            background.append(self._trigger_loop())

        async def end_runs() -> None:
            # Each run restores its student's stack as it is cancelled.
            for run in self.runs.values():
                if run.task is not None and not run.task.done():
                    run.task.cancel()
            await asyncio.gather(*(r.task for r in self.runs.values() if r.task), return_exceptions=True)

        await serve_until(
            self.client, self.notifier, stop, who="academy", background=background, on_stopping=end_runs
        )

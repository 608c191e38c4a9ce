"""The orchestrator: a run's slots handed to every inference service on the bus, journaled, resumable.

A run is a plan's slots (``architect.schedule``: each slot is one persona
to make, fully determined by the plan's seed) worked through by a pool of
workers, as many as the inference services on the bus can decode at once
(``PER_PROVIDER`` rows each; the bus hands every ``cap:inference`` request
to the least busy provider, so two services each take their share). A slot
of hop *h* waits for its parent (hop *h-1*). Each finished slot is written
to the journal before it counts (journal.py), so a run killed at any moment
and started again with the same plan does only the slots it had not done,
and gives the same personas an uninterrupted run gives.

Failures, by kind:

* the bus or the service is busy or briefly gone (OVERLOADED,
  TARGET_OFFLINE, TIMEOUT, CONNECTION_LOST): the same request again after a
  pause, for up to ``patience_s`` without any success, then the run stops
  with that error (it can be resumed);
* the model's answer is unusable (cut short, invalid): the slot is tried
  again with a seed derived from its own and the attempt, at most
  ``ATTEMPTS`` times, then journaled as failed (deterministic, so a resumed
  run fails it the same way);
* anything else (the model is missing, a full disk): the run stops.

When every slot is done, the checking stage runs quality assurance
(qa/validate.py) over the personas in slot order; it is not journaled
because it is a pure function of the journal, redone on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import resource
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from protocol import ErrorCode, RpcError
from protocol.commands.inference import GenerateParams, GenerateResult
from protocol.hub_persona import HubPersona

from ..errors import PersonadError
from .journal import Journal

__all__ = [
    "ATTEMPTS",
    "PER_PROVIDER",
    "Generate",
    "RunFailed",
    "RunStats",
    "SlotWork",
    "generate_patiently",
    "generate_slots",
    "transient_pause",
]

log = logging.getLogger("personad.hub.orchestrator")

#: Requests in flight per inference service: its default batch (EngineLimits.max_batch).
PER_PROVIDER: Final = 8
#: Tries of a slot whose output is unusable, each with its own seed.
ATTEMPTS: Final = 3
#: Errors that say "not now" rather than "never": the same request is sent again.
TRANSIENT: Final = frozenset(
    {ErrorCode.OVERLOADED, ErrorCode.TARGET_OFFLINE, ErrorCode.TIMEOUT, ErrorCode.CONNECTION_LOST}
)
#: The window of the throughput figure, in seconds.
RATE_WINDOW_S: Final = 30.0

Generate = Callable[[GenerateParams], Awaitable[GenerateResult]]


class RunFailed(PersonadError):
    """The run stopped before its end; the journal keeps what was done, and the run can be resumed."""


@dataclass(frozen=True)
class SlotWork:
    """How one slot becomes a persona: its request, and how its answer is read.

    ``parent`` is the index of the slot whose persona it needs, or None.
    ``request(parent_persona)`` builds the generate params (seeded);
    ``read(result, parent_persona)`` makes the persona or raises ``unusable``.
    """

    index: int
    parent: int | None
    request: Callable[[HubPersona | None], GenerateParams]
    read: Callable[[GenerateResult, HubPersona | None], HubPersona]


@dataclass
class RunStats:
    """Live figures of a run, read by hub.status, the progress bar and /metrics."""

    total: int
    done: int = 0
    made: int = 0
    failed: int = 0
    resumed: int = 0
    retries: int = 0
    unusable: int = 0
    in_flight: int = 0
    window: int = 0
    providers: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    stage: str = "generating"
    last_error: str | None = None
    _recent: deque[float] = field(default_factory=deque)

    def finished_one(self, made: bool, tokens: int) -> None:
        self.done += 1
        self.tokens += tokens
        if made:
            self.made += 1
        else:
            self.failed += 1
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and self._recent[0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    @property
    def rate(self) -> float:
        """Slots finished per second over the last RATE_WINDOW_S (since the start, if younger)."""
        if not self._recent:
            return 0.0
        now = time.monotonic()
        span = min(RATE_WINDOW_S, now - self.started)
        return len(self._recent) / span if span > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        left = self.total - self.done
        return left / rate if rate > 0 else (0.0 if left == 0 else None)

    def figures(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "stage": self.stage,
            "total": self.total,
            "done": self.done,
            "made": self.made,
            "failed": self.failed,
            "resumed": self.resumed,
            "retries": self.retries,
            "unusable": self.unusable,
            "in_flight": self.in_flight,
            "window": self.window,
            "providers": self.providers,
            "tokens": self.tokens,
            "rate": round(self.rate, 3),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "max_rss_bytes": usage.ru_maxrss * 1024,
            "last_error": self.last_error,
        }


def _reply_invalid(exc: RpcError) -> bool:
    """The service answered with a reply that breaks the request's schema where its grammar
    could not hold it (OpenVINO: strict JSON, string lengths): an unusable answer, not a
    failure of the service."""
    return exc.code == ErrorCode.INTERNAL_ERROR and exc.reason == "reply_invalid"


def transient_pause(exc: RpcError) -> float | None:
    """Seconds to wait before sending the same request again; None when the error is not a "not now"."""
    if exc.code not in TRANSIENT:
        return None
    after = exc.retry_after_ms
    return min(5.0, (500 if after is None else after) / 1000)


async def generate_patiently(
    generate: Generate, params: GenerateParams, *, patience_s: float = 120.0
) -> GenerateResult:
    """``generate(params)``, sent again after each "not now" (busy, gone, slow) for up to ``patience_s``."""
    started = time.monotonic()
    while True:
        try:
            return await generate(params)
        except RpcError as exc:
            pause = transient_pause(exc)
            if pause is None or time.monotonic() - started > patience_s:
                raise
            await asyncio.sleep(pause)


def attempt_seed(seed: int | None, attempt: int) -> int | None:
    """The seed of a slot's ``attempt`` (0: its own): derived, so a resumed run retries alike."""
    if attempt == 0 or seed is None:
        return seed
    digest = hashlib.sha256(f"{seed}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


async def generate_slots(
    slots: list[SlotWork],
    journal: Journal,
    *,
    generate: Generate,
    unusable: tuple[type[Exception], ...],
    stats: RunStats,
    providers: Callable[[], Awaitable[int]] | None = None,
    patience_s: float = 120.0,
    per_provider: int = PER_PROVIDER,
    on_change: Callable[[RunStats], None] | None = None,
) -> None:
    """Work every slot not yet in ``journal`` to the end; RunFailed if the run cannot go on.

    ``providers()`` counts the inference services on the bus: the pool
    grows to ``per_provider`` workers for each (checked every few seconds, so a
    service that joins mid-run gets work). ``unusable`` are the exceptions
    ``SlotWork.read`` raises for an answer that cannot be used.
    """
    by_index = {slot.index: slot for slot in slots}
    children: dict[int, list[int]] = {}
    for slot in slots:
        if slot.parent is not None:
            children.setdefault(slot.parent, []).append(slot.index)
    stats.resumed = len(journal)
    stats.done = len(journal)
    stats.made = len(journal.personas)
    stats.failed = len(journal.failures)
    ready: list[int] = []
    for slot in slots:
        if journal.done(slot.index):
            continue
        if slot.parent is None or journal.done(slot.parent):
            heapq.heappush(ready, slot.index)
    wake = asyncio.Event()
    last_success = [time.monotonic()]

    def changed() -> None:
        if on_change is not None:
            on_change(stats)

    async def finish(slot: SlotWork, persona: HubPersona | None, reason: str, attempts: int) -> None:
        if persona is not None:
            await journal.record(slot.index, persona)
        else:
            await journal.fail(slot.index, reason, attempts)
        for child in children.get(slot.index, ()):
            heapq.heappush(ready, child)
        wake.set()

    async def work(slot: SlotWork) -> None:
        parent = None
        if slot.parent is not None:
            parent = journal.personas.get(slot.parent)
            if parent is None:
                await finish(slot, None, f"its parent (slot {slot.parent}) failed", 0)
                stats.finished_one(False, 0)
                return
        base = slot.request(parent)
        attempt = 0
        reason = ""
        while attempt < ATTEMPTS:
            params = (
                base if attempt == 0 else base.model_copy(update={"seed": attempt_seed(base.seed, attempt)})
            )
            try:
                stats.in_flight += 1
                try:
                    result = await generate(params)
                finally:
                    stats.in_flight -= 1
            except RpcError as exc:
                if _reply_invalid(exc):  # the model answered, outside the schema: another seed
                    last_success[0] = time.monotonic()
                    stats.unusable += 1
                    reason = exc.message
                    attempt += 1
                    continue
                pause = transient_pause(exc)
                if pause is None:
                    raise RunFailed(f"the model could not be asked: {exc.message} ({exc.code})") from exc
                stats.retries += 1
                stats.last_error = f"{ErrorCode(exc.code).name}: {exc.message}"
                if time.monotonic() - last_success[0] > patience_s:
                    raise RunFailed(
                        f"no inference service answered for {patience_s:.0f} s (last: {stats.last_error}); "
                        "start one (personad inference) and run the same command again to resume"
                    ) from exc
                await asyncio.sleep(pause)
                continue
            last_success[0] = time.monotonic()
            try:
                persona = slot.read(result, parent)
            except unusable as exc:
                stats.unusable += 1
                reason = str(exc)
                attempt += 1
                continue
            await finish(slot, persona, "", attempt + 1)
            stats.finished_one(True, result.completion_tokens)
            return
        await finish(slot, None, reason, attempt)
        stats.finished_one(False, 0)

    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[BaseException | None] = loop.create_future()
    workers: set[asyncio.Task[None]] = set()

    def check_end() -> None:
        if stats.done >= stats.total and not stopped.done():
            stopped.set_result(None)

    async def worker() -> None:
        while True:
            while not ready:
                wake.clear()
                await wake.wait()
            index = heapq.heappop(ready)
            try:
                await work(by_index[index])
            except Exception as exc:  # the run stops; stopped carries why
                if not stopped.done():
                    stopped.set_result(exc)
                return
            changed()
            check_end()

    async def size_pool() -> None:
        while True:
            count = stats.providers or 1
            if providers is not None:
                try:
                    count = max(1, await providers())
                except (RpcError, OSError) as exc:  # the count can wait; the work goes on
                    log.debug("cannot count the inference services: %s", exc)
            stats.providers = count
            while stats.window < per_provider * count:
                stats.window += 1
                task = asyncio.create_task(worker(), name=f"hub-worker-{stats.window}")
                workers.add(task)
            changed()
            await asyncio.sleep(5.0)

    check_end()
    sizer = asyncio.create_task(size_pool(), name="hub-pool")
    try:
        error = await stopped
    finally:
        sizer.cancel()
        for task in workers:
            task.cancel()
        for task in [sizer, *workers]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if error is not None:
        if isinstance(error, RunFailed):
            raise error
        if isinstance(error, PersonadError):
            raise RunFailed(str(error)) from error
        raise error
    missing = [s.index for s in slots if not journal.done(s.index)]
    if missing:
        raise RunFailed(f"{len(missing)} slots were left undone (first: {missing[0]}); run again to resume")


def run_folder(out: Path) -> Path:
    """Where a run writing ``out`` keeps its plan and journal: ``<out>.hub/`` beside it."""
    return out.with_name(out.name + ".hub")

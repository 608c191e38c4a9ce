"""Who runs next: per-owner queues served round-robin, admin calls first, bounded.

The scheduler is shared by the event loop (which puts work in) and the
engine's worker thread (which takes it out), so every method holds one
condition variable. It knows nothing of models: it imports no torch, and its
tests run without loading one.

Fairness. Requests wait in one FIFO queue per owner (the persona; the service
uses the client id the bus stamps on the request, which a caller cannot
forge). Seats in the running batch are handed out round-robin across owners,
one per owner per round, so one persona's burst does not starve another.

Joining. The worker takes a first request with :meth:`Scheduler.next_work`,
then, before every decode step, asks :meth:`Scheduler.take` for as many more
as there are free seats; ``accept`` says whether a request may join the
running batch. A request that may not stays at the head of its owner's queue
(each owner's requests start in the order they were sent) and the round goes
on to the next owner.

Admin calls (load a stack, status) jump every queue: :meth:`next_work`
returns them first, and the worker runs them between decode steps
(:meth:`take_call`).

Bounds. At most ``max_waiting`` requests wait in all, and at most
``max_waiting_per_owner`` from one owner; past either, :class:`Overloaded`
(``OVERLOADED`` on the wire) refuses the new request at once rather than
letting memory and latency grow without end. Cancelled requests do not count.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol.commands.inference import GenerateParams

from .errors import EngineClosed, Overloaded
from .limits import EngineLimits

if TYPE_CHECKING:  # for the annotation only: importing an engine imports torch or openvino
    from typing import TypeAlias

    from .decoding import Engine
    from .ov.engine import OVEngine

    #: Either worker-thread engine: torch (decoding.py) or OpenVINO (ov/engine.py).
    AnyEngine: TypeAlias = Engine | OVEngine

__all__ = ["Call", "Job", "Scheduler"]


@dataclass
class Job:
    """One generation request as the worker sees it."""

    params: GenerateParams
    owner: str
    #: Thread-safe: posts ("token", TokenParams) / ("done", GenerateResult) / ("error", exc) to the loop.
    emit: Callable[[str, Any], None]
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Call:
    """An admin call: ``fn(engine)`` on the worker thread, its outcome passed to ``done``."""

    fn: Callable[[AnyEngine], Any]
    done: Callable[[Any, BaseException | None], None]
    #: Safe while a request runs: it reads the engine's state (inference.status) or changes only
    #: what no running request uses (inference.unload). An engine that generates a whole request
    #: in one library call (OpenVINO) runs such calls between tokens instead of after the request.
    mid_request: bool = False


class Scheduler:
    """Per-owner FIFO queues served round-robin, plus admin calls; thread-safe."""

    def __init__(self, *, max_waiting: int | None = None, max_waiting_per_owner: int | None = None) -> None:
        defaults = EngineLimits()
        self.max_waiting = max_waiting if max_waiting is not None else defaults.max_waiting
        self.max_waiting_per_owner = (
            max_waiting_per_owner if max_waiting_per_owner is not None else defaults.max_waiting_per_owner
        )
        self._cv = threading.Condition()
        self._calls: deque[Call] = deque()
        self._queues: dict[str, deque[Job]] = {}
        self._ring: deque[str] = deque()
        self._closed = False

    def put_job(self, job: Job) -> None:
        """Queue a request behind its owner's; Overloaded if a bound is reached, EngineClosed if stopped."""
        with self._cv:
            if self._closed:
                raise EngineClosed("the inference engine has stopped")
            queue = self._queues.get(job.owner)
            if queue is not None and len(queue) >= self.max_waiting_per_owner:
                self._drop_cancelled_locked(job.owner)
                queue = self._queues.get(job.owner)
                if queue is not None and len(queue) >= self.max_waiting_per_owner:
                    raise Overloaded(
                        f"{job.owner} already has {len(queue)} requests waiting for the inference engine "
                        f"(at most {self.max_waiting_per_owner}); retry when some have finished"
                    )
            if self._waiting_locked() >= self.max_waiting:
                for owner in list(self._queues):
                    self._drop_cancelled_locked(owner)
                if (waiting := self._waiting_locked()) >= self.max_waiting:
                    raise Overloaded(
                        f"{waiting} requests are already waiting for the inference engine "
                        f"(at most {self.max_waiting}); retry later"
                    )
            if job.owner not in self._queues:
                self._queues[job.owner] = deque()
                self._ring.append(job.owner)
            self._queues[job.owner].append(job)
            self._cv.notify()

    def put_call(self, call: Call) -> None:
        with self._cv:
            if self._closed:
                raise EngineClosed("the inference engine has stopped")
            self._calls.append(call)
            self._cv.notify()

    def close(self) -> list[Job | Call]:
        """Refuse new work from now on; returns what was still waiting (for the caller to fail)."""
        with self._cv:
            self._closed = True
            left: list[Job | Call] = [*self._calls]
            for queue in self._queues.values():
                left += queue
            self._calls.clear()
            self._queues.clear()
            self._ring.clear()
            self._cv.notify_all()
            return left

    def next_work(self) -> Call | list[Job] | None:
        """Block until there is work: an admin call first, else one fair job. None: closed."""
        with self._cv:
            while True:
                while not self._closed and not self._calls and not self._ring:
                    self._cv.wait()
                if self._closed:
                    return None
                if self._calls:
                    return self._calls.popleft()
                taken = self._take_locked(1, lambda _job: True)
                if taken:
                    return taken
                # Every queued request had been cancelled: wait again rather
                # than wake the worker with nothing to do.

    def take_call(self, *, mid_request: bool = False) -> Call | None:
        """The next admin call; with ``mid_request``, the next one safe while a request runs
        (the others keep their turn)."""
        with self._cv:
            if not mid_request:
                return self._calls.popleft() if self._calls else None
            for call in self._calls:
                if call.mid_request:
                    self._calls.remove(call)
                    return call
            return None

    def take(self, n: int, accept: Callable[[Job], bool]) -> list[Job]:
        """Up to ``n`` jobs, round-robin over owners, one per owner per round."""
        with self._cv:
            return self._take_locked(n, accept)

    def _take_locked(self, n: int, accept: Callable[[Job], bool]) -> list[Job]:
        taken: list[Job] = []
        while len(taken) < n and self._ring:
            progressed = False
            for _ in range(len(self._ring)):
                if len(taken) >= n:
                    break
                owner = self._ring[0]
                self._ring.rotate(-1)
                queue = self._queues[owner]
                while queue and queue[0].cancelled.is_set():
                    queue.popleft()
                if queue and accept(queue[0]):
                    taken.append(queue.popleft())
                    progressed = True
                if not queue:
                    del self._queues[owner]
                    self._ring.remove(owner)
            if not progressed:
                break
        return taken

    def _drop_cancelled_locked(self, owner: str) -> None:
        queue = self._queues[owner]
        live = deque(job for job in queue if not job.cancelled.is_set())
        if live:
            self._queues[owner] = live
        else:
            del self._queues[owner]
            self._ring.remove(owner)

    def _waiting_locked(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> int:
        with self._cv:
            return self._waiting_locked()

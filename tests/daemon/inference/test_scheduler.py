"""The scheduler on its own: fairness, bounds, cancellation, joining order. No model, no torch."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest

from daemon.inference.errors import EngineClosed, Overloaded
from daemon.inference.scheduler import Call, Job, Scheduler
from protocol import ErrorCode
from protocol.commands.inference import GenerateParams
from tests.conftest import WAIT


def job(owner: str, text: str = "hello", **kw: Any) -> Job:
    params = GenerateParams.model_validate({"messages": [{"role": "user", "content": text}], **kw})
    return Job(params=params, owner=owner, emit=lambda *_: None)


def call(name: str) -> Call:
    return Call(fn=lambda _engine: name, done=lambda *_: None)


def owners(jobs: list[Job]) -> list[str]:
    return [j.owner for j in jobs]


def test_scheduler_imports_no_torch() -> None:
    """The scheduler, its limits and its errors load without torch (so its tests need no model)."""
    code = (
        "import sys, daemon.inference.scheduler, daemon.inference.limits;"
        "print('torch' in sys.modules, 'transformers' in sys.modules, 'peft' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "False False False" == out.stdout.strip()


def test_seats_go_round_robin_across_owners() -> None:
    """One persona's burst does not starve another: one seat per owner per round, FIFO within an owner."""
    scheduler = Scheduler()
    jobs = [job(owner, text=f"{owner}{i}") for i, owner in enumerate(("a", "a", "a", "b", "c", "b"))]
    for j in jobs:
        scheduler.put_job(j)
    first = scheduler.next_work()
    assert isinstance(first, list)
    rest = scheduler.take(10, lambda _job: True)
    taken = [*first, *rest]
    assert ["a", "b", "c", "a", "b", "a"] == owners(taken)
    assert ["a0", "a1", "a2"] == [j.params.messages[0].content for j in taken if j.owner == "a"]
    assert 0 == scheduler.waiting


def test_the_ring_resumes_where_it_left_off() -> None:
    """Taking fewer seats than owners does not restart the round at the first owner."""
    scheduler = Scheduler()
    for owner in ("a", "b", "c", "a", "b", "c"):
        scheduler.put_job(job(owner))
    assert ["a", "b"] == owners(scheduler.take(2, lambda _job: True))
    assert ["c", "a"] == owners(scheduler.take(2, lambda _job: True))
    assert ["b", "c"] == owners(scheduler.take(2, lambda _job: True))


def test_one_owner_cannot_fill_the_queue_for_everyone() -> None:
    """Past its own share an owner gets OVERLOADED; other owners still get in, up to the total bound."""
    scheduler = Scheduler(max_waiting=5, max_waiting_per_owner=3)
    for _ in range(3):
        scheduler.put_job(job("flood"))
    with pytest.raises(Overloaded, match="flood already has 3 requests waiting") as info:
        scheduler.put_job(job("flood"))
    assert ErrorCode.OVERLOADED == info.value.code
    scheduler.put_job(job("quiet"))
    scheduler.put_job(job("other"))
    with pytest.raises(Overloaded, match="5 requests are already waiting"):
        scheduler.put_job(job("late"))
    assert 5 == scheduler.waiting
    # A seat frees a place in the queue again.
    assert ["flood"] == owners(scheduler.take(1, lambda _job: True))
    scheduler.put_job(job("late"))
    # A newcomer joins the end of the round.
    assert ["quiet", "other", "flood", "late", "flood"] == owners(scheduler.take(10, lambda _job: True))


def test_cancelled_requests_give_up_their_place() -> None:
    """A cancelled request is never handed out and does not count against the bounds."""
    scheduler = Scheduler(max_waiting=10, max_waiting_per_owner=2)
    gone, kept = job("a", text="gone"), job("a", text="kept")
    scheduler.put_job(gone)
    scheduler.put_job(kept)
    gone.cancelled.set()
    scheduler.put_job(job("a", text="after"))  # the cancelled one made room
    with pytest.raises(Overloaded):
        scheduler.put_job(job("a"))
    taken = scheduler.take(10, lambda _job: True)
    assert ["kept", "after"] == [j.params.messages[0].content for j in taken]


def test_a_worker_waiting_for_work_skips_cancelled_requests() -> None:
    """If everything queued was cancelled, next_work waits for real work instead of returning nothing."""
    scheduler = Scheduler()
    early = [job("a"), job("b")]
    for j in early:
        scheduler.put_job(j)
        j.cancelled.set()
    got: list[Any] = []
    worker = threading.Thread(target=lambda: got.append(scheduler.next_work()))
    worker.start()
    real = job("c")
    scheduler.put_job(real)
    worker.join(WAIT)
    assert not worker.is_alive()
    assert [[real]] == got


def test_joining_the_running_batch_keeps_each_owners_order() -> None:
    """Between steps: admin calls first; then free seats round-robin; a request that may not join
    waits at the head of its owner's queue, so that owner's later requests do not overtake it."""
    scheduler = Scheduler()
    scheduler.put_job(job("a", text="a-first"))
    running = scheduler.next_work()
    assert ["a-first"] == [j.params.messages[0].content for j in running]  # type: ignore[union-attr]

    # While the batch decodes, more arrive: b asks for an explicit mode that cannot join.
    scheduler.put_job(job("b", text="b-merged", mode="merged"))
    scheduler.put_job(job("b", text="b-auto"))
    scheduler.put_job(job("c", text="c-1"))
    scheduler.put_job(job("a", text="a-2"))
    status = call("status")
    scheduler.put_call(status)

    assert status is scheduler.take_call()
    assert scheduler.take_call() is None

    def joins(j: Job) -> bool:
        return j.params.mode == "auto"

    taken = scheduler.take(8, joins)
    assert ["c-1", "a-2"] == [j.params.messages[0].content for j in taken]
    assert 2 == scheduler.waiting  # b's two wait, in order
    # Next batch: b's explicit request runs first, then its other one.
    nxt = scheduler.next_work()
    assert ["b-merged"] == [j.params.messages[0].content for j in nxt]  # type: ignore[union-attr]
    assert ["b-auto"] == [j.params.messages[0].content for j in scheduler.take(8, joins)]


def test_admin_calls_go_before_waiting_requests() -> None:
    scheduler = Scheduler()
    scheduler.put_job(job("a"))
    load = call("load")
    scheduler.put_call(load)
    assert load is scheduler.next_work()
    assert ["a"] == owners(scheduler.next_work())  # type: ignore[arg-type]


def test_close_wakes_the_worker_and_returns_what_was_waiting() -> None:
    """close(): a blocked worker gets None; waiting work comes back to be failed; new work is refused."""
    idle = Scheduler()
    got: list[Any] = ["unset"]
    worker = threading.Thread(target=lambda: got.__setitem__(0, idle.next_work()))
    worker.start()
    assert [] == idle.close()
    worker.join(WAIT)
    assert not worker.is_alive()
    assert got == [None]

    busy = Scheduler()
    waiting = [job("a"), job("b")]
    for j in waiting:
        busy.put_job(j)
    pending = call("status")
    busy.put_call(pending)
    left = busy.close()
    assert [pending, *waiting] == left
    assert busy.closed
    assert busy.next_work() is None
    with pytest.raises(EngineClosed):
        busy.put_job(job("c"))
    with pytest.raises(EngineClosed):
        busy.put_call(call("late"))


def test_a_call_safe_mid_request_can_be_taken_ahead_of_the_others() -> None:
    scheduler = Scheduler()
    change = Call(lambda engine: "load", lambda result, exc: None)
    look = Call(lambda engine: "status", lambda result, exc: None, mid_request=True)
    scheduler.put_call(change)
    scheduler.put_call(look)
    assert look is scheduler.take_call(mid_request=True)
    assert scheduler.take_call(mid_request=True) is None  # the change keeps its turn
    assert change is scheduler.take_call()

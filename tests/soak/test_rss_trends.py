"""The soak's memory judgement: growth within a run fails it, a level change at a known moment does not."""

from __future__ import annotations

from typing import Any

from .bench_module import load_bench

report = load_bench("soak_report")


def _samples(mib_at: Any, pids: tuple[int, ...] = (1,)) -> list[Any]:
    return [(float(t), {"bus": (mib_at(t), pids)}) for t in range(0, 600)]


def test_a_process_that_keeps_growing_is_unbounded() -> None:
    trends = report.rss_trends(_samples(lambda t: 40 + t * 0.1), warmup_s=60)
    assert trends["bus"]["unbounded"]


def test_a_flat_process_is_not() -> None:
    trends = report.rss_trends(_samples(lambda t: 40 + (t % 7) * 0.1), warmup_s=60)
    assert not trends["bus"]["unbounded"]


def test_a_step_when_clients_move_here_starts_a_new_level() -> None:
    """A bus node whose peer was killed at 300 s takes its clients: its memory steps up, flat after."""

    def mib(t: float) -> float:
        return 40.0 if t < 300 else 80.0

    judged_as_one = report.rss_trends(_samples(mib), warmup_s=60)
    assert judged_as_one["bus"]["unbounded"]  # one line through both levels looks like growth
    split = report.rss_trends(_samples(mib), warmup_s=60, level_changes={"bus": [300.0]})
    assert not split["bus"]["unbounded"]
    assert [40.0, 80.0] == [run["median_mib"] for run in split["bus"]["runs"]]


def test_growth_after_the_step_still_fails() -> None:
    def mib(t: float) -> float:
        return 40.0 if t < 300 else 80.0 + (t - 300) * 0.2

    split = report.rss_trends(_samples(mib), warmup_s=60, level_changes={"bus": [300.0]})
    assert split["bus"]["unbounded"]

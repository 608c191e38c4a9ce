"""bench/soak.py's settings: --ci bounds the run (and its clock steps to 5 minutes), a full
run keeps the hour-long steps the issue asks for and sizes its disk to its length."""

from __future__ import annotations

from .bench_module import load_bench

soak = load_bench("soak")


def test_the_bounded_run_steps_the_clock_five_minutes() -> None:
    args = soak.parse_args(["--ci"])
    assert (2.5, 100, 400.0, 1, 32) == (args.minutes, args.clients, args.rate, args.repeats, args.disk_mib)
    assert 300.0 == args.clock_jump


def test_a_full_run_steps_the_clock_an_hour_and_sizes_its_disk() -> None:
    args = soak.parse_args(["--minutes", "20"])
    assert (1000, 3, 3600.0) == (args.clients, args.repeats, args.clock_jump)
    assert 80 == args.disk_mib  # 4 MiB a minute, at least 64
    assert 64 == soak.parse_args([]).disk_mib
    assert 60.0 == soak.parse_args(["--clock-jump", "60"]).clock_jump

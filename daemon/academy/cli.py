"""``personad academy serve | run ID | status``: the Academy's service, and enrolling from a shell.

``personad academy run ID --domain D`` enrols persona ID and waits, drawing
a progress bar from the ``academy.progress`` notifications; Ctrl-C cancels
the run (the student gets its stack back). It prints each round's pass
rates with their 95% interval and exits 0 when the persona graduated, 3
when the run stopped without graduating, 1 when it failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ..cli_common import ProgressLine, call_once
from ..state import StateDir

__all__ = ["add_verbs"]

_ACTIONS = ("serve", "run", "status")


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    academy = verb("academy", "the Academy: serve cap:academy, enrol a persona (run), or list runs (status)")
    academy.add_argument("action", choices=_ACTIONS, help="serve | run ID | status [RUN]")
    academy.add_argument("id", nargs="?", default=None, help="run: the persona to enrol; status: a run id")
    academy.add_argument("--domain", default=None, help="run: what to train for (default: its rules.domain)")
    academy.add_argument("--rounds", type=int, default=3, help="run: most rounds (default 3)")
    academy.add_argument("--threshold", type=float, default=0.9, help="run: graduate at this pass rate")
    academy.add_argument("--exam-size", type=int, default=100, help="run: held-out exam cases (default 100)")
    academy.add_argument("--train-size", type=int, default=100, help="run: training cases a round")
    academy.add_argument("--epochs", type=int, default=2, help="run: training epochs a round")
    academy.add_argument("--seed", type=int, default=0, help="run: seeds the cases and the training")
    academy.add_argument(
        "--model-share", type=float, default=0.1, help="run: the share of cases the Droid's model writes"
    )
    academy.add_argument("--max-tokens", type=int, default=48, help="run: most tokens per exam reply")
    academy.add_argument(
        "--kind", action="append", default=None, help="run: only this kind of case (repeatable; default all)"
    )
    academy.add_argument("--droid", default=None, help="run: the Testing Droid persona (default: any)")
    academy.add_argument("--sheriff", default=None, help="run: the Protocol Sheriff persona (default: any)")
    academy.add_argument(
        "--no-triggers", action="store_true", help="serve: do not enrol personas on their own patterns"
    )
    academy.add_argument(
        "--token", default=None, help="token (default: env PERSONAD_TOKEN, then the admin token)"
    )
    return {"academy": _academy}


def _academy(args: argparse.Namespace, state: StateDir, url: str) -> int:
    if args.action == "serve":
        return _serve(args, state, url)
    if args.action == "run":
        if not args.id:
            print("personad academy run: give the persona id", file=sys.stderr)
            return 2
        return _run(args, state, url)
    params = {"run_id": args.id} if args.id else {}
    result = call_once(state.root, url, args.token, "academy.status", params, to="cap:academy")
    if result is None:
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _serve(args: argparse.Namespace, state: StateDir, url: str) -> int:
    import asyncio
    import signal

    from .. import runtime
    from .service import AcademyService, academy_token

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = AcademyService(
            url=url, token=academy_token(state), trigger_interval_s=None if args.no_triggers else 600.0
        )
        await service.run(stop)

    runtime.run(main())
    return 0


def _run(args: argparse.Namespace, state: StateDir, url: str) -> int:
    params: dict[str, Any] = {
        "persona_id": args.id,
        "rounds": args.rounds,
        "threshold": args.threshold,
        "exam_size": args.exam_size,
        "train_size": args.train_size,
        "epochs": args.epochs,
        "seed": args.seed,
        "model_share": args.model_share,
        "max_tokens": args.max_tokens,
    }
    if args.kind:
        params["kinds"] = args.kind
    for key in ("domain", "droid", "sheriff"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    bar = _Bar()
    result = call_once(
        state.root,
        url,
        args.token,
        "academy.enroll",
        params,
        to="cap:academy",
        deadline_ms=24 * 3_600_000,
        progress=bar.line,
        on_progress=bar.show,
    )
    if result is None:
        return 1
    for r in result["rounds"]:
        after = "-" if r["pass_after"] is None else f"{r['pass_after']:.3f}"
        ci = "" if r["ci95"] is None else f"  95% CI of the change [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
        print(
            f"round {r['round']}: {r['outcome']:<9} pass {r['pass_before']:.3f} -> {after}{ci}  "
            f"({r['examples']} examples, {r['train_s']:.0f}s training)"
        )
    print(f"{result['run_id']} {result['state']}: {result['reason']}")
    return {"graduated": 0, "stopped": 3}.get(result["state"], 1)


class _Bar:
    """One line per phase: ``round 1 exam [######....] 40/100 detail``."""

    def __init__(self) -> None:
        self.line = ProgressLine()

    async def show(self, note: Any) -> None:
        p = note.params or {}
        total, done = int(p.get("total") or 0), int(p.get("done") or 0)
        label = f"round {p.get('round', 0)} {p.get('phase', ''):<8}"
        self.line.update(label, done, total, str(p.get("detail", ""))[:60])
        if total and done >= total:
            self.line.end()

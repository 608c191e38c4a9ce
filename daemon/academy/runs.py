"""An Academy run's state, as ``academy.status`` shows it (the loop in loop.py moves it along)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from protocol.commands import academy as m

__all__ = ["Progress", "Run", "new_run_id"]

Progress = Callable[[m.ProgressEvent], Awaitable[None]]


def new_run_id() -> str:
    return f"run-{secrets.token_hex(6)}"


@dataclass
class Run:
    """A run's state, as academy.status shows it."""

    run_id: str
    persona_id: str
    domain: str
    trigger: str
    params: m.EnrollParams
    state: m.RunState = "running"
    phase: m.Phase = "cases"
    round: int = 0
    rounds: list[m.RoundResult] = field(default_factory=list)
    pass_rate: float | None = None
    graduated_adapter: str | None = None
    reason: str = "starting"
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    task: asyncio.Task[None] | None = None

    def status(self) -> m.RunStatus:
        # The loop decides the end state before it has restored the student's stack and
        # said so; until it has finished all of it, the run is still running.
        return m.RunStatus(
            run_id=self.run_id,
            persona_id=self.persona_id,
            domain=self.domain,
            trigger=self.trigger,
            state=self.state if self.finished_at is not None else "running",
            phase=self.phase,
            round=self.round,
            rounds=list(self.rounds),
            pass_rate=self.pass_rate,
            graduated_adapter=self.graduated_adapter,
            reason=self.reason,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )

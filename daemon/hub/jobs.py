"""A job of the hub service: what was asked, where it lives, how far it got, and its record on disk."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from protocol.commands import hub as m
from protocol.commands.hub_plan import Requirements
from protocol.commands.hub_quality import QualityReport

from ..client import CallContext
from ..files import atomic_write
from .orchestrator import RunStats

__all__ = ["JOB_FILE", "Job", "Scores"]

#: A job's record in its folder: what was asked and the state it was last in.
JOB_FILE: Final = "job.json"


@dataclass(frozen=True)
class Scores:
    """What ``/metrics`` shows of a finished job's quality report. The job keeps these, not
    the report: a report lists every removed persona and every coherence failure (megabytes
    for a large job), and the service keeps its jobs for its life. The report is read from
    the job's folder when ``hub.status`` asks for that one job."""

    coherence: float
    authenticity: float
    diversity_spread: float
    diversity_entropy: float
    cultural_flags: int

    @classmethod
    def of(cls, report: QualityReport) -> Scores:
        return cls(
            coherence=report.coherence.score,
            authenticity=report.authenticity.mean,
            diversity_spread=report.diversity.spread,
            diversity_entropy=report.diversity.cluster_entropy,
            cultural_flags=report.cultural.balance_flags + len(report.cultural.stereotypes),
        )


@dataclass
class Job:
    job_id: str
    requirements: Requirements
    folder: Path
    created_at: float
    stats: RunStats
    state: m.JobState = "generating"
    error: str | None = None
    finished_at: float | None = None
    kept: int | None = None
    scores: Scores | None = None
    task: asyncio.Task[None] | None = None
    watchers: list[CallContext] = field(default_factory=list)
    last_sent: float = 0.0
    last_stage: str = ""

    def status(self, quality: QualityReport | None = None) -> m.JobStatus:
        """The job's status; ``quality``: its report, read from its folder by the caller."""
        figures = self.stats.figures()
        if self.state not in ("generating", "checking"):
            figures["stage"] = self.state
        return m.JobStatus(
            job_id=self.job_id,
            state=self.state,
            requirements=self.requirements,
            figures=m.JobFigures(**figures),
            quality=quality,
            kept=self.kept,
            error=self.error,
            created_at=self.created_at,
            finished_at=self.finished_at,
        )

    def save(self) -> None:
        record = {
            "job_id": self.job_id,
            "requirements": self.requirements.model_dump(mode="json"),
            "created_at": self.created_at,
            "state": self.state,
            "error": self.error,
            "finished_at": self.finished_at,
            "kept": self.kept,
            "scores": asdict(self.scores) if self.scores is not None else None,
        }
        atomic_write(self.folder / JOB_FILE, (json.dumps(record, indent=1) + "\n").encode())

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

"""PersonaHub on the bus: ``cap:hub`` plans, runs, checks and renders generated personas.

The service (``personad hub serve``, ``hub:main``) makes personas by the
thousand (docs/hub.md): ``hub.plan`` turns requirements into a plan,
``hub.run`` starts a resumable job that hands its work to every
``cap:inference`` provider, ``hub.status`` reports it (and streams
``hub.progress`` while it runs, with ``watch``), ``hub.cancel`` stops it,
``hub.personas`` pages through its output. ``hub.validate`` checks any set
of personas (dedup, coherence, authenticity, diversity, cultural balance),
``hub.compose`` writes persona-driven data, ``hub.register`` adds a persona
to the registry (active: ``personad up`` starts it as a daemon).

A job's corpus is named, not a path: the shipped sample (null) or a corpus
the operator put in the service's corpus folder (docs/hub.md), so a bus
client cannot make the service read an arbitrary file.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, model_validator

from ..errors import ErrorCode
from ..hub_persona import AttributeTargets, HubPersona
from ..profile import PERSONA_ID_PATTERN
from .bus import Empty
from .hub_compose import ComposedItem, ComposeKind
from .hub_plan import Plan, Requirements
from .hub_quality import QualityReport, QualityThresholds
from .personas import PersonaResult
from .registry import StrictModel, StrictParams, register

__all__ = [
    "JOB_ID_PATTERN",
    "MAX_COMPOSE_PERSONAS",
    "MAX_PAGE",
    "MAX_STATUS_PAGE",
    "MAX_VALIDATE",
    "PROGRESS_TOPIC",
    "CancelParams",
    "ComposeParams",
    "ComposeResult",
    "JobFigures",
    "JobState",
    "JobStatus",
    "PersonasParams",
    "PersonasResult",
    "ProgressParams",
    "RegisterParams",
    "RunParams",
    "StatusParams",
    "StatusResult",
    "ValidateParams",
]

#: A job's id: letters, digits, ``-``; chosen by the service, or given with hub.run.
JOB_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
#: The bus topic of job progress (published by ``hub:main``).
PROGRESS_TOPIC: Final = "hub.progress"
#: Most personas one hub.validate call carries inline (a larger set: run it as a job, or the CLI).
MAX_VALIDATE: Final = 5000
#: Most personas one hub.personas page returns.
MAX_PAGE: Final = 500
#: Most personas one hub.compose call writes for.
MAX_COMPOSE_PERSONAS: Final = 100

JobId = Annotated[str, Field(pattern=JOB_ID_PATTERN)]
JobState = Literal["generating", "checking", "done", "failed", "cancelled"]
_UNKNOWN_JOB = (ErrorCode.INVALID_PARAMS, "job_id names no job (data.field = job_id)")


class RunParams(StrictParams):
    requirements: Requirements = Field(description="what to make (hub.plan shows the plan they give)")
    job_id: JobId | None = Field(
        None,
        description="the job's id; a job by that id that stopped (failed, cancelled, or the service "
        "restarted) resumes where it stopped if the requirements are the same; null: a new id",
    )
    wait: bool = Field(False, description="answer when the job ends, streaming hub.progress meanwhile")


class JobFigures(StrictModel):
    """Live figures: throughput, work, resources, the stage's health."""

    stage: str = Field(description="generating, checking, or the state it ended in")
    total: int = Field(description="slots in the plan (one persona each)")
    done: int = Field(description="slots finished (made or failed)")
    made: int = Field(description="personas made")
    failed: int = Field(description="slots that gave up after their attempts")
    resumed: int = Field(description="slots found done in the journal when the job (re)started")
    retries: int = Field(description="requests sent again because a service was busy or gone")
    unusable: int = Field(description="model answers that could not be used (each retried with a new seed)")
    in_flight: int = Field(description="generate requests out now")
    window: int = Field(description="most requests out at once (8 per inference service)")
    providers: int = Field(description="cap:inference services on the bus")
    tokens: int = Field(description="completion tokens generated")
    rate: float = Field(description="slots finished per second over the last 30 s")
    eta_s: float | None = Field(description="seconds left at that rate; null: not known yet")
    elapsed_s: float = Field(description="seconds since the job (re)started")
    cpu_s: float = Field(description="the service's CPU seconds (user + system)")
    max_rss_bytes: int = Field(description="the service's peak resident memory")
    last_error: str | None = Field(description="the last transient error, if any")


class JobStatus(StrictModel):
    job_id: str
    state: JobState
    requirements: Requirements
    figures: JobFigures
    quality: QualityReport | None = Field(description="the checking stage's report, once done")
    kept: int | None = Field(description="personas in the output, once done")
    error: str | None = Field(description="why it failed")
    created_at: float
    finished_at: float | None


#: The most jobs one hub.status listing returns (a page; ``offset`` asks for the next).
MAX_STATUS_PAGE: Final = 500


class StatusParams(StrictParams):
    job_id: JobId | None = Field(
        None, description="one job, with its quality report; null: the service's jobs, newest first, a page"
    )
    watch: bool = Field(False, description="with job_id: stream hub.progress until the job ends, then answer")
    limit: Annotated[int, Field(ge=1, le=MAX_STATUS_PAGE)] = Field(
        100, description="without job_id: the most jobs listed"
    )
    offset: Annotated[int, Field(ge=0)] = Field(0, description="without job_id: jobs skipped (newest first)")


class StatusResult(StrictModel):
    jobs: list[JobStatus] = Field(
        description="one job with its quality report, or a page of jobs without it (quality: null)"
    )
    total: int = Field(description="jobs the service knows (1 with job_id)")
    next_offset: int | None = Field(description="the offset of the next page; null: this was the last")


class ProgressParams(StrictParams):
    """A job's progress (notification tied to hub.run with wait / hub.status with watch; also published)."""

    job_id: str
    state: str
    done: int
    total: int
    rate: float = Field(description="slots per second over the last 30 s")
    eta_s: float | None = Field(description="seconds left at that rate")
    figures: dict[str, float | int | str | None] = Field(description="the rest of JobFigures")


class CancelParams(StrictParams):
    job_id: JobId


class PersonasParams(StrictParams):
    job_id: JobId
    offset: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 100


class PersonasResult(StrictModel):
    personas: list[HubPersona] = Field(description="the kept personas, in the output's order")
    total: int = Field(description="personas in the output")
    next_offset: int | None = Field(description="where the next page starts; null: this was the last")


class ValidateParams(StrictParams):
    personas: Annotated[list[HubPersona], Field(max_length=MAX_VALIDATE)] | None = Field(
        None, description=f"the personas to check (at most {MAX_VALIDATE})"
    )
    job_id: JobId | None = Field(None, description="or: check a finished job's generated personas again")
    targets: AttributeTargets | None = Field(
        None, description="the population aimed at; null: the job's, or the defaults"
    )
    thresholds: QualityThresholds = Field(QualityThresholds(), description="the checks' knobs")

    @model_validator(mode="after")
    def _one_source(self) -> ValidateParams:
        if (self.personas is None) == (self.job_id is None):
            raise ValueError("give personas or job_id, not both")
        return self


class ComposeParams(StrictParams):
    personas: Annotated[list[HubPersona], Field(min_length=1, max_length=MAX_COMPOSE_PERSONAS)] = Field(
        description="whose voice to write in"
    )
    kind: ComposeKind = Field(description="what to write")
    per_persona: Annotated[int, Field(ge=1, le=5)] = Field(1, description="items per persona")
    seed: Annotated[int, Field(ge=0, lt=2**62)] = Field(0, description="makes the items repeatable")


class ComposeResult(StrictModel):
    items: list[ComposedItem]
    failed: int = Field(description="items the model's answers could not give")


class RegisterParams(StrictParams):
    persona: HubPersona = Field(description="the persona to add (from a job's output, or any file)")
    persona_id: Annotated[str, Field(pattern=PERSONA_ID_PATTERN)] = Field(
        description="its id in the registry (and its client id persona:<id>)"
    )
    activate: bool = Field(False, description="add it active: personad up starts it as a daemon")


register(
    "hub.plan",
    params=Requirements,
    result=Plan,
    summary="The generation plan for these requirements: paths, counts, hops, budgets, QA settings.",
    served_by="cap:hub",
)
register(
    "hub.run",
    params=RunParams,
    result=JobStatus,
    summary="Start (or resume) a generation job; with wait, stream hub.progress and answer at its end.",
    served_by="cap:hub",
    streams=True,
    errors=(
        (ErrorCode.INVALID_PARAMS, "a corpus the service does not have, or a job_id in use (data.field)"),
    ),
)
register(
    "hub.progress",
    params=ProgressParams,
    result=Empty,
    summary="A job's progress (tied to hub.run with wait or hub.status with watch; also published).",
    served_by="client",
    notification=True,
)
register(
    "hub.status",
    params=StatusParams,
    result=StatusResult,
    summary="A page of the service's jobs, newest first, or one with its quality (watch: its progress).",
    served_by="cap:hub",
    streams=True,
    errors=(_UNKNOWN_JOB,),
)
register(
    "hub.cancel",
    params=CancelParams,
    result=JobStatus,
    summary="Stop a running job; its journal stays, and hub.run with its id resumes it.",
    served_by="cap:hub",
    errors=(_UNKNOWN_JOB,),
)
register(
    "hub.personas",
    params=PersonasParams,
    result=PersonasResult,
    summary="A page of a finished job's kept personas.",
    served_by="cap:hub",
    errors=(_UNKNOWN_JOB, (ErrorCode.INVALID_PARAMS, "the job has not finished (data.field = job_id)")),
)
register(
    "hub.validate",
    params=ValidateParams,
    result=QualityReport,
    summary="Check personas: dedup (MinHash, embeddings), coherence, authenticity, diversity, culture.",
    served_by="cap:hub",
    errors=(_UNKNOWN_JOB,),
)
register(
    "hub.compose",
    params=ComposeParams,
    result=ComposeResult,
    summary="Persona-driven data in each persona's voice: instructions, math problems, knowledge, NPCs.",
    served_by="cap:hub",
    streams=True,
)
register(
    "hub.register",
    params=RegisterParams,
    result=PersonaResult,
    summary="Add a hub persona to the registry as a profile (active: personad up starts it).",
    served_by="cap:hub",
    errors=((ErrorCode.INVALID_PARAMS, "the registry refused it: an id in use (data.field)"),),
)

"""``personad hub serve``: PersonaHub on the bus, as ``hub:main`` serving ``cap:hub``.

Jobs live in ``<state>/hub/jobs/<job id>/``: ``job.json`` (what was asked,
its state), the run's plan and journal (journal.py), and once done
``personas.jsonl`` and ``report/``. A job that was running when the
service stopped (a restart, a crash, kill -9) resumes by itself when the
service starts again; a failed or cancelled one resumes when ``hub.run``
names it again with the same requirements.

Progress goes three ways: ``hub.progress`` notifications to a caller that
waits (``hub.run`` with ``wait``, ``hub.status`` with ``watch``), the same
published on the bus (topic ``hub.progress``; subscribers trust only the
publisher ``hub:main``), at most once a second per job; and the figures as
Prometheus text on ``/metrics`` when the service is given ``--metrics``.

The service's token holds exactly what it calls: :data:`HUB_GRANTS`.

(About 510 lines, one file: each handler is a few lines over the job registry it shares
with the others and the job runner; the work itself is in architect, runner, qa and
composer. The seam, if it grows: the job registry (load, page, status, save) as a module
of its own beside jobs.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from protocol import ErrorCode, RpcError
from protocol.commands import hub as m
from protocol.commands.hub_compose import ComposedItem
from protocol.commands.hub_plan import Plan, Requirements
from protocol.commands.hub_quality import QualityReport
from protocol.commands.inference import GenerateParams, GenerateResult
from protocol.hub_persona import HubPersona

from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..errors import PersonadError
from ..serving import announce, serve_until
from ..state import StateDir
from ..systemd_notify import Notifier
from . import architect, composer, designer, generator
from .jobs import JOB_FILE, Job, Scores
from .journal import Journal, JournalError
from .metrics import render_metrics, serve_metrics
from .models import BusModels
from .orchestrator import PER_PROVIDER, RunFailed, RunStats, generate_patiently
from .qa.judge import judge_with
from .qa.report import ReportFailed, write_report_apart
from .qa.validate import validate
from .runner import prepare, run_prepared, write_output

__all__ = ["CAPABILITY", "HUB_GRANTS", "HUB_TOKEN_SECRET", "HubService", "hub_token"]

log = logging.getLogger("personad.hub")

CAPABILITY: Final = "hub"
HUB_TOKEN_SECRET: Final = "hub.token"
#: What the hub calls: the model (generation, embeddings) and the registry (hub.register).
HUB_GRANTS: tuple[str, ...] = (
    "inference.generate@cap:inference",
    "inference.embed@cap:inference",
    "persona.create@cap:registry",
)
#: Jobs generating at once; more are refused with OVERLOADED (they share the same models).
MAX_RUNNING: Final = 2
#: The most personas one job of the service may ask for: its slots are laid out in memory
#: up front (about 2 KB each), and a client's job must not take the service's memory with it.
#: Larger runs go through ``personad hub run``, in a process of their own.
MAX_JOB_COUNT: Final = 100_000
#: Jobs with series of their own on /metrics: the newest this many.
METRICS_JOBS: Final = 100
#: Progress is sent at most this often per job (and at every change of stage).
PROGRESS_EVERY_S: Final = 1.0
OUTPUT_FILE: Final = "personas.jsonl"
REPORT_DIR: Final = "report"


def hub_token(state: StateDir) -> str:
    """$PERSONAD_TOKEN, a systemd credential ``token``, or the state dir's hub token."""
    return state.service_token(
        HUB_TOKEN_SECRET,
        what="PersonaHub",
        name="hub",
        subject="hub:main",
        provides=(CAPABILITY,),
        grants=HUB_GRANTS,
    )


class HubService:
    def __init__(self, *, url: str, token: str, state: StateDir, notifier: Notifier | None = None) -> None:
        self.notifier = notifier or Notifier.from_env()
        self.root = state.root / "hub"
        self.jobs_dir = self.root / "jobs"
        #: Named corpora a job may read (``Requirements.corpus`` names one of these).
        self.corpus_dir = self.root / "corpus"
        self.jobs: dict[str, Job] = {}
        #: The port /metrics listens on, once it does.
        self.metrics_port: int | None = None
        self.dispatcher = Dispatcher()
        self.dispatcher.register("hub.plan", self.plan)
        self.dispatcher.register("hub.run", self.run_job)
        self.dispatcher.register("hub.status", self.status)
        self.dispatcher.register("hub.cancel", self.cancel)
        self.dispatcher.register("hub.personas", self.personas)
        self.dispatcher.register("hub.validate", self.validate)
        self.dispatcher.register("hub.compose", self.compose)
        self.dispatcher.register("hub.register", self.register)
        self.client = BusClient(
            url,
            token=token,
            kind="hub",
            name="main",
            capabilities=[CAPABILITY],
            handler=self.dispatcher,
            reconnect=True,
        )
        self.models = BusModels(self.client)

    # -- the models, through the bus ------------------------------------------------------

    async def generate(self, params: GenerateParams) -> GenerateResult:
        return await self.models.generate(params)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await self.models.embed(texts)

    async def providers(self) -> int:
        return await self.models.providers()

    # -- methods ---------------------------------------------------------------------------

    async def plan(self, p: Requirements, ctx: CallContext) -> Plan:
        count = 1
        with contextlib.suppress(RpcError):
            count = await self.providers()
        return architect.make_plan(p, providers=max(1, count))

    async def run_job(self, p: m.RunParams, ctx: CallContext) -> m.JobStatus:
        job = self.jobs.get(p.job_id) if p.job_id else None
        if job is not None:
            if job.running:
                raise _invalid("job_id", f"job {job.job_id} is running already")
            if job.requirements != p.requirements:
                raise _invalid("job_id", f"job {job.job_id} was asked for other requirements")
            if job.state == "done":
                return await self._status(job)
        if p.requirements.count > MAX_JOB_COUNT:
            raise _invalid(
                "requirements.count",
                f"at most {MAX_JOB_COUNT} personas per job; run larger ones with personad hub run",
            )
        if sum(j.running for j in self.jobs.values()) >= MAX_RUNNING:
            raise RpcError(
                ErrorCode.OVERLOADED,
                f"{MAX_RUNNING} jobs are running already; wait for one to end",
                {"retry_after_ms": 10_000},
            )
        if p.requirements.corpus is not None:
            name = p.requirements.corpus
            if "/" in name or "\\" in name or name.startswith(".") or not (self.corpus_dir / name).exists():
                raise _invalid("requirements.corpus", f"no corpus {name!r} in the service's corpus folder")
        if job is None:
            job_id = p.job_id or f"job-{time.strftime('%Y%m%d')}-{secrets.token_hex(3)}"
            job = Job(
                job_id=job_id,
                requirements=p.requirements,
                folder=self.jobs_dir / job_id,
                created_at=time.time(),
                stats=RunStats(total=0),
            )
            self.jobs[job_id] = job
        self._start(job)
        if not p.wait:
            return job.status()
        await self._watch(job, ctx)
        return await self._status(job)

    async def _watch(self, job: Job, ctx: CallContext) -> None:
        """Until ``job`` ends, stream its progress to ``ctx``'s caller.

        ``asyncio.wait`` rather than awaiting the task: a cancelled job (hub.cancel)
        must not cancel the call that watches it, nor the caller leaving cancel the job.
        """
        if job.task is None:
            return
        job.watchers.append(ctx)
        try:
            await asyncio.wait({job.task})
        finally:
            job.watchers.remove(ctx)

    def _start(self, job: Job) -> None:
        job.state, job.error, job.finished_at = "generating", None, None
        job.folder.mkdir(parents=True, exist_ok=True)
        job.save()
        job.task = asyncio.create_task(self._execute(job), name=f"hub-job-{job.job_id}")

    async def _execute(self, job: Job) -> None:
        try:
            providers = 1
            with contextlib.suppress(RpcError):
                providers = max(1, await self.providers())
            prepared = await asyncio.to_thread(
                prepare, job.requirements, providers=providers, corpus_root=self.corpus_dir
            )
            job.stats = RunStats(total=len(prepared.slots))
            outcome = await run_prepared(
                prepared,
                job.folder / "run",
                generate=self.generate,
                embed=self.embed,
                stats=job.stats,
                providers=self.providers,
                on_change=lambda _stats: self._progress(job),
            )
            write_output(outcome, job.folder / OUTPUT_FILE)
            await asyncio.to_thread(write_report_apart, outcome.validation, job.folder / REPORT_DIR)
            job.state, job.kept = "done", len(outcome.kept)
            job.scores = Scores.of(outcome.validation.report)
        except asyncio.CancelledError:
            job.state, job.error = "cancelled", "cancelled"
            raise
        except (RunFailed, JournalError, PersonadError, ValueError, RpcError, ReportFailed) as exc:
            job.state, job.error = "failed", str(exc)
            log.warning("job %s failed: %s", job.job_id, exc)
        except Exception as exc:  # a bug: this job fails, the service and the other jobs go on
            job.state, job.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
            log.exception("job %s failed", job.job_id)
        finally:
            job.finished_at = time.time()
            job.stats.stage = job.state
            with contextlib.suppress(OSError):
                job.save()
            self._progress(job, force=True)

    def _progress(self, job: Job, *, force: bool = False) -> None:
        now = time.monotonic()
        stage = job.stats.stage
        if not force and stage == job.last_stage and now - job.last_sent < PROGRESS_EVERY_S:
            return
        job.last_sent, job.last_stage = now, stage
        if job.state in ("generating", "checking"):
            job.state = "checking" if stage == "checking" else "generating"
        figures = job.stats.figures()
        params = m.ProgressParams(
            job_id=job.job_id,
            state=job.state,
            done=job.stats.done,
            total=job.stats.total,
            rate=figures["rate"],
            eta_s=figures["eta_s"],
            figures={k: v for k, v in figures.items() if k not in ("done", "total", "rate", "eta_s")},
        ).model_dump(mode="json")
        for ctx in list(job.watchers):
            _background(ctx.progress("hub.progress", params))
        if self.client.client_id is not None:
            _background(self.client.call("bus.publish", {"topic": m.PROGRESS_TOPIC, "data": params}))

    async def status(self, p: m.StatusParams, ctx: CallContext) -> m.StatusResult:
        if p.job_id is None:
            # A page, newest first, without the quality reports: a service that has run
            # thousands of jobs must still answer within a frame.
            newest = self._newest()
            page = newest[p.offset : p.offset + p.limit]
            end = p.offset + len(page)
            return m.StatusResult(
                jobs=[j.status() for j in page],
                total=len(newest),
                next_offset=end if end < len(newest) else None,
            )
        job = self._job(p.job_id)
        if p.watch and job.running:
            await self._watch(job, ctx)
        return m.StatusResult(jobs=[await self._status(job)], total=1, next_offset=None)

    async def _status(self, job: Job) -> m.JobStatus:
        """The job's status with its quality report, read from its folder once it is done."""
        if job.state != "done":
            return job.status()
        return job.status(await asyncio.to_thread(_read_report, job.folder))

    async def cancel(self, p: m.CancelParams, ctx: CallContext) -> m.JobStatus:
        job = self._job(p.job_id)
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.task
        return await self._status(job)

    async def personas(self, p: m.PersonasParams, ctx: CallContext) -> m.PersonasResult:
        job = self._job(p.job_id)
        if job.state != "done":
            raise _invalid("job_id", f"job {job.job_id} is {job.state}, not done")
        page, total = await asyncio.to_thread(_read_page, job.folder / OUTPUT_FILE, p.offset, p.limit)
        end = p.offset + len(page)
        return m.PersonasResult(
            personas=[HubPersona.model_validate_json(line) for line in page],
            total=total,
            next_offset=end if end < total else None,
        )

    async def validate(self, p: m.ValidateParams, ctx: CallContext) -> QualityReport:
        targets = p.targets
        if p.personas is not None:
            personas = list(p.personas)
        else:
            assert p.job_id is not None
            job = self._job(p.job_id)
            if job.running:
                raise _invalid("job_id", f"job {job.job_id} is still running")
            journal = await asyncio.to_thread(Journal.read, job.folder / "run")
            personas = [journal.personas[i] for i in sorted(journal.personas)]
            targets = targets or job.requirements.targets
        judge = judge_with(self.generate) if p.thresholds.judge_sample else None
        validation = await validate(
            personas, embed=self.embed, targets=targets, judge=judge, thresholds=p.thresholds
        )
        return validation.report

    async def compose(self, p: m.ComposeParams, ctx: CallContext) -> m.ComposeResult:
        work = [(persona, n) for persona in p.personas for n in range(p.per_persona)]
        gate = asyncio.Semaphore(PER_PROVIDER * max(1, await self._providers_or_one()))
        done = 0

        async def one(persona: HubPersona, n: int) -> ComposedItem | None:
            nonlocal done
            seed = composer.item_seed(p.seed, f"{persona.id}/{n}" if n else persona.id, p.kind)
            async with gate:
                result = await generate_patiently(
                    self.generate, composer.params_for(persona, p.kind, seed=seed)
                )
            done += 1
            _background(
                ctx.progress(
                    "hub.progress",
                    m.ProgressParams(
                        job_id="compose", state="composing", done=done, total=len(work), rate=0.0, eta_s=None,
                        figures={},
                    ).model_dump(mode="json"),
                )
            )  # fmt: skip
            try:
                return composer.item_from(persona, p.kind, result, seed=seed)
            except generator.GenerationFailed:
                return None

        items = await asyncio.gather(*(one(persona, n) for persona, n in work))
        kept = [item for item in items if item is not None]
        return m.ComposeResult(items=kept, failed=len(items) - len(kept))

    async def _providers_or_one(self) -> int:
        try:
            return await self.providers()
        except RpcError:
            return 1

    async def register(self, p: m.RegisterParams, ctx: CallContext) -> Any:
        profile = designer.persona_profile(p.persona, now=time.time())
        profile = profile.model_copy(
            update={"id": p.persona_id, "status": "active" if p.activate else "draft"}
        )
        return await self.client.call(
            "persona.create", {"profile": profile.model_dump(mode="json")}, to="cap:registry"
        )

    def _metrics(self) -> str:
        # Per-job series for the newest jobs only: one series per job ever run would grow
        # without bound in the scraper as in this service.
        newest = self._newest()
        return render_metrics(newest[:METRICS_JOBS], total=len(newest))

    def _newest(self) -> list[Job]:
        """Every job, newest first (what a listing pages through and /metrics shows)."""
        return sorted(self.jobs.values(), key=lambda j: (j.created_at, j.job_id), reverse=True)

    def _metrics_bound(self, host: str, port: int) -> None:
        self.metrics_port = port
        print(f"personad hub: metrics on http://{host}:{port}/metrics", flush=True)

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise _invalid("job_id", f"no job {job_id}")
        return job

    # -- lifecycle -------------------------------------------------------------------------

    def load_jobs(self) -> list[Job]:
        """The jobs on disk; those that were running when the service stopped, to resume."""
        resume: list[Job] = []
        if not self.jobs_dir.is_dir():
            return resume
        for folder in sorted(self.jobs_dir.iterdir()):
            try:
                record = json.loads((folder / JOB_FILE).read_text("utf-8"))
                requirements = Requirements.model_validate(record["requirements"])
            except (OSError, ValueError, KeyError, ValidationError) as exc:
                log.warning("skipping %s: its %s cannot be read (%s)", folder, JOB_FILE, exc)
                continue
            job = Job(
                job_id=record["job_id"],
                requirements=requirements,
                folder=folder,
                created_at=float(record["created_at"]),
                stats=RunStats(total=0),
                state=record["state"],
                error=record.get("error"),
                finished_at=record.get("finished_at"),
                kept=record.get("kept"),
            )
            if job.state == "done":
                job.scores = _scores(record.get("scores"), folder)
            self.jobs[job.job_id] = job
            if job.state in ("generating", "checking"):
                resume.append(job)
        return resume

    async def run(self, stop: asyncio.Event, *, metrics: tuple[str, int] | None = None) -> None:
        """Serve until ``stop`` is set, or the bus refuses our token for good."""
        resume = self.load_jobs()

        def line() -> str:
            return f"{self.client.client_id} serving cap:{CAPABILITY}"

        async def start() -> None:
            if await announce(self.client, self.notifier, "hub", line):
                for job in resume:
                    log.info("resuming job %s", job.job_id)
                    self._start(job)

        background = [start()]
        if metrics is not None:
            background.append(serve_metrics(*metrics, render=self._metrics, bound=self._metrics_bound))

        async def end_jobs() -> None:
            # Cancelled jobs keep their journals; the next start resumes them, so
            # they are saved as running, not cancelled.
            running = [j for j in self.jobs.values() if j.running]
            for job in running:
                assert job.task is not None
                job.task.cancel()
            await asyncio.gather(*(j.task for j in running if j.task), return_exceptions=True)
            for job in running:
                job.state = "checking" if job.last_stage == "checking" else "generating"
                job.error, job.finished_at = None, None
                with contextlib.suppress(OSError):
                    job.save()

        await serve_until(
            self.client, self.notifier, stop, who="hub", background=background, on_stopping=end_jobs
        )


def _read_report(folder: Path) -> QualityReport | None:
    """A finished job's quality report (None: unreadable, e.g. removed by hand)."""
    try:
        return QualityReport.model_validate_json((folder / REPORT_DIR / "report.json").read_text("utf-8"))
    except (OSError, ValueError, ValidationError):
        return None


def _scores(saved: Any, folder: Path) -> Scores | None:
    """A finished job's scores from its job.json, or once from its report (a job.json
    written before the scores were kept there)."""
    if isinstance(saved, dict):
        with contextlib.suppress(TypeError, ValueError):
            return Scores(**saved)
    report = _read_report(folder)
    return Scores.of(report) if report is not None else None


def _read_page(path: Path, offset: int, limit: int) -> tuple[list[str], int]:
    """Lines ``offset`` to ``offset + limit`` of a job's output, and how many it has.

    Streamed, so a page of a job of 100,000 personas holds one page in memory, not the
    file (about 2 KB a persona)."""
    page: list[str] = []
    total = 0
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            if offset <= total < offset + limit:
                page.append(line)
            total += 1
    return page, total


def _invalid(field_name: str, message: str) -> RpcError:
    return RpcError(
        ErrorCode.INVALID_PARAMS, f"invalid params: {field_name}: {message}", {"field": field_name}
    )


_tasks: set[asyncio.Task[Any]] = set()


def _background(coro: Any) -> None:
    """Send without waiting (progress must never hold up the work); errors are only logged."""

    async def guarded() -> None:
        try:
            await coro
        except (RpcError, OSError) as exc:
            log.debug("progress not delivered: %s", exc)

    task = asyncio.create_task(guarded())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)

"""persona.performance.record and persona.analytics: the persona's work, recorded and measured.

Records go into the persona's brain (``performance_records``, through
:mod:`daemon.brain.performance`); analytics keeps a per-day rollup of them
(read in full once, then only the rows added since), merges the window's
days and applies :mod:`.analytics_rules`. Three parts come from elsewhere:

* the name, role and status are the registry's (``persona.get`` on
  cap:registry, which every persona token may call), cached for
  :data:`PROFILE_TTL_S` so a dashboard polling analytics does not poll the
  registry too; when the registry is away the name is the id and role and
  status are null, and the figures are still answered;
* ``active_plugins`` counts the plugin folders installed in the persona's
  ``plugins/`` folder;
* ``plugin_performance_impact`` is read from the runs log the plugin runner
  appends to, ``plugins/runs.jsonl`` (one JSON object per run), again only
  when its size or mtime changed; absent or empty, it is null.

Who may call: both methods are the operator's (admin tokens, or a token
granted them); the registry's token is granted persona.analytics for session
recommendations. Another persona's token has no grant for either, so the bus
refuses it before it reaches here.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Final

from protocol import ErrorCode, RpcError
from protocol.commands import analytics as m

from ..brain import Brain
from ..brain.idempotency import KeyReused
from ..brain.performance import Figures, NewRecord, Rollup, insert_record_once, insert_records, window_figures
from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..plugins.host import RUNS_FILE
from . import analytics_rules as rules
from .session_dir import SessionDir

__all__ = [
    "PROFILE_TTL_S",
    "RUNS_LOG",
    "PluginRuns",
    "analytics",
    "read_plugin_runs",
    "register_analytics_commands",
]

log = logging.getLogger("personad.persona.analytics")

#: How long a profile fetched from the registry is reused.
PROFILE_TTL_S: Final = 30.0
#: How long analytics waits for the registry's answer before going without it.
PROFILE_DEADLINE_MS: Final = 2_000
#: The plugin runner's log, inside the persona's plugins/ folder (the host names it).
RUNS_LOG: Final = RUNS_FILE
#: Only the log's tail is read: analytics must stay fast however long it grows.
MAX_RUNS_LOG_BYTES: Final = 4 << 20


class _Profile:
    """The registry's view of this persona, fetched at most every :data:`PROFILE_TTL_S`."""

    def __init__(self, client: BusClient, persona_id: str) -> None:
        self._client = client
        self._id = persona_id
        self._value: tuple[str, str | None, str | None] | None = None
        self._fetched = 0.0

    async def get(self) -> tuple[str, str | None, str | None]:
        now = time.monotonic()
        if self._value is not None and now - self._fetched < PROFILE_TTL_S:
            return self._value
        try:
            answer = await self._client.call(
                "persona.get", {"persona_id": self._id}, to="cap:registry", deadline_ms=PROFILE_DEADLINE_MS
            )
            profile = answer["profile"]
            value: tuple[str, str | None, str | None] = (profile["name"], profile["role"], profile["status"])
        except (RpcError, KeyError, TypeError) as exc:
            # No registry on the bus, or it does not know us (a persona run
            # from a TOML config alone): the figures are still worth answering.
            log.debug("persona %s: no profile from the registry: %s", self._id, exc)
            value = (self._id, None, None)
        self._value, self._fetched = value, now
        return value


def read_plugin_runs(plugins_dir: Path) -> tuple[int, list[m.PluginImpact] | None]:
    """Installed plugins, and per-plugin run figures from ``plugins/runs.jsonl`` (None: no runs).

    A run line is a JSON object with ``plugin_id``, ``ok`` (bool),
    ``duration_s`` (number) and ``stopped_by`` (the limit that stopped a
    failed run, or null), as the plugin host writes them; other members are
    ignored, and lines without a plugin id or ``ok`` are skipped, so a line
    being appended while we read is not an error.
    """
    try:
        installed = sum(1 for p in plugins_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        installed = 0
    path = plugins_dir / RUNS_LOG
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - MAX_RUNS_LOG_BYTES))
            data = fh.read()
    except OSError:
        return installed, None
    lines = data.splitlines()
    if len(data) == MAX_RUNS_LOG_BYTES and size > MAX_RUNS_LOG_BYTES:
        lines = lines[1:]  # the first line is cut
    runs: dict[str, list[tuple[bool, float | None, str | None]]] = {}
    for line in lines:
        try:
            run = json.loads(line)
        except ValueError:
            continue
        if not isinstance(run, dict):
            continue
        pid, ok, duration = run.get("plugin_id"), run.get("ok"), run.get("duration_s")
        if not isinstance(pid, str) or not isinstance(ok, bool):
            continue
        seconds = (
            float(duration) if isinstance(duration, int | float) and not isinstance(duration, bool) else None
        )
        stopped = run.get("stopped_by")
        runs.setdefault(pid, []).append((ok, seconds, stopped if isinstance(stopped, str) else None))
    if not runs:
        return installed, None
    impact = []
    for pid in sorted(runs):
        outcomes = runs[pid]
        durations = [d for _, d, _ in outcomes if d is not None]
        failures = sum(1 for ok, _, _ in outcomes if not ok)
        stopped_by: dict[str, int] = {}
        for ok, _, why in outcomes:
            if not ok and why:
                stopped_by[why] = stopped_by.get(why, 0) + 1
        impact.append(
            m.PluginImpact(
                plugin_id=pid,
                runs=len(outcomes),
                failures=failures,
                success_rate=round(1 - failures / len(outcomes), 4),
                mean_duration_s=round(sum(durations) / len(durations), 4) if durations else None,
                stopped_by=stopped_by,
            )
        )
    return installed, impact


class PluginRuns:
    """:func:`read_plugin_runs`, read again only when the folder or the runs log changed."""

    def __init__(self, plugins_dir: Path) -> None:
        self.plugins_dir = plugins_dir
        self._seen: tuple[int, int, int] | None = None
        self._value: tuple[int, list[m.PluginImpact] | None] = (0, None)

    def read(self) -> tuple[int, list[m.PluginImpact] | None]:
        try:
            folder = self.plugins_dir.stat().st_mtime_ns
        except OSError:
            return 0, None
        try:
            log_stat = (self.plugins_dir / RUNS_LOG).stat()
            seen = (folder, log_stat.st_mtime_ns, log_stat.st_size)
        except OSError:
            seen = (folder, -1, -1)
        if seen != self._seen:
            self._value, self._seen = read_plugin_runs(self.plugins_dir), seen
        return self._value


def _on_reader(
    db: Any, rollup: Rollup, window_days: int, now: float, plugins: PluginRuns
) -> tuple[Figures, tuple[int, list[m.PluginImpact] | None]]:
    return window_figures(db, rollup, window_days, now), plugins.read()


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


async def analytics(
    brain: Brain,
    rollup: Rollup,
    plugins: PluginRuns,
    persona_id: str,
    profile: tuple[str, str | None, str | None],
    window_days: int,
    now: float | None = None,
) -> m.AnalyticsResult:
    """The analytics result for ``window_days`` up to ``now`` (default: the current time)."""
    now = time.time() if now is None else now
    # One hop to the reader thread for everything that blocks: the rollup,
    # the knowledge lookups and the plugin runs file.
    f, (installed, impact) = await brain.read(_on_reader, rollup, window_days, now, plugins)
    coverage = sum(t.knowledge_hit for t in f.topics) / len(f.topics) if f.topics else None
    name, role, status = profile
    return m.AnalyticsResult(
        persona_id=persona_id,
        persona_name=name,
        role=role,
        status=status,
        window_days=window_days,
        generated_at=now,
        growth_stats=m.GrowthStats(
            sessions_completed=f.sessions_completed,
            unique_tasks=f.unique_tasks,
            repeat_tasks=f.repeat_tasks,
            usage_streak=f.usage_streak,
            total_usage_time_h=round(f.total_usage_s / 3600, 4),
            growth_rate=_round(rules.growth_rate(f)),
        ),
        total_sessions=f.total_sessions,
        total_records=f.records,
        average_score=_round(f.average_score, 2),
        success_rate=_round(f.success_rate),
        performance_trend=[
            m.TrendPoint(
                start=p.start,
                end=p.end,
                records=p.records,
                average_score=_round(p.average_score, 2),
                success_rate=_round(p.success_rate),
            )
            for p in f.trend
        ],
        top_topics=[
            m.TopicScore(
                topic=t.topic, score=round(t.average_score, 2), records=t.records, knowledge=t.knowledge_hit
            )
            for t in f.topics
        ],
        knowledge_coverage=_round(coverage),
        active_plugins=installed,
        plugin_performance_impact=impact,
        tier=rules.tier(f),
        recommendations=rules.recommendations(f, window_days, coverage, impact),
        growth_opportunities=rules.opportunities(f),
    )


def register_analytics_commands(
    dispatcher: Dispatcher, client: BusClient, brain: Brain, session_dir: SessionDir
) -> None:
    """Register this group's methods on ``dispatcher``."""
    persona_id = session_dir.root.name
    profile = _Profile(client, persona_id)
    # Read in full on the first analytics call, then only what was added.
    rollup = Rollup()
    plugins = PluginRuns(session_dir.plugins)

    async def record(p: m.PerformanceRecordParams, ctx: CallContext) -> m.PerformanceRecordResult:
        new = NewRecord(
            session_id=p.session_id,
            task=p.task,
            score=p.score,
            success=p.success,
            duration_s=p.duration_s,
            user_feedback=p.user_feedback,
            context=p.context,
        )
        # The model's bounds are the table's CHECKs: a record that passed
        # validation is stored (a CHECK failing here would be our bug: INTERNAL_ERROR).
        if p.idempotency_key is None:
            [(rid, at)] = await brain.write(insert_records, [new])
            return m.PerformanceRecordResult(id=rid, recorded_at=at)
        once = await brain.write(insert_record_once, new, ctx.caller or "", p.idempotency_key)
        if isinstance(once, KeyReused):
            refused = once.error()
            raise RpcError(
                ErrorCode.INVALID_PARAMS, str(refused), {"field": refused.field, "reason": refused.reason}
            )
        rid, at, replayed = once
        return m.PerformanceRecordResult(id=rid, recorded_at=at, replayed=replayed)

    async def analyse(p: m.AnalyticsParams, ctx: CallContext) -> m.AnalyticsResult:
        return await analytics(brain, rollup, plugins, persona_id, await profile.get(), p.window)

    dispatcher.register("persona.performance.record", record)
    dispatcher.register("persona.analytics", analyse)

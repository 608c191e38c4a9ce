"""The persona's memory on the bus: memory.*, skills.*, interactions.log,
goals.*, emotions.record and brain.* served from its own brain.

Every handler is a thin translation between the protocol models
(protocol/commands/brain.py) and :class:`daemon.brain.Brain`; the brain's
``InvalidInput`` becomes INVALID_PARAMS (``data = {"field", "reason"}``) and
``NotFound`` a -32602 as well
(the id named in params does not exist), so callers see one vocabulary.
A query over the reader's limits (``QueryTooLarge``) is INVALID_PARAMS too,
with ``data.reason = "query_too_large"``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from protocol import ErrorCode, RpcError
from protocol.commands import brain as m

from ..brain import Brain, InvalidInput, NotFound, QueryRefused, QueryTimeout, QueryTooLarge
from ..client import CallContext
from ..dispatch import Dispatcher
from .session_dir import SessionDir


def _translate(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Brain errors caused by the caller's input become INVALID_PARAMS."""

    async def wrapper(params: Any, ctx: CallContext) -> Any:
        try:
            return await fn(params, ctx)
        except InvalidInput as exc:
            raise RpcError(
                ErrorCode.INVALID_PARAMS, str(exc), {"field": exc.field, "reason": exc.reason}
            ) from None
        except NotFound as exc:
            raise RpcError(ErrorCode.INVALID_PARAMS, str(exc)) from None
        except QueryRefused as exc:
            raise RpcError(ErrorCode.FORBIDDEN, str(exc)) from None
        except QueryTimeout as exc:
            raise RpcError(ErrorCode.TIMEOUT, str(exc)) from None
        except QueryTooLarge as exc:
            # The caller's query asked for more than the reader allows: a
            # smaller query succeeds, so it is the caller's to fix.
            raise RpcError(
                ErrorCode.INVALID_PARAMS, str(exc), {"reason": "query_too_large", "limit": exc.limit}
            ) from None

    return wrapper


def register_memory_commands(dispatcher: Dispatcher, brain: Brain, session_dir: SessionDir) -> None:
    async def remember(p: m.MemoryRememberParams, ctx: CallContext) -> m.RememberResult:
        fields: dict[str, Any] = {
            "context": p.context,
            "relevance": p.relevance,
            "source": p.source or (ctx.caller or ""),
            "subject": p.subject,
            "pinned": p.pinned,
            "kind": p.kind,
        }
        if p.idempotency_key is None:
            return m.RememberResult(id=await brain.remember(p.content, **fields))
        memory_id, replayed = await brain.remember_once(
            p.content, caller=ctx.caller or "", key=p.idempotency_key, **fields
        )
        return m.RememberResult(id=memory_id, replayed=replayed)

    async def recall(p: m.MemoryRecallParams, ctx: CallContext) -> m.MemoryRecallResult:
        hits = await brain.recall(
            p.query,
            kinds=p.kinds,
            source=p.source,
            subject=p.subject,
            since=p.since,
            until=p.until,
            limit=p.limit,
        )
        return m.MemoryRecallResult(
            hits=[m.RecallHitModel.model_validate(h, from_attributes=True) for h in hits]
        )

    async def forget(p: m.MemoryForgetParams, ctx: CallContext) -> m.MemoryForgetResult:
        return m.MemoryForgetResult(removed=await brain.forget(p.ids))

    async def skills_list(p: Any, ctx: CallContext) -> m.SkillsListResult:
        skills = await brain.skills_list()
        return m.SkillsListResult(
            skills=[m.SkillModel.model_validate(s, from_attributes=True) for s in skills]
        )

    async def skills_record_use(p: m.SkillsRecordUseParams, ctx: CallContext) -> m.SkillsRecordUseResult:
        try:
            skill = await brain.skill_record_use(p.skill_id, p.effectiveness)
        except NotFound:
            # A skill is acquired by using it (the Academy will also register
            # the ones it trains, with their adapter's hash).
            await brain.skill_upsert(p.skill_id)
            skill = await brain.skill_record_use(p.skill_id, p.effectiveness)
        return m.SkillsRecordUseResult(skill=m.SkillModel.model_validate(skill, from_attributes=True))

    async def interactions_log(p: m.InteractionsLogParams, ctx: CallContext) -> m.IdResult:
        rid = await brain.log_interaction(
            with_persona=p.with_persona,
            room_id=p.room_id,
            outcome=p.outcome,
            learned=p.learned,
            subject=p.subject,
        )
        return m.IdResult(id=rid)

    async def goals_set(p: m.GoalsSetParams, ctx: CallContext) -> m.GoalsSetResult:
        goal = await brain.goals_set(
            p.title,
            goal_id=p.id,
            description=p.description,
            status=p.status,
            priority=p.priority,
            progress=p.progress,
            due_at=p.due_at,
        )
        return m.GoalsSetResult(goal=m.GoalModel.model_validate(goal, from_attributes=True))

    async def goals_list(p: m.GoalsListParams, ctx: CallContext) -> m.GoalsListResult:
        goals = await brain.goals_list(status=p.status, limit=p.limit)
        return m.GoalsListResult(goals=[m.GoalModel.model_validate(g, from_attributes=True) for g in goals])

    async def emotions_record(p: m.EmotionsRecordParams, ctx: CallContext) -> m.IdResult:
        rid = await brain.emotions_record(
            p.emotion, intensity=p.intensity, valence=p.valence, trigger=p.trigger, subject=p.subject
        )
        return m.IdResult(id=rid)

    async def stats(p: Any, ctx: CallContext) -> m.BrainStatsResult:
        s = await brain.stats()
        r = s.retention
        return m.BrainStatsResult(
            schema_version=s.schema_version,
            counts=s.counts,
            pinned_memories=s.pinned_memories,
            bytes_on_disk=s.bytes_on_disk,
            files=s.files,
            bytes_live=s.bytes_live,
            retention=m.RetentionStateModel(
                max_memories=r.policy.max_memories if r.policy else None,
                max_bytes=r.policy.max_bytes if r.policy else None,
                interval_s=r.policy.interval_s if r.policy else None,
                last_run_at=r.last_run_at,
                last_removed=r.last_removed,
                total_removed=r.total_removed,
            ),
        )

    async def export(p: Any, ctx: CallContext) -> m.BrainExportResult:
        # The right to export: into the persona's own artifacts folder, never
        # a path from the wire.
        folder = session_dir.artifacts / "exports"
        folder.mkdir(mode=0o700, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        summary = await brain.export(folder / f"brain-{stamp}.json")
        return m.BrainExportResult(
            path=str(summary.path),
            bytes=summary.bytes,
            sha256=summary.sha256,
            counts=summary.counts,
            format_version=summary.format_version,
        )

    async def erase(p: m.BrainEraseParams, ctx: CallContext) -> m.BrainEraseResult:
        summary = await brain.erase(subject=p.subject, everything=p.everything, confirm=p.confirm)
        return m.BrainEraseResult.model_validate(summary, from_attributes=True)

    async def query(p: m.BrainQueryParams, ctx: CallContext) -> m.BrainQueryResult:
        result = await brain.query(p.sql, p.params, row_limit=p.row_limit, time_limit=p.time_limit_s)
        return m.BrainQueryResult.model_validate(result, from_attributes=True)

    handlers: dict[str, Callable[..., Awaitable[Any]]] = {
        "memory.remember": remember,
        "memory.recall": recall,
        "memory.forget": forget,
        "skills.list": skills_list,
        "skills.record_use": skills_record_use,
        "interactions.log": interactions_log,
        "goals.set": goals_set,
        "goals.list": goals_list,
        "emotions.record": emotions_record,
        "brain.stats": stats,
        "brain.export": export,
        "brain.erase": erase,
        "brain.query": query,
    }
    for method, handler in handlers.items():
        dispatcher.register(method, _translate(handler))

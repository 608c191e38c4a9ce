"""A persona acquires skills shared over the mesh: ``skill.acquire``, and automatic acquisition.

``skill.acquire {skill_id | skill, load}`` (streams ``skill.progress``):

1. the manifest comes from the tracker (``skill.manifest`` at ``cap:skills``;
   by name, the newest one) and its signature and id are checked here;
2. the installation's mesh peer (``[skills] node``, ``mesh:main`` by default)
   downloads it into the shared adapter store (``skill.fetch``, with
   ``max_bytes``); each ``skill.progress`` it streams is relayed to our caller;
   its errors reach the caller with their code and message;
3. the persona records it in its brain's skills (name, adapter hash, the usage
   scenarios as its description, and ``source``: ``{"via": "mesh", "skill_id",
   "publisher", "node", "seeders", "size", "auto", "acquired_at"}``);
4. with ``load``, it goes on top of the persona's stack, as ``lora.load_stack``
   puts it there (the skill's name is a dotted path: its parents come with
   it). A stack that cannot be loaded (no inference engine) leaves the skill
   acquired and recorded, with ``loaded`` false and the reason in the log.

**Who decides.** An explicit ``skill.acquire`` is the operator's decision (the
bus lets only tokens granted it call it; a persona's own token is not): it
skips the trust list, the effectiveness floor and the daily budget, and keeps
only ``max_bytes`` (the peer enforces it, parents included).

**Automatic acquisition** (``[skills] auto = true``): the persona subscribes
to ``skills.announced`` and takes an announced manifest, published by a
``mesh:*`` client and verifying, if and only if (:func:`decide`):

* its publisher is in ``trusted_publishers``;
* its effectiveness is at least ``min_effectiveness`` (none counts as 0);
* its size is at most ``max_bytes`` (the manifest's own size: parents the
  store lacks are not counted here; the peer counts them against
  ``max_bytes`` when it fetches);
* fewer than ``daily_count`` mesh acquisitions in the last 24 hours, and their
  sizes plus this one at most ``daily_bytes`` (counted from the brain's skills
  whose source is the mesh, by their ``source.acquired_at``: a restart keeps
  the budget);
* the persona does not hold it yet (a skill with that adapter hash or that
  skill id).

One automatic acquisition at a time; every decision, taken or refused and why,
is logged at info. With ``load``, each one goes on top of the stack.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, cast

from protocol import ErrorCode, Notification, RpcError
from protocol.commands import skills as m
from protocol.commands.inference import LoadStackParams

from ..brain import Brain, InvalidInput
from ..brain.records import Skill
from ..brain.validation import check_skill_id
from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..mesh.manifest import ManifestError, parse_manifest, verify_manifest
from .chat import PersonaChat
from .config import PersonaConfig, SkillsConfig

__all__ = [
    "DAY_S",
    "FETCH_DEADLINE_MS",
    "Decision",
    "PersonaSkills",
    "Spent",
    "decide",
    "register_skills_commands",
    "spent_today",
]

log = logging.getLogger("personad.persona.skills")

#: A download of 64 MiB from slow seeders may take minutes; the peer reports progress meanwhile.
FETCH_DEADLINE_MS: Final = 600_000
DAY_S: Final = 86_400.0
#: Announcements waiting for a decision; beyond, the newest are dropped (and logged).
QUEUE_LIMIT: Final = 100


@dataclass(frozen=True, slots=True)
class Spent:
    """Mesh acquisitions in the last 24 hours."""

    count: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Decision:
    take: bool
    reason: str


def spent_today(skills: Iterable[Skill], now: float) -> Spent:
    """What the mesh acquisitions recorded in the brain in the 24 hours before ``now`` add up to."""
    count = size = 0
    for skill in skills:
        source = skill.source or {}
        at = source.get("acquired_at")
        if source.get("via") != "mesh" or not isinstance(at, int | float) or not now - DAY_S < at <= now:
            continue
        count += 1
        size += int(source.get("size") or 0)
    return Spent(count, size)


def held(skills: Iterable[Skill], manifest: m.SkillManifest, sid: str) -> bool:
    return any(
        s.lora_hash == manifest.adapter_sha256 or (s.source or {}).get("skill_id") == sid for s in skills
    )


def decide(
    manifest: m.SkillManifest, sid: str, config: SkillsConfig, skills: Iterable[Skill], now: float
) -> Decision:
    """Whether to acquire an announced (verified) manifest on our own; the reason either way."""
    skills = list(skills)
    name = f"{manifest.skill} ({sid[:12]}…)"
    if manifest.publisher not in config.trusted_publishers:
        return Decision(False, f"{name}: publisher {manifest.publisher[:16]}… is not trusted")
    effectiveness = manifest.effectiveness or 0.0
    if effectiveness < config.min_effectiveness:
        return Decision(
            False, f"{name}: effectiveness {effectiveness:g} is below {config.min_effectiveness:g}"
        )
    if manifest.size > config.max_bytes:
        return Decision(False, f"{name}: {manifest.size} bytes is over max_bytes {config.max_bytes}")
    if held(skills, manifest, sid):
        return Decision(False, f"{name}: held already")
    spent = spent_today(skills, now)
    if spent.count >= config.daily_count:
        return Decision(False, f"{name}: {spent.count} acquired in 24 h, daily_count is {config.daily_count}")
    if spent.bytes + manifest.size > config.daily_bytes:
        return Decision(
            False,
            f"{name}: {spent.bytes} + {manifest.size} bytes in 24 h is over daily_bytes {config.daily_bytes}",
        )
    return Decision(True, f"{name}: trusted publisher, within the budget ({spent.count} today)")


Progress = Callable[[dict[str, Any]], Awaitable[None]]


class PersonaSkills:
    """The persona's side of skill sharing: the handler, and the automatic acquirer."""

    def __init__(self, client: BusClient, config: PersonaConfig, brain: Brain, chat: PersonaChat) -> None:
        self.client = client
        self.persona_id = config.id
        self.config = config.skills
        self.brain = brain
        self.chat = chat
        self._queue: asyncio.Queue[tuple[m.SkillManifest, str]] = asyncio.Queue(maxsize=QUEUE_LIMIT)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._worker: asyncio.Task[None] | None = None
        #: Decisions taken automatically, newest last (what the tests and the log read).
        self.decisions: list[Decision] = []

    # -- skill.acquire -----------------------------------------------------------------

    async def acquire_handler(self, p: m.AcquireParams, ctx: CallContext) -> m.AcquireResult:
        async def relay(params: dict[str, Any]) -> None:
            await ctx.progress("skill.progress", params)

        manifest, sid = await self.resolve(p.skill_id, p.skill)
        log.info(
            "persona %s: acquiring %s (%s…) for %s", self.persona_id, manifest.skill, sid[:12], ctx.caller
        )
        return await self.acquire(manifest, sid, load=p.load, auto=False, progress=relay, ctx=ctx)

    async def resolve(self, skill_id: str | None, skill: str | None) -> tuple[m.SkillManifest, str]:
        """The manifest from the tracker, verified: by id, or the newest of a name."""
        params = {"skill_id": skill_id} if skill_id is not None else {"skill": skill}
        field = "skill_id" if skill_id is not None else "skill"
        answer = await self.client.call("skill.manifest", params, to="cap:skills")
        if not answer["manifests"]:
            raise RpcError(
                ErrorCode.INVALID_PARAMS,
                f"invalid params: {field}: the tracker knows no manifest for {skill_id or skill}",
                {"field": field},
            )
        try:
            manifest = parse_manifest(answer["manifests"][0])
            sid = verify_manifest(manifest, expected_id=skill_id)
        except ManifestError as exc:
            raise RpcError(
                ErrorCode.INVALID_PARAMS, f"invalid params: {field}: {exc}", {"field": field}
            ) from None
        return manifest, sid

    async def acquire(
        self,
        manifest: m.SkillManifest,
        sid: str,
        *,
        load: bool,
        auto: bool,
        progress: Progress | None = None,
        ctx: CallContext | None = None,
    ) -> m.AcquireResult:
        """Fetch through the installation's peer, record in the brain, and maybe load."""
        try:
            check_skill_id(manifest.skill)
        except InvalidInput:
            raise RpcError(
                ErrorCode.INVALID_PARAMS,
                f"invalid params: skill: {manifest.skill!r} is too long a name for a brain's skill",
                {"field": "skill"},
            ) from None

        async def on_progress(note: Notification) -> None:
            if progress is not None and isinstance(note.params, dict):
                await progress(note.params)

        params = m.FetchParams(skill_id=sid, max_bytes=self.config.max_bytes)
        try:
            answer = await self.client.call(
                "skill.fetch",
                params.model_dump(exclude_none=True),
                to=self.config.node,
                deadline_ms=FETCH_DEADLINE_MS,
                on_progress=on_progress,
            )
        except RpcError as exc:
            # The peer's own words, under its code: the caller sees why (too large, no seeder …).
            raise RpcError(exc.code, f"{self.config.node}: {exc.message}", exc.data) from None
        fetch = m.FetchResult.model_validate(answer)
        source = {
            "via": "mesh",
            "skill_id": sid,
            "publisher": manifest.publisher,
            "node": self.config.node,
            "seeders": fetch.seeders,
            "size": manifest.size,
            "auto": auto,
            "acquired_at": round(time.time(), 3),
        }
        await self.brain.skill_upsert(
            manifest.skill,
            lora_hash=manifest.adapter_sha256,
            description="; ".join(manifest.usage_scenarios) or None,
            source=source,
        )
        loaded = await self._load(manifest.skill, ctx) if load else False
        return m.AcquireResult(persona_id=self.persona_id, fetch=fetch, recorded=True, loaded=loaded)

    async def _load(self, name: str, ctx: CallContext | None) -> bool:
        try:
            # PersonaChat.load_stack reads nothing from its context: an automatic
            # acquisition, which has none, loads the same way a caller's does.
            await self.chat.load_stack(
                LoadStackParams(name=name, mode=self.chat.mode), cast(CallContext, ctx)
            )
        except RpcError as exc:
            log.warning("persona %s: %s acquired but not loaded: %s", self.persona_id, name, exc.message)
            return False
        return True

    # -- automatic acquisition -----------------------------------------------------------

    def on_bus_state(self, state: str) -> None:
        """Subscribe (again: the bus forgets subscriptions with the connection) on each connect."""
        if state == "connected" and self.config.auto:
            self._spawn(self._subscribe())
            if self._worker is None:
                self._worker = asyncio.get_running_loop().create_task(
                    self._work(), name=f"skills-auto-{self.persona_id}"
                )

    async def _subscribe(self) -> None:
        try:
            await self.client.subscribe(m.ANNOUNCED_TOPIC)
        except RpcError as exc:
            log.warning("persona %s: could not subscribe to %s: %s", self.persona_id, m.ANNOUNCED_TOPIC, exc)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_notification(self, note: Notification) -> None:
        params = note.params
        if not self.config.auto or note.method != "event" or not isinstance(params, dict):
            return
        if params.get("topic") != m.ANNOUNCED_TOPIC:
            return
        publisher = params.get("publisher")
        if not isinstance(publisher, str) or not publisher.startswith("mesh:"):
            log.info(
                "persona %s: ignoring an announcement from %s (not a mesh peer)", self.persona_id, publisher
            )
            return
        try:
            manifest = parse_manifest(params.get("data"))
            sid = verify_manifest(manifest)
        except ManifestError as exc:
            log.info("persona %s: ignoring an announcement from %s: %s", self.persona_id, publisher, exc)
            return
        try:
            self._queue.put_nowait((manifest, sid))
        except asyncio.QueueFull:
            log.info("persona %s: %s refused: %d announcements wait", self.persona_id, sid[:12], QUEUE_LIMIT)

    async def _work(self) -> None:
        # One at a time: each decision sees the budget the previous one spent.
        while True:
            manifest, sid = await self._queue.get()
            try:
                await self.consider(manifest, sid)
            except Exception:
                log.exception("persona %s: automatic acquisition of %s failed", self.persona_id, sid[:12])

    async def consider(self, manifest: m.SkillManifest, sid: str) -> Decision:
        """Decide on one announcement and, if taken, acquire it (logged either way)."""
        decision = decide(manifest, sid, self.config, await self.brain.skills_list(), time.time())
        log.info(
            "persona %s: auto-acquire %s: %s",
            self.persona_id,
            "taken" if decision.take else "refused",
            decision.reason,
        )
        if decision.take:
            try:
                result = await self.acquire(manifest, sid, load=self.config.load, auto=True)
            except RpcError as exc:
                decision = Decision(False, f"{decision.reason}; the acquisition failed: {exc.message}")
                log.info("persona %s: auto-acquire failed: %s", self.persona_id, decision.reason)
            else:
                log.info(
                    "persona %s: auto-acquired %s (%d bytes%s)",
                    self.persona_id,
                    manifest.skill,
                    result.fetch.bytes,
                    ", loaded" if result.loaded else "",
                )
        self.decisions.append(decision)
        del self.decisions[:-100]
        return decision

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._worker] if self._worker is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._worker = None


def register_skills_commands(
    dispatcher: Dispatcher, client: BusClient, config: PersonaConfig, brain: Brain, chat: PersonaChat
) -> PersonaSkills:
    """Serve ``skill.acquire``; listen for announcements when ``[skills] auto`` is on.

    The daemon tells the returned object of bus state changes (``on_bus_state``)
    and closes it when it stops.
    """
    skills = PersonaSkills(client, config, brain, chat)
    dispatcher.register("skill.acquire", skills.acquire_handler)
    client.add_notification_listener(skills.on_notification)
    return skills

"""The skills tracker: ``skills:tracker`` on the bus, serving ``cap:skills``.

It listens to what mesh peers publish and remembers it
(:mod:`daemon.mesh.tracker_store`, ``<state>/mesh/tracker.sqlite3``):

* ``skills.announced``: a manifest, kept once it parses and its signature
  verifies (its id is the hash of what was signed, so nobody can slip
  another manifest under a known id);
* ``skills.have``: every skill id a peer seeds, replacing what it said before;
* ``skills.acquired``: who installed which skill (first time only) — demand.

Only events whose publisher the bus stamped ``mesh:*`` count: a token's
subject binds the client ids it may claim, so such a publisher really is a
mesh peer; a persona or a CLI publishing on these topics is ignored (logged
at info).

It answers ``skill.manifest`` (by id, name or adapter hash, newest first),
``skill.seeders`` (peers that said they seed it *and* are on the bus now;
each caller counts as one request for the skill in a window) and ``skill.popular``
(acquirers + 0.1 x requests in a window). Who is on the bus comes from
``bus.clients``, asked at most once a second.

The bus keeps no subscriptions across a reconnection: the tracker subscribes
again each time it connects. What peers published while it was away is
missed; peers publish their ``skills.have`` again whenever they connect, and
the tables persist across restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Final

from pydantic import ValidationError

from protocol import Notification
from protocol.commands import skills as m

from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..serving import announce, serve_until
from ..state import StateDir
from ..systemd_notify import Notifier
from .manifest import ManifestError, parse_manifest, verify_manifest
from .tracker_store import TrackerStore

__all__ = ["CAPABILITY", "TRACKER_TOKEN_SECRET", "SkillTracker", "tracker_token"]

log = logging.getLogger("personad.skills.tracker")

CAPABILITY: Final = "skills"
TRACKER_TOKEN_SECRET: Final = "skills-tracker.token"
#: skill.manifest answers at most this many manifests.
MAX_MANIFESTS: Final = 50
#: How long one bus.clients answer stands for "who is on the bus now".
ONLINE_TTL_S: Final = 1.0
MESH_PREFIX: Final = "mesh:"


def tracker_token(state: StateDir) -> str:
    """$PERSONAD_SKILLS_TOKEN, a systemd credential ``skills-token``, or the state dir's tracker token.

    Its own variable and credential: ``personad skills serve`` joins twice, as
    the tracker and as the mesh peer (``PERSONAD_MESH_TOKEN``, ``mesh-token``).
    Role service (bus.* only: subscribe, publish, clients) providing ``skills``;
    the tracker calls nothing else.
    """
    return state.service_token(
        TRACKER_TOKEN_SECRET,
        what="the skills tracker",
        name="skills-tracker",
        subject="skills:tracker",
        provides=(CAPABILITY,),
        grants=(),
        env="PERSONAD_SKILLS_TOKEN",
        credential="skills-token",
    )


class SkillTracker:
    def __init__(self, *, url: str, token: str, state: StateDir, notifier: Notifier | None = None) -> None:
        self.url = url
        self.notifier = notifier or Notifier.from_env()
        self.store = TrackerStore(state.root / "mesh" / "tracker.sqlite3")
        self.dispatcher = Dispatcher()
        self.dispatcher.register("skill.manifest", self.manifest)
        self.dispatcher.register("skill.seeders", self.seeders)
        self.dispatcher.register("skill.popular", self.popular)
        self.client = BusClient(
            url,
            token=token,
            kind="skills",
            name="tracker",
            capabilities=[CAPABILITY],
            handler=self.dispatcher,
            on_notification=self._on_notification,
            on_state=self._on_state,
            reconnect=True,
        )
        self._online: tuple[float, set[str]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Events are applied in arrival order, one at a time (a peer's later
        #: skills.have must not be overtaken by its earlier one).
        self._events: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue(maxsize=10_000)

    # -- methods -------------------------------------------------------------------------

    async def manifest(self, p: m.ManifestParams, ctx: CallContext) -> m.ManifestResult:
        if p.skill_id is not None:
            found = await self.store.manifests("skill_id", p.skill_id, MAX_MANIFESTS)
        elif p.skill is not None:
            found = await self.store.manifests("skill", p.skill, MAX_MANIFESTS)
        else:
            assert p.adapter_sha256 is not None
            found = await self.store.manifests("adapter_sha256", p.adapter_sha256, MAX_MANIFESTS)
        return m.ManifestResult(manifests=[mf for _, mf in found], skill_ids=[sid for sid, _ in found])

    async def seeders(self, p: m.SeedersParams, ctx: CallContext) -> m.SeedersResult:
        online = await self.online()
        said = await self.store.seeders_of(p.skill_id, time.time(), requested_by=ctx.caller or "anonymous")
        return m.SeedersResult(
            skill_id=p.skill_id,
            seeders=[m.Seeder(node=node, since=since) for node, since in said if node in online],
        )

    async def popular(self, p: m.PopularParams, ctx: CallContext) -> m.PopularResult:
        online = await self.online()
        rows = await self.store.popular(time.time() - p.window_h * 3600.0, online, p.limit)
        return m.PopularResult(
            skills=[
                m.PopularEntry(
                    skill_id=row.skill_id,
                    skill=row.manifest.skill,
                    publisher=row.manifest.publisher,
                    effectiveness=row.manifest.effectiveness,
                    acquirers=row.acquirers,
                    requests=row.requests,
                    seeders=len(row.seeding),
                    score=round(row.acquirers + 0.1 * row.requests, 6),
                )
                for row in rows
            ]
        )

    async def online(self) -> set[str]:
        """Client ids of the mesh peers on the bus now (one bus.clients a second at most)."""
        now = asyncio.get_running_loop().time()
        if self._online is not None and now - self._online[0] <= ONLINE_TTL_S:
            return self._online[1]
        answer = await self.client.call("bus.clients", {"kind": "mesh"})
        ids = {c["id"] for c in answer["clients"] if str(c["id"]).startswith(MESH_PREFIX)}
        self._online = (now, ids)
        return ids

    # -- events --------------------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        if state == "connected":
            # The bus forgets subscriptions with the connection: ask again each time.
            self._spawn(self._subscribe(), "tracker-subscribe")

    async def _subscribe(self) -> None:
        try:
            await self.client.subscribe("skills.*")
        except Exception as exc:  # the connection went again: the next connect subscribes anew
            log.warning("could not subscribe to skills.*: %s", exc)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_notification(self, note: Notification) -> None:
        params = note.params
        if note.method != "event" or not isinstance(params, dict):
            return
        topic, publisher = params.get("topic"), params.get("publisher")
        if topic not in (m.ANNOUNCED_TOPIC, m.HAVE_TOPIC, m.ACQUIRED_TOPIC):
            return
        if not isinstance(publisher, str) or not publisher.startswith(MESH_PREFIX):
            log.info("ignoring %s from %s: only mesh peers publish skills", topic, publisher)
            return
        try:
            self._events.put_nowait((topic, publisher, params.get("data")))
        except asyncio.QueueFull:
            log.warning("dropping %s from %s: %d events waiting", topic, publisher, self._events.qsize())

    async def _apply_events(self) -> None:
        while True:
            topic, publisher, data = await self._events.get()
            try:
                await self.apply(topic, publisher, data)
            except Exception:
                log.exception("could not record %s from %s", topic, publisher)

    async def apply(self, topic: str, publisher: str, data: Any) -> None:
        """Record one event from a mesh peer (invalid data is logged and dropped)."""
        now = time.time()
        if topic == m.ANNOUNCED_TOPIC:
            try:
                manifest = parse_manifest(data)
                sid = verify_manifest(manifest)
            except ManifestError as exc:
                log.info("ignoring a manifest from %s: %s", publisher, exc)
                return
            if await self.store.add_manifest(sid, manifest):
                log.info("manifest %s… of %s from %s", sid[:12], manifest.skill, publisher)
            return
        try:
            if topic == m.HAVE_TOPIC:
                have = m.HaveEvent.model_validate(data)
                await self.store.set_seeding(publisher, have.skill_ids, now)
            else:
                acquired = m.AcquiredEvent.model_validate(data)
                await self.store.add_acquisition(acquired.skill_id, acquired.by, now)
        except ValidationError as exc:
            log.info("ignoring a malformed %s from %s: %s", topic, publisher, exc.errors()[0]["msg"])

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, or the bus refuses our token for good."""
        await self.store.open()
        counts = await self.store.counts()

        def line() -> str:
            return (
                f"tracker {self.client.client_id} serving cap:{CAPABILITY} "
                f"({counts['manifests']} manifests, {self.store.path})"
            )

        try:
            await serve_until(
                self.client,
                self.notifier,
                stop,
                who="skills tracker",
                background=[announce(self.client, self.notifier, "skills", line), self._apply_events()],
            )
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.store.close()

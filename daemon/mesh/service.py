"""``mesh:<node>``: one installation's mesh peer on the bus (seeds its store, fetches into it).

The peer joins as kind ``mesh``, name ``<node>`` (client id ``mesh:<node>``)
and serves skill.announce / held / have / piece (daemon/mesh/peer.py) and
skill.fetch (daemon/mesh/swarm.py). On every connect, the first and each
reconnection, it subscribes to ``skills.announced`` (manifests it may later
fetch without the tracker) and publishes a HaveEvent listing everything it
seeds, so a tracker that started later, or lost its state, learns it.

Who may fetch: the bus checks the grant (``skill.fetch@mesh:*``: personas
have it, admins have ``*``); of those, this peer serves its own
installation's personas (``persona:<id>`` with ``<state>/personas/<id>/``
present) and the operator's command line (kind ``cli``, the admin's
``personad skills fetch``). Anyone else, such as a persona of another
installation on the same bus, is FORBIDDEN: downloads write this
installation's store.

Its token (``mesh_token``) holds exactly what it calls on others:
:data:`MESH_GRANTS`; bus.* comes with the service role.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from protocol import ErrorCode, RpcError
from protocol.commands import skills as m

from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..inference.adapters import AdapterStore
from ..registry.bundle_keys import SigningKey
from ..serving import announce, serve_until
from ..state import StateDir
from ..systemd_notify import Notifier
from .manifest import ManifestError, parse_manifest
from .peer import Catalogue, PieceLimits, Seeder
from .swarm import Swarm, SwarmLimits

__all__ = ["MESH_GRANTS", "MESH_TOKEN_SECRET", "MeshPeer", "default_base_model_id", "mesh_token"]

log = logging.getLogger("personad.mesh")

MESH_TOKEN_SECRET = "mesh.token"
#: What a peer calls on others: other peers as a downloader, the tracker for manifests and seeders.
MESH_GRANTS: tuple[str, ...] = (
    "skill.have@mesh:*",
    "skill.piece@mesh:*",
    "skill.held@mesh:*",
    "skill.manifest@cap:skills",
    "skill.seeders@cap:skills",
)
#: The same spec and display name as daemon/inference/model.py's resolve_model_path
#: (not imported: that module imports torch, and naming the model must not load it).
_DEFAULT_SPEC = "smollm2"
_SMOLLM2_NAME = "SmolLM2-135M-Instruct"
_SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"


def default_base_model_id(spec: str | None = None) -> str:
    """The display name of the configured base model (``--model`` / $PERSONAD_MODEL), with no side effects."""
    spec = str(spec or os.environ.get("PERSONAD_MODEL") or _DEFAULT_SPEC)
    if spec == _DEFAULT_SPEC:
        return _SMOLLM2_NAME
    name = os.path.basename(os.path.normpath(os.path.expanduser(spec)))
    return _SMOLLM2_NAME if name == _SMOLLM2_CACHE_NAME else name


def mesh_token(state: StateDir, node: str = "main") -> str:
    """$PERSONAD_MESH_TOKEN, a systemd credential ``mesh-token``, or the state dir's mesh token."""
    suffix = "" if node == "main" else f"-{node}"
    return state.service_token(
        f"mesh{suffix}.token",
        what=f"the mesh peer mesh:{node}",
        name=f"mesh:{node}",
        subject=f"mesh:{node}",
        provides=(),
        grants=MESH_GRANTS,
        env="PERSONAD_MESH_TOKEN",
        credential="mesh-token",
    )


class MeshPeer:
    def __init__(
        self,
        *,
        url: str,
        token: str,
        state: StateDir,
        node: str = "main",
        base_model_id: str | None = None,
        limits: PieceLimits | None = None,
        swarm_limits: SwarmLimits | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.state = state
        self.node = f"mesh:{node}"
        self.notifier = notifier or Notifier.from_env()
        self.store = AdapterStore.for_state(state.root)
        self.catalogue = Catalogue(state.root, self.store)
        self.catalogue.load()
        self.dispatcher = Dispatcher()
        self.client = BusClient(
            url,
            token=token,
            kind="mesh",
            name=node,
            handler=self.dispatcher,
            on_notification=self._on_notification,
            on_state=self._on_state,
            reconnect=True,
        )
        self.seeder = Seeder(
            catalogue=self.catalogue,
            key=SigningKey.load_or_create(state.root),
            publish=self.client.publish,
            node=self.node,
            base_model_id=base_model_id or default_base_model_id(),
            limits=limits,
        )
        self.swarm = Swarm(client=self.client, seeder=self.seeder, state_root=state.root, limits=swarm_limits)
        self.dispatcher.register("skill.announce", self.seeder.announce)
        self.dispatcher.register("skill.held", self.seeder.held)
        self.dispatcher.register("skill.have", self.seeder.have)
        self.dispatcher.register("skill.piece", self.seeder.piece)
        self.dispatcher.register("skill.fetch", self.fetch)
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Set once subscribed and announced after a connect (tests and the CLI wait for it).
        self.joined = asyncio.Event()

    @property
    def base_model_id(self) -> str:
        return self.seeder.base_model_id

    # -- skill.fetch -----------------------------------------------------------------------

    def check_fetch_caller(self, caller: str | None) -> None:
        """FORBIDDEN unless ``caller`` is one of this installation's personas or its operator's CLI."""
        kind, _, name = (caller or "").partition(":")
        if kind == "persona" and name and "/" not in name and (self.state.personas / name).is_dir():
            return
        if kind == "cli":
            return
        raise RpcError(
            ErrorCode.FORBIDDEN,
            f"{caller or 'an anonymous caller'} may not fetch skills through {self.node}: it serves its "
            "own installation's personas and operator only",
        )

    async def fetch(self, p: m.FetchParams, ctx: CallContext) -> m.FetchResult:
        self.check_fetch_caller(ctx.caller)

        async def relay(event: m.ProgressEvent) -> None:
            await ctx.progress("skill.progress", event.model_dump(mode="json"))

        return await self.swarm.fetch(p, caller=ctx.caller, progress=relay)

    # -- the bus ---------------------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        if state != "connected":
            self.joined.clear()
        else:
            task = asyncio.get_running_loop().create_task(self._joined(), name="mesh-joined")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _joined(self) -> None:
        # Subscriptions belong to a connection: a reconnection needs them again.
        try:
            await self.client.subscribe(m.ANNOUNCED_TOPIC)
            await self.seeder.publish_have()
        except RpcError as exc:
            log.warning("%s: could not subscribe or announce what it seeds: %s", self.node, exc.message)
            return
        self.joined.set()

    def _on_notification(self, note: Any) -> None:
        if note.method != "event" or not isinstance(note.params, dict):
            return
        params = note.params
        publisher = str(params.get("publisher", ""))
        if params.get("topic") != m.ANNOUNCED_TOPIC or not publisher.startswith("mesh:"):
            return
        if publisher == self.node:
            return
        try:
            persist = self.catalogue.hear(parse_manifest(params.get("data")))
        except ManifestError as exc:
            log.info("ignoring a manifest from %s: %s", publisher, exc)
            return
        if persist is not None:
            task = asyncio.get_running_loop().create_task(self._persist_heard(persist, publisher))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _persist_heard(self, persist: Callable[[], None], publisher: str) -> None:
        try:
            await asyncio.to_thread(persist)
        except OSError as exc:  # kept in memory all the same; a full disk costs only the cache
            log.warning("cannot keep a manifest heard from %s on disk: %s", publisher, exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, or the bus refuses our token for good."""

        def line() -> str:
            seeded = len(self.catalogue.seeded_ids())
            return f"{self.node} seeding {seeded} skill(s), base model {self.base_model_id}"

        async def stopping() -> None:
            await self.swarm.cancel_all()
            for task in list(self._tasks):
                task.cancel()

        await asyncio.to_thread(self.swarm.sweep_partials)
        await serve_until(
            self.client,
            self.notifier,
            stop,
            who=f"mesh {self.node}",
            background=[announce(self.client, self.notifier, "skills", line)],
            on_stopping=stopping,
        )

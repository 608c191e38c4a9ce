"""``personad registry``: the persona registry on the bus, as ``registry:main`` serving ``cap:registry``.

On start it opens the store (store.py; a wrong key stops it with a clear
error), imports ``<config-dir>/personas/*.toml`` (:func:`import_configs`),
then joins the bus and serves the ``persona.*`` methods of
protocol/commands/personas.py. Registry errors are translated at this
boundary: an unknown id or a change that would make an invalid profile is
INVALID_PARAMS naming the field (``data.field``), a damaged record or audit
log is INTERNAL_ERROR with the operator's message.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from protocol import ErrorCode, RpcError
from protocol.commands import personas as m
from protocol.profile import PersonaStatus, Profile

from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..errors import ConfigError
from ..persona.config import list_persona_ids, load_persona_config
from ..serving import announce, serve_until
from ..systemd_notify import Notifier
from . import serve_erase, serve_generate, serve_lineage, serve_sessions, serve_transfer, store
from .boundary import RegistryEnv, actor, translate
from .errors import InvalidChange, UnknownPersona
from .events import publish_change
from .store import Registry
from .transfer_brain import import_notes, recover_imports

log = logging.getLogger("personad.registry")

CAPABILITY = "registry"
#: The role a persona declared only in TOML gets (the TOML has no role).
DEFAULT_ROLE = "assistant"
#: The actor the audit log names for changes the TOML import makes.
IMPORT_ACTOR = "registry:import"


def register_registry_commands(dispatcher: Dispatcher, env: RegistryEnv) -> None:
    """Every ``persona.*`` method: the record methods here, the other groups from their modules."""
    registry = env.registry

    async def get(p: m.PersonaGetParams, ctx: CallContext) -> m.PersonaResult:
        return m.PersonaResult(profile=await registry.get(p.persona_id))

    async def list_(p: m.PersonaListParams, ctx: CallContext) -> m.PersonaListResult:
        page = await registry.page(
            status=p.status,
            tag=p.tag,
            role=p.role,
            limit=p.limit,
            cursor=p.cursor,
        )
        return m.PersonaListResult(
            personas=[
                m.PersonaSummary(
                    id=s.id,
                    name=s.name,
                    role=s.role,
                    status=PersonaStatus(s.status),
                    tags=s.tags,
                    updated_at=s.updated_at,
                )
                for s in page.personas
            ],
            next_cursor=page.next_cursor,
        )

    async def changed(ctx: CallContext, profile: Profile) -> m.PersonaResult:
        await publish_change(ctx.client, profile.id, status=profile.status.value, action=ctx.request.method)
        return m.PersonaResult(profile=profile)

    async def create(p: m.PersonaCreateParams, ctx: CallContext) -> m.PersonaResult:
        return await changed(ctx, await registry.create(p.profile, actor=actor(ctx)))

    async def update(p: m.PersonaUpdateParams, ctx: CallContext) -> m.PersonaResult:
        # null means "not given", at every level (a partial traits object keeps the rest).
        changes = p.changes.model_dump(mode="json", exclude_none=True)
        if not changes:
            raise RpcError(
                ErrorCode.INVALID_PARAMS, "invalid params: changes: nothing to change", {"field": "changes"}
            )
        return await changed(ctx, await registry.update(p.persona_id, changes, actor=actor(ctx)))

    async def archive(p: m.PersonaArchiveParams, ctx: CallContext) -> m.PersonaResult:
        return await changed(ctx, await registry.archive(p.persona_id, actor=actor(ctx)))

    for method, handler in (
        ("persona.get", get),
        ("persona.list", list_),
        ("persona.create", create),
        ("persona.update", update),
        ("persona.archive", archive),
    ):
        dispatcher.register(method, translate(handler))
    for group in (serve_generate, serve_lineage, serve_transfer, serve_erase, serve_sessions):
        group.register(dispatcher, env)


# -- the TOML import ---------------------------------------------------------------


def import_configs(db: Any, audit: Any, config_dir: Path) -> dict[str, str]:
    """Bring ``<config_dir>/personas/*.toml`` into the registry; return id -> what happened.

    A TOML seen for the first time creates an active persona (role
    :data:`DEFAULT_ROLE`); one whose bytes changed since its last import
    updates name, description and capabilities and makes it active again;
    an unchanged one is left alone, so edits made through the registry
    stay. Grants stay in the TOML (they are the token's, not the profile's).
    A TOML that does not load or does not fit a profile is logged and
    skipped: one bad file must not hide every other persona.
    """
    outcome: dict[str, str] = {}
    for persona_id in list_persona_ids(config_dir):
        path = config_dir / "personas" / f"{persona_id}.toml"
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            config = load_persona_config(config_dir, persona_id)
        except (OSError, ConfigError) as exc:
            log.error("not importing %s: %s", path, exc)
            outcome[persona_id] = "error"
            continue
        row = db.execute("SELECT sha256 FROM config_sources WHERE persona_id = ?", (persona_id,)).fetchone()
        exists = db.execute("SELECT 1 FROM profiles WHERE id = ?", (persona_id,)).fetchone() is not None
        if exists and row is not None and row[0] == digest:
            outcome[persona_id] = "unchanged"
            continue
        fields = {
            "name": config.name,
            "description": config.description,
            "capabilities": list(config.capabilities) or ["chat"],
            "status": "active",
        }
        try:
            if exists:
                store.update(
                    db, audit, persona_id, fields, actor=IMPORT_ACTOR, action="persona.import_config"
                )
                outcome[persona_id] = "updated"
            else:
                profile = Profile.model_validate_json(
                    json.dumps({"id": persona_id, "role": DEFAULT_ROLE, **fields})
                )
                store.create(db, audit, profile, actor=IMPORT_ACTOR)
                outcome[persona_id] = "created"
        except (ValidationError, InvalidChange) as exc:
            log.error("not importing %s: it does not fit a profile: %s", path, str(exc).splitlines()[0])
            outcome[persona_id] = "error"
            continue
        db.execute(
            "INSERT INTO config_sources (persona_id, sha256, imported_at) VALUES (?, ?, ?) "
            "ON CONFLICT (persona_id) DO UPDATE SET "
            "sha256 = excluded.sha256, imported_at = excluded.imported_at",
            (persona_id, digest, time.time()),
        )
    return outcome


# -- the service -------------------------------------------------------------------


class RegistryService:
    def __init__(
        self,
        registry: Registry,
        *,
        url: str,
        token: str,
        state_root: Path,
        notifier: Notifier | None = None,
    ) -> None:
        self.registry = registry
        self.notifier = notifier or Notifier.from_env()
        self.dispatcher = Dispatcher()
        self.env = RegistryEnv(registry=registry, state_root=state_root)
        register_registry_commands(self.dispatcher, self.env)
        self.client = BusClient(
            url,
            token=token,
            kind="registry",
            name="main",
            capabilities=[CAPABILITY],
            handler=self.dispatcher,
            reconnect=True,
        )
        for redo in self.env.on_reconnect:
            self.client.add_reconnect_listener(functools.partial(redo, self.client))

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, or the bus refuses our token for good."""
        await self.recover()
        ready = announce(
            self.client,
            self.notifier,
            "registry",
            lambda: f"{self.client.client_id} serving cap:{CAPABILITY}",
        )
        await serve_until(self.client, self.notifier, stop, who="registry", background=[ready])

    async def recover(self) -> list[str]:
        """Take back the imports a registry killed mid-import left half-made (before serving:
        an id is free again before anyone can ask for it), and remove the temporary files of
        exports it was killed in (a bundle's plaintext brain among them). Returns the ids of
        the imports taken back."""
        root = self.env.state_root
        recorded = set()
        for persona_id in await asyncio.to_thread(import_notes, root):
            try:
                await self.registry.get(persona_id)
            except UnknownPersona:
                continue
            recorded.add(persona_id)
        taken_back = await asyncio.to_thread(recover_imports, root, recorded.__contains__)
        for persona_id in taken_back:
            log.warning("took back the import of %s: the registry stopped before committing it", persona_id)
        for leftover in await asyncio.to_thread(serve_transfer.sweep_exports, root):
            log.warning("removed %s: an export the registry stopped in the middle of", leftover)
        return taken_back


async def run_registry(state_dir: Path, config_dir: Path | None, *, url: str, token: str) -> None:
    """The CLI's main: open, import, serve until SIGTERM or SIGINT, close."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = await Registry.open(state_dir)
    try:
        if config_dir is not None:
            outcome = await registry.run(import_configs, registry.audit, config_dir)
            for persona_id, what in outcome.items():
                log.info("config persona %s: %s", persona_id, what)
        await RegistryService(registry, url=url, token=token, state_root=state_dir).run(stop)
    finally:
        await registry.close()

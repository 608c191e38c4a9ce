"""The persona daemon's main loop.

Start-up order: config (validated) → session directory (strict order) →
brain (opened with the persona's key; a wrong key stops here) → bus
connection (reconnecting) → READY to systemd once connected. Every task it runs (the bus
client's reader, request handlers, the watchdog) is owned by one TaskGroup.
This module must never import torch: the heavy model lives in the inference
service; tests check it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from protocol.commands.persona import BusState, PingResult, StatusResult

from .. import __version__
from ..brain import Brain, RetentionPolicy
from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..errors import AuthError
from ..systemd_notify import Notifier
from .academy_roles import register_academy_roles
from .analytics import register_analytics_commands
from .chat import register_chat_commands
from .config import PersonaConfig
from .evolution import register_evolution_commands
from .knowledge import register_knowledge_commands
from .memory import register_memory_commands
from .plugins import register_plugins_commands
from .session_dir import SessionDir
from .sessions import register_sessions_commands
from .skills import PersonaSkills, register_skills_commands
from .universal import register_universal_commands

log = logging.getLogger("personad.persona")


class PersonaDaemon:
    def __init__(
        self,
        config: PersonaConfig,
        session_dir: SessionDir,
        *,
        url: str,
        token: str,
        brain_key: bytes,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self._brain_key = brain_key
        self.brain: Brain | None = None
        self.session_dir = session_dir
        self.url = url
        self.notifier = notifier or Notifier.from_env()
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.dispatcher = Dispatcher()
        self.dispatcher.register("persona.status", self._status)
        self.dispatcher.register("persona.ping", self._ping)
        self.client = BusClient(
            url,
            token=token,
            kind="persona",
            name=config.id,
            capabilities=config.capabilities,
            handler=self.dispatcher,
            reconnect=True,
            on_state=self._on_bus_state,
        )
        self._ready = False
        self.skills: PersonaSkills | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, or the bus refuses us for good."""
        failure: BaseException | None = None
        memory = self.config.memory
        retention = RetentionPolicy(
            max_memories=memory.max_memories,
            max_bytes=memory.max_bytes,
            interval_s=memory.retention_interval_s,
        )
        # The brain opens before we join the bus: a wrong key or a too-new
        # schema stops the daemon here, before it answers anyone.
        async with await Brain.open(self.session_dir.brain, self._brain_key, retention=retention) as brain:
            self.brain = brain
            register_memory_commands(self.dispatcher, brain, self.session_dir)

            async def memories(query: str) -> list[str]:
                return [hit.content for hit in await brain.recall(query, limit=5)]

            # The universal commands: chat (through cap:inference, or the
            # in-process engine) and screenshot/browser_js (through
            # cap:browser, as this persona, artifacts into its own folder).
            chat = register_chat_commands(
                self.dispatcher,
                self.client,
                self.config,
                self.session_dir,
                memories=memories,
                log_interaction=brain.log_interaction,
            )
            register_universal_commands(self.dispatcher, self.client, self.session_dir)
            for register_group in (
                register_analytics_commands,
                register_evolution_commands,
                register_knowledge_commands,
                register_plugins_commands,
                register_sessions_commands,
            ):
                register_group(self.dispatcher, self.client, brain, self.session_dir)
            register_academy_roles(self.dispatcher, self.client, self.config, chat)
            self.skills = register_skills_commands(self.dispatcher, self.client, self.config, brain, chat)
            try:
                failure = await self._serve(stop, brain)
            finally:
                await self.skills.close()
                self.skills = None
                # In single-persona mode the engine lives in this process: its
                # worker thread and the model must go when the persona does.
                await chat.close()
        self.brain = None
        if failure is not None:
            raise AuthError(f"persona {self.config.id}: {failure}")
        log.info("persona %s stopped", self.config.id)

    async def _serve(self, stop: asyncio.Event, brain: Brain) -> BaseException | None:
        failure: BaseException | None = None
        async with self.client, asyncio.TaskGroup() as tg:
            self.notifier.status(f"persona {self.config.id}: connecting to {self.url}")
            stopped = tg.create_task(stop.wait(), name="stop")
            failed = tg.create_task(self.client.wait_failed(), name="bus-failure")
            background = [
                tg.create_task(self.notifier.run_watchdog(), name="watchdog"),
                tg.create_task(brain.run_retention(), name="retention"),
            ]
            await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                failure = failed.result()
            self.notifier.stopping(f"persona {self.config.id}: stopping")
            for task in [*background, stopped, failed]:
                task.cancel()
        return failure

    def _on_bus_state(self, state: str) -> None:
        """Keep systemd's STATUS= in step with the bus connection; READY=1 on the first connect.

        READY waits for the bus: a persona that cannot reach it is not of
        service yet, and systemd's start timeout then applies.
        """
        if self.skills is not None:
            self.skills.on_bus_state(state)
        if state == "connected" and not self._ready:
            self._ready = True
            self.notifier.ready(f"persona {self.config.id}: bus connected")
        else:
            self.notifier.status(f"persona {self.config.id}: bus {state}")

    # -- handlers ------------------------------------------------------------------

    async def _status(self, params: object, ctx: CallContext) -> StatusResult:
        client = self.client
        return StatusResult(
            id=self.config.id,
            name=self.config.name,
            description=self.config.description,
            version=__version__,
            pid=os.getpid(),
            started_at=self.started_at,
            uptime_s=round(time.monotonic() - self._started_mono, 3),
            session_dir=str(self.session_dir.root),
            capabilities=list(self.config.capabilities),
            bus=BusState(
                state=client.state,
                url=self.url,
                connected_since=client.connected_since,
                reconnects=client.reconnects,
            ),
            inflight=client.inflight,
        )

    async def _ping(self, params: object, ctx: CallContext) -> PingResult:
        return PingResult(time=time.time())


async def run_persona(daemon: PersonaDaemon) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.run(stop)

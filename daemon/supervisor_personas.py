"""``personad up`` and the registry: which personas run, from what config, following every change.

:class:`RegistryFollower` is the registry side of the supervisor (the
process side, the children themselves, stays in supervisor.py). It holds
one admin-token client on the bus for as long as ``up`` supervises:

* at start, it waits for cap:registry, subscribes to ``registry.persona``
  (events.py) and *then* reads ``persona.list`` for the active personas, so
  a change made in between is seen (at worst twice, which is harmless:
  every action below is idempotent);
* then it acts on each ``registry.persona`` event, one at a time, in
  order: status ``active`` and not running → start that persona's daemon
  exactly as at start-up; any other status (``draft``, ``archived``,
  ``merged``, ``deleted``) and running → stop it; ``deleted`` also removes
  the config written for it. Only events whose ``publisher`` (stamped by
  the bus) is ``registry:main`` count: anybody may publish on any topic;
* after the bus comes back (the client reconnects; subscriptions do not
  survive a bus restart), it subscribes again and reconciles with
  ``persona.list``, so an event missed meanwhile is not a persona missed.

A persona declared in TOML runs from its TOML (its grants live there). One
created through the registry has none: its daemon gets a config written
from the profile into ``<state>/registry/config/`` (id, name, description,
capabilities; no extra grants), rewritten at each start so that it follows
the profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from protocol import ErrorCode, RpcError
from protocol.messages import Notification

from .client import BusClient
from .errors import BusUnavailable, ConfigError, PersonadError
from .files import atomic_write
from .ids import is_persona_id
from .persona.config import PersonaConfig, load_persona_config
from .registry.events import PUBLISHER, TOPIC
from .registry.keys import generated_config_dir
from .state import StateDir, find_token

log = logging.getLogger("personad.up")

#: The one status under which up runs a persona.
RUNS: Final = "active"
_RESYNC: Final = ("resync", "", "")

StartPersona = Callable[[str, PersonaConfig, Path, str], Awaitable[None]]
StopPersona = Callable[[str, str], Awaitable[None]]


class RegistryFollower:
    """Keeps up's persona children in step with the registry (see the module docstring).

    ``start(id, config, config_dir, why)`` and ``stop(id, why)`` are the
    supervisor's; ``running()`` the ids it runs now.
    """

    def __init__(
        self,
        state: StateDir,
        config_dir: Path,
        url: str,
        *,
        start: StartPersona,
        stop: StopPersona,
        running: Callable[[], Collection[str]],
    ) -> None:
        self.state = state
        self.config_dir = config_dir
        self.generated = generated_config_dir(state.root)
        self._start = start
        self._stop = stop
        self._running = running
        self._queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
        self._connections = 0
        self.client = BusClient(
            url,
            token=find_token(state),
            kind="cli",
            name="up-registry",
            reconnect=True,
            on_notification=self._on_event,
            on_state=self._on_state,
        )

    async def open(self, timeout: float = 60.0) -> dict[str, tuple[PersonaConfig, Path]]:
        """Join the bus, wait for cap:registry, subscribe; every active persona with its config."""
        await self.client.start()
        await self.client.wait_connected(timeout)
        deadline = time.monotonic() + timeout
        while not (await self.client.call("bus.clients", {"capability": "registry"}))["clients"]:
            if time.monotonic() > deadline:
                raise BusUnavailable(f"the registry did not come up within {timeout:.0f}s")
            await asyncio.sleep(0.1)
        await self.client.subscribe(TOPIC)
        ids = await self._active_ids()
        print("cap:registry is up", flush=True)
        configs = {pid: await self.config_for(pid) for pid in ids}
        if not configs:
            raise ConfigError(
                f"no active personas: none in {self.config_dir}/personas/*.toml nor active in the registry"
            )
        return configs

    async def close(self) -> None:
        await self.client.close()

    async def follow(self) -> None:
        """Apply the events, in order, until cancelled; one that fails is logged, never fatal to up."""
        while True:
            kind, persona_id, status = await self._queue.get()
            try:
                if kind == "resync":
                    await self._resync()
                else:
                    await self._apply(persona_id, status)
            except (RpcError, PersonadError, ValidationError, OSError) as exc:
                log.error("could not follow the registry (%s %s %s): %s", kind, persona_id, status, exc)

    async def config_for(self, persona_id: str) -> tuple[PersonaConfig, Path]:
        """The persona's config: its TOML if it has one, else one written from its profile."""
        if (self.config_dir / "personas" / f"{persona_id}.toml").exists():
            return load_persona_config(self.config_dir, persona_id), self.config_dir
        got = await self.client.call("persona.get", {"persona_id": persona_id}, to="cap:registry")
        return write_profile_config(self.generated, got["profile"]), self.generated

    # -- what arrives ----------------------------------------------------------

    def _on_event(self, note: Notification) -> None:
        params = note.params
        if note.method != "event" or not isinstance(params, dict) or params.get("topic") != TOPIC:
            return
        if params.get("publisher") != PUBLISHER:
            log.warning("ignoring a %s event published by %s", TOPIC, params.get("publisher"))
            return
        data = params.get("data")
        persona_id = data.get("persona_id") if isinstance(data, dict) else None
        status = data.get("status") if isinstance(data, dict) else None
        if not isinstance(persona_id, str) or not is_persona_id(persona_id):
            log.warning("ignoring a %s event without a valid persona_id: %r", TOPIC, data)
            return
        if not isinstance(status, str):
            log.warning("ignoring a %s event without a status: %r", TOPIC, data)
            return
        self._queue.put_nowait(("event", persona_id, status))

    def _on_state(self, state: str) -> None:
        if state != "connected":
            return
        self._connections += 1
        if self._connections > 1:  # the bus came back: our subscription did not survive it
            self._queue.put_nowait(_RESYNC)

    # -- what it does -----------------------------------------------------------

    async def _apply(self, persona_id: str, status: str) -> None:
        running = persona_id in self._running()
        if status == RUNS and not running:
            config, config_dir = await self.config_for(persona_id)
            await self._start(persona_id, config, config_dir, "the registry made it active")
        elif status != RUNS and running:
            await self._stop(persona_id, f"the registry made it {status}")
        if status == "deleted":
            with contextlib.suppress(FileNotFoundError):
                (self.generated / "personas" / f"{persona_id}.toml").unlink()

    async def _resync(self) -> None:
        await self.client.subscribe(TOPIC)
        active = await self._active_ids()
        for persona_id in active:
            await self._apply(persona_id, RUNS)
        for persona_id in [p for p in self._running() if p not in active]:
            try:
                got = await self.client.call("persona.get", {"persona_id": persona_id}, to="cap:registry")
                status = got["profile"]["status"]
            except RpcError as exc:
                if exc.code != ErrorCode.INVALID_PARAMS:
                    raise
                status = "deleted"  # the registry no longer holds it
            await self._apply(persona_id, status)

    async def _active_ids(self) -> list[str]:
        ids: list[str] = []
        cursor = None
        while True:
            page = await self.client.call(
                "persona.list", {"status": RUNS, "limit": 500, "cursor": cursor}, to="cap:registry"
            )
            ids += [p["id"] for p in page["personas"]]
            if (cursor := page["next_cursor"]) is None:
                return ids


def write_profile_config(config_dir: Path, profile: dict[str, Any]) -> PersonaConfig:
    """The persona daemon's TOML for a registry-only persona, from its profile (validated first)."""
    config = PersonaConfig.model_validate(
        {
            "id": profile["id"],
            "name": profile["name"],
            "description": profile["description"],
            "capabilities": profile["capabilities"],
        }
    )
    folder = config_dir / "personas"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    lines = [
        f"id = {_toml_str(config.id)}",
        f"name = {_toml_str(config.name)}",
        f"description = {_toml_str(config.description)}",
        f"capabilities = [{', '.join(_toml_str(c) for c in config.capabilities)}]",
    ]
    atomic_write(folder / f"{config.id}.toml", ("\n".join(lines) + "\n").encode("utf-8"), mode=0o600)
    return config


def _toml_str(value: str) -> str:
    """A TOML basic string: quotes, backslashes and every control character escaped.

    Names and descriptions come from the wire; none may break out of its value.
    """
    out = []
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'

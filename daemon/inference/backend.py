"""The one interface to inference, whether the engine is across the bus or in this process.

A persona's chat code talks to an :class:`InferenceBackend` and never knows
which it has:

* :class:`RemoteBackend` — the shared service (``personad inference``),
  reached over the bus at ``cap:inference``; tokens arrive as
  ``inference.token`` progress notifications;
* :class:`~daemon.inference.engine.AsyncEngine` — the same engine in this
  process (single-persona mode), tokens posted from its worker thread.

The service itself is a thin bus adapter over an ``AsyncEngine``
(``service.py``), so both paths run the same engine code with the same
pydantic params and results from ``protocol/commands/inference.py``.

This module imports no torch: :func:`open_backend` imports the engine only
when in-process mode is asked for.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from protocol import ErrorCode, Notification, RpcError
from protocol.commands.inference import (
    GenerateParams,
    GenerateResult,
    InferenceStatus,
    LoadStackParams,
    LoadStackResult,
    TokenParams,
    UnloadParams,
    UnloadResult,
)

from ..client import BusClient
from ..errors import ConfigError

__all__ = [
    "DECODERS",
    "INFERENCE_TARGET",
    "InferenceBackend",
    "RemoteBackend",
    "auto_threads",
    "backend_mode",
    "decoder_name",
    "open_backend",
    "parse_threads",
]

INFERENCE_TARGET = "cap:inference"
TokenCallback = Callable[[TokenParams], Awaitable[None]]


class InferenceBackend(Protocol):
    """What a persona needs from an inference engine."""

    #: "service" (over the bus) or "inprocess".
    kind: str

    async def generate(
        self,
        params: GenerateParams,
        *,
        owner: str,
        on_token: TokenCallback | None = None,
        deadline: float | None = None,
    ) -> GenerateResult:
        """Generate; ``deadline`` is a loop time after which the caller has stopped waiting."""

    async def load_stack(self, params: LoadStackParams, *, owner: str) -> LoadStackResult: ...

    async def unload(self, params: UnloadParams, *, owner: str) -> UnloadResult: ...

    async def status(self) -> InferenceStatus: ...

    async def close(self) -> None:
        """Release what this backend holds (an in-process engine: its thread and model). Idempotent."""


class RemoteBackend:
    """The inference service, over the bus.

    ``owner`` is not sent: the service knows the caller from the ``from``
    the bus stamps on every request, which a client cannot forge.
    """

    kind = "service"

    def __init__(self, client: BusClient, *, target: str = INFERENCE_TARGET) -> None:
        self.client = client
        self.target = target

    def _deadline_ms(self, deadline: float | None, default_ms: int) -> int:
        if deadline is None:
            return default_ms
        remaining = deadline - asyncio.get_running_loop().time()
        return max(1, int(remaining * 1000) - 50)  # leave the persona time to answer its own caller

    async def _call(self, method: str, params: Any, *, deadline: float | None = None, **kw: Any) -> Any:
        try:
            return await self.client.call(
                method,
                params.model_dump(mode="python"),
                to=self.target,
                deadline_ms=self._deadline_ms(deadline, kw.pop("default_ms", 60_000)),
                **kw,
            )
        except RpcError as exc:
            if exc.code == ErrorCode.TARGET_OFFLINE:
                raise RpcError(
                    exc.code,
                    "no inference service is on the bus: start `personad inference` "
                    "(or set PERSONAD_INFERENCE=inprocess for single-persona mode)",
                ) from None
            raise

    async def generate(
        self,
        params: GenerateParams,
        *,
        owner: str,
        on_token: TokenCallback | None = None,
        deadline: float | None = None,
    ) -> GenerateResult:
        tasks: list[asyncio.Task[None]] = []
        order: asyncio.Lock = asyncio.Lock()

        def progress(note: Notification) -> None:
            if on_token is None or note.method != "inference.token" or not isinstance(note.params, dict):
                return
            try:
                token = TokenParams.model_validate(note.params)
            except ValueError:
                return

            async def forward() -> None:
                async with order:  # the client runs callbacks as tasks: keep pieces in order
                    await on_token(token)

            tasks.append(asyncio.ensure_future(forward()))

        try:
            result = await self._call(
                "inference.generate", params, deadline=deadline, on_progress=progress, default_ms=300_000
            )
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        return GenerateResult.model_validate(result)

    async def load_stack(self, params: LoadStackParams, *, owner: str) -> LoadStackResult:
        return LoadStackResult.model_validate(await self._call("inference.load_stack", params))

    async def unload(self, params: UnloadParams, *, owner: str) -> UnloadResult:
        return UnloadResult.model_validate(await self._call("inference.unload", params))

    async def status(self) -> InferenceStatus:
        from protocol.commands.bus import Empty

        return InferenceStatus.model_validate(
            await self._call("inference.status", Empty(), default_ms=10_000)
        )

    async def close(self) -> None:
        """Nothing to release: the bus client belongs to the persona, the engine to the service."""


def backend_mode(explicit: str | None = None) -> Literal["service", "inprocess"]:
    """``service`` (default) or ``inprocess``: the argument, else ``$PERSONAD_INFERENCE``."""
    mode = (explicit or os.environ.get("PERSONAD_INFERENCE") or "service").strip().lower()
    if mode not in ("service", "inprocess"):
        raise ConfigError(f"PERSONAD_INFERENCE must be 'service' or 'inprocess', not {mode!r}")
    return mode  # type: ignore[return-value]


#: The engines that decode, by name; the first is the default.
DECODERS = ("openvino", "torch")


def decoder_name(explicit: str | None = None) -> str:
    """``openvino`` (default) or ``torch``: the argument, else ``$PERSONAD_INFERENCE_BACKEND``."""
    name = (explicit or os.environ.get("PERSONAD_INFERENCE_BACKEND") or DECODERS[0]).strip().lower()
    if name not in DECODERS:
        raise ConfigError(f"the inference backend must be one of {', '.join(DECODERS)}, not {name!r}")
    return name


def usable_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 quota (systemd CPUQuota=)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def auto_threads(cores: int | None = None) -> int:
    """Decoding threads for the cores free to the service: all but one, which the bus, personas
    and browser on the same machine need (on two cores, two decoding threads lose to one as soon
    as anything else runs); at least one."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores - 1)


def parse_threads(value: str | int | None) -> int:
    """``--threads``/``$PERSONAD_INFERENCE_THREADS``: a count, or ``auto`` (the default)."""
    raw = str(value if value is not None else os.environ.get("PERSONAD_INFERENCE_THREADS") or "auto").strip()
    if raw == "auto":
        return auto_threads()
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ConfigError(f"threads must be a positive number or 'auto', not {raw!r}")
    return threads


async def open_backend(client: BusClient, *, state_root: Path, mode: str | None = None) -> InferenceBackend:
    """The backend a persona should use: the service, or an engine in this process.

    In-process mode reads ``PERSONAD_MODEL``, ``PERSONAD_INFERENCE_BACKEND`` and
    ``PERSONAD_INFERENCE_THREADS`` like the service does, and uses the shared adapter store.
    """
    if backend_mode(mode) == "service":
        return RemoteBackend(client)
    from .engine import AsyncEngine  # the model's libraries: only in single-persona mode

    return await AsyncEngine.open(state_root=state_root, threads=parse_threads(None), backend=decoder_name())

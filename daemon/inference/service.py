"""``personad inference``: the engine on the bus as the provider of ``cap:inference``.

One process per machine holds the base model once; every persona on the
machine sends it ``inference.generate`` with its own stack. The service joins
as ``kind="inference"`` with ``capabilities=["inference"]`` (the bus routes
``to: cap:inference`` to the least busy provider) and its own token (role
``service``, subject ``inference:*``), issued into the state directory the
first time, as persona tokens are.

The service is a thin adapter: each handler validates (the dispatcher),
calls the :class:`~daemon.inference.engine.AsyncEngine` — the same object a
persona uses in single-persona mode — and translates errors at the boundary.
The fairness key is the caller's client id, stamped by the bus (``from``),
so a persona cannot jump the queue by claiming to be another.

Start-up: model loaded (converting SmolLM2 once if needed) → bus joined →
READY=1 to systemd; the watchdog runs from then on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from protocol.commands.bus import Empty
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

from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..serving import serve_until
from ..state import StateDir
from ..systemd_notify import Notifier
from .adapter_admin import register_delete_command
from .backend import InferenceBackend
from .embed import Embedder, register_embed_command
from .errors import InferenceError, to_rpc
from .merge import register_merge_command
from .train_service import register_train_command

log = logging.getLogger("personad.inference.service")

SERVICE_KIND = "inference"
CAPABILITY = "inference"


def service_token(state: StateDir, name: str) -> str:
    """The service's token: $PERSONAD_TOKEN, a systemd credential, else issued into the state dir."""
    # It serves cap:inference, so its token must say so (provide:inference).
    return state.service_token(
        f"inference-{name}.token",
        what="the inference service",
        name=f"inference:{name}",
        subject="inference:*",
        provides=(CAPABILITY,),
    )


def _translated(
    handler: Callable[[Any, CallContext], Awaitable[Any]],
) -> Callable[[Any, CallContext], Awaitable[Any]]:
    async def wrapper(params: Any, ctx: CallContext) -> Any:
        try:
            return await handler(params, ctx)
        except InferenceError as exc:
            raise to_rpc(exc) from None

    return wrapper


def register_inference_commands(
    dispatcher: Dispatcher, backend: InferenceBackend, embedder: Embedder | None = None
) -> None:
    """Serve ``inference.*`` from ``backend`` (normally an in-process AsyncEngine).

    ``embedder`` serves ``inference.embed`` (a new, lazily loaded one by default).
    """

    async def generate(params: GenerateParams, ctx: CallContext) -> GenerateResult:
        async def on_token(token: TokenParams) -> None:
            await ctx.progress("inference.token", token.model_dump())

        return await backend.generate(
            params,
            owner=ctx.caller or "anonymous",
            on_token=on_token if params.stream else None,
            deadline=ctx.deadline,
        )

    async def load_stack(params: LoadStackParams, ctx: CallContext) -> LoadStackResult:
        return await backend.load_stack(params, owner=ctx.caller or "anonymous")

    async def unload(params: UnloadParams, ctx: CallContext) -> UnloadResult:
        return await backend.unload(params, owner=ctx.caller or "anonymous")

    async def status(params: Empty, ctx: CallContext) -> InferenceStatus:
        return await backend.status()

    dispatcher.register("inference.generate", _translated(generate))
    dispatcher.register("inference.load_stack", _translated(load_stack))
    dispatcher.register("inference.unload", _translated(unload))
    dispatcher.register("inference.status", _translated(status))
    # adapter.merge and adapter.delete: admin work on the engine's worker thread
    # (daemon/inference/merge.py, adapter_admin.py).
    register_merge_command(dispatcher, backend)
    register_delete_command(dispatcher, backend)
    # adapter.train: in a child process per training, so generation goes on (train_service.py).
    register_train_command(dispatcher, backend)
    # inference.embed: sentence embeddings for the personas' knowledge search,
    # on their own thread (daemon/inference/embed.py).
    register_embed_command(dispatcher, embedder)


class InferenceService:
    """A bus client serving ``cap:inference`` from an engine."""

    def __init__(
        self,
        backend: InferenceBackend,
        *,
        url: str,
        token: str,
        name: str = "main",
        notifier: Notifier | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.backend = backend
        self.url = url
        self.name = name
        self.notifier = notifier or Notifier.from_env()
        self.dispatcher = Dispatcher()
        register_inference_commands(self.dispatcher, backend, embedder)
        self.client = BusClient(
            url,
            token=token,
            kind=SERVICE_KIND,
            name=name,
            capabilities=[CAPABILITY],
            handler=self.dispatcher,
            reconnect=True,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, or the bus refuses us for good."""
        # READY at once: the model is loaded, which is what a start waits for.
        self.notifier.ready(f"inference {self.name}: serving cap:{CAPABILITY} via {self.url}")
        await serve_until(self.client, self.notifier, stop, who=f"inference {self.name}")


async def serve(
    state: StateDir,
    *,
    url: str,
    name: str = "main",
    model: str | None = None,
    threads: int = 1,
    limits: Any = None,
    backend: str = "openvino",
    weight_format: str | None = None,
    precision: str | None = None,
) -> None:
    """Load the model, join the bus, serve until SIGTERM/SIGINT (``personad inference``)."""
    from .engine import AsyncEngine, EngineLimits

    token = service_token(state, name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "loading the model (%s, %s backend, %d thread(s))",
        model or os.environ.get("PERSONAD_MODEL") or "smollm2",
        backend,
        threads,
    )
    engine = await AsyncEngine.open(
        state_root=state.root,
        model=model,
        threads=threads,
        limits=limits or EngineLimits(),
        backend=backend,
        weight_format=weight_format,
        precision=precision,
    )
    try:
        status = await engine.status()
        log.info(
            "model %s loaded from %s (%s, %.0f MB of weights, RSS %.0f MB)",
            status.model,
            status.model_path,
            status.backend,
            status.model_bytes / 1e6,
            status.rss_bytes / 1e6,
        )
        service = InferenceService(engine, url=url, token=token, name=name)
        # The supervisor and tests wait for this line.
        print(f"inference {name} ready: model {status.model}, joining {url}", flush=True)
        await service.run(stop)
    finally:
        await engine.close()

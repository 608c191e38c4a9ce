"""The engine's asyncio face: one worker thread runs the model, the loop never blocks.

Like aiosqlite's ``core.py``: blocking work runs on one thread fed by a
queue, and results are posted back to the event loop. The package is split
by job, each its own module:

* ``limits.py``    — :class:`EngineLimits`, every bound as a named knob;
* ``scheduler.py`` — who runs next: per-owner queues round-robin, admin calls
  first, bounded (no torch; unit-tested without a model);
* ``slots.py``     — adapter slots, stacks, merged copies, which weights are live;
* ``decoding.py``  — :class:`Engine`: prefill, batched decoding, streaming, status;
* ``engine.py``    — this module: :class:`AsyncEngine`, which starts the worker,
  queues work through the scheduler, streams tokens back with
  ``loop.call_soon_threadsafe``, and closes it all down.

:class:`AsyncEngine` implements :class:`~daemon.inference.backend.InferenceBackend`,
so the service and a persona's in-process mode run the same code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from protocol import ErrorCode, RpcError
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

from .adapters import AdapterStore
from .errors import EngineClosed
from .limits import EngineLimits
from .model import LoadedModel
from .scheduler import Call, Job, Scheduler

if TYPE_CHECKING:
    from .decoding import Engine
    from .scheduler import AnyEngine

__all__ = ["OV_DEFAULTS", "WORKER_THREAD_NAME", "AsyncEngine", "Engine", "EngineLimits"]

log = logging.getLogger("personad.inference.engine")


def __getattr__(name: str) -> Any:
    # The torch engine, imported when asked for: a service on the openvino
    # backend never loads torch (about 330 MiB resident) unless it trains.
    if name == "Engine":
        from .decoding import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


T = TypeVar("T")
TokenCallback = Callable[[TokenParams], Awaitable[None]]

#: What the openvino backend runs unless told otherwise: the weights packed
#: into the exact 4- and 8-bit groups they are (fp16 where they are not),
#: computed in fp32, which answer as torch fp32 does (nncf's int8 weights part
#: from it within a few dozen tokens; docs/inference.md, Benchmarks).
OV_DEFAULTS = {"weight_format": "packed", "precision": "f32"}

#: The worker thread's name (one per open engine), for operators reading a
#: thread dump and for tests that check it ends.
WORKER_THREAD_NAME = "inference-engine"


class AsyncEngine:
    """An :class:`Engine` on its own worker thread, for asyncio callers.

    Implements the InferenceBackend interface (``daemon/inference/backend.py``).
    """

    kind = "inprocess"

    def __init__(self, *, limits: EngineLimits | None = None) -> None:
        limits = limits or EngineLimits()
        self._scheduler = Scheduler(
            max_waiting=limits.max_waiting, max_waiting_per_owner=limits.max_waiting_per_owner
        )
        self._engine: AnyEngine | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        #: The adapter store, read here too: a name that is not in it is refused at once
        #: rather than after the request the worker is running (one can last minutes).
        self._adapters: AdapterStore | None = None

    @classmethod
    async def open(
        cls,
        *,
        state_root: Path,
        model: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        limits: EngineLimits | None = None,
        store: AdapterStore | None = None,
        loaded: LoadedModel | None = None,
        backend: str = "torch",
        precision: str | None = None,
        weight_format: str | None = None,
    ) -> AsyncEngine:
        """Start the worker thread and load the model on it (the loop stays free meanwhile).

        ``backend``: ``torch`` (``decoding.py``; also whenever ``loaded`` is
        given) or ``openvino`` (``ov/engine.py``, which exports the model to
        IR first if it has not been; ``weight_format`` and ``precision``
        choose what it runs, defaults in :data:`OV_DEFAULTS`).
        """
        self = cls(limits=limits)
        adapters = self._adapters = store or AdapterStore.for_state(state_root)

        def build() -> AnyEngine:
            if backend == "openvino" and loaded is None:
                from .ov.engine import OVEngine
                from .ov.model import load_ov_model

                ov_model = load_ov_model(
                    model, state_root=state_root, weight_format=weight_format or OV_DEFAULTS["weight_format"]
                )
                return OVEngine(
                    ov_model,
                    adapters,
                    limits=limits,
                    threads=threads or 1,
                    precision=precision or OV_DEFAULTS["precision"],
                )
            from .decoding import Engine
            from .model import load_model

            base = loaded or load_model(model, state_root=state_root, threads=threads)
            return Engine(base, adapters, limits=limits)

        loop = asyncio.get_running_loop()
        ready: asyncio.Future[AnyEngine] = loop.create_future()

        def started(engine: AnyEngine | None, exc: BaseException | None) -> None:
            if not ready.done():
                if exc is not None:
                    ready.set_exception(exc)
                else:
                    assert engine is not None
                    ready.set_result(engine)

        def post(engine: AnyEngine | None, exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(started, engine, exc)

        # A daemon thread: owners close us (the service on exit, a persona on
        # shutdown), but a thread stuck in a long torch op must still not
        # hold up the interpreter's exit after close() has given up on it.
        self._thread = threading.Thread(
            target=self._work, args=(build, post), name=WORKER_THREAD_NAME, daemon=True
        )
        self._thread.start()
        try:
            self._engine = await ready
        except BaseException:
            await self.close()
            raise
        return self

    @property
    def engine(self) -> AnyEngine:
        if self._engine is None:
            raise EngineClosed("the inference engine is not running")
        return self._engine

    def _work(
        self, build: Callable[[], AnyEngine], post: Callable[[AnyEngine | None, BaseException | None], None]
    ) -> None:
        try:
            engine = build()
        except BaseException as exc:
            post(None, exc)
            return
        post(engine, None)

        def between_steps() -> None:
            while (call := self._scheduler.take_call()) is not None:
                self._run_call(engine, call)

        while (work := self._scheduler.next_work()) is not None:
            if isinstance(work, Call):
                self._run_call(engine, work)
            else:
                try:
                    engine.run_batch(work, self._scheduler, between_steps)
                except Exception:  # a bug, not a request's fault: keep serving
                    log.exception("batch failed")

    @staticmethod
    def _run_call(engine: AnyEngine, call: Call) -> None:
        try:
            engine.reset()
            result = call.fn(engine)
        except BaseException as exc:
            call.done(None, exc)
        else:
            call.done(result, None)

    async def run(self, fn: Callable[[AnyEngine], T], *, mid_request: bool = False) -> T:
        """Run ``fn(engine)`` on the worker thread, between decode steps (``mid_request``: it is
        safe while a request runs, so it may also run between the tokens of one request)."""
        if self._closed:
            raise EngineClosed("the inference engine has stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, exc: BaseException | None) -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        def done(result: Any, exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(settle, result, exc)

        self._scheduler.put_call(Call(fn, done, mid_request=mid_request))
        return await future

    async def generate(
        self,
        params: GenerateParams,
        *,
        owner: str,
        on_token: TokenCallback | None = None,
        deadline: float | None = None,
    ) -> GenerateResult:
        """Queue a request and stream its tokens to ``on_token``; the result once done.

        ``deadline`` (loop time): past it the request is dropped and TIMEOUT raised.
        """
        try:
            async with asyncio.timeout_at(deadline):
                return await self._generate(params, owner=owner, on_token=on_token)
        except TimeoutError:
            raise RpcError(ErrorCode.TIMEOUT, "generation did not finish before the deadline") from None

    async def _generate(
        self, params: GenerateParams, *, owner: str, on_token: TokenCallback | None
    ) -> GenerateResult:
        if self._closed:
            raise EngineClosed("the inference engine has stopped")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(kind: str, payload: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

        job = Job(params=params, owner=owner, emit=emit)
        self._scheduler.put_job(job)
        try:
            while True:
                kind, payload = await events.get()
                if kind == "token":
                    if on_token is not None:
                        await on_token(payload)
                elif kind == "done":
                    return payload  # type: ignore[no-any-return]
                elif kind == "error":
                    raise payload
                elif kind == "closed":
                    raise EngineClosed("the inference engine stopped before answering")
        finally:
            # Cancelled (caller went away) or finished: either way the worker
            # must stop spending time on it.
            job.cancelled.set()

    async def known(self, *names: str) -> None:
        """AdapterNotFound for the first of ``names`` (each with its parents) not in the store,
        read off the worker thread: bad input is answered at once, not after the request
        the worker is running (one pipeline call can last minutes)."""
        store = self._adapters
        if store is not None:
            await asyncio.to_thread(lambda: [store.resolve(name) for name in names])

    async def load_stack(self, params: LoadStackParams, *, owner: str) -> LoadStackResult:
        await self.known(params.name)
        return await self.run(lambda engine: engine.load_stack(params, owner))

    async def unload(self, params: UnloadParams, *, owner: str) -> UnloadResult:
        # Safe mid-request: an engine drops only adapters no running request holds.
        return await self.run(lambda engine: engine.unload(params, owner), mid_request=True)

    async def status(self) -> InferenceStatus:
        waiting = self._scheduler.waiting
        return await self.run(lambda engine: engine.status(waiting), mid_request=True)

    async def close(self) -> None:
        """Stop the worker after the current step; queued work fails with EngineClosed."""
        if self._closed:
            return
        self._closed = True
        for item in self._scheduler.close():
            if isinstance(item, Job):
                item.emit("closed", None)
            else:
                item.done(None, EngineClosed("the inference engine stopped"))
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
        # The worker has returned and dropped its reference: this was the
        # last one to the model, its adapters and caches, so they are freed.
        self._engine = None

    @property
    def thread(self) -> threading.Thread | None:
        """The worker thread (named :data:`WORKER_THREAD_NAME`); None before open."""
        return self._thread

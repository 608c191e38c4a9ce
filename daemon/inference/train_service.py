"""``adapter.train`` on ``cap:inference``: training a LoRA level over the bus.

A training takes minutes, so it does not run on the engine's worker thread
(generation would stop for that long): each one is a child process,
``python -m daemon.inference.train_worker`` (its module docstring has the
exchange), which loads its own copy of the base model the service runs,
trains with ``train.train_level`` and stores the level in the shared adapter
store. This side checks what it can before spending a process, forwards the
worker's progress as ``adapter.train.progress``, and answers.

Rules, all enforced here:

* one training at a time per service (a second is OVERLOADED at once): two
  would halve each other's speed and double the memory, for nothing;
* the worker runs in its own process group, killed as a whole (SIGKILL) when
  the request ends early: cancelled (bus.cancel cancels this handler; the
  bus has already answered CANCELLED), past its deadline (TIMEOUT), or the
  service stopping. It is told to store only while the request still
  stands, so a cancelled training stores nothing; the store's writes are
  atomic, so a kill can never leave half an adapter;
* a worker that dies answers INTERNAL_ERROR with the reason (its exit status
  or signal and the last lines it wrote to stderr), never a hang;
* a missing parent level, or an example whose last message is not the
  assistant's, is INVALID_PARAMS with ``data.field``;
* persona callers are FORBIDDEN, as for adapter.merge: training writes the
  shared store. The Academy's token holds ``adapter.train@cap:inference``.

The worker's torch threads: ``PERSONAD_TRAIN_THREADS`` (default 1), apart
from the engine's, so an operator decides how the cores are shared.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import ErrorCode, RpcError
from protocol.commands.adapters import AdapterTrainParams, AdapterTrainResult, TrainProgressParams

from .adapters import chain
from .errors import AdapterNotFound, InferenceError, refuse_store_writer, to_rpc

if TYPE_CHECKING:
    from ..client import CallContext
    from ..dispatch import Dispatcher
    from .decoding import Engine

__all__ = ["WORKER_MODULE", "Trainer", "check_train_caller", "check_train_params", "register_train_command"]

log = logging.getLogger("personad.inference.train")

#: What the service runs (``python -m``) for each training.
WORKER_MODULE = "daemon.inference.train_worker"
#: Lines of the worker's stderr kept for the reason when it dies.
_STDERR_LINES = 20
#: The worker's stdout lines are small JSON objects; an error message may be long.
_LINE_LIMIT = 1 << 20


def check_train_caller(caller: str | None) -> None:
    """RpcError(FORBIDDEN) for a persona: training writes the shared store, which personas may not."""
    refuse_store_writer(caller, "adapter.train", "only an admin or the Academy does")


def _invalid(field: str, message: str) -> RpcError:
    return RpcError(ErrorCode.INVALID_PARAMS, f"invalid params: {field}: {message}", {"field": field})


def check_train_params(params: AdapterTrainParams, engine: Engine) -> None:
    """What the wire model cannot check: each example ends with the assistant, the parents are stored."""
    for i, example in enumerate(params.examples):
        if example.messages[-1].role != "assistant":
            raise _invalid(
                f"examples.{i}.messages",
                f"the last message is the {example.messages[-1].role}'s; it must be the assistant's "
                "(the reply to learn)",
            )
    for level in chain(params.name)[:-1]:
        try:
            engine.store.get(level)
        except AdapterNotFound as exc:
            raise _invalid("name", f"{params.name!r} is trained over its parent {level!r}: {exc}") from None


def _reason(returncode: int | None, stderr: collections.deque[str]) -> str:
    if returncode is not None and returncode < 0:
        how = f"was killed by {signal.Signals(-returncode).name}"
    else:
        how = f"exited with status {returncode}"
    tail = " | ".join(line for line in stderr if line.strip())[-1500:]
    return f"the training worker {how} before storing the adapter" + (f": {tail}" if tail else "")


def _worker_error(event: dict[str, Any]) -> RpcError:
    """A failure the worker explained, in wire form; the fields the service checks keep data.field."""
    kind, message = str(event.get("kind")), str(event.get("message"))
    if kind == "AdapterNotFound":  # a parent deleted after the service looked
        return _invalid("name", message)
    if kind == "TrainingDataError":
        return _invalid("examples", message)
    return RpcError(int(event.get("code") or ErrorCode.INTERNAL_ERROR), message)


class Trainer:
    """Runs ``adapter.train`` requests, one at a time, each in a worker process."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._busy = False

    def _engine(self) -> Engine:
        try:
            engine: Engine | None = getattr(self.backend, "engine", None)
        except InferenceError as exc:  # the engine has stopped
            raise to_rpc(exc) from None
        if engine is None:
            raise RpcError(int(ErrorCode.METHOD_NOT_FOUND), "adapter.train needs the engine in this process")
        return engine

    async def handle(self, params: AdapterTrainParams, ctx: CallContext) -> AdapterTrainResult:
        check_train_caller(ctx.caller)
        engine = self._engine()
        if self._busy:
            raise RpcError(
                ErrorCode.OVERLOADED,
                "a training is already running on this service (one at a time); retry when it ends",
            )
        check_train_params(params, engine)
        # Set before the first await: two requests arriving together cannot both pass.
        self._busy = True
        try:
            async with asyncio.timeout_at(ctx.deadline):
                return await self._train(params, ctx, engine)
        except TimeoutError:
            raise RpcError(
                ErrorCode.TIMEOUT, "the training did not finish before the deadline; nothing was stored"
            ) from None
        finally:
            self._busy = False

    async def _train(
        self, params: AdapterTrainParams, ctx: CallContext, engine: Engine
    ) -> AdapterTrainResult:
        started = time.monotonic()
        store = engine.store.ensure()
        out = Path(tempfile.mkdtemp(prefix=".train-", dir=store.root))
        job = {
            "params": params.model_dump(mode="json"),
            "model": str(engine.loaded.path),
            "state_root": str(store.root.parent),
            "store": str(store.root),
            "out": str(out),
        }
        env = {**os.environ, "PERSONAD_TRAIN_PARENT": str(os.getpid())}
        stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        proc: asyncio.subprocess.Process | None = None
        drain: asyncio.Task[None] | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                WORKER_MODULE,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # Its own process group, so a kill takes anything it started too.
                start_new_session=True,
                env=env,
                limit=_LINE_LIMIT,
            )
            assert proc.stdin is not None
            assert proc.stdout is not None
            assert proc.stderr is not None
            drain = asyncio.ensure_future(_keep_tail(proc.stderr, stderr))
            log.info(
                "training %s (%d examples) in worker pid %d", params.name, len(params.examples), proc.pid
            )
            proc.stdin.write((json.dumps(job) + "\n").encode())
            await proc.stdin.drain()
            trained: dict[str, Any] = {}
            while line := await proc.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("training worker wrote a line that is not JSON: %r", line[:200])
                    continue
                kind = event.get("event")
                if kind == "progress":
                    progress = TrainProgressParams.model_validate(
                        {k: v for k, v in event.items() if k != "event"}
                    )
                    await ctx.progress("adapter.train.progress", progress.model_dump())
                elif kind == "trained":
                    trained = event
                    # Still ours (not cancelled): only now may the worker store.
                    proc.stdin.write(b"store\n")
                    await proc.stdin.drain()
                elif kind == "stored":
                    await proc.wait()
                    seconds = time.monotonic() - started
                    steps = int(trained["steps"])
                    train_s = float(trained["train_s"])
                    log.info("trained %s (%s…) in %.1fs", event["name"], str(event["sha256"])[:12], seconds)
                    return AdapterTrainResult(
                        name=event["name"],
                        sha256=event["sha256"],
                        parent=event["parent"],
                        examples=len(params.examples),
                        steps=steps,
                        final_loss=float(trained["final_loss"]),
                        seconds=round(seconds, 3),
                        examples_per_s=round(steps / train_s, 3) if train_s > 0 else 0.0,
                    )
                elif kind == "error":
                    raise _worker_error(event)
            await proc.wait()
            await drain
            raise RpcError(ErrorCode.INTERNAL_ERROR, _reason(proc.returncode, stderr))
        finally:
            if proc is not None:
                await _kill(proc)
            if drain is not None:
                drain.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drain
            shutil.rmtree(out, ignore_errors=True)


async def _keep_tail(stream: asyncio.StreamReader, tail: collections.deque[str]) -> None:
    while line := await stream.readline():
        text = line.decode("utf-8", "replace").rstrip()
        tail.append(text)
        log.debug("train worker: %s", text)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the worker's whole process group (unless it has exited) and reap it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    # Reaped even when this task is being cancelled, or it would stay a zombie.
    waiting = asyncio.ensure_future(proc.wait())
    try:
        await asyncio.shield(waiting)
    except asyncio.CancelledError:
        await waiting
        raise


def register_train_command(dispatcher: Dispatcher, backend: Any) -> None:
    """Serve ``adapter.train`` from an in-process engine: a worker process per training, one at a time."""
    dispatcher.register("adapter.train", Trainer(backend).handle)

"""``python -m daemon.inference.train_worker``: one ``adapter.train``, in its own process.

The inference service (``train_service.py``) starts this for each training,
so the minutes of back-propagation never run on the engine's worker thread:
generation goes on meanwhile, and a cancel is a kill of this process group.

The exchange, one JSON object a line:

* stdin, first line: the job, ``{"params": AdapterTrainParams, "model": spec,
  "state_root": dir, "store": dir, "out": dir}``; ``out`` is an empty folder
  the service made (and removes) for the trained PEFT files.
* stdout: ``{"event": "loaded", "load_s"}``, then ``{"event": "progress", step,
  total, epoch, loss, elapsed_s}`` (the first and last steps, and at most about
  four a second between), then ``{"event": "trained", "steps", "final_loss",
  "train_s"}``.
* stdin, second line: ``store`` — only then is the level imported into the
  shared store (whose file lock serialises writers), answered by
  ``{"event": "stored", "name", "sha256", "parent"}``. Anything else, or end of
  input, and the worker exits storing nothing: the service says ``store``
  only while the request still stands.
* on a failure it can explain: ``{"event": "error", "kind", "code", "message"}``
  and exit status 1. stderr carries logs and, on a crash, the traceback; the
  service keeps its last lines as the reason.

It dies with the service: PR_SET_PDEATHSIG (Linux) sends it SIGKILL when the
service process dies, and a thread watching stdin exits it when the pipe
closes (the service gone, or done with it) before ``store`` came.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["PROGRESS_INTERVAL_S", "TARGETS", "main"]

#: At most about this often between the first and last step: a 5000-example
#: training would otherwise send the caller 100 000 notifications.
PROGRESS_INTERVAL_S = 0.25
#: Exit status when the service went away (or said something other than ``store``).
ABANDONED = 3
_PR_SET_PDEATHSIG = 1
#: The modules a bus-trained level adapts: the CLI's default and the demo's.
#: PEFT's Llama default (q_proj, v_proj) left SmolLM2's child levels garbled
#: (docs/inference.md, "Training a level"), and the wire contract has no field for it.
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when ``parent`` dies (Linux); elsewhere the stdin watch alone does it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl took effect: then we were re-parented already.
    if os.getppid() != parent:
        os._exit(ABANDONED)


class _Commands:
    """The service's lines after the job, read on a thread: ``store``, or end of input."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._decided = threading.Event()
        self._store = False
        threading.Thread(target=self._read, name="train-commands", daemon=True).start()

    def _read(self) -> None:
        line = self._stream.readline()
        if line.strip() != "store":
            # The service is gone or abandoned the training: stop now, mid-step
            # if need be; nothing has been stored.
            os._exit(ABANDONED)
        self._store = True
        self._decided.set()

    def wait_for_store(self) -> bool:
        self._decided.wait()
        return self._store


def _emit(out: IO[str], event: str, **fields: Any) -> None:
    out.write(json.dumps({"event": event, **fields}) + "\n")
    out.flush()


def _run(job: dict[str, Any], out: IO[str], commands: _Commands) -> None:
    from protocol.commands.adapters import AdapterTrainParams

    from .adapters import AdapterStore
    from .model import load_model
    from .train import TrainConfig, TrainProgress, train_level

    params = AdapterTrainParams.model_validate(job["params"])
    threads = int(os.environ.get("PERSONAD_TRAIN_THREADS") or 1)
    started = time.monotonic()
    loaded = load_model(job["model"], state_root=Path(job["state_root"]), threads=threads)
    _emit(out, "loaded", load_s=round(time.monotonic() - started, 3))
    store = AdapterStore(Path(job["store"]))
    config = TrainConfig(
        rank=params.rank,
        alpha=params.alpha,
        target_modules=TARGETS,
        epochs=params.epochs,
        learning_rate=params.learning_rate,
        seed=params.seed,
        max_tokens=params.max_tokens,
    )
    last = [0.0]

    def progress(p: TrainProgress) -> None:
        now = time.monotonic()
        if p.step in (1, p.total) or now - last[0] >= PROGRESS_INTERVAL_S:
            last[0] = now
            _emit(
                out,
                "progress",
                step=p.step,
                total=p.total,
                epoch=p.epoch,
                loss=p.loss,
                elapsed_s=round(p.elapsed_s, 3),
            )

    examples = [[m.model_dump() for m in ex.messages] for ex in params.examples]
    trained = train_level(
        store,
        params.name,
        examples,
        loaded=loaded,
        out=Path(job["out"]),
        config=config,
        on_progress=progress,
        meta={**params.meta, "trained_by": "adapter.train"},
        what="examples",
    )
    _emit(
        out,
        "trained",
        steps=trained.steps,
        final_loss=trained.final_loss,
        train_s=round(trained.train_s, 3),
    )
    if not commands.wait_for_store():
        return
    record = store.import_folder(trained.folder, params.name, meta=trained.info)
    _emit(out, "stored", name=record.name, sha256=record.sha256, parent=record.parent)


def main() -> int:
    # The protocol gets its own copy of stdout; fd 1 goes to stderr, so a
    # library that prints cannot corrupt the lines the service parses.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    parent = int(os.environ.get("PERSONAD_TRAIN_PARENT") or os.getppid())
    _die_with_parent(parent)
    line = sys.stdin.readline()
    if not line:
        return ABANDONED
    commands = _Commands(sys.stdin)
    from .errors import InferenceError

    try:
        _run(json.loads(line), out, commands)
    except InferenceError as exc:
        _emit(out, "error", kind=type(exc).__name__, code=int(exc.code), message=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

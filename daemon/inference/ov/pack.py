"""Pack an exported IR's weight matrices into the low-bit groups they already are.

The default model comes from a GGUF whose layer matrices are ``Q4_1`` (groups
of 32 values ``d * q + m``, ``q`` in 0..15, ``d`` and ``m`` fp16) and whose
embedding is ``Q8_0`` (groups of 32 values ``d * q``, ``q`` an int8). The
Hugging Face folder ``model.py`` makes holds them dequantized to fp32, so an
fp16 export spends 16 bits on values that need 4 or 8, and decoding on a CPU
is bound by reading weights: a token reads every matrix once.

This finds the matrices whose every group of 32 is such a value, exactly
(checked, not assumed), and stores them as OpenVINO's compressed weights:
a ``u4`` (or ``i8``) constant, converted to f32, less a zero point, times a
scale, per group. The CPU plugin fuses that pattern into its matrix kernels
and unpacks the groups as it multiplies, so the model reads about a quarter
of the bytes, and computes what torch computes on the fp32 folder to within
f32 rounding (the zero point of a ``Q4_1`` group is ``-m / d``, which f32
holds to one ulp). The zero point and scale must be f32: with f16 ones the
plugin does not fuse and unpacks everything once at load, as fp32.

A matrix that is not exactly such groups (a model that never was a GGUF,
other GGUF types) stays as exported (fp16). Tied weights (SmolLM2's embedding
is also its output layer) are packed once and used by both.

Runs as its own process (``python -m daemon.inference.ov.pack IR FOLDER``)
from ``convert.py``, so the fp32 weights it reads never sit in the service's
memory.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["GROUP", "PackReport", "pack_ir", "q4_groups", "q8_groups"]

#: Values per group, as in ``Q4_1`` and ``Q8_0``.
GROUP = 32
IR_FILE = "openvino_model.xml"


@dataclass
class PackReport:
    q4: int = 0  # matrices packed as 4-bit groups
    q8: int = 0  # as 8-bit groups
    kept: int = 0  # left as exported
    bytes_before: int = 0  # the IR's .bin
    bytes_after: int = 0
    max_error: float = 0.0  # largest |unpacked - original| over the packed matrices (f32 rounding)


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def q4_groups(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(q, d, m)`` with ``w == d * q + m`` in f32 for every group of 32, as ``Q4_1``; else None."""
    rows, cols = w.shape
    if cols % GROUP:
        return None
    groups = w.reshape(rows, cols // GROUP, GROUP)
    m = groups.min(axis=-1, keepdims=True)
    if not np.array_equal(_f16(m), m):
        return None
    # Q4_1 takes d = (max - min) / 15, so every group holds q = 0 (its min) and q = 15.
    d = _f16((groups.max(axis=-1, keepdims=True) - m) / 15)
    q = np.clip(np.rint((groups - m) / np.where(d == 0, 1, d)), 0, 15)
    if not np.array_equal(d * q + m, groups):
        return None
    return q.astype(np.uint8), d, m


def q8_groups(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(q, d)`` with ``w == d * q`` in f32 for every group of 32, as ``Q8_0``; else None."""
    rows, cols = w.shape
    if cols % GROUP:
        return None
    groups = w.reshape(rows, cols // GROUP, GROUP)
    # Q8_0 takes d = max|x| / 127, so the largest value of every group is q = +-127.
    d = _f16(np.abs(groups).max(axis=-1, keepdims=True) / 127)
    q = np.clip(np.rint(groups / np.where(d == 0, 1, d)), -127, 127)
    if not np.array_equal(d * q, groups):
        return None
    return q.astype(np.int8), d


def _weights(folder: Path) -> dict[str, np.ndarray]:
    """The folder's 2-D f32/f16 tensors as f32 (others cannot be such groups)."""
    from safetensors import safe_open

    out: dict[str, np.ndarray] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                sliced = f.get_slice(key)
                if sliced.get_dtype() in ("F32", "F16") and len(sliced.get_shape()) == 2:
                    out[key] = f.get_tensor(key).astype(np.float32)
    return out


def _packed(ops: Any, ov: Any, w: np.ndarray, report: PackReport) -> Any | None:
    """The decompression subgraph for ``w``, or None to keep it."""
    rows, cols = w.shape
    if (found4 := q4_groups(w)) is not None:
        q, d, m = found4
        scale = np.where(d == 0, 1, d)  # a constant group: q = 0 and the zero point -m
        zero = (-m / scale).astype(np.float32)
        node = ops.subtract(ops.convert(ops.constant(q, dtype=ov.Type.u4), ov.Type.f32), ops.constant(zero))
        node = ops.multiply(node, ops.constant(scale.astype(np.float32)))
        unpacked = ((q.astype(np.float32) - zero) * scale).reshape(rows, cols)
        report.q4 += 1
    elif (found8 := q8_groups(w)) is not None:
        q8, d = found8
        node = ops.multiply(ops.convert(ops.constant(q8, dtype=ov.Type.i8), ov.Type.f32), ops.constant(d))
        unpacked = (q8.astype(np.float32) * d).reshape(rows, cols)
        report.q8 += 1
    else:
        report.kept += 1
        return None
    report.max_error = max(report.max_error, float(np.abs(unpacked - w).max()))
    return ops.reshape(node, ops.constant(np.array([rows, cols], dtype=np.int64)), False)


def pack_ir(ir: Path, folder: Path) -> PackReport:
    """Rewrite ``ir``'s model in place, packing what ``folder``'s weights allow."""
    import openvino as ov
    import openvino.opset13 as ops

    report = PackReport(bytes_before=(ir / IR_FILE).with_suffix(".bin").stat().st_size)
    model = ov.Core().read_model(str(ir / IR_FILE))
    weights = _weights(folder)
    for node in list(model.get_ordered_ops()):
        # optimum-intel names a weight's f16 -> f32 Convert "self.<its name in the folder>".
        name = node.get_friendly_name()
        if node.get_type_name() != "Convert" or not name.startswith("self."):
            continue
        w = weights.get(name.removeprefix("self."))
        if w is None or list(node.get_output_shape(0)) != list(w.shape):
            continue
        packed = _packed(ops, ov, w, report)
        if packed is not None:
            packed.set_friendly_name(name)
            node.output(0).replace(packed.output(0))
    if report.q4 or report.q8:
        staged = ir / f".packed-{os.getpid()}.xml"
        ov.save_model(model, str(staged), compress_to_fp16=False)
        del model  # its constants map the old .bin
        os.replace(staged.with_suffix(".bin"), (ir / IR_FILE).with_suffix(".bin"))
        os.replace(staged, ir / IR_FILE)
    report.bytes_after = (ir / IR_FILE).with_suffix(".bin").stat().st_size
    return report


if __name__ == "__main__":  # `python -m daemon.inference.ov.pack IR FOLDER`: the report as JSON
    print(json.dumps(asdict(pack_ir(Path(sys.argv[1]), Path(sys.argv[2])))))

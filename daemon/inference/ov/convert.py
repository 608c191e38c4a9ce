"""The model as OpenVINO IR: exported once per model and weight format, cached, with progress.

OpenVINO GenAI runs a model in its own format (IR: ``openvino_model.xml`` and
``.bin``). The exporter is Hugging Face ``optimum-intel`` (``optimum-cli
export openvino --task text-generation-with-past``), which turns a causal LM
into a *stateful* IR (the KV cache lives in the model's state) and compresses
the weights as asked (``--weight-format``: ``fp16``, ``int8`` per-channel
with nncf, or ``fp32``). ``packed``, the default here, is the fp16 export with
every matrix that is exactly 4- or 8-bit groups (as a GGUF's are) stored as
such (``pack.py``): a quarter of the bytes to read per token, and the same
values.

Why a separate environment. optimum-intel pins ``transformers<5.6`` and its
own ``huggingface-hub``, older than ours, and asks for a ``torchvision``
that does not load beside the CPU torch. So it lives in ``.venv-convert``
(``make convert-env``), which sees this venv's packages (torch among them)
through a ``.pth`` line and holds only what must differ (about 240 MB).
``PERSONAD_OV_CONVERT_PYTHON`` names another interpreter that has it.

Loading a GGUF straight into OpenVINO would skip the export, but it ignores
LoRA tensors (with warnings only), so the export starts from the Hugging
Face folder ``model.py`` makes.

The cache key is the content of the Hugging Face folder (its config and
weights, hashed) and the weight format, so a changed model is exported
again and an unchanged one never is; a half-written export never becomes
visible (``atomic_dir``), and two services starting at once export once
(``file_lock``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ...files import atomic_dir, file_lock
from ..errors import ModelUnavailable

__all__ = [
    "CONVERT_PYTHON_ENV",
    "IR_CACHE_ENV",
    "IR_FILE",
    "WEIGHT_FORMATS",
    "convert_python",
    "ensure_ir",
    "model_digest",
]

log = logging.getLogger("personad.inference.ov")

IR_FILE = "openvino_model.xml"
WEIGHT_FORMATS = ("packed", "fp16", "int8", "fp32")
CONVERT_PYTHON_ENV = "PERSONAD_OV_CONVERT_PYTHON"
#: Where exported models are kept when not in the state directory (one cache for several states).
IR_CACHE_ENV = "PERSONAD_OV_CACHE"
#: Where ``make convert-env`` puts the exporter, relative to this checkout.
CONVERT_VENV = Path(__file__).resolve().parents[3] / ".venv-convert"
CONVERT_HINT = (
    "run `make convert-env` (it sets up .venv-convert with optimum-intel, about 240 MB and a minute), "
    f"or set {CONVERT_PYTHON_ENV} to a Python that has optimum-intel, "
    "or run the inference service with --backend torch"
)


def model_digest(folder: Path) -> str:
    """What the export depends on: the config, tokenizer and weights, hashed (first 16 hex digits)."""
    digest = hashlib.sha256()
    names = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    weights = sorted(p.name for p in folder.glob("*.safetensors"))
    for name in [*names, *weights]:
        path = folder / name
        if not path.exists():
            continue
        digest.update(name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def convert_python() -> Path:
    """The interpreter that runs the exporter: $PERSONAD_OV_CONVERT_PYTHON, else .venv-convert's."""
    explicit = os.environ.get(CONVERT_PYTHON_ENV)
    python = Path(explicit) if explicit else CONVERT_VENV / "bin" / "python"
    if not python.exists():
        raise ModelUnavailable(
            f"the OpenVINO backend needs this model exported once, and the exporter is not installed "
            f"({python} does not exist): {CONVERT_HINT}"
        )
    return python


def ensure_ir(
    hf_folder: Path,
    cache: Path,
    *,
    weight_format: str = "packed",
    on_progress: Callable[[str], None] | None = None,
) -> Path:
    """The IR folder for ``hf_folder`` in ``weight_format``: from the cache, else exported into it."""
    if weight_format not in WEIGHT_FORMATS:
        raise ModelUnavailable(f"weight format {weight_format!r}: choose one of {', '.join(WEIGHT_FORMATS)}")
    target = cache / f"{hf_folder.name}-{model_digest(hf_folder)}-{weight_format}"
    if (target / IR_FILE).exists():
        return target
    python = convert_python()  # before anything is written: no exporter, nothing to lock
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(cache / f".{target.name}.lock"):
        if (target / IR_FILE).exists():
            return target
        say = on_progress or (lambda line: log.info("%s", line))
        say(f"exporting {hf_folder.name} to OpenVINO IR ({weight_format}; once per model, about a minute)")
        started = time.monotonic()
        with atomic_dir(target, mode=0o700) as tmp:
            _export(python, hf_folder, tmp, "fp16" if weight_format == "packed" else weight_format, say)
            if not (tmp / IR_FILE).exists():
                raise ModelUnavailable(f"the export of {hf_folder} wrote no {IR_FILE}; see the log above")
            if weight_format == "packed":
                _pack(tmp, hf_folder, say)
        say(f"exported in {time.monotonic() - started:.0f} s into {target}")
    return target


def _export(python: Path, source: Path, dest: Path, weight_format: str, say: Callable[[str], None]) -> None:
    argv = [
        str(python),
        "-c",
        "import sys; from optimum.commands.optimum_cli import main; sys.argv[0] = 'optimum-cli'; main()",
        "export",
        "openvino",
        "--model",
        str(source),
        "--task",
        "text-generation-with-past",
        "--weight-format",
        weight_format,
        str(dest),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    tail: deque[str] = deque(maxlen=20)
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise ModelUnavailable(f"cannot start the exporter {python}: {exc} ({CONVERT_HINT})") from None
    assert proc.stdout is not None
    with proc:
        for raw in proc.stdout:
            # nncf's progress bar redraws with carriage returns: report its last state per line.
            line = raw.rstrip("\n").rsplit("\r", 1)[-1].strip()
            if line:
                tail.append(line)
                if _worth_showing(line):
                    say(line)
    if proc.returncode != 0:
        raise ModelUnavailable(
            f"exporting {source} to OpenVINO IR failed (exit {proc.returncode}):\n  " + "\n  ".join(tail)
        )


def _pack(ir: Path, source: Path, say: Callable[[str], None]) -> None:
    """pack.py in its own process: the fp32 weights it reads never stay in this one's memory."""
    say("packing the weights that are exact 4- and 8-bit groups")
    argv = [sys.executable, "-m", "daemon.inference.ov.pack", str(ir), str(source)]
    root = Path(__file__).resolve().parents[3]
    paths = [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(argv, capture_output=True, text=True, errors="replace", env=env, check=False)
    if done.returncode != 0:
        tail = "\n  ".join(done.stderr.strip().splitlines()[-20:])
        raise ModelUnavailable(
            f"packing the OpenVINO IR of {source} failed (exit {done.returncode}):\n  {tail}"
        )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    say(
        f"packed {report['q4']} matrices as 4-bit groups and {report['q8']} as 8-bit, kept {report['kept']} "
        f"as fp16: {report['bytes_before'] / 2**20:.0f} MiB -> {report['bytes_after'] / 2**20:.0f} MiB "
        f"(largest change {report['max_error']:.1e})"
    )


def _worth_showing(line: str) -> bool:
    # The exporter prints tracer warnings by the dozen; keep what tells the operator where it is.
    return any(word in line for word in ("Applying", "Weight compression", "%", "Error", "error"))


if __name__ == "__main__":  # pragma: no cover - `python -m daemon.inference.ov.convert FOLDER CACHE [FORMAT]`
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ensure_ir(Path(sys.argv[1]), Path(sys.argv[2]), weight_format=(sys.argv[3:] or ["packed"])[0]))

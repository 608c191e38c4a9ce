#!/usr/bin/env python
"""Persona bundles against raw AES-GCM over the same bytes, as ratios measured in one run.

    .venv/bin/python bench/bundle.py [--quick]

A persona with a profile and one 10 MB PEFT adapter (real safetensors, F32)
is bundled (:func:`daemon.registry.bundle.write_bundle`) and unpacked
(:func:`read_bundle`) in a temporary folder. The baseline is what a program
would do with no format at all: read the same weights file, seal it in the
same 64 KiB AES-256-GCM chunks, write and fsync the result; and the reverse
(read, open every chunk, write and fsync the plaintext). Both sides hit the
same disk with the same durability. The bundle additionally hashes every
member (for the manifest and its check of a changing source), signs
(Ed25519 over a SHA-256 of the whole file), verifies, re-hashes and
checks each member's hash and the adapter's safetensors header, and fsyncs
the unpacked folder: that is the price the ratio shows.

scrypt's cost is left out of the throughput (the bundles use the lowest
log_n; a key derivation takes the same time whatever the bundle's size) and
reported on its own at the default cost.

Rounds alternate baseline and bundle; medians are compared. Targets: write
and read each at least 0.2x the raw AES-GCM throughput. The last line is
``bundle.py: ok`` when they hold (exit 0), else ``bundle.py: FAIL`` (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from safetensors.numpy import save_file

from daemon.registry.bundle import DEFAULT_CHUNK_SIZE, read_bundle, write_bundle
from daemon.registry.bundle_keys import (
    DEFAULT_SCRYPT_LOG_N,
    MIN_SCRYPT_LOG_N,
    PassphraseKey,
    SigningKey,
    TrustPolicy,
)
from protocol.profile import Profile

TARGET = 0.2


def make_adapter(folder: Path, *, rank: int = 64, width: int = 20_000) -> Path:
    """One q_proj LoRA pair of rank 64 over a 20,000-wide layer: 10.24 MB of F32."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    stem = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {
            f"{stem}.lora_A.weight": rng.standard_normal((rank, width), dtype=np.float32),
            f"{stem}.lora_B.weight": rng.standard_normal((width, rank), dtype=np.float32),
        },
        str(folder / "adapter_model.safetensors"),
    )
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def raw_seal(source: Path, target: Path, aead: AESGCM) -> None:
    nonce_prefix = os.urandom(8)
    with source.open("rb") as f, target.open("wb") as out:
        index = 0
        while block := f.read(DEFAULT_CHUNK_SIZE):
            out.write(aead.encrypt(nonce_prefix + index.to_bytes(4, "big"), block, b""))
            index += 1
        out.write(nonce_prefix)
        out.flush()
        os.fsync(out.fileno())


def raw_open(source: Path, target: Path, aead: AESGCM) -> None:
    size = source.stat().st_size
    with source.open("rb") as f, target.open("wb") as out:
        f.seek(size - 8)
        nonce_prefix = f.read(8)
        f.seek(0)
        index, left = 0, size - 8
        while left:
            chunk = f.read(min(DEFAULT_CHUNK_SIZE + 16, left))
            left -= len(chunk)
            out.write(aead.decrypt(nonce_prefix + index.to_bytes(4, "big"), chunk, b""))
            index += 1
        out.flush()
        os.fsync(out.fileno())


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 15")
    args = parser.parse_args()
    rounds = 5 if args.quick else 15
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        root = Path(tmp)
        adapter = make_adapter(root / "adapter")
        weights = adapter / "adapter_model.safetensors"
        megabytes = weights.stat().st_size / 1e6
        profile = Profile(id="bench", name="Bench", role="benchmark")
        signer = SigningKey.generate()
        key = PassphraseKey("bench passphrase", log_n=MIN_SCRYPT_LOG_N)
        trusted = TrustPolicy.key(signer.public_hex)
        aead = AESGCM(os.urandom(32))
        bundle_path, raw_path = root / "p.bundle", root / "raw.bin"
        times: dict[str, list[float]] = {
            "raw write": [],
            "bundle write": [],
            "raw read": [],
            "bundle read": [],
        }

        def write() -> None:
            write_bundle(
                bundle_path, profile=profile, brain_export=None, adapters=[adapter], key=key, signer=signer
            )

        def read(n: int) -> None:
            read_bundle(bundle_path, key=key, trusted=trusted, into=root / f"out{n}")

        for n in range(rounds + 1):
            tw = timed(lambda: raw_seal(weights, raw_path, aead))
            bw = timed(write)
            tr = timed(lambda: raw_open(raw_path, root / "raw.out", aead))
            br = timed(lambda: read(n))  # noqa: B023 - called right here
            shutil.rmtree(root / f"out{n}")
            if n:  # the first round warms the page cache and the imports
                for name, value in zip(times, (tw, bw, tr, br), strict=True):
                    times[name].append(value)
        scrypt = timed(lambda: PassphraseKey("x").master(os.urandom(16), DEFAULT_SCRYPT_LOG_N))

    mbps = {name: megabytes / statistics.median(values) for name, values in times.items()}
    print(f"payload: one {megabytes:.2f} MB adapter, {rounds} rounds, medians")
    for name, value in mbps.items():
        runs = ", ".join(f"{megabytes / t:.0f}" for t in times[name])
        print(f"  {name:13} {value:8.1f} MB/s   (runs: {runs})")
    ratios = {op: mbps[f"bundle {op}"] / mbps[f"raw {op}"] for op in ("write", "read")}
    for op, ratio in ratios.items():
        print(f"bundle {op} / raw AES-GCM {op}: {ratio:.2f}x (target >= {TARGET}x)")
    print(f"scrypt at the default cost (log_n={DEFAULT_SCRYPT_LOG_N}, r=8, p=1): {scrypt:.2f} s per key")
    ok = all(ratio >= TARGET for ratio in ratios.values())
    print("bundle.py: ok" if ok else "bundle.py: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

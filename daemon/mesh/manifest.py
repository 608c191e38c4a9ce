"""Skill manifests: built from the adapter store, signed, verified, hashed into the skill's id.

The publisher's key is the installation's Ed25519 signing key, the one that
signs its persona bundles (``secrets/bundle-signing.key``, docs/bundle.md):
one identity per installation, so trusting a publisher's skills and
trusting its bundles name the same key. The two uses cannot be confused:
a manifest's signed bytes start with
:data:`~protocol.commands.skills.SIGNING_CONTEXT`, which no bundle's do.

Canonical JSON (what is signed and hashed): the manifest as the protocol
model dumps it in JSON mode, keys sorted at every level, no whitespace,
UTF-8, numbers as Python writes them (the shortest round-trip form, as
JavaScript's ``JSON.stringify`` does for the same values).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from protocol.commands.skills import SIGNING_CONTEXT, ParentRef, SkillManifest

from ..inference.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterRecord, AdapterStore
from ..registry.bundle_keys import SigningKey

__all__ = [
    "ManifestError",
    "build_manifest",
    "canonical",
    "parse_manifest",
    "piece_bounds",
    "read_piece",
    "skill_id",
    "verify_manifest",
]


class ManifestError(ValueError):
    """A manifest that is malformed, badly signed, or does not match its adapter."""


def canonical(data: dict[str, Any]) -> bytes:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def _unsigned(manifest: SkillManifest) -> dict[str, Any]:
    data = manifest.model_dump(mode="json")
    del data["signature"]
    return data


def skill_id(manifest: SkillManifest) -> str:
    """The skill's id: sha256 of the canonical JSON of the whole signed manifest."""
    return hashlib.sha256(canonical(manifest.model_dump(mode="json"))).hexdigest()


def piece_bounds(manifest: SkillManifest, index: int) -> tuple[int, int]:
    """(offset, length) of piece ``index`` in the weights file."""
    if not 0 <= index < len(manifest.piece_hashes):
        raise IndexError(f"piece {index} is out of range (0..{len(manifest.piece_hashes) - 1})")
    offset = index * manifest.piece_size
    return offset, min(manifest.piece_size, manifest.size - offset)


def _piece_hashes(path: Path, piece_size: int) -> tuple[int, list[str]]:
    hashes = []
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(piece_size):
            hashes.append(hashlib.sha256(chunk).hexdigest())
            size += len(chunk)
    return size, hashes


def build_manifest(
    store: AdapterStore,
    record: AdapterRecord,
    key: SigningKey,
    *,
    base_model_id: str,
    piece_size: int,
    effectiveness: float | None = None,
    usage_scenarios: list[str] | None = None,
) -> SkillManifest:
    """Sign a manifest for ``record`` (its weights hashed piece by piece, read once)."""
    config = json.loads((record.path / CONFIG_FILE).read_text(encoding="utf-8"))
    size, hashes = _piece_hashes(record.path / WEIGHTS_FILE, piece_size)
    parents = [ParentRef(name=r.name, sha256=r.sha256) for r in store.resolve(record.name)[:-1]]
    fields: dict[str, Any] = {
        "skill": record.name,
        "adapter_sha256": record.sha256,
        "adapter_config": config,
        "base_model_id": base_model_id,
        "parents": [p.model_dump() for p in parents],
        "rank": record.rank,
        "size": size,
        "piece_size": piece_size,
        "piece_hashes": hashes,
        # Four places: the canonical JSON then never needs an exponent (Python writes 1e-05
        # where JavaScript writes 1e-5), so other languages can reproduce the signed bytes.
        "effectiveness": None if effectiveness is None else round(effectiveness, 4),
        "usage_scenarios": list(usage_scenarios or []),
        "publisher": key.public_hex,
        "published_at": round(time.time(), 3),
    }
    # Validate before signing (the model's checks: piece count, bounds), then sign its canonical form.
    draft = SkillManifest.model_validate({**fields, "signature": "0" * 128})
    signature = key.sign(SIGNING_CONTEXT + canonical(_unsigned(draft))).hex()
    return draft.model_copy(update={"signature": signature})


def parse_manifest(data: Any) -> SkillManifest:
    """A manifest from the wire or a file; ManifestError naming the first problem."""
    try:
        return SkillManifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ManifestError(f"malformed manifest: {where}: {first['msg']}") from None


def verify_manifest(manifest: SkillManifest, *, expected_id: str | None = None) -> str:
    """Check the signature (and the id, if given); returns the skill's id."""
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(manifest.publisher))
        public.verify(bytes.fromhex(manifest.signature), SIGNING_CONTEXT + canonical(_unsigned(manifest)))
    except (InvalidSignature, ValueError):
        raise ManifestError(
            f"the manifest of {manifest.skill!r} is not signed by its publisher {manifest.publisher[:16]}…"
        ) from None
    sid = skill_id(manifest)
    if expected_id is not None and sid != expected_id:
        raise ManifestError(
            f"the manifest's hash is {sid[:16]}…, not the skill id asked for {expected_id[:16]}…"
        )
    return sid


def read_piece(path: Path, manifest: SkillManifest, index: int) -> bytes:
    """Piece ``index`` of the weights file at ``path`` (one pread; the file is never copied)."""
    offset, length = piece_bounds(manifest, index)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)

"""The manifest's bytes as docs/skills.md specifies them, checked apart from the code that signs them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from daemon.inference.adapters import AdapterStore
from daemon.mesh.manifest import ManifestError, build_manifest, canonical, skill_id, verify_manifest
from daemon.registry.bundle_keys import SigningKey
from protocol.commands.skills import SIGNING_CONTEXT
from tests.daemon.registry.test_bundle import make_adapter


def test_canonical_json_is_sorted_compact_utf8_with_floats_as_floats() -> None:
    assert canonical({"b": 1.0, "a": "é", "c": [2, {"z": None, "y": 0.25}]}) == (
        '{"a":"é","b":1.0,"c":[2,{"y":0.25,"z":null}]}'.encode()
    )


def test_the_signature_and_the_id_are_over_the_documented_bytes(tmp_path: Path) -> None:
    """Rebuild the signed bytes from the manifest's JSON with nothing but json, hashlib and Ed25519."""
    store = AdapterStore.for_state(tmp_path / "state")
    record = store.import_folder(make_adapter(tmp_path / "src", seed=1), "writer")
    key = SigningKey.generate()
    manifest = build_manifest(
        store, record, key, base_model_id="m", piece_size=16 * 1024, effectiveness=0.123456
    )
    assert manifest.effectiveness == 0.1235  # four places: the canonical form never needs an exponent

    document = manifest.model_dump(mode="json")
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    signed = b"personad skill manifest v1\x00" + json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert signed.startswith(SIGNING_CONTEXT)
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(manifest.publisher)).verify(
        bytes.fromhex(manifest.signature), signed
    )
    whole = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert skill_id(manifest) == hashlib.sha256(whole).hexdigest() == verify_manifest(manifest)
    # The pieces hash the weights file in order.
    data = (record.path / "adapter_model.safetensors").read_bytes()
    assert manifest.piece_hashes == [
        hashlib.sha256(data[i : i + manifest.piece_size]).hexdigest() for i in range(0, len(data), 16 * 1024)
    ]

    with pytest.raises(ManifestError, match="not signed by its publisher"):
        verify_manifest(manifest.model_copy(update={"effectiveness": 0.9}))
    with pytest.raises(ManifestError, match="not the skill id asked for"):
        verify_manifest(manifest, expected_id="0" * 64)

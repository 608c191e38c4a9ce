"""Persona bundles: real files, real keys, a real brain export, real safetensors adapters.

One file (over 500 lines) because every test shares the written-bundle fixtures and the
tampering helpers, one test per refusal.

Every refusal is checked for its own error class and for leaving nothing
behind: the target folder does not appear and no temporary folder is left
beside it. Tampering is done the way an attacker would: on the bytes of the
file, and (to show the chunk construction holds on its own) again with the
signature recomputed by someone holding the signing key but not the
encryption key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from daemon.brain import Brain
from daemon.registry import bundle
from daemon.registry.bundle import (
    BundleContents,
    BundleLimits,
    Manifest,
    Member,
    read_bundle,
    write_bundle,
)
from daemon.registry.bundle_keys import (
    PassphraseKey,
    RecipientPrivateKey,
    SigningKey,
    TrustPolicy,
    signing_public_key,
)
from daemon.registry.errors import (
    BundleError,
    BundleFormatError,
    BundleInputError,
    BundleKeyError,
    BundleLimitExceeded,
    BundleSignatureMissing,
    BundleTampered,
    UntrustedSigner,
    WrongPassphrase,
    WrongRecipientKey,
)
from protocol.profile import Profile, Traits

LOW = 10  # scrypt log_n for tests: cheap on purpose (documented in docs/bundle.md)
CHUNK = 1024  # the smallest chunk size, so small bundles span many chunks
DEFAULT_LIMITS = BundleLimits()


def make_adapter(folder: Path, *, seed: int, rank: int = 4, width: int = 64) -> Path:
    """A PEFT LoRA folder as PEFT writes it: config JSON and safetensors weights."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            stem = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{stem}.lora_A.weight"] = rng.standard_normal((rank, width), dtype=np.float32)
            tensors[f"{stem}.lora_B.weight"] = rng.standard_normal((width, rank), dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def profile() -> Profile:
    return Profile(
        id="ada",
        name="Ada",
        role="patent analyst",
        description="Reads claims closely. Ünïcode survives.",
        traits=Traits(precision=90, humor=20),
        tags=["legal"],
    )


@pytest.fixture
def brain_export(tmp_path: Path) -> Path:
    """A brain export written by a real SQLCipher brain."""

    async def build() -> Path:
        folder = tmp_path / "brain"
        folder.mkdir(mode=0o700)
        target = tmp_path / "brain-export.json"
        async with await Brain.open(folder / "brain.sqlite", os.urandom(32)) as brain:
            await brain.remember("only Ada knows the filing moved to Tuesday", subject="alice")
            await brain.remember("second memory", context={"k": [1, 2]}, pinned=True)
            await brain.skill_upsert("claims")
            await brain.export(target)
        return target

    return asyncio.run(build())


@pytest.fixture
def adapters(tmp_path: Path) -> list[Path]:
    return [make_adapter(tmp_path / "a1", seed=1), make_adapter(tmp_path / "a2", seed=2, width=128)]


@pytest.fixture
def signer() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def written(
    tmp_path: Path, profile: Profile, brain_export: Path, adapters: list[Path], signer: SigningKey
) -> Path:
    """A small passphrase bundle over many 1 KiB chunks."""
    path = tmp_path / "ada.bundle"
    write_bundle(
        path,
        profile=profile,
        brain_export=brain_export,
        adapters=adapters,
        key=PassphraseKey("correct horse", log_n=LOW),
        signer=signer,
        chunk_size=CHUNK,
    )
    return path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def read(
    path: Path,
    signer: SigningKey,
    into: Path,
    *,
    passphrase: str = "correct horse",
    limits: BundleLimits = DEFAULT_LIMITS,
) -> BundleContents:
    return read_bundle(
        path,
        key=PassphraseKey(passphrase, log_n=LOW),
        trusted=TrustPolicy.key(signer.public_hex),
        into=into,
        limits=limits,
    )


def refused(
    error: type[BundleError],
    path: Path,
    signer: SigningKey,
    out: Path,
    *,
    passphrase: str = "correct horse",
    limits: BundleLimits = DEFAULT_LIMITS,
) -> BundleError:
    """Reading ``path`` raises ``error`` (exactly that class) and leaves ``out`` empty."""
    with pytest.raises(error) as caught:
        read(path, signer, out / "unpacked", passphrase=passphrase, limits=limits)
    assert type(caught.value) is error, caught.value
    assert [] == os.listdir(out), "a refused bundle left files behind"
    return caught.value


def layout(data: bytes) -> tuple[int, list[int]]:
    """(end of header, offsets of each chunk) of a bundle written with CHUNK."""
    (length,) = struct.unpack(">I", data[16:20])
    start = 20 + length
    end = len(data) - bundle.TRAILER_BYTES
    return start, list(range(start, end, CHUNK + bundle.TAG_BYTES))


def resign(body: bytes, key: SigningKey) -> bytes:
    """What someone holding the signing key (not the encryption key) can produce."""
    digest = hashlib.sha256(body).digest()
    return body + bundle.TRAILER_MAGIC + key.sign(bundle._SIGNATURE_CONTEXT + digest)


def body(data: bytes) -> bytes:
    return data[: -bundle.TRAILER_BYTES]


# -- round trips ------------------------------------------------------------------


def test_round_trip_passphrase(
    written: Path, out: Path, profile: Profile, brain_export: Path, adapters: list[Path], signer: SigningKey
) -> None:
    """Profile, brain export and both adapters come back byte for byte; the folder is private."""
    assert 0o600 == stat.S_IMODE(written.stat().st_mode)
    raw = written.read_bytes()
    for plaintext in (b"filing moved", b"patent analyst", b"lora_A"):
        assert plaintext not in raw
    got = read(written, signer, out / "ada")
    assert got.profile == profile
    assert got.brain_export is not None
    assert got.brain_export.read_bytes() == brain_export.read_bytes()
    for folder in adapters:
        sha = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
        copy = out / "ada" / "adapters" / sha
        assert copy in got.adapters
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            assert (copy / name).read_bytes() == (folder / name).read_bytes()
    assert 2 == len(got.adapters)
    assert (got.signer, got.signer_fingerprint) == (signer.public_hex, signer.fingerprint)
    assert "ada" == got.persona_id == got.manifest.persona_id
    assert {m.path for m in got.manifest.members} >= {"profile.json", "brain.json"}
    assert 0o700 == stat.S_IMODE((out / "ada").stat().st_mode)
    assert ["ada"] == os.listdir(out)


def test_round_trip_recipient_key(tmp_path: Path, out: Path, profile: Profile, adapters: list[Path]) -> None:
    """Sealed to an X25519 public key, opened by its private key; default chunk size."""
    recipient, signer = RecipientPrivateKey.generate(), SigningKey.generate()
    path = tmp_path / "r.bundle"
    write_bundle(
        path,
        profile=profile,
        brain_export=None,
        adapters=adapters[:1],
        key=recipient.public_key(),
        signer=signer,
    )
    got = read_bundle(path, key=recipient, trusted=TrustPolicy.key(signer.public_hex), into=out / "x")
    assert (got.profile, got.brain_export, len(got.adapters)) == (profile, None, 1)


def test_members_may_be_absent(tmp_path: Path, out: Path, signer: SigningKey) -> None:
    """A bundle of nothing but a persona id is valid; without a profile the id is required."""
    path = tmp_path / "empty.bundle"
    with pytest.raises(BundleInputError):
        write_bundle(
            path,
            profile=None,
            brain_export=None,
            adapters=[],
            key=PassphraseKey("p", log_n=LOW),
            signer=signer,
        )
    write_bundle(
        path,
        profile=None,
        brain_export=None,
        adapters=[],
        key=PassphraseKey("p", log_n=LOW),
        signer=signer,
        persona_id="solo",
    )
    got = read(path, signer, out / "solo", passphrase="p")
    assert (None, None, [], ()) == (got.profile, got.brain_export, got.adapters, got.manifest.members)


def test_large_adapter_streams(tmp_path: Path, out: Path, signer: SigningKey) -> None:
    """A 6 MB adapter crosses many default-size chunks and survives unchanged."""
    folder = make_adapter(tmp_path / "big", seed=3, rank=64, width=12000)
    path = tmp_path / "big.bundle"
    write_bundle(
        path,
        profile=None,
        brain_export=None,
        adapters=[folder],
        key=PassphraseKey("p", log_n=LOW),
        signer=signer,
        persona_id="big",
    )
    got = read(path, signer, out / "big", passphrase="p")
    weights = got.adapters[0] / "adapter_model.safetensors"
    assert weights.read_bytes() == (folder / "adapter_model.safetensors").read_bytes()


def test_memory_stays_bounded(tmp_path: Path, out: Path, signer: SigningKey) -> None:
    """A 25 MB adapter is written and read with a few MiB of Python memory: streamed, never whole."""
    folder = make_adapter(tmp_path / "big", seed=4, rank=64, width=48_000)
    size = (folder / "adapter_model.safetensors").stat().st_size
    assert size > 24_000_000
    path = tmp_path / "big.bundle"
    key = PassphraseKey("p", log_n=LOW)
    tracemalloc.start()
    try:
        write_bundle(
            path, profile=None, brain_export=None, adapters=[folder], key=key, signer=signer, persona_id="big"
        )
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read(path, signer, out / "big", passphrase="p")
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert write_peak < 8 << 20, write_peak
    assert read_peak < 8 << 20, read_peak


# -- keys -------------------------------------------------------------------------


def test_wrong_passphrase(written: Path, out: Path, signer: SigningKey) -> None:
    refused(WrongPassphrase, written, signer, out, passphrase="correct horse!")


def test_wrong_recipient_key(tmp_path: Path, out: Path, profile: Profile, signer: SigningKey) -> None:
    """Another private key, and a passphrase for a recipient bundle: each a clear error."""
    recipient = RecipientPrivateKey.generate()
    path = tmp_path / "r.bundle"
    write_bundle(
        path, profile=profile, brain_export=None, adapters=[], key=recipient.public_key(), signer=signer
    )
    trusted = TrustPolicy.key(signer.public_hex)
    with pytest.raises(WrongRecipientKey, match="for recipient key"):
        read_bundle(path, key=RecipientPrivateKey.generate(), trusted=trusted, into=out / "x")
    with pytest.raises(WrongPassphrase, match="recipient"):
        read_bundle(path, key=PassphraseKey("p", log_n=LOW), trusted=trusted, into=out / "x")
    assert [] == os.listdir(out)


def test_recipient_key_for_passphrase_bundle(written: Path, out: Path, signer: SigningKey) -> None:
    with pytest.raises(WrongRecipientKey, match="passphrase"):
        read_bundle(
            written,
            key=RecipientPrivateKey.generate(),
            trusted=TrustPolicy.key(signer.public_hex),
            into=out / "x",
        )
    assert [] == os.listdir(out)


def test_wrong_recipient_with_forged_fingerprint(tmp_path: Path, out: Path, profile: Profile) -> None:
    """The key check, not only the recipient fingerprint in the header, rejects a wrong key."""
    recipient, other, signer = (
        RecipientPrivateKey.generate(),
        RecipientPrivateKey.generate(),
        SigningKey.generate(),
    )
    path = tmp_path / "r.bundle"
    write_bundle(
        path, profile=profile, brain_export=None, adapters=[], key=recipient.public_key(), signer=signer
    )
    data = path.read_bytes()
    forged = data.replace(
        recipient.public_key().fingerprint.encode(), other.public_key().fingerprint.encode()
    )
    path.write_bytes(resign(body(forged), signer))
    with pytest.raises(WrongRecipientKey, match="wrong recipient key"):
        read_bundle(path, key=other, trusted=TrustPolicy.key(signer.public_hex), into=out / "x")
    assert [] == os.listdir(out)


def test_signing_key_file(tmp_path: Path) -> None:
    """Created 0600 on first use, the same key after, refused when others may read it."""
    state = tmp_path / "state"
    first = SigningKey.load_or_create(state)
    path = state / "secrets" / "bundle-signing.key"
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    assert first.public_hex == SigningKey.load_or_create(state).public_hex == signing_public_key(state)
    assert 64 == len(first.public_hex)
    assert first.public_hex not in path.read_text()  # the file holds the private half
    path.chmod(0o644)
    with pytest.raises(BundleKeyError, match="0600"):
        SigningKey.load_or_create(state)
    path.chmod(0o600)
    path.write_text("not a key\n")
    with pytest.raises(BundleKeyError, match="hex"):
        SigningKey.load_or_create(state)


def test_key_objects_refuse_bad_input() -> None:
    for bad in ("", None, 5):
        with pytest.raises(BundleInputError):
            PassphraseKey(bad)  # type: ignore[arg-type]
    for log_n in (9, 21, "17"):
        with pytest.raises(BundleInputError):
            PassphraseKey("p", log_n=log_n)  # type: ignore[arg-type]
    for text in ("", "zz" * 32, "ab" * 31):
        with pytest.raises(BundleInputError):
            RecipientPrivateKey.from_hex(text)
        with pytest.raises(BundleInputError):
            TrustPolicy.key(text)
    assert "correct" not in repr(PassphraseKey("correct horse"))


# -- tampering --------------------------------------------------------------------


def test_every_byte_flipped(written: Path, out: Path, signer: SigningKey) -> None:
    """One byte changed: BundleTampered (in the magic: not a bundle), nothing written.

    Every byte of the magic, header length, header and signature; in each
    chunk its first, middle and last (tag) byte.
    """
    data = written.read_bytes()
    start, chunks = layout(data)
    positions = [*range(start), *range(len(data) - bundle.TRAILER_BYTES, len(data))]
    for at in chunks:
        end = min(at + CHUNK + bundle.TAG_BYTES, len(data) - bundle.TRAILER_BYTES)
        positions += [at, (at + end) // 2, end - 1]
    for i in positions:
        written.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
        expected = BundleFormatError if i < len(bundle.MAGIC) else BundleTampered
        with pytest.raises(BundleError) as caught:
            read(written, signer, out / "x")
        assert type(caught.value) is expected, (i, caught.value)
    assert [] == os.listdir(out)


def test_header_edited(written: Path, out: Path, signer: SigningKey) -> None:
    """A header field changed (here the persona id) fails the signature, and, re-signed, the AEAD."""
    data = written.read_bytes()
    start, _ = layout(data)
    header = json.loads(data[20:start])
    header["persona_id"] = "mallory"
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    edited = bundle.MAGIC + struct.pack(">I", len(raw)) + raw + data[start:]
    written.write_bytes(edited)
    refused(BundleTampered, written, signer, out)
    written.write_bytes(resign(body(edited), signer))
    err = refused(BundleTampered, written, signer, out)
    assert "fails authentication" in str(err)
    # Re-signed by the attacker's own key: not trusted.
    mallory = SigningKey.generate()
    header["signer"]["public_key"] = mallory.public_hex
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    written.write_bytes(
        resign(bundle.MAGIC + struct.pack(">I", len(raw)) + raw + body(data)[start:], mallory)
    )
    refused(UntrustedSigner, written, signer, out)


def test_truncated_at_every_chunk_boundary(written: Path, out: Path, signer: SigningKey) -> None:
    """Cut after any whole chunk: the signature fails; re-signed, the final-chunk flag fails."""
    data = written.read_bytes()
    start, chunks = layout(data)
    assert len(chunks) > 10
    for cut in [*chunks, len(data) - bundle.TRAILER_BYTES]:
        written.write_bytes(data[:cut])
        refused(BundleTampered, written, signer, out)
        if cut > start:
            written.write_bytes(resign(data[:cut], signer))
            if cut == len(data) - bundle.TRAILER_BYTES:
                continue  # that is the untouched bundle
            err = refused(BundleTampered, written, signer, out)
            assert "fails authentication" in str(err)
    for cut in (1, 10, start - 1, start + 5, len(data) - 1):
        written.write_bytes(data[:cut])
        with pytest.raises((BundleTampered, BundleFormatError)):
            read(written, signer, out / "x")
    assert [] == os.listdir(out)


def test_reordered_and_dropped_chunks(written: Path, out: Path, signer: SigningKey) -> None:
    """Swapping two chunks, or dropping a middle one, is caught by the signature and by the AEAD."""
    data = written.read_bytes()
    _, chunks = layout(data)
    size = CHUNK + bundle.TAG_BYTES
    a, b = chunks[1], chunks[2]
    swapped = data[:a] + data[b : b + size] + data[a : a + size] + data[b + size :]
    dropped = data[:a] + data[a + size :]
    for variant in (swapped, dropped):
        written.write_bytes(variant)
        refused(BundleTampered, written, signer, out)
        written.write_bytes(resign(body(variant), signer))
        assert "fails authentication" in str(refused(BundleTampered, written, signer, out))


def test_newer_format_version(written: Path, out: Path, signer: SigningKey) -> None:
    """A genuine bundle of a format version we do not read is named as such, not as damage."""
    data = written.read_bytes()
    start, _ = layout(data)
    header = json.loads(data[20:start])
    header["format_version"] = 2
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    written.write_bytes(resign(bundle.MAGIC + struct.pack(">I", len(raw)) + raw + body(data)[start:], signer))
    assert "version 2" in str(refused(BundleFormatError, written, signer, out))


def test_writer_refuses_what_a_reader_would(tmp_path: Path, signer: SigningKey) -> None:
    """More adapters than a default reader accepts: refused at write, not discovered at import."""
    folders = [make_adapter(tmp_path / f"a{i}", seed=i, rank=1, width=8) for i in range(66)]
    path = tmp_path / "many.bundle"
    with pytest.raises(BundleInputError, match="members"):
        write_bundle(
            path,
            profile=None,
            brain_export=None,
            adapters=folders,
            key=PassphraseKey("p", log_n=LOW),
            signer=signer,
            persona_id="many",
        )
    assert not path.exists()


def test_missing_signature(written: Path, out: Path, signer: SigningKey) -> None:
    """Signature stripped and the signer removed from the header: its own error; stripped only: tampered."""
    data = written.read_bytes()
    written.write_bytes(body(data))
    refused(BundleTampered, written, signer, out)
    start, _ = layout(data)
    header = json.loads(data[20:start])
    header["signer"] = None
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    written.write_bytes(bundle.MAGIC + struct.pack(">I", len(raw)) + raw + body(data)[start:])
    refused(BundleSignatureMissing, written, signer, out)


def test_untrusted_signer(written: Path, out: Path) -> None:
    refused(UntrustedSigner, written, SigningKey.generate(), out)


def test_trust_on_first_use(tmp_path: Path, out: Path, profile: Profile, signer: SigningKey) -> None:
    """The first import pins the persona to its signer; another signer of it is refused after."""
    state = tmp_path / "state"
    state.mkdir()
    key = PassphraseKey("p", log_n=LOW)
    mine, theirs = tmp_path / "mine.bundle", tmp_path / "theirs.bundle"
    write_bundle(mine, profile=profile, brain_export=None, adapters=[], key=key, signer=signer)
    write_bundle(
        theirs, profile=profile, brain_export=None, adapters=[], key=key, signer=SigningKey.generate()
    )
    tofu = TrustPolicy.tofu(state)
    # A failed import pins nothing.
    with pytest.raises(WrongPassphrase):
        read_bundle(mine, key=PassphraseKey("q", log_n=LOW), trusted=tofu, into=out / "0")
    assert not (state / "trusted-signers.json").exists()
    read_bundle(mine, key=key, trusted=tofu, into=out / "1")
    pins = json.loads((state / "trusted-signers.json").read_text())
    assert signer.public_hex == pins["personas"]["ada"]["public_key"]
    with pytest.raises(UntrustedSigner, match="first imported"):
        read_bundle(theirs, key=key, trusted=tofu, into=out / "2")
    read_bundle(mine, key=key, trusted=tofu, into=out / "3")
    assert ["1", "3"] == sorted(os.listdir(out))
    # A damaged trust list is an error, left as it is.
    for damaged in ('{"personas": []}', "[]", "{", "\xff"):
        (state / "trusted-signers.json").write_text(damaged)
        with pytest.raises(BundleKeyError, match="trust list"):
            read_bundle(mine, key=key, trusted=tofu, into=out / "4")
        assert damaged == (state / "trusted-signers.json").read_text()
    with pytest.raises(BundleInputError, match="trusted-signers"):
        read_bundle(mine, key=key, trusted=TrustPolicy.tofu(tmp_path / "nope"), into=out / "5")
    assert ["1", "3"] == sorted(os.listdir(out))


# -- hostile content, authentically signed ----------------------------------------


def seal(
    path: Path, signer: SigningKey, plaintext: list[bytes], *, log_n: int = LOW, chunk: int = CHUNK
) -> None:
    """A bundle with a hand-made sealed stream: what a trusted but hostile signer could write."""
    bundle._seal(
        path,
        persona_id="ada",
        created_at=0.0,
        key=PassphraseKey("correct horse", log_n=log_n),
        signer=signer,
        plaintext=plaintext,
        chunk_size=chunk,
    )


def frame(members: list[Member], persona_id: str = "ada") -> bytes:
    raw = Manifest(persona_id, 0.0, tuple(members)).to_json()
    return struct.pack(">I", len(raw)) + raw


def member(path: str, data: bytes) -> Member:
    return Member(path, len(data), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("count", BundleLimitExceeded, "members"),
        ("member_size", BundleLimitExceeded, "declares"),
        ("declares_more", BundleFormatError, "holds"),
        ("declares_less", BundleFormatError, "holds"),
        ("path_escape", BundleFormatError, "unknown member"),
        ("duplicate", BundleFormatError, "twice"),
        ("hash", BundleFormatError, "sha256"),
        ("manifest_size", BundleLimitExceeded, "manifest"),
        ("manifest_garbage", BundleFormatError, "malformed"),
        ("manifest_deep", BundleFormatError, "malformed"),
        ("manifest_version", BundleFormatError, "version 2"),
        ("manifest_not_object", BundleFormatError, "malformed"),
        ("other_persona", BundleFormatError, "different personas"),
        ("profile_of_other", BundleFormatError, "profile is of"),
        ("half_adapter", BundleFormatError, "lacks"),
        ("not_lora", BundleFormatError, "adapter"),
    ],
)
def test_hostile_manifest(
    case: str, error: type[BundleError], match: str, tmp_path: Path, out: Path, signer: SigningKey
) -> None:
    """A trusted signer's bundle that lies about its members is refused before anything lands."""
    prof = Profile(id="ada", name="Ada", role="r").model_dump_json().encode()
    other = Profile(id="bob", name="Bob", role="r").model_dump_json().encode()
    cases: dict[str, Callable[[], list[bytes]]] = {
        "count": lambda: [frame([member("profile.json", prof)] * 200)],
        "member_size": lambda: [frame([Member("brain.json", 1 << 40, "0" * 64)])],
        "declares_more": lambda: [frame([Member("profile.json", len(prof) + 1, "0" * 64)]), prof],
        "declares_less": lambda: [frame([Member("profile.json", len(prof) - 1, "0" * 64)]), prof],
        "path_escape": lambda: [frame([member("../../etc/passwd", prof)]), prof],
        "duplicate": lambda: [frame([member("profile.json", prof)] * 2), prof * 2],
        "hash": lambda: [frame([Member("profile.json", len(prof), "1" * 64)]), prof],
        "manifest_size": lambda: [struct.pack(">I", (1 << 20) + 1) + b"x" * ((1 << 20) + 1)],
        "manifest_garbage": lambda: [struct.pack(">I", 5) + b"{]]]]"],
        "manifest_deep": lambda: [struct.pack(">I", 200_000) + b"[" * 200_000],
        "manifest_not_object": lambda: [struct.pack(">I", 2) + b"[]"],
        "manifest_version": lambda: [
            struct.pack(">I", len(v2)) + v2
            for v2 in [frame([])[4:].replace(b'"format_version":1', b'"format_version":2')]
        ],
        "other_persona": lambda: [frame([], persona_id="bob")],
        "profile_of_other": lambda: [frame([member("profile.json", other)]), other],
        "half_adapter": lambda: [frame([member(f"adapters/{'a' * 64}/adapter_config.json", b"{}")]), b"{}"],
        "not_lora": lambda: not_lora(),
    }

    def not_lora() -> list[bytes]:
        weights = (make_adapter(tmp_path / "nl", seed=9) / "adapter_model.safetensors").read_bytes()
        config = b'{"peft_type": "IA3"}'
        sha = hashlib.sha256(weights).hexdigest()
        members = [
            member(f"adapters/{sha}/adapter_config.json", config),
            member(f"adapters/{sha}/adapter_model.safetensors", weights),
        ]
        return [frame(members), config, weights]

    path = tmp_path / "hostile.bundle"
    seal(path, signer, cases[case]())
    with pytest.raises(error, match=match):
        read(path, signer, out / "x")
    assert [] == os.listdir(out)


def test_hostile_costs_and_sizes(written: Path, tmp_path: Path, out: Path, signer: SigningKey) -> None:
    """Limits on file size, header size, chunk size and scrypt cost are checked before work."""
    refused(BundleLimitExceeded, written, signer, out, limits=BundleLimits(max_bundle_bytes=1000))
    refused(BundleTampered, written, signer, out, limits=BundleLimits(max_header_bytes=100))
    refused(
        BundleLimitExceeded, written, signer, out, limits=BundleLimits(max_chunk_size=512, min_chunk_size=256)
    )
    refused(BundleLimitExceeded, written, signer, out, limits=BundleLimits(max_scrypt_log_n=LOW - 1))
    refused(BundleLimitExceeded, written, signer, out, limits=BundleLimits(max_total_bytes=100))
    refused(BundleLimitExceeded, written, signer, out, limits=BundleLimits(reserve_free_bytes=1 << 62))
    # A header nested past Python's recursion limit.
    deep = b"[" * 60_000
    written.write_bytes(bundle.MAGIC + struct.pack(">I", len(deep)) + deep + b"\0" * 200)
    refused(BundleTampered, written, signer, out)
    # The header length field pointing past the end of the file.
    data = bytearray(written.read_bytes())
    data[16:20] = struct.pack(">I", 0xFFFFFFF0)
    written.write_bytes(bytes(data))
    refused(BundleTampered, written, signer, out)


def test_not_a_bundle(tmp_path: Path, out: Path, signer: SigningKey) -> None:
    for content in (b"", b"PK\x03\x04 a zip", b"x" * 5000):
        path = tmp_path / "junk"
        path.write_bytes(content)
        refused(BundleFormatError, path, signer, out)
    with pytest.raises(BundleInputError, match="cannot open"):
        read(tmp_path / "missing", signer, out / "x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for special in (fifo, Path("/dev/zero")):
        with pytest.raises(BundleInputError, match="regular file"):
            read(special, signer, out / "x")


# -- the writer's and reader's own inputs ----------------------------------------


def test_into_must_be_new(written: Path, out: Path, signer: SigningKey) -> None:
    (out / "taken").mkdir()
    (out / "taken" / "keep").write_text("mine")
    with pytest.raises(BundleInputError, match="already exists"):
        read(written, signer, out / "taken")
    assert "mine" == (out / "taken" / "keep").read_text()
    with pytest.raises(BundleInputError, match="no such folder"):
        read(written, signer, out / "nope" / "x")


def test_writer_refuses_bad_sources(
    tmp_path: Path, profile: Profile, adapters: list[Path], signer: SigningKey
) -> None:
    """Bad sources are clear errors and the target keeps its old content."""
    path = tmp_path / "t.bundle"
    path.write_bytes(b"old")
    key = PassphraseKey("p", log_n=LOW)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (broken / "adapter_model.safetensors").write_bytes(b"\xff" * 20)
    attempts: list[dict[str, object]] = [
        {"profile": profile, "brain_export": None, "adapters": [], "persona_id": "bob"},
        {"profile": None, "brain_export": None, "adapters": [], "persona_id": "../x"},
        {"profile": {"id": "ada"}, "brain_export": None, "adapters": []},
        {"profile": profile, "brain_export": tmp_path / "nope.json", "adapters": []},
        {"profile": profile, "brain_export": None, "adapters": [adapters[0], adapters[0]]},
        {"profile": profile, "brain_export": None, "adapters": [broken]},
        {"profile": profile, "brain_export": None, "adapters": [tmp_path / "none"]},
        {"profile": profile, "brain_export": None, "adapters": [], "chunk_size": 10},
        {"profile": profile, "brain_export": None, "adapters": [], "key": "a passphrase"},
        {"profile": profile, "brain_export": None, "adapters": [], "signer": signer.public_hex},
    ]
    for kwargs in attempts:
        with pytest.raises(BundleInputError):
            write_bundle(path, **{"key": key, "signer": signer, **kwargs})  # type: ignore[arg-type]
    assert b"old" == path.read_bytes()
    with pytest.raises(BundleInputError, match="no such folder"):
        write_bundle(
            tmp_path / "nope" / "t.bundle",
            profile=profile,
            brain_export=None,
            adapters=[],
            key=key,
            signer=signer,
        )
    assert ["t.bundle"] == [p.name for p in tmp_path.iterdir() if p.name.startswith((".t", "t."))]


def test_source_changed_while_writing(tmp_path: Path, profile: Profile, signer: SigningKey) -> None:
    """A member that changes between hashing and sealing fails the write; the target is untouched."""
    brain = tmp_path / "brain.json"
    brain.write_bytes(b'{"format": "personad.brain"}')
    path = tmp_path / "t.bundle"
    sources = [bundle._hash_file(brain, "brain.json")]
    with brain.open("r+b") as f:  # same size, same mtime: only the ctime tells
        f.write(b"[")
    os.utime(brain, ns=(sources[0][1].stamp[3], sources[0][1].stamp[3]))
    path.write_bytes(b"old")
    with pytest.raises(BundleInputError, match="changed"):
        bundle._seal(
            path,
            persona_id="ada",
            created_at=0.0,
            key=PassphraseKey("p", log_n=LOW),
            signer=signer,
            plaintext=bundle._stream(sources),
            chunk_size=CHUNK,
        )
    assert b"old" == path.read_bytes()
    assert ["brain.json", "t.bundle"] == sorted(os.listdir(tmp_path))

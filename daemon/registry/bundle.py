"""Persona bundles: one encrypted, signed file with a persona's profile, brain
export and adapters (the ``bundle`` format of ``persona.export``/``import``).

One file (over 500 lines) because the writer and the reader are two halves of one byte format
that must change together; the keys, the one clean seam, are already in bundle_keys.py.

This module is the byte format: the manifest, the chunk construction, and
the writer and the reader, two halves of one format kept side by side so
they stay in step. The keys and the trust policy callers pass in, with the
key derivation, are in bundle_keys.py. The format, the key derivation, the
chunk construction and the trust rules are specified in docs/bundle.md; this
docstring only maps the code onto it.

- :func:`write_bundle` hashes every member, writes a header (plaintext,
  authenticated), then the members as one stream sealed in AES-256-GCM
  chunks, then an Ed25519 signature over everything before it. Memory use is
  a few chunks whatever the members weigh.
- :func:`read_bundle` checks, in this order, each failure its own error:
  the file is a bundle (:class:`BundleFormatError`), it names a signer
  (:class:`BundleSignatureMissing`), the signature covers the header and every
  chunk (:class:`BundleTampered`), the signer is trusted
  (:class:`UntrustedSigner`), the key opens it (:class:`WrongPassphrase`,
  :class:`WrongRecipientKey`), declared sizes fit the limits
  (:class:`BundleLimitExceeded`); then it decrypts into a temporary folder,
  checking every chunk and member hash, and renames the folder into place
  only once all of it verified (:func:`daemon.files.atomic_dir`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import ValidationError

from protocol.profile import Profile

from ..files import atomic_dir, atomic_writer
from ..ids import PERSONA_ID_RULE, is_persona_id
from ..inference.adapters import CONFIG_FILE, WEIGHTS_FILE, check_lora_folder, sha256_file
from ..inference.errors import InferenceError
from .bundle_keys import (
    _HEX32,
    KEY_CHECK_BYTES,
    MIN_SCRYPT_LOG_N,
    SCRYPT_P,
    SCRYPT_R,
    PassphraseKey,
    RecipientKey,
    RecipientPrivateKey,
    SigningKey,
    TrustPolicy,
    _fingerprint,
    _split_master,
    _x25519_master,
)
from .errors import (
    BundleError,
    BundleFormatError,
    BundleInputError,
    BundleLimitExceeded,
    BundleSignatureMissing,
    BundleTampered,
    WrongPassphrase,
    WrongRecipientKey,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "BundleContents",
    "BundleError",
    "BundleLimits",
    "Manifest",
    "Member",
    "read_bundle",
    "write_bundle",
]

FORMAT: Final = "personad.bundle"
FORMAT_VERSION: Final = 1
MAGIC: Final = b"PERSONAD-BUNDLE\x00"
TRAILER_MAGIC: Final = b"PDBSIG01"
SIGNATURE_BYTES: Final = 64
TRAILER_BYTES: Final = len(TRAILER_MAGIC) + SIGNATURE_BYTES
TAG_BYTES: Final = 16
NONCE_PREFIX_BYTES: Final = 8
#: 64 KiB: AES-GCM is fastest at this size here (bench/bundle.py), as in age.
DEFAULT_CHUNK_SIZE: Final = 64 * 1024
PROFILE_MEMBER: Final = "profile.json"
BRAIN_MEMBER: Final = "brain.json"

_KDF_SCRYPT = "scrypt"
_KDF_X25519 = "x25519-hkdf-sha256"
_SIGNATURE_CONTEXT = b"personad.bundle/1 signature\x00"
# Member paths come from a fixed set: the reader builds every path it writes
# from this pattern, never from free text in the manifest.
_MEMBER_PATH = re.compile(
    r"^(?:profile\.json|brain\.json|adapters/([0-9a-f]{64})/(adapter_config\.json|adapter_model\.safetensors))$"
)
_BLOCK = 1 << 20


@dataclass(frozen=True, kw_only=True)
class BundleLimits:
    """What a bundle may ask of the reader; a bundle past any of them is refused before a byte is written."""

    max_bundle_bytes: int = 64 << 30
    max_header_bytes: int = 64 << 10
    max_manifest_bytes: int = 1 << 20
    max_members: int = 2 + 2 * 64
    max_member_bytes: int = 16 << 30
    max_total_bytes: int = 64 << 30
    max_chunk_size: int = 4 << 20
    min_chunk_size: int = 1 << 10
    max_scrypt_log_n: int = 18
    #: Bytes to leave free on the target's file system after unpacking.
    reserve_free_bytes: int = 64 << 20


# -- manifest -----------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    persona_id: str
    created_at: float
    members: tuple[Member, ...]
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return _canonical(
            {
                "format": FORMAT,
                "format_version": self.format_version,
                "persona_id": self.persona_id,
                "created_at": self.created_at,
                "members": [{"path": m.path, "size": m.size, "sha256": m.sha256} for m in self.members],
            }
        )

    @classmethod
    def parse(cls, raw: bytes, *, limits: BundleLimits) -> Manifest:
        try:
            doc = json.loads(raw)
            if doc["format"] != FORMAT or doc["format_version"] != FORMAT_VERSION:
                found = f"{doc['format']!r} version {doc['format_version']!r}"
                raise BundleFormatError(f"the bundle's manifest is {found[:100]}")
            items = doc["members"]
            if not isinstance(items, list):
                raise TypeError
            if len(items) > limits.max_members:
                raise BundleLimitExceeded(
                    f"the bundle declares {len(items)} members (limit {limits.max_members})"
                )
            members = tuple(Member(str(m["path"]), m["size"], str(m["sha256"])) for m in items)
            persona_id, created_at = doc["persona_id"], float(doc["created_at"])
        except (KeyError, TypeError, ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise BundleFormatError(f"the bundle's manifest is malformed ({type(exc).__name__})") from None
        manifest = cls(persona_id, created_at, members)
        manifest.check(limits=limits)
        return manifest

    def check(self, *, limits: BundleLimits) -> None:
        """Member paths from the fixed set, no repeats, counts and sizes within limits, adapters whole."""
        if len(self.members) > limits.max_members:
            raise BundleLimitExceeded(
                f"the bundle declares {len(self.members)} members (limit {limits.max_members})"
            )
        seen: set[str] = set()
        folders: dict[str, set[str]] = {}
        total = 0
        for m in self.members:
            match = _MEMBER_PATH.fullmatch(m.path)
            if match is None:
                raise BundleFormatError(f"the bundle's manifest names an unknown member {m.path[:100]!r}")
            if m.path in seen:
                raise BundleFormatError(f"the bundle's manifest names {m.path!r} twice")
            seen.add(m.path)
            if type(m.size) is not int or m.size < 0 or not _HEX32.fullmatch(m.sha256):
                raise BundleFormatError(f"the bundle's manifest entry for {m.path!r} is malformed")
            if m.size > limits.max_member_bytes:
                raise BundleLimitExceeded(
                    f"member {m.path!r} declares {m.size} bytes (limit {limits.max_member_bytes})"
                )
            total += m.size
            if match.group(1):
                folders.setdefault(match.group(1), set()).add(match.group(2))
                if match.group(2) == WEIGHTS_FILE and m.sha256 != match.group(1):
                    raise BundleFormatError(f"adapter {match.group(1)} is not named by its weights' sha256")
        if total > limits.max_total_bytes:
            raise BundleLimitExceeded(
                f"the bundle declares {total} bytes in all (limit {limits.max_total_bytes})"
            )
        for sha, files in folders.items():
            if files != {CONFIG_FILE, WEIGHTS_FILE}:
                raise BundleFormatError(f"adapter {sha} lacks {CONFIG_FILE} or {WEIGHTS_FILE}")
        if not is_persona_id(self.persona_id):
            raise BundleFormatError(f"the bundle's persona id must be {PERSONA_ID_RULE}")

    @property
    def total(self) -> int:
        return sum(m.size for m in self.members)


@dataclass(frozen=True)
class BundleContents:
    """What :func:`read_bundle` unpacked into ``folder``."""

    folder: Path
    manifest: Manifest
    profile: Profile | None
    brain_export: Path | None
    adapters: list[Path]
    signer: str  # the signer's public key, hex
    signer_fingerprint: str

    @property
    def persona_id(self) -> str:
        return self.manifest.persona_id


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


# -- the chunk construction ---------------------------------------------------


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def _ad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, 1 if final else 0)


class _Sealer:
    """Cuts a plaintext stream into chunks and seals each; the last one is flagged final."""

    def __init__(self, out: _HashingWriter, aead: AESGCM, prefix: bytes, header_digest: bytes, size: int):
        self._out, self._aead, self._prefix, self._hd, self._cs = out, aead, prefix, header_digest, size
        self._buf = bytearray()  # a partial chunk
        self._pending: bytes | None = None  # a whole chunk, final unless more follows
        self._index = 0

    def _emit(self, data: bytes, final: bool) -> None:
        if self._index >= 1 << 32:
            raise BundleInputError("the bundle is too large for its chunk counter")
        nonce = _nonce(self._prefix, self._index)
        self._out.write(self._aead.encrypt(nonce, data, _ad(self._hd, self._index, final)))
        self._index += 1

    def write(self, data: bytes) -> None:
        view, at = memoryview(data), 0
        while at < len(view):
            if self._pending is not None:  # more data follows it: not the last
                self._emit(self._pending, False)
                self._pending = None
            take = min(self._cs - len(self._buf), len(view) - at)
            if not self._buf and take == self._cs:
                self._pending = bytes(view[at : at + take])
            else:
                self._buf += view[at : at + take]
                if len(self._buf) == self._cs:
                    self._pending = bytes(self._buf)
                    self._buf.clear()
            at += take

    def close(self) -> None:
        if self._pending is not None and self._buf:
            self._emit(self._pending, False)
        elif self._pending is not None:
            self._emit(self._pending, True)
            return
        self._emit(bytes(self._buf), True)


class _HashingWriter:
    """A file wrapper that hashes everything written, for the signature."""

    def __init__(self, f: IO[bytes]):
        self.f, self.digest = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.f.write(data)


def _seal(
    path: Path,
    *,
    persona_id: str,
    created_at: float,
    key: PassphraseKey | RecipientKey,
    signer: SigningKey,
    plaintext: Iterable[bytes],
    chunk_size: int,
) -> None:
    """Write a bundle whose sealed stream is ``plaintext`` (the manifest frame and members)."""
    if isinstance(key, PassphraseKey):
        salt = secrets.token_bytes(16)
        master = key.master(salt, key.log_n)
        kdf: dict[str, Any] = {"name": _KDF_SCRYPT, "salt": salt.hex(), "log_n": key.log_n}
        kdf |= {"r": SCRYPT_R, "p": SCRYPT_P}
    elif isinstance(key, RecipientKey):
        ephemeral = X25519PrivateKey.generate()
        eph_public = ephemeral.public_key().public_bytes_raw()
        try:
            shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(key.public))
        except ValueError:
            raise BundleInputError("the recipient key is not a usable X25519 public key") from None
        master = _x25519_master(shared, eph_public, key.public)
        kdf = {"name": _KDF_X25519, "ephemeral": eph_public.hex(), "recipient": key.fingerprint}
    else:
        raise BundleInputError("key must be a PassphraseKey or a RecipientKey")
    if not isinstance(signer, SigningKey):
        raise BundleInputError("signer must be a SigningKey")
    payload_key, key_check = _split_master(master)
    prefix = secrets.token_bytes(NONCE_PREFIX_BYTES)
    header = _canonical(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "persona_id": persona_id,
            "created_at": created_at,
            "chunk_size": chunk_size,
            "nonce_prefix": prefix.hex(),
            "kdf": kdf,
            "key_check": key_check.hex(),
            "signer": {"alg": "ed25519", "public_key": signer.public_hex},
        }
    )
    with atomic_writer(path, mode=0o600) as raw:
        out = _HashingWriter(raw)
        out.write(MAGIC + struct.pack(">I", len(header)) + header)
        sealer = _Sealer(out, AESGCM(payload_key), prefix, hashlib.sha256(header).digest(), chunk_size)
        for block in plaintext:
            sealer.write(block)
        sealer.close()
        raw.write(TRAILER_MAGIC + signer.sign(_SIGNATURE_CONTEXT + out.digest.digest()))


# -- writing ------------------------------------------------------------------


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file's content does: ctime cannot be set back from user space."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class _Source:
    path: Path
    stamp: tuple[int, ...]


def _hash_file(path: Path, name: str) -> tuple[Member, _Source]:
    """The member for a file and its stamp, taken before hashing, to detect a later change."""
    try:
        stamp = _stamp(path.stat())
        member = Member(name, stamp[2], sha256_file(path))
    except OSError as exc:
        raise BundleInputError(f"{path}: cannot read ({exc.strerror})") from None
    return member, _Source(path, stamp)


def _stream(sources: Sequence[tuple[Member, _Source | bytes]]) -> Iterator[bytes]:
    """The members' bytes; a file whose stamp moved since it was hashed fails the write.

    Comparing stamps rather than hashing again saves a pass over every byte;
    and a change the stamps missed could only make a bundle the reader
    refuses (it checks every member's hash), never one it accepts wrongly.
    """
    for member, source in sources:
        if isinstance(source, bytes):
            yield source
            continue
        size = 0
        try:
            with source.path.open("rb") as f:
                same = _stamp(os.fstat(f.fileno())) == source.stamp
                while same and size <= member.size and (block := f.read(_BLOCK)):
                    size += len(block)
                    yield block
                same = same and _stamp(os.fstat(f.fileno())) == source.stamp
        except OSError as exc:
            raise BundleInputError(f"{source.path}: cannot read ({exc.strerror})") from None
        if not same or size != member.size:
            raise BundleInputError(f"{source.path} changed while the bundle was being written; try again")


def write_bundle(
    path: Path,
    *,
    profile: Profile | None,
    brain_export: Path | None,
    adapters: Sequence[Path],
    key: PassphraseKey | RecipientKey,
    signer: SigningKey,
    persona_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Manifest:
    """Write the bundle of one persona to ``path`` (atomically, mode 0600); returns its manifest.

    Each of ``profile``, ``brain_export`` (a ``personad.brain`` JSON file) and
    ``adapters`` (PEFT LoRA folders) may be absent; ``persona_id`` is needed
    only without a profile (with one, it must agree). A source that changes
    while being written fails the write (:class:`BundleInputError`) and
    leaves ``path`` as it was.
    """
    if profile is not None:
        if not isinstance(profile, Profile):
            raise BundleInputError("profile must be a protocol.profile.Profile")
        if persona_id not in (None, profile.id):
            raise BundleInputError(f"persona_id {persona_id!r} is not the profile's id {profile.id!r}")
        persona_id = profile.id
    if not is_persona_id(persona_id):
        raise BundleInputError(f"the bundle's persona id must be {PERSONA_ID_RULE}")
    assert isinstance(persona_id, str)
    if not isinstance(chunk_size, int) or not 1 << 10 <= chunk_size <= 4 << 20:
        raise BundleInputError("chunk_size must be 1 KiB..4 MiB")
    if not Path(path).parent.is_dir():
        raise BundleInputError(f"{Path(path).parent}: no such folder")
    sources: list[tuple[Member, _Source | bytes]] = []
    if profile is not None:
        data = profile.model_dump_json().encode("utf-8")
        sources.append((Member(PROFILE_MEMBER, len(data), hashlib.sha256(data).hexdigest()), data))
    if brain_export is not None:
        brain_export = Path(brain_export)
        if not brain_export.is_file():
            raise BundleInputError(f"{brain_export}: no such brain export file")
        sources.append(_hash_file(brain_export, BRAIN_MEMBER))
    seen: set[str] = set()
    for folder in adapters:
        folder = Path(folder)
        try:
            check_lora_folder(folder)
        except InferenceError as exc:
            raise BundleInputError(f"adapter {folder}: {exc}") from None
        weights = _hash_file(folder / WEIGHTS_FILE, WEIGHTS_FILE)
        sha = weights[0].sha256
        if sha in seen:
            raise BundleInputError(f"adapter {folder}: the same weights ({sha}) are given twice")
        seen.add(sha)
        sources.append(_hash_file(folder / CONFIG_FILE, f"adapters/{sha}/{CONFIG_FILE}"))
        sources.append((Member(f"adapters/{sha}/{WEIGHTS_FILE}", weights[0].size, sha), weights[1]))
    created_at = time.time()
    manifest = Manifest(persona_id, created_at, tuple(m for m, _ in sources))
    try:
        manifest.check(limits=BundleLimits())  # what a default reader would refuse
    except BundleFormatError as exc:
        raise BundleInputError(f"cannot bundle this: {exc}") from None
    frame = manifest.to_json()

    def plaintext() -> Iterator[bytes]:
        yield struct.pack(">I", len(frame)) + frame
        yield from _stream(sources)

    _seal(
        Path(path),
        persona_id=persona_id,
        created_at=created_at,
        key=key,
        signer=signer,
        plaintext=plaintext(),
        chunk_size=chunk_size,
    )
    return manifest


# -- reading ------------------------------------------------------------------


@dataclass
class _Header:
    raw: bytes
    end: int  # offset of the first chunk
    doc: dict[str, Any]
    signer: str = ""
    persona_id: str = ""
    chunk_size: int = 0
    prefix: bytes = b""
    key_check: bytes = b""
    kdf: dict[str, Any] = field(default_factory=dict)


def _read_header(f: IO[bytes], size: int, limits: BundleLimits) -> _Header:
    """Magic, header length and header JSON: just enough to find the signer."""
    if f.read(len(MAGIC)) != MAGIC:
        raise BundleFormatError("not a personad bundle (wrong magic bytes)")
    length_raw = f.read(4)
    if len(length_raw) != 4:
        raise BundleTampered("the bundle is truncated inside its header")
    (length,) = struct.unpack(">I", length_raw)
    if length > limits.max_header_bytes or len(MAGIC) + 4 + length > size:
        raise BundleTampered(f"the bundle's header length ({length}) is impossible: damaged or truncated")
    raw = f.read(length)
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BundleTampered("the bundle's header is damaged (not a JSON object)") from None
    header = _Header(raw=raw, end=len(MAGIC) + 4 + length, doc=doc)
    if "signer" not in doc:
        raise BundleTampered("the bundle's header is damaged (it has no signer entry)")
    signer = doc["signer"]
    if signer is None:  # how the format spells "unsigned"
        raise BundleSignatureMissing("the bundle is not signed; refusing to import it")
    if (
        not isinstance(signer, dict)
        or signer.get("alg") != "ed25519"
        or not isinstance(signer.get("public_key"), str)
        or not _HEX32.fullmatch(signer["public_key"])
    ):
        raise BundleTampered("the bundle's header is damaged (its signer entry is malformed)")
    header.signer = signer["public_key"]
    return header


def _check_header(h: _Header, limits: BundleLimits) -> None:
    """The rest of the (now authenticated) header, against the limits."""
    doc = h.doc
    if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        found = f"{doc.get('format')!r} version {doc.get('format_version')!r}"
        raise BundleFormatError(
            f"the bundle is {found[:100]}; this personad reads {FORMAT} version {FORMAT_VERSION}"
        )
    try:
        h.persona_id = doc["persona_id"]
        h.chunk_size = doc["chunk_size"]
        h.prefix = bytes.fromhex(doc["nonce_prefix"])
        h.key_check = bytes.fromhex(doc["key_check"])
        h.kdf = doc["kdf"]
        if not isinstance(h.kdf, dict) or type(h.chunk_size) is not int:
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise BundleFormatError("the bundle's header lacks a field or has one of the wrong type") from None
    if not is_persona_id(h.persona_id):
        raise BundleFormatError(f"the bundle's persona id must be {PERSONA_ID_RULE}")
    if len(h.prefix) != NONCE_PREFIX_BYTES or len(h.key_check) != KEY_CHECK_BYTES:
        raise BundleFormatError("the bundle's nonce prefix or key check has the wrong length")
    if not limits.min_chunk_size <= h.chunk_size <= limits.max_chunk_size:
        raise BundleLimitExceeded(
            f"the bundle's chunk size {h.chunk_size} is outside "
            f"{limits.min_chunk_size}..{limits.max_chunk_size}"
        )


def _verify_signature(f: IO[bytes], h: _Header, size: int) -> None:
    """Check the trailer signs everything before it."""
    if size < h.end + TRAILER_BYTES:
        raise BundleTampered("the bundle is truncated: no room for its signature")
    f.seek(size - TRAILER_BYTES)
    trailer = f.read(TRAILER_BYTES)
    if trailer[: len(TRAILER_MAGIC)] != TRAILER_MAGIC:
        raise BundleTampered("the bundle is truncated or damaged: it does not end in its signature")
    f.seek(0)
    digest = _digest_range(f, size - TRAILER_BYTES)
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(h.signer))
        public.verify(trailer[len(TRAILER_MAGIC) :], _SIGNATURE_CONTEXT + digest)
    except (InvalidSignature, ValueError):
        raise BundleTampered(
            "the bundle's signature does not match its content: it was altered, truncated or reordered"
        ) from None


def _digest_range(f: IO[bytes], end: int) -> bytes:
    digest, left = hashlib.sha256(), end
    while left:
        block = f.read(min(_BLOCK, left))
        if not block:
            raise BundleTampered("the bundle changed size while being read")
        digest.update(block)
        left -= len(block)
    return digest.digest()


def _open_key(h: _Header, key: PassphraseKey | RecipientPrivateKey, limits: BundleLimits) -> bytes:
    """The payload key, or WrongPassphrase / WrongRecipientKey."""
    kdf = h.kdf
    name = kdf.get("name")
    if isinstance(key, PassphraseKey):
        if name != _KDF_SCRYPT:
            raise WrongPassphrase("the bundle is encrypted to a recipient's X25519 key, not a passphrase")
        try:
            salt, log_n = bytes.fromhex(kdf["salt"]), kdf["log_n"]
            if (kdf["r"], kdf["p"]) != (SCRYPT_R, SCRYPT_P) or type(log_n) is not int or len(salt) < 16:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise BundleFormatError("the bundle's scrypt parameters are malformed or unsupported") from None
        if not MIN_SCRYPT_LOG_N <= log_n <= limits.max_scrypt_log_n:
            raise BundleLimitExceeded(
                f"the bundle asks for scrypt log_n={log_n}; "
                f"accepted: {MIN_SCRYPT_LOG_N}..{limits.max_scrypt_log_n}"
            )
        payload, check = _split_master(key.master(salt, log_n))
        if not hmac.compare_digest(check, h.key_check):
            raise WrongPassphrase("wrong passphrase for this bundle")
        return payload
    if isinstance(key, RecipientPrivateKey):
        if name != _KDF_X25519:
            raise WrongRecipientKey("the bundle is encrypted with a passphrase, not to a recipient key")
        public = key.public_key()
        if kdf.get("recipient") != public.fingerprint:
            raise WrongRecipientKey(
                f"the bundle is for recipient key {kdf.get('recipient')}, not {public.fingerprint}"
            )
        try:
            ephemeral = bytes.fromhex(kdf["ephemeral"])
            shared = X25519PrivateKey.from_private_bytes(key.private).exchange(
                X25519PublicKey.from_public_bytes(ephemeral)
            )
        except (KeyError, TypeError, ValueError):
            raise BundleFormatError("the bundle's ephemeral X25519 key is malformed") from None
        payload, check = _split_master(_x25519_master(shared, ephemeral, public.public))
        if not hmac.compare_digest(check, h.key_check):
            raise WrongRecipientKey("wrong recipient key for this bundle")
        return payload
    raise BundleInputError("key must be a PassphraseKey or a RecipientPrivateKey")


class _Opener:
    """Reads the chunks back in order, checking each."""

    def __init__(self, f: IO[bytes], h: _Header, payload_key: bytes, region_end: int):
        self._f, self._h, self._aead = f, h, AESGCM(payload_key)
        self._hd = hashlib.sha256(h.raw).digest()
        self._ct = h.chunk_size + TAG_BYTES
        region = region_end - h.end
        self.chunks = max(1, -(-region // self._ct))
        last = region - (self.chunks - 1) * self._ct
        if region <= TAG_BYTES or last <= TAG_BYTES or self.chunks > 1 << 32:
            raise BundleTampered("the bundle is truncated: its chunks do not add up")
        self.plaintext_bytes = region - self.chunks * TAG_BYTES
        self._last, self._index = last, 0
        self._buf, self._pos = b"", 0
        # Open the last chunk first, as the final one at its index: that
        # authenticates the stream's length (and so every size derived from
        # it) before the manifest is believed. A stream cut after a whole
        # chunk, or with chunks dropped or added, fails here.
        f.seek(h.end + (self.chunks - 1) * self._ct)
        try:
            self._aead.decrypt(
                _nonce(h.prefix, self.chunks - 1), f.read(last), _ad(self._hd, self.chunks - 1, True)
            )
        except InvalidTag:
            raise BundleTampered(
                "the bundle's last chunk fails authentication as the final one: "
                "altered, truncated or extended"
            ) from None
        f.seek(h.end)

    def _next(self) -> None:
        if self._index >= self.chunks:
            raise BundleFormatError("the bundle's manifest declares more bytes than it holds")
        final = self._index == self.chunks - 1
        ct = self._f.read(self._last if final else self._ct)
        try:
            nonce = _nonce(self._h.prefix, self._index)
            self._buf = self._aead.decrypt(nonce, ct, _ad(self._hd, self._index, final))
        except InvalidTag:
            raise BundleTampered(
                f"chunk {self._index} of the bundle fails authentication: altered, truncated or reordered"
            ) from None
        self._pos = 0
        self._index += 1

    def read(self, n: int) -> Iterator[memoryview]:
        """Exactly ``n`` plaintext bytes, as views of the decrypted chunks."""
        while n:
            if self._pos == len(self._buf):
                self._next()
            take = min(n, len(self._buf) - self._pos)
            yield memoryview(self._buf)[self._pos : self._pos + take]
            self._pos += take
            n -= take

    def read_bytes(self, n: int) -> bytes:
        return b"".join(self.read(n))

    @property
    def done(self) -> bool:
        return self._index == self.chunks and self._pos == len(self._buf)


def read_bundle(
    path: Path,
    *,
    key: PassphraseKey | RecipientPrivateKey,
    trusted: TrustPolicy,
    into: Path,
    limits: BundleLimits = BundleLimits(),
) -> BundleContents:
    """Verify and unpack the bundle at ``path`` into the new folder ``into``.

    ``into`` must not exist; it appears (mode 0700, holding ``profile.json``,
    ``brain.json``, ``adapters/<sha256>/``) only once every check passed. Any
    failure raises its own :class:`BundleError` and writes nothing.
    """
    path, into = Path(path), Path(into)
    if os.path.lexists(into):
        raise BundleInputError(f"{into} already exists; unpack into a new folder")
    if not into.parent.is_dir():
        raise BundleInputError(f"{into.parent}: no such folder")
    if trusted.tofu_file is not None and not trusted.tofu_file.parent.is_dir():
        raise BundleInputError(f"{trusted.tofu_file.parent}: no such folder for the trusted-signers list")
    try:
        # O_NONBLOCK: a FIFO put in the bundle's place must not hang the import.
        f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
    except OSError as exc:
        raise BundleInputError(f"{path}: cannot open ({exc.strerror})") from None
    with f, trusted.lock():
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BundleInputError(f"{path}: not a regular file")
        size, stamp = st.st_size, _stamp(st)
        if size > limits.max_bundle_bytes:
            raise BundleLimitExceeded(f"{path} is {size} bytes (limit {limits.max_bundle_bytes})")
        header = _read_header(f, size, limits)
        _verify_signature(f, header, size)
        _check_header(header, limits)
        pin = trusted.check(header.signer, header.persona_id)
        payload_key = _open_key(header, key, limits)
        opener = _Opener(f, header, payload_key, size - TRAILER_BYTES)
        contents = _unpack(
            opener, header, into, limits, unchanged=lambda: _stamp(os.fstat(f.fileno())) == stamp
        )
        if pin:
            trusted.record(header.signer, header.persona_id)
    return contents


def _unpack(
    opener: _Opener, h: _Header, into: Path, limits: BundleLimits, *, unchanged: Callable[[], bool]
) -> BundleContents:
    frame_len = struct.unpack(">I", opener.read_bytes(4))[0]
    if frame_len > limits.max_manifest_bytes:
        raise BundleLimitExceeded(
            f"the bundle's manifest is {frame_len} bytes (limit {limits.max_manifest_bytes})"
        )
    if frame_len > opener.plaintext_bytes - 4:
        raise BundleFormatError("the bundle's manifest is longer than the bundle")
    manifest = Manifest.parse(opener.read_bytes(frame_len), limits=limits)
    if manifest.persona_id != h.persona_id:
        raise BundleFormatError("the bundle's manifest and header name different personas")
    # Declared sizes must account for every byte sealed: a member cannot
    # claim less than it carries (nothing is left over) or more (it would run
    # past the end).
    if manifest.total != opener.plaintext_bytes - 4 - frame_len:
        raise BundleFormatError(
            f"the bundle's manifest declares {manifest.total} bytes of members but it holds "
            f"{opener.plaintext_bytes - 4 - frame_len}"
        )
    free = shutil.disk_usage(into.parent).free
    if manifest.total + limits.reserve_free_bytes > free:
        raise BundleLimitExceeded(f"unpacking needs {manifest.total} bytes; {into.parent} has {free} free")
    with atomic_dir(into) as tmp:
        for member in manifest.members:
            target = tmp / member.path
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            digest = hashlib.sha256()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                for view in opener.read(member.size):
                    digest.update(view)
                    out.write(view)
            if digest.hexdigest() != member.sha256:
                raise BundleFormatError(f"member {member.path!r} does not match its sha256 in the manifest")
        if not opener.done:
            raise BundleFormatError("the bundle holds bytes its manifest does not account for")
        profile = _check_members(tmp, manifest)
        # The signature was checked on a first pass: the file must not have
        # been written to since (its ctime would have moved), or what was
        # decrypted is not what was verified.
        if not unchanged():
            raise BundleTampered("the bundle was modified while being read")
    paths = {m.path for m in manifest.members}
    adapters = sorted({into / "adapters" / p.split("/")[1] for p in paths if p.startswith("adapters/")})
    return BundleContents(
        folder=into,
        manifest=manifest,
        profile=profile,
        brain_export=into / BRAIN_MEMBER if BRAIN_MEMBER in paths else None,
        adapters=adapters,
        signer=h.signer,
        signer_fingerprint=_fingerprint(bytes.fromhex(h.signer)),
    )


def _check_members(folder: Path, manifest: Manifest) -> Profile | None:
    """The profile parses and names this persona; each adapter is a LoRA folder we can stack."""
    profile = None
    if (folder / PROFILE_MEMBER).exists():
        try:
            profile = Profile.model_validate_json((folder / PROFILE_MEMBER).read_bytes())
        except ValidationError as exc:
            raise BundleFormatError(f"the bundle's profile is not valid: {exc.errors()[0]['msg']}") from None
        if profile.id != manifest.persona_id:
            raise BundleFormatError(f"the bundle's profile is of {profile.id!r}, not {manifest.persona_id!r}")
    adapters = folder / "adapters"
    for sub in sorted(adapters.iterdir()) if adapters.exists() else []:
        try:
            check_lora_folder(sub)
        except InferenceError as exc:
            raise BundleFormatError(f"the bundle's adapter {sub.name}: {exc}") from None
    return profile

"""The keys and trust rules of persona bundles: what encrypts a bundle, what
signs it, and whose signature an import accepts.

Apart from bundle.py, which holds the byte format (header, manifest, sealed
chunks, signature) and reads and writes it: these classes are what callers
hold and pass in, load from or store in the state dir, and share with other
installations (public keys as 64 hex digits), and none of it depends on the
layout of the bytes. The key derivation and trust rules are specified in
docs/bundle.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..files import atomic_write, file_lock
from ..state import ensure_private_dir
from .errors import BundleInputError, BundleKeyError, UntrustedSigner

__all__ = [
    "DEFAULT_SCRYPT_LOG_N",
    "MAX_SCRYPT_LOG_N",
    "MIN_SCRYPT_LOG_N",
    "SIGNING_KEY_FILE",
    "TRUSTED_SIGNERS_FILE",
    "PassphraseKey",
    "RecipientKey",
    "RecipientPrivateKey",
    "SigningKey",
    "TrustPolicy",
    "signing_public_key",
]

KEY_CHECK_BYTES: Final = 16
#: scrypt N = 2**17, r = 8, p = 1: 128 MiB and about a second per try (bench/bundle.py).
DEFAULT_SCRYPT_LOG_N: Final = 17
MIN_SCRYPT_LOG_N: Final = 10
MAX_SCRYPT_LOG_N: Final = 20
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SIGNING_KEY_FILE: Final = "bundle-signing.key"
TRUSTED_SIGNERS_FILE: Final = "trusted-signers.json"

_INFO_KEYS = b"personad.bundle/1 keys"
_INFO_X25519 = b"personad.bundle/1 x25519"
_HEX32 = re.compile(r"^[0-9a-f]{64}$")


# -- keys ---------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class PassphraseKey:
    """A passphrase, stretched with scrypt (``log_n`` is the cost when writing;
    readers take the cost from the header, capped by ``BundleLimits.max_scrypt_log_n``).

    ``log_n`` below 15 is for tests only: it makes guessing cheap.
    """

    passphrase: str
    log_n: int = DEFAULT_SCRYPT_LOG_N

    def __post_init__(self) -> None:
        if not isinstance(self.passphrase, str) or not self.passphrase:
            raise BundleInputError("the bundle passphrase must be a non-empty string")
        if not isinstance(self.log_n, int) or not MIN_SCRYPT_LOG_N <= self.log_n <= MAX_SCRYPT_LOG_N:
            raise BundleInputError(f"scrypt log_n must be {MIN_SCRYPT_LOG_N}..{MAX_SCRYPT_LOG_N}")

    def __repr__(self) -> str:
        return f"PassphraseKey(log_n={self.log_n})"

    def master(self, salt: bytes, log_n: int) -> bytes:
        raw = unicodedata.normalize("NFC", self.passphrase).encode("utf-8")
        return Scrypt(salt=salt, length=32, n=1 << log_n, r=SCRYPT_R, p=SCRYPT_P).derive(raw)


@dataclass(frozen=True)
class RecipientKey:
    """A recipient's X25519 public key (32 bytes; shared as 64 hex digits)."""

    public: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.public, bytes) or len(self.public) != 32:
            raise BundleInputError("a recipient key is 32 bytes (64 hex digits)")

    @classmethod
    def from_hex(cls, text: str) -> RecipientKey:
        return cls(_unhex32(text, "recipient public key"))

    @property
    def hex(self) -> str:
        return self.public.hex()

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.public)


@dataclass(frozen=True, repr=False)
class RecipientPrivateKey:
    """The recipient's X25519 private key, which opens bundles written to its public key."""

    private: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.private, bytes) or len(self.private) != 32:
            raise BundleInputError("a recipient private key is 32 bytes (64 hex digits)")

    def __repr__(self) -> str:
        return f"RecipientPrivateKey(public={self.public_key().fingerprint})"

    @classmethod
    def generate(cls) -> RecipientPrivateKey:
        return cls(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_hex(cls, text: str) -> RecipientPrivateKey:
        return cls(_unhex32(text, "recipient private key"))

    def public_key(self) -> RecipientKey:
        return RecipientKey(X25519PrivateKey.from_private_bytes(self.private).public_key().public_bytes_raw())


@dataclass(frozen=True, repr=False)
class SigningKey:
    """An installation's Ed25519 bundle-signing key."""

    private: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.private, bytes) or len(self.private) != 32:
            raise BundleInputError("a signing key is 32 bytes")

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public_hex})"

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def load_or_create(cls, state_root: Path) -> SigningKey:
        """``<state>/secrets/bundle-signing.key``, created 0600 on first use.

        Created under a lock, so two processes exporting for the first time at
        once agree on one key. A key file that others may read, or that is not
        a regular file, is refused (never chmod-ed): it may have leaked.
        """
        secrets_dir = ensure_private_dir(ensure_private_dir(state_root) / "secrets")
        path = secrets_dir / SIGNING_KEY_FILE
        with file_lock(secrets_dir / f"{SIGNING_KEY_FILE}.lock"):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                key = cls.generate()
                atomic_write(path, key.private.hex().encode("ascii") + b"\n", mode=0o600)
                return key
            except OSError as exc:
                raise BundleKeyError(f"{path}: cannot open the signing key ({exc.strerror})") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
                    raise BundleKeyError(
                        f"{path}: must be a regular file of mode 0600 (is {stat.S_IMODE(st.st_mode):04o}); "
                        "if others could read it, make a new one and tell those who trust the old one"
                    )
                data = os.read(fd, 256)
            finally:
                os.close(fd)
        try:
            return cls(_unhex32(data.decode("ascii").strip(), "signing key"))
        except (UnicodeDecodeError, BundleInputError):
            raise BundleKeyError(f"{path}: not a signing key (want 64 hex digits)") from None

    @property
    def public_hex(self) -> str:
        """The public key to share with those who will import (64 hex digits)."""
        return Ed25519PrivateKey.from_private_bytes(self.private).public_key().public_bytes_raw().hex()

    @property
    def fingerprint(self) -> str:
        return _fingerprint(bytes.fromhex(self.public_hex))

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.private).sign(message)


def signing_public_key(state_root: Path) -> str:
    """This installation's bundle-signing public key, creating the key on first use."""
    return SigningKey.load_or_create(state_root).public_hex


def _unhex32(text: str, what: str) -> bytes:
    if not isinstance(text, str) or not _HEX32.fullmatch(text.strip().lower()):
        raise BundleInputError(f"a {what} is 64 hex digits")
    return bytes.fromhex(text.strip())


def _fingerprint(public: bytes) -> str:
    """A short, printable name of a public key: the first 16 bytes of its sha256, in hex."""
    return hashlib.sha256(public).hexdigest()[:32]


def _split_master(master: bytes) -> tuple[bytes, bytes]:
    """(payload key, key check) from a 32-byte master secret."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32 + KEY_CHECK_BYTES, salt=None, info=_INFO_KEYS)
    okm = hkdf.derive(master)
    return okm[:32], okm[32:]


def _x25519_master(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_INFO_X25519)
    return hkdf.derive(shared)


# -- trust --------------------------------------------------------------------


@dataclass(frozen=True)
class TrustPolicy:
    """Which signers an import accepts.

    ``keys``: public keys (hex) always trusted. ``tofu_file``: a
    trust-on-first-use list (``<state>/trusted-signers.json``) that pins, per
    persona id, the key of the first signer whose bundle of it was imported;
    later bundles of that persona must carry the same signer.
    """

    keys: frozenset[str] = frozenset()
    tofu_file: Path | None = None

    @classmethod
    def key(cls, public_hex: str) -> TrustPolicy:
        return cls(keys=frozenset({_unhex32(public_hex, "signer public key").hex()}))

    @classmethod
    def tofu(cls, state_root: Path, *, also: Iterable[str] = ()) -> TrustPolicy:
        keys = frozenset(_unhex32(k, "signer public key").hex() for k in also)
        return cls(keys=keys, tofu_file=state_root / TRUSTED_SIGNERS_FILE)

    def _pinned(self) -> dict[str, Any]:
        assert self.tofu_file is not None
        try:
            doc = json.loads(self.tofu_file.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise BundleKeyError(f"{self.tofu_file}: not a readable trust list ({exc})") from None
        personas = doc.get("personas") if isinstance(doc, dict) else None
        if not isinstance(personas, dict) or doc.get("format") != "personad.trusted-signers":
            raise BundleKeyError(f"{self.tofu_file}: not a personad trust list")
        return personas

    def check(self, public_hex: str, persona_id: str) -> bool:
        """Raise UntrustedSigner unless trusted; True if a TOFU pin is to be recorded."""
        if public_hex in self.keys:
            return False
        fp = _fingerprint(bytes.fromhex(public_hex))
        if self.tofu_file is None:
            raise UntrustedSigner(f"the bundle is signed by {fp} ({public_hex}), not by the trusted key")
        pinned = self._pinned().get(persona_id)
        if pinned is None:
            return True
        if not isinstance(pinned, dict) or pinned.get("public_key") != public_hex:
            raise UntrustedSigner(
                f"persona {persona_id!r} was first imported from a bundle signed by another key; "
                f"this one is signed by {fp} ({public_hex}); {self.tofu_file} lists who is trusted"
            )
        return False

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Held across an import, so that checking and recording a pin is one step."""
        if self.tofu_file is None:
            return contextlib.nullcontext()
        return file_lock(self.tofu_file.with_name(self.tofu_file.name + ".lock"))

    def record(self, public_hex: str, persona_id: str) -> None:
        """Pin ``persona_id`` to this signer (under :meth:`lock`); a pin, once made, stays."""
        assert self.tofu_file is not None
        personas = self._pinned()
        personas.setdefault(persona_id, {"public_key": public_hex, "first_seen": time.time()})
        doc = {"format": "personad.trusted-signers", "version": 1, "personas": personas}
        atomic_write(self.tofu_file, json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")

"""Ed25519 signatures over a plugin's folder, and the signing keys.

The signed message is a canonical digest of every file in the folder but
``signature.json`` itself: the sha256 of the text

    personad-plugin-v1\\n
    <sha256 hex>  <relative posix path>\\n   (one line per file, paths sorted)

so renaming, adding, removing or changing any file (the manifest included)
changes it. ``signature.json`` holds the signer's public key (64 hex
digits), the digest and the signature (128 hex digits). A folder holds only
regular files and directories: a symlink, a device or a fifo is refused, as
is a folder over :data:`MAX_FILES` files or :data:`MAX_TOTAL_BYTES`.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..files import atomic_write
from .errors import PluginError

__all__ = [
    "MAX_FILES",
    "MAX_TOTAL_BYTES",
    "SIGNATURE_FILE",
    "Signature",
    "folder_digest",
    "generate_key",
    "load_private_key",
    "public_key_hex",
    "read_signature",
    "sign_folder",
    "verify_folder",
]

SIGNATURE_FILE: Final = "signature.json"
DIGEST_HEADER: Final = b"personad-plugin-v1\n"
MAX_FILES: Final = 256
MAX_TOTAL_BYTES: Final = 16 * 1024 * 1024
PRIVATE_KEY_PREFIX: Final = "ed25519-private:"


@dataclass(frozen=True)
class Signature:
    key: str
    digest: str
    signature: str


def list_files(folder: Path) -> list[str]:
    """The folder's files as sorted relative posix paths (signature.json excluded).

    Raises PluginError(bad_folder) on anything but regular files and folders,
    or past the size limits.
    """
    if not folder.is_dir() or folder.is_symlink():
        raise PluginError("bad_folder", f"{folder} is not a folder")
    found: list[str] = []
    total = 0

    def unreadable(exc: OSError) -> None:
        raise PluginError("bad_folder", f"cannot read {exc.filename}: {exc.strerror}")

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        for name in [*dirs, *files]:
            path = Path(root) / name
            mode = path.lstat().st_mode
            rel = path.relative_to(folder).as_posix()
            if "\n" in rel or "\r" in rel:
                raise PluginError("bad_folder", f"{rel!r}: a file name with a line break")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise PluginError("bad_folder", f"{rel}: only regular files and folders are allowed")
            if rel == SIGNATURE_FILE or "__pycache__" in path.relative_to(folder).parts:
                # Byte-code caches are the interpreter's, not the author's;
                # the sandbox never writes them (read-only, -B).
                if rel != SIGNATURE_FILE:
                    raise PluginError("bad_folder", f"{rel}: remove __pycache__ folders before signing")
                continue
            found.append(rel)
            total += path.lstat().st_size
            if len(found) > MAX_FILES or total > MAX_TOTAL_BYTES:
                raise PluginError(
                    "bad_folder", f"over {MAX_FILES} files or {MAX_TOTAL_BYTES} bytes: not a plugin folder"
                )
    return sorted(found)


def folder_digest(folder: Path) -> str:
    """The canonical digest (hex) the signature covers."""
    lines = [DIGEST_HEADER]
    for rel in list_files(folder):
        file_hash = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
        lines.append(f"{file_hash}  {rel}\n".encode())
    return hashlib.sha256(b"".join(lines)).hexdigest()


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key from its 64 hex digits; ValueError otherwise."""
    text = text.strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError("a plugin signing key is 64 hex digits (the output of `personad plugin keygen`)")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))


def generate_key(path: Path) -> str:
    """Write a new private key to ``path`` (mode 0600, never over an existing file); its public key."""
    if path.exists():
        raise FileExistsError(f"{path} exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    atomic_write(path, f"{PRIVATE_KEY_PREFIX}{seed.hex()}\n".encode(), mode=0o600)
    return public_key_hex(key)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    text = path.read_text(encoding="utf-8").strip()
    if not text.startswith(PRIVATE_KEY_PREFIX) or len(text) != len(PRIVATE_KEY_PREFIX) + 64:
        raise ValueError(f"{path} is not a plugin signing key (made by `personad plugin keygen`)")
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text[len(PRIVATE_KEY_PREFIX) :]))


def sign_folder(folder: Path, key: Ed25519PrivateKey) -> Signature:
    """Sign the folder as it is now, writing ``signature.json`` into it."""
    digest = folder_digest(folder)
    signed = Signature(
        key=public_key_hex(key), digest=digest, signature=key.sign(bytes.fromhex(digest)).hex()
    )
    document = {"format": 1, "alg": "ed25519", **signed.__dict__}
    atomic_write(folder / SIGNATURE_FILE, (json.dumps(document, indent=2) + "\n").encode(), mode=0o644)
    return signed


def read_signature(folder: Path) -> Signature:
    path = folder / SIGNATURE_FILE
    if not path.is_file() or path.is_symlink():
        raise PluginError(
            "unsigned", f"{folder} has no {SIGNATURE_FILE}: sign it with `personad plugin sign`"
        )
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("format") != 1 or doc.get("alg") != "ed25519":
            raise ValueError("unknown format or algorithm")
        return Signature(key=str(doc["key"]), digest=str(doc["digest"]), signature=str(doc["signature"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PluginError("bad_signature", f"{SIGNATURE_FILE} is unreadable: {exc}") from None


def verify_folder(folder: Path, trusted: set[str]) -> Signature:
    """Check the folder's signature against its files and the trusted keys.

    Raises PluginError: unsigned, bad_signature, modified (the files no
    longer match the signed digest), untrusted (a valid signature by a key
    the operator has not trusted).
    """
    signed = read_signature(folder)
    try:
        public = parse_public_key(signed.key)
        public.verify(bytes.fromhex(signed.signature), bytes.fromhex(signed.digest))
    except (ValueError, InvalidSignature):
        raise PluginError("bad_signature", f"{SIGNATURE_FILE}: the signature does not verify") from None
    if folder_digest(folder) != signed.digest:
        raise PluginError("modified", f"{folder}: its files changed after it was signed")
    if signed.key not in trusted:
        raise PluginError(
            "untrusted", f"signed by {signed.key}, a key not trusted here (`personad plugin trust KEY`)"
        )
    return signed

"""Where a persona's brain key lives, and how it is created on first start.

The key is 32 random bytes used by SQLCipher as a raw key (no passphrase
derivation: the bytes already have full entropy). It is looked up in this
order, with no fallback from one to the next once a source is configured:

1. ``$CREDENTIALS_DIRECTORY/brain-key`` when that variable is set — a systemd
   credential (``LoadCredential=`` / ``LoadCredentialEncrypted=``). If the
   variable is set and the file is absent, that is an error: silently using
   another key would split the persona's memory in two.
2. ``<state_dir>/secrets/brain-<persona_id>.key`` otherwise, created with mode
   0600 in a 0700 folder on first start.

The key never sits in the persona's own folder ``<state_dir>/personas/<id>/``
beside ``brain.sqlite``: that folder is what gets copied, backed up or handed
over (``brain.export`` writes into it too), and a copy of it must not carry
the key that decrypts it, or the encryption would protect nothing. A key is
never created when a ``brain.sqlite`` already exists — that data would be
unreadable under the new key — and the key is never logged.

A key file holds either the 64 hex digits of the key (what we write; easy to
pass to ``systemd-creds encrypt``) or the 32 raw bytes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from ..ids import PERSONA_ID_RULE, is_persona_id
from .errors import InsecureKey, InvalidInput, MissingKey

__all__ = [
    "CREDENTIAL_NAME",
    "KEY_BYTES",
    "brain_path",
    "has_data",
    "key_path",
    "load_or_create_key",
    "validate_persona_id",
]

KEY_BYTES = 32
CREDENTIAL_NAME = "brain-key"

_HEX_KEY = re.compile(rb"[0-9a-fA-F]{64}")


def validate_persona_id(persona_id: str) -> str:
    """Return ``persona_id`` if it follows :mod:`daemon.ids`' rule, else raise InvalidInput.

    Persona ids become path components here (the brain's folder and key file).
    """
    if not is_persona_id(persona_id):
        raise InvalidInput("persona_id", f"must be {PERSONA_ID_RULE}")
    return persona_id


def brain_path(state_dir: Path, persona_id: str) -> Path:
    """The persona's database: ``<state_dir>/personas/<id>/brain.sqlite``."""
    return state_dir / "personas" / validate_persona_id(persona_id) / "brain.sqlite"


def key_path(state_dir: Path, persona_id: str) -> Path:
    """The key file used when no systemd credential is configured."""
    return state_dir / "secrets" / f"brain-{validate_persona_id(persona_id)}.key"


def load_or_create_key(
    state_dir: Path,
    persona_id: str,
    *,
    environ: Mapping[str, str] = os.environ,
) -> bytes:
    """Return the persona's 32-byte brain key, creating it on first start.

    Raises :class:`MissingKey` when a configured credential is absent or when
    the key file is gone but ``brain.sqlite`` exists, and
    :class:`InsecureKey` when the key file is malformed or readable by others.
    """
    database = brain_path(state_dir, persona_id)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        # systemd made this file for this service alone; its permissions are
        # systemd's business, so only the content is checked.
        path = Path(credentials) / CREDENTIAL_NAME
        try:
            return _parse_key(path, path.read_bytes())
        except FileNotFoundError:
            raise MissingKey(path, "CREDENTIALS_DIRECTORY is set but has no brain-key") from None

    path = key_path(state_dir, persona_id)
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    if has_data(database):
        raise MissingKey(
            path,
            f"{database} exists; restore its key instead (a new key would not open it)",
        )
    return _create_key_file(path)


def has_data(database: Path) -> bool:
    """Whether a brain holds anything: its file or its WAL is not empty (a zero-byte file holds nothing)."""
    # A zero-byte file holds nothing a new key could lose; any WAL does.
    for suffix in ("", "-wal"):
        try:
            if os.stat(f"{database}{suffix}").st_size > 0:
                return True
        except FileNotFoundError:
            continue
    return False


def _read_key_file(path: Path) -> bytes:
    _check_private(path.parent, want_dir=True)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _check_private_fd(path, fd)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(KEY_BYTES * 4)
    finally:
        os.close(fd)
    return _parse_key(path, data)


def _parse_key(path: Path, data: bytes) -> bytes:
    stripped = data.strip()
    if _HEX_KEY.fullmatch(stripped):
        return bytes.fromhex(stripped.decode("ascii"))
    if len(data) == KEY_BYTES:
        return data
    raise InsecureKey(path, f"expected {KEY_BYTES} raw bytes or {KEY_BYTES * 2} hex digits")


def _check_private(path: Path, *, want_dir: bool) -> None:
    st = os.lstat(path)
    if want_dir and not stat.S_ISDIR(st.st_mode):
        raise InsecureKey(path, "is not a directory")
    if st.st_mode & 0o077:
        raise InsecureKey(path, f"mode {stat.S_IMODE(st.st_mode):04o} lets others in; want 0700")


def _check_private_fd(path: Path, fd: int) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise InsecureKey(path, "is not a regular file")
    if st.st_mode & 0o077:
        raise InsecureKey(path, f"mode {stat.S_IMODE(st.st_mode):04o} lets others read; want 0600")


def _create_key_file(path: Path) -> bytes:
    secrets_dir = path.parent
    secrets_dir.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        secrets_dir.mkdir(mode=0o700)
    _check_private(secrets_dir, want_dir=True)

    key = secrets.token_bytes(KEY_BYTES)
    tmp = secrets_dir / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, key.hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() refuses to replace an existing file, so two daemons starting
        # at once cannot each create a key and overwrite the other's.
        os.link(tmp, path)
    except FileExistsError:
        return _read_key_file(path)
    finally:
        os.unlink(tmp)
    _fsync_dir(secrets_dir)
    return key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

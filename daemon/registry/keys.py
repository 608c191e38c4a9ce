"""Where the registry key lives, and where the registry's files are.

The same rules as a brain key (daemon/brain/keys.py, whose helpers this
reuses): 32 random bytes used by SQLCipher as a raw key, looked up in this
order with no fallback once a source is configured:

1. ``$CREDENTIALS_DIRECTORY/registry-key`` when that variable is set (a
   systemd credential); absent there is an error.
2. ``<state>/secrets/registry.key`` otherwise, 0600 in the 0700 secrets
   folder, created on first start, and never created when a
   ``registry.sqlite`` already exists (that data would be unreadable).

The key never sits beside the database (``<state>/registry/``), so a copy of
that folder does not carry what decrypts it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..brain.errors import MissingKey
from ..brain.keys import _create_key_file, _parse_key, _read_key_file, has_data

__all__ = [
    "CREDENTIAL_NAME",
    "KEY_FILE",
    "audit_path",
    "load_or_create_registry_key",
    "registry_dir",
    "registry_path",
]

CREDENTIAL_NAME = "registry-key"
KEY_FILE = "registry.key"


def registry_dir(state_dir: Path) -> Path:
    return state_dir / "registry"


def registry_path(state_dir: Path) -> Path:
    """The database: ``<state>/registry/registry.sqlite``."""
    return registry_dir(state_dir) / "registry.sqlite"


def generated_config_dir(state_dir: Path) -> Path:
    """Where ``personad up`` writes the config of a persona that has no TOML: ``<state>/registry/config``.

    Its ``personas/<id>.toml`` is written from the profile; persona.delete removes it.
    """
    return registry_dir(state_dir) / "config"


def audit_path(state_dir: Path) -> Path:
    """The audit log: ``<state>/registry/audit.log`` (its head beside it)."""
    return registry_dir(state_dir) / "audit.log"


def load_or_create_registry_key(state_dir: Path, *, environ: Mapping[str, str] = os.environ) -> bytes:
    """The registry's 32-byte key, created on first start (see the module's rules).

    Raises the brain's :class:`MissingKey` / :class:`InsecureKey`: the key
    rules are the same, and so are the operator's fixes.
    """
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        path = Path(credentials) / CREDENTIAL_NAME
        try:
            return _parse_key(path, path.read_bytes())
        except FileNotFoundError:
            raise MissingKey(path, f"CREDENTIALS_DIRECTORY is set but has no {CREDENTIAL_NAME}") from None
    path = state_dir / "secrets" / KEY_FILE
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    database = registry_path(state_dir)
    if has_data(database):
        raise MissingKey(path, f"{database} exists; restore its key instead (a new key would not open it)")
    return _create_key_file(path)

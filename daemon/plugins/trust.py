"""The operator's trusted plugin signing keys: ``<state>/plugins/trusted.json``.

One file per installation, shared by every persona under the state root
(they read it at each persona.plugin.add and at every run, so untrusting a
key disables the plugins it signed at once). Writes are atomic and under a
lock so two CLI calls never lose each other's change.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..files import atomic_write, file_lock
from ..state import ensure_private_dir
from .signing import parse_public_key

__all__ = ["TRUST_FILE", "TrustStore", "TrustedKey"]

TRUST_FILE: Final = "trusted.json"


@dataclass(frozen=True)
class TrustedKey:
    key: str
    name: str
    added_at: float


class TrustStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / TRUST_FILE

    @classmethod
    def for_state(cls, state_root: Path) -> TrustStore:
        return cls(state_root / "plugins")

    def entries(self) -> list[TrustedKey]:
        try:
            doc: Any = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return []
        return [TrustedKey(str(k["key"]), str(k.get("name", "")), float(k["added_at"])) for k in doc["keys"]]

    def keys(self) -> set[str]:
        return {k.key for k in self.entries()}

    def trust(self, key: str, name: str = "") -> bool:
        """Trust ``key`` (64 hex digits; ValueError otherwise). False if it already was."""
        key = key.strip().lower()
        parse_public_key(key)
        with self._locked():
            keys = self.entries()
            if any(k.key == key for k in keys):
                return False
            self._write([*keys, TrustedKey(key, name, time.time())])
        return True

    def untrust(self, key: str) -> bool:
        """Stop trusting ``key``. False if it was not trusted."""
        key = key.strip().lower()
        with self._locked():
            keys = self.entries()
            kept = [k for k in keys if k.key != key]
            if len(kept) == len(keys):
                return False
            self._write(kept)
        return True

    def _locked(self) -> Any:
        ensure_private_dir(self.folder)
        return file_lock(self.folder / (TRUST_FILE + ".lock"))

    def _write(self, keys: list[TrustedKey]) -> None:
        doc = {"keys": [k.__dict__ for k in keys]}
        atomic_write(self.path, (json.dumps(doc, indent=2) + "\n").encode(), mode=0o600)

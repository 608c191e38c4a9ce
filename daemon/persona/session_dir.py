"""A persona's private session directory, created in a strict order.

``<state>/personas/<id>/`` with ``artifacts/``, ``sessions/``, ``adapters/``
and ``plugins/``: every level mode 0700, a real directory (never a symlink),
owned by us. The order is fixed (state root, personas/, the persona, its
subfolders) and there is no fallback to a shared location: any failure stops
the daemon with an error naming the path. The persona's daemon writes nowhere
else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..state import ensure_private_dir

SUBDIRS = ("artifacts", "sessions", "adapters", "plugins")


@dataclass(frozen=True)
class SessionDir:
    root: Path

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def sessions(self) -> Path:
        return self.root / "sessions"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def plugins(self) -> Path:
        return self.root / "plugins"

    @property
    def brain(self) -> Path:
        return self.root / "brain.sqlite"


def prepare_session_dir(state_root: Path, persona_id: str) -> SessionDir:
    ensure_private_dir(state_root)
    ensure_private_dir(state_root / "personas")
    root = ensure_private_dir(state_root / "personas" / persona_id)
    for name in SUBDIRS:
        ensure_private_dir(root / name)
    return SessionDir(root)

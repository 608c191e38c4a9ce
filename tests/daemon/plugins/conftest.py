"""Plugins under test: a signing key, signed plugin folders, a persona serving them on a real bus."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.bus import Bus
from daemon.persona.daemon import PersonaDaemon
from daemon.plugins.signing import generate_key, load_private_key, sign_folder
from daemon.plugins.trust import TrustStore
from daemon.state import StateDir
from tests.daemon.persona.running import running_persona


@dataclass(frozen=True)
class SigningKey:
    path: Path
    public: str


@pytest.fixture
def signing_key(tmp_path: Path) -> SigningKey:
    path = tmp_path / "keys" / "plugin.key"
    path.parent.mkdir()
    return SigningKey(path, generate_key(path))


@pytest.fixture
def trusted_key(state: StateDir, signing_key: SigningKey) -> SigningKey:
    """The signing key, trusted in the state dir."""
    assert TrustStore.for_state(state.root).trust(signing_key.public, "tests")
    return signing_key


MakePlugin = Callable[..., Path]


@pytest.fixture
def make_plugin(tmp_path: Path, signing_key: SigningKey) -> MakePlugin:
    """Factory: a plugin folder with ``code`` as main.py, signed by ``signing_key`` unless sign=False."""

    def make(
        plugin_id: str,
        code: str,
        *,
        permissions: tuple[str, ...] = (),
        limits: dict[str, Any] | None = None,
        sign: bool = True,
        key: Path | None = None,
    ) -> Path:
        folder = tmp_path / "src" / plugin_id
        folder.mkdir(parents=True)
        manifest: dict[str, Any] = {
            "id": plugin_id,
            "name": plugin_id.title(),
            "version": "0.1.0",
            "entry": "main.py",
            "permissions": list(permissions),
        }
        if limits is not None:
            manifest["limits"] = limits
        (folder / "manifest.json").write_text(json.dumps(manifest))
        (folder / "main.py").write_text(textwrap.dedent(code))
        if sign:
            sign_folder(folder, load_private_key(key or signing_key.path))
        return folder

    return make


@pytest.fixture
async def persona(bus: Bus, state: StateDir) -> AsyncIterator[PersonaDaemon]:
    """Persona "ada" serving on the bus (its brain open, its plugins commands registered)."""
    async with running_persona(bus, state, "ada", description="A careful analyst.") as daemon:
        yield daemon

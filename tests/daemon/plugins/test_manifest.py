"""The manifest's rules, the risk of a permission set and the canonical digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.plugins.errors import PluginError
from daemon.plugins.manifest import PERMISSIONS, load_manifest, risk_of
from daemon.plugins.signing import folder_digest


def write(folder: Path, manifest: dict[str, object], files: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for name, text in (files or {"main.py": "pass\n"}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


BASE: dict[str, object] = {"id": "demo", "name": "Demo", "version": "1.2.3", "entry": "main.py"}


def test_risk_is_the_highest_of_the_permissions() -> None:
    assert "none" == risk_of([])
    assert "low" == risk_of(["chat"])
    assert "medium" == risk_of(["chat", "read_memories", "write_artifacts"])
    assert "high" == risk_of(["chat", "network"])
    assert {"low", "medium", "high"} == {risk for risk, _ in PERMISSIONS.values()}


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"entry": "../escape.py"}, "entry"),
        ({"entry": "/abs/main.py"}, "entry"),
        ({"entry": "main.sh"}, "entry"),
        ({"permissions": ["chat", "chat"]}, "permissions"),
        ({"permissions": ["sudo"]}, "permissions"),
        ({"limits": {"memory_mb": 100_000}}, "limits.memory_mb"),
        ({"limits": {"cpu_s": 0}}, "limits.cpu_s"),
        ({"version": "latest"}, "version"),
        ({"id": "UPPER"}, "id"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_manifest_names_its_field(tmp_path: Path, change: dict[str, object], where: str) -> None:
    folder = write(tmp_path / "p", {**BASE, **change})
    with pytest.raises(PluginError) as info:
        load_manifest(folder)
    assert "bad_manifest" == info.value.reason
    assert f"manifest.json: {where}" in str(info.value)


def test_the_entry_must_exist(tmp_path: Path) -> None:
    folder = write(tmp_path / "p", {**BASE, "entry": "other.py"})
    with pytest.raises(PluginError, match=r"entry: other\.py is not a file"):
        load_manifest(folder)


def test_the_digest_covers_every_file_and_its_path(tmp_path: Path) -> None:
    folder = write(tmp_path / "p", BASE, {"main.py": "pass\n", "lib/util.py": "X = 1\n"})
    first = folder_digest(folder)
    assert first == folder_digest(folder)
    (folder / "signature.json").write_text("{}")  # not covered: it holds the signature
    assert first == folder_digest(folder)
    (folder / "lib" / "util.py").rename(folder / "lib" / "util2.py")
    assert first != folder_digest(folder)
    (folder / "lib" / "util2.py").rename(folder / "lib" / "util.py")
    assert first == folder_digest(folder)
    (folder / "lib" / "util.py").write_text("X = 2\n")
    assert first != folder_digest(folder)

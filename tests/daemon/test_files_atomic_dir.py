"""daemon.files.atomic_dir: a folder appears whole or not at all (adapter store, model cache)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from daemon.files import atomic_dir


def test_the_folder_appears_only_when_the_block_completes(tmp_path: Path) -> None:
    """Inside the block nothing is at ``path``; after it, every file is there, the folder 0700."""
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"w" * 100)
        assert not target.exists()
        assert tmp.parent == tmp_path
    assert "{}" == (target / "config.json").read_text()
    assert b"w" * 100 == (target / "sub" / "weights.bin").read_bytes()
    assert 0o700 == stat.S_IMODE(target.stat().st_mode)
    assert ["model"] == os.listdir(tmp_path)


def test_an_error_leaves_nothing_behind(tmp_path: Path) -> None:
    """An exception inside the block removes the half-built folder and creates no ``path``."""
    target = tmp_path / "model"

    def build() -> None:
        with atomic_dir(target) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("half way")

    with pytest.raises(RuntimeError, match="half way"):
        build()
    assert [] == os.listdir(tmp_path)


def test_a_finished_folder_is_never_replaced(tmp_path: Path) -> None:
    """Another writer's complete folder stays as it is; the loser gets an error and leaves no temporary."""
    target = tmp_path / "objects" / "abc"
    target.mkdir(parents=True)
    (target / "adapter_model.safetensors").write_bytes(b"first")
    with pytest.raises(OSError, match="not empty"), atomic_dir(target, mode=0o750) as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(b"second")
    assert b"first" == (target / "adapter_model.safetensors").read_bytes()
    assert ["abc"] == os.listdir(target.parent)

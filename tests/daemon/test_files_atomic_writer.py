"""daemon.files.atomic_writer: the streaming atomic replacement the brain's export uses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from daemon.files import atomic_writer


def test_content_replaces_the_file_only_when_the_block_completes(tmp_path: Path) -> None:
    """Until the block ends the old file is intact; after it, the new content is there, 0600."""
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    with atomic_writer(target) as f:
        f.write(b"new ")
        assert b"old" == target.read_bytes()
        f.write(b"content")
    assert b"new content" == target.read_bytes()
    assert 0o600 == stat.S_IMODE(target.stat().st_mode)
    assert ["out.json"] == os.listdir(tmp_path)


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """An exception inside the block removes the temporary file and keeps the old content."""
    target = tmp_path / "out.json"
    target.write_bytes(b"old")

    def fail_halfway() -> None:
        with atomic_writer(target) as f:
            f.write(b"half of it")
            raise RuntimeError("the export failed")

    with pytest.raises(RuntimeError):
        fail_halfway()
    assert b"old" == target.read_bytes()
    assert ["out.json"] == os.listdir(tmp_path)

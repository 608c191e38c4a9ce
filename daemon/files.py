"""File primitives every subsystem shares: atomic replacement and an advisory lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write a file so readers see the old or the new content, never a mix."""
    with atomic_writer(path, mode=mode) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Stream a file's new content, replacing ``path`` only once all of it is on disk.

    The streaming form of :func:`atomic_write`, for content too large to hold
    in memory: write to the yielded file; leaving the block normally fsyncs
    it, renames it over ``path`` and fsyncs the folder; an exception removes
    the temporary file and leaves ``path`` as it was.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_path(path.parent, os.O_RDONLY | os.O_DIRECTORY)


def _fsync_path(path: Path | str, flags: int) -> None:
    """fsync a file or (with O_DIRECTORY) a folder, so a rename in it is durable."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: Path, *, mode: int = 0o700) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``path`` only once complete.

    Fill the yielded folder (a fresh sibling of ``path``, so the rename stays
    on one file system); leaving the block normally fsyncs every file and
    folder in it, sets its mode, renames it to ``path`` and fsyncs the
    parent. Readers see no folder or the whole one, never a half-written
    one, even after a crash. An exception removes the temporary folder.

    ``path`` must not exist (an empty folder is also replaced): rename(2)
    refuses to replace a folder that has content, so a finished folder some
    other writer put there first is never clobbered (OSError instead).
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp, topdown=False):
            for name in files:
                _fsync_path(os.path.join(root, name), os.O_RDONLY)
            _fsync_path(root, os.O_RDONLY | os.O_DIRECTORY)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_path(path.parent, os.O_RDONLY | os.O_DIRECTORY)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock(2) on ``path`` (created 0600): one writer across processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

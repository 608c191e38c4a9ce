"""Artifact names and writes on the persona side (daemon/persona/universal.py), and image headers."""

from __future__ import annotations

import os
import stat
import struct
import zlib

import pytest

from daemon.browser.images import ImageError, image_size
from daemon.persona.universal import sanitise_filename, save_new_file


@pytest.mark.parametrize(
    ("requested", "fmt", "expected"),
    [
        ("../../x.png", "png", "x.png"),
        ("/etc/passwd", "png", "passwd.png"),
        ("..\\..\\win.png", "png", "win.png"),
        ("a/b/../c.PNG", "png", "c.png"),
        ("shot.png", "jpeg", "shot.jpg"),
        ("report.pdf", "png", "report.pdf.png"),
        (".hidden", "png", "hidden.png"),
        ("..", "png", "default.png"),
        ("", "png", "default.png"),
        (None, "jpeg", "default.jpg"),
        ("x\x00y.png", "png", "x_y.png"),
        ("évian café.png", "png", "vian_caf.png"),
        ("..\uff0f..\uff0fetc\uff0fpasswd", "png", "passwd.png"),  # FULLWIDTH SOLIDUS is a slash after NFKC
        ("a" * 300 + ".png", "png", "a" * 100 + ".png"),
    ],
)
def test_sanitise_filename(requested: str | None, fmt: str, expected: str) -> None:
    """No directory part survives, no leading dot, only safe characters, the right extension."""
    assert expected == sanitise_filename(requested, fmt=fmt, default_stem="default")


def test_save_new_file_is_atomic_private_and_never_overwrites(tmp_path) -> None:
    """0600 files; a taken name gets -1, -2; no temporary file is left behind."""
    first = save_new_file(tmp_path, "x.png", b"one")
    second = save_new_file(tmp_path, "x.png", b"two")
    third = save_new_file(tmp_path, "x.png", b"three")
    assert ["x.png", "x-1.png", "x-2.png"] == [p.name for p in (first, second, third)]
    assert [b"one", b"two", b"three"] == [p.read_bytes() for p in (first, second, third)]
    assert {"x.png", "x-1.png", "x-2.png"} == set(os.listdir(tmp_path))
    assert 0o600 == stat.S_IMODE(first.stat().st_mode)


def test_a_planted_symlink_is_neither_followed_nor_replaced(tmp_path) -> None:
    """A symlink already named x.png (pointing outside) stays as it is; the write goes to x-1.png."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    shots = tmp_path / "shots"
    shots.mkdir()
    (shots / "x.png").symlink_to(outside)
    saved = save_new_file(shots, "x.png", b"png")
    assert ("x-1.png", b"precious") == (saved.name, outside.read_bytes())
    for bad in ("../x.png", ".x.png", "a/b.png", ""):
        with pytest.raises(ValueError, match="plain file name"):
            save_new_file(shots, bad, b"png")


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\x00" * 3 * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_image_size_reads_png_and_jpeg_headers() -> None:
    """Width and height from PNG's IHDR and JPEG's SOF; anything else is ImageError."""
    assert ("png", 3, 2) == image_size(png(3, 2))
    # SOI, an APP0 segment, then SOF0 with height 480 and width 640.
    jpeg = b"\xff\xd8" + b"\xff\xe0\x00\x04ab" + b"\xff\xc0\x00\x11\x08\x01\xe0\x02\x80" + b"\x00" * 12
    assert ("jpeg", 640, 480) == image_size(jpeg)
    for bad in (b"", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xd9"):
        with pytest.raises(ImageError):
            image_size(bad)

"""Image sizes from headers: enough of PNG and JPEG to check what we were sent.

Reading the header rather than decoding pixels keeps Pillow out of the
persona daemon; the numbers are what the file itself declares, which is what
a consumer of the file will see.
"""

from __future__ import annotations

import struct

from .errors import BrowserError

__all__ = ["ImageError", "image_size"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers that carry the size (ITU T.81 Table B.1): every
# SOFn except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


class ImageError(BrowserError):
    """Raised when bytes are not a PNG or JPEG whose size can be read."""


def image_size(data: bytes) -> tuple[str, int, int]:
    """``(format, width, height)`` of a PNG or JPEG. Raises ImageError."""
    if data.startswith(PNG_SIGNATURE):
        # PNG §5.3/§11.2.2: the first chunk is IHDR: length, type, width, height.
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError("PNG without an IHDR chunk")
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data.startswith(b"\xff\xd8"):
        return ("jpeg", *_jpeg_size(data))
    raise ImageError("neither PNG nor JPEG")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageError("JPEG marker expected")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise ImageError("JPEG without a start-of-frame segment")

"""Write v3_card.png from v3_card.json, without using daemon.registry.cards.

Run from the repository root: ``python tests/daemon/registry/cards/make_v3_png.py``.
It is written independently of the reader under test, straight from the PNG
spec (chunk = length, type, data, CRC-32 of type + data) and the Character
Card V3 spec ("Embedding Methods" / "PNG/APNG": the card as base64 of its
UTF-8 JSON in a tEXt chunk named ``ccv3``, and a V2 backfill in ``chara``
with the creator_notes warning and no decorators). The image is a 2x2 RGB
picture, with a tIME and a tEXt Software chunk that a card writer must keep.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
WARNING = (
    "This character card is Character Card V3, but it is loaded as a Character Card V2. "
    "Please use a Character Card V3 compatible application to use this character card properly."
)


def chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def text(keyword: str, card: dict[str, Any]) -> bytes:
    payload = base64.b64encode(json.dumps(card, ensure_ascii=False).encode("utf-8"))
    return chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + payload)


def backfill(card: dict[str, Any]) -> dict[str, Any]:
    v2: dict[str, Any] = json.loads(json.dumps(card))
    v2["spec"], v2["spec_version"] = "chara_card_v2", "2.0"
    v2["data"]["creator_notes"] = WARNING + "\n\n" + v2["data"]["creator_notes"]
    for entry in v2["data"]["character_book"]["entries"]:
        lines = [line for line in entry["content"].split("\n") if not line.startswith("@@")]
        entry["content"] = "\n".join(lines).strip("\n")
    return v2


def main() -> None:
    card = json.loads((HERE / "v3_card.json").read_text(encoding="utf-8"))
    pixels = b"".join(b"\x00" + row for row in (b"\xff\x00\x00\x00\xff\x00", b"\x00\x00\xff\xff\xff\xff"))
    png = b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)),
            chunk(b"tIME", struct.pack(">HBBBBB", 2026, 12, 1, 22, 0, 0)),
            chunk(b"tEXt", b"Software\0hand-made by make_v3_png.py"),
            chunk(b"IDAT", zlib.compress(pixels, 9)),
            text("ccv3", card),
            text("chara", backfill(card)),
            chunk(b"IEND", b""),
        ]
    )
    (HERE / "v3_card.png").write_bytes(png)


if __name__ == "__main__":
    main()

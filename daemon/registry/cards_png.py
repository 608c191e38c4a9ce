"""Character Cards in PNG files: the chunk codec, and reading and writing the
card chunks (``chara`` for V2, ``ccv3`` for V3).

Apart from cards.py, which holds the card models, their JSON and the mapping
onto a persona: this is the PNG spec's byte layer (chunk: length, type, data,
CRC-32), hand-written so that writing a card replaces only the card chunks
and keeps every other chunk byte-identical. It shares cards.py's limits
(:class:`~daemon.registry.cards.CardLimits`) and JSON checks, so a card read
from a PNG is held to the same bounds as one read from JSON. The round-trip
rules are in docs/cards.md.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from .cards import (
    DEFAULT_LIMITS,
    V3,
    Card,
    CardLimits,
    _check_shape,
    _loads,
    backfill_v2,
    card_from_obj,
    card_to_json,
    card_to_obj,
)
from .errors import CardPngError, CardTooLarge

__all__ = [
    "CCV3",
    "CHARA",
    "PNG_SIGNATURE",
    "Chunk",
    "minimal_png",
    "read_png_card",
    "read_png_chunks",
    "write_png_card",
]

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
#: Keywords of the card chunks: V2 writes ``chara`` (V1's "Chara"), V3 ``ccv3``.
CHARA: Final = "chara"
CCV3: Final = "ccv3"
_TEXT_TYPES: Final = (b"tEXt", b"iTXt", b"zTXt")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One PNG chunk; ``raw`` is its exact bytes (length, type, data, CRC) for rewriting."""

    type: bytes
    data: bytes
    raw: bytes

    def keyword(self) -> str | None:
        """The keyword of a text chunk (tEXt, iTXt, zTXt), else None."""
        if self.type not in _TEXT_TYPES:
            return None
        end = self.data.find(b"\0")
        return self.data[:end].decode("latin-1") if end > 0 else None


def read_png_chunks(png: bytes, *, limits: CardLimits = DEFAULT_LIMITS) -> tuple[list[Chunk], bytes]:
    """Every chunk of a PNG, CRCs checked, up to IEND; and whatever follows IEND."""
    if len(png) > limits.max_png_bytes:
        raise CardTooLarge(f"the PNG is {len(png)} bytes, over the limit of {limits.max_png_bytes}")
    if not png.startswith(PNG_SIGNATURE):
        raise CardPngError("not a PNG file (bad signature)")
    chunks: list[Chunk] = []
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(png):
            raise CardPngError(f"truncated PNG: chunk header at byte {pos} is cut off (no IEND)")
        length, ctype = struct.unpack_from(">I4s", png, pos)
        if length > 2**31 - 1:
            raise CardPngError(f"chunk at byte {pos} claims {length} bytes, over the PNG maximum")
        if length > limits.max_chunk_bytes:
            raise CardTooLarge(
                f"chunk {ctype!r} at byte {pos} is {length} bytes, over the limit of {limits.max_chunk_bytes}"
            )
        if not all(65 <= c <= 90 or 97 <= c <= 122 for c in ctype):
            raise CardPngError(f"chunk at byte {pos} has an invalid type {ctype!r}")
        end = pos + 12 + length
        if end > len(png):
            raise CardPngError(f"truncated PNG: chunk {ctype.decode()} at byte {pos} is cut off")
        data = png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", png, pos + 8 + length)
        if zlib.crc32(ctype + data) != crc:
            raise CardPngError(f"chunk {ctype.decode()} at byte {pos} has a bad CRC (corrupt or tampered)")
        if not chunks and ctype != b"IHDR":
            raise CardPngError(f"the first chunk is {ctype.decode()}, not IHDR")
        chunks.append(Chunk(ctype, data, png[pos:end]))
        pos = end
        if ctype == b"IEND":
            return chunks, png[pos:]


def _make_chunk(ctype: bytes, data: bytes) -> Chunk:
    raw = struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))
    return Chunk(ctype, data, raw)


def _is_card_chunk(chunk: Chunk) -> bool:
    keyword = chunk.keyword()
    return keyword is not None and keyword.lower() in (CHARA, CCV3)


def _decode_card_chunk(chunk: Chunk, limits: CardLimits) -> Card:
    keyword = chunk.keyword() or ""
    if chunk.type != b"tEXt":
        # Both specs embed the card "as a tEXt chunk"; we do not inflate zTXt/iTXt from strangers.
        raise CardPngError(f"the {keyword!r} card is in a {chunk.type.decode()} chunk; cards are tEXt")
    text = chunk.data[len(keyword) + 1 :].strip()
    if len(text) * 3 // 4 > limits.max_json_bytes:
        raise CardTooLarge(f"the {keyword!r} chunk holds over {limits.max_json_bytes} bytes of card")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CardPngError(f"the {keyword!r} chunk is not valid base64") from None
    return card_from_obj(_loads(raw, limits, f"the {keyword!r} chunk's card"))


def read_png_card(png: bytes, *, limits: CardLimits = DEFAULT_LIMITS) -> Card:
    """The card in a PNG: ``ccv3`` when present (V3 "PNG/APNG": "SHOULD use the ccv3 chunk"), else ``chara``.

    The ``chara`` chunk beside a ``ccv3`` one is a V2 backfill and is ignored
    ("The backfilled chara chunk SHOULD be trimmed on import"). Two chunks with
    the same card keyword are refused: which one a reader takes is not defined.
    """
    chunks, _ = read_png_chunks(png, limits=limits)
    found: dict[str, Chunk] = {}
    for chunk in chunks:
        keyword = chunk.keyword()
        if keyword is None or keyword.lower() not in (CHARA, CCV3):
            continue
        name = keyword.lower()
        if name in found:
            raise CardPngError(f"the PNG holds more than one {name!r} card chunk")
        found[name] = chunk
    if CCV3 in found:
        card = _decode_card_chunk(found[CCV3], limits)
        if card.spec != V3:
            raise CardPngError(f"the 'ccv3' chunk holds a {card.spec} card, not {V3}")
        return card
    if CHARA in found:
        return _decode_card_chunk(found[CHARA], limits)
    raise CardPngError("the PNG holds no character card (no 'chara' or 'ccv3' tEXt chunk)")


def _text_chunk(keyword: str, card: Card) -> Chunk:
    return _make_chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + base64.b64encode(card_to_json(card)))


def write_png_card(png: bytes, card: Card, *, limits: CardLimits = DEFAULT_LIMITS) -> bytes:
    """``png`` with ``card`` embedded; every other chunk kept byte-identical and in order.

    Existing card chunks (``chara``/``ccv3`` in any text chunk, any case) are
    removed, so no stale card is left for a reader to prefer. A V3 card is
    written as ``ccv3`` plus a ``chara`` V2 backfill (V3 "PNG/APNG": "MAY
    backfill", which keeps V2-only readers working); a V2 card as ``chara``.
    The new chunks go just before IEND.
    """
    chunks, trailer = read_png_chunks(png, limits=limits)
    # Never write a card our own reader (with the same limits) would refuse.
    _check_shape(card_to_obj(card), limits)
    if len(card_to_json(card)) > limits.max_json_bytes:
        raise CardTooLarge(f"the card's JSON would be over the limit of {limits.max_json_bytes} bytes")
    new = (
        [_text_chunk(CCV3, card), _text_chunk(CHARA, backfill_v2(card))]
        if card.spec == V3
        else [_text_chunk(CHARA, card)]
    )
    for chunk in new:
        if len(chunk.data) > limits.max_chunk_bytes:
            raise CardTooLarge(
                f"the card chunk would be {len(chunk.data)} bytes, over the limit of {limits.max_chunk_bytes}"
            )
    kept = [chunk.raw for chunk in chunks[:-1] if not _is_card_chunk(chunk)]
    return b"".join([PNG_SIGNATURE, *kept, *(c.raw for c in new), chunks[-1].raw, trailer])


def minimal_png() -> bytes:
    """A valid 1x1 transparent RGBA PNG, for exporting a persona that has no picture."""
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    idat = zlib.compress(b"\x00\x00\x00\x00\x00")
    parts = [_make_chunk(b"IHDR", ihdr), _make_chunk(b"IDAT", idat), _make_chunk(b"IEND", b"")]
    return PNG_SIGNATURE + b"".join(c.raw for c in parts)

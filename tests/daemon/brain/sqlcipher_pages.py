"""Decrypt a SQLCipher 4 file page by page, free pages included, for tests.

This is what lets a test say "the erased text is in no page of the file"
rather than "the file is encrypted" (which holds before erasing too). The
layout follows SQLCipher's design notes for version 4 defaults with a raw
key: 4096-byte pages, each ending in a reserve of a 16-byte IV and a 64-byte
HMAC-SHA512; AES-256-CBC over the rest; page 1 starts with the 16-byte salt,
kept in clear. With a raw key (``x'…'``) the key is the AES key itself.
"""

from __future__ import annotations

import struct
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

PAGE = 4096
RESERVE = 16 + 64
SALT = 16
WAL_HEADER = 32
FRAME_HEADER = 24


def decrypt_page(page: bytes, key: bytes, *, first: bool) -> bytes:
    """The plaintext of one encrypted page (page 1 without its salt)."""
    iv = page[PAGE - RESERVE : PAGE - RESERVE + 16]
    body = page[SALT if first else 0 : PAGE - RESERVE]
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return decryptor.update(body) + decryptor.finalize()


def plaintext_of_database(path: Path, key: bytes) -> bytes:
    """Every page of the database file, decrypted, concatenated."""
    data = path.read_bytes()
    assert len(data) % PAGE == 0, "not a whole number of pages"
    return b"".join(decrypt_page(data[i : i + PAGE], key, first=i == 0) for i in range(0, len(data), PAGE))


def plaintext_of_wal(path: Path, key: bytes) -> bytes:
    """Every frame of a WAL file, decrypted, concatenated (b"" when absent or empty)."""
    if not path.exists():
        return b""
    data = path.read_bytes()
    out = []
    offset = WAL_HEADER
    while offset + FRAME_HEADER + PAGE <= len(data):
        (page_number,) = struct.unpack(">I", data[offset : offset + 4])
        page = data[offset + FRAME_HEADER : offset + FRAME_HEADER + PAGE]
        out.append(decrypt_page(page, key, first=page_number == 1))
        offset += FRAME_HEADER + PAGE
    return b"".join(out)

"""Reading small binary WebSocket frames without websockets' parser.

websockets parses frames with generator-based coroutines: a few dozen Python
calls per frame, which on the bus was the largest part of relaying a small
message. When its parser waits at a frame boundary with nothing buffered,
:func:`read_frames` takes the complete, final, small binary frames the new
data starts with and hands their payloads on; everything from the first
other frame on (control frames, text, fragments, big or partial frames) is
returned for websockets, starting at a frame boundary, so websockets still
sees a valid stream and keeps doing its own checks and answers (pings,
close, size limits, masking rules). :func:`masked_binary_frame` is the
sending side's counterpart for clients.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from websockets.protocol import Protocol as WsProtocol
from websockets.protocol import State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets without its C extension
    from websockets.utils import apply_mask

__all__ = ["FrameSink", "masked_binary_frame", "read_frames"]

#: Where websockets' parser waits between frames.
_AT_EOF = StreamReader.at_eof.__code__
#: FIN set, no RSV bits, opcode 2 (binary).
_FINAL_BINARY = 0x82


class FrameSink(Protocol):
    """The connection: ``on_frame`` takes a payload (None: no fast path now)."""

    on_frame: Callable[[bytes], bool] | None


def at_frame_boundary(protocol: WsProtocol) -> bool:
    """Whether websockets' parser waits for a new frame, with nothing buffered and no fragment open."""
    if protocol.state is not State.OPEN or protocol.reader.buffer or protocol.current_size is not None:
        return False
    if protocol.extensions:
        return False
    # The parser delegates to generators (the handshake's, the frames', the
    # reader's): the innermost one says where it waits.
    waiting: Any = protocol.parser
    while waiting.gi_yieldfrom is not None:
        waiting = waiting.gi_yieldfrom
    return waiting.gi_code is _AT_EOF


def read_frames(sink: FrameSink, protocol: WsProtocol, data: bytes, limit: int, *, masked: bool) -> bytes:
    """Hand the small final binary frames ``data`` starts with to ``sink.on_frame``; return the rest.

    ``masked``: frames from a client (the bus reading) must be masked, frames
    from a server (a client reading) must not be (RFC 6455 §5.1); a frame
    that breaks the rule is left to websockets, which refuses it. Frames of
    ``limit`` bytes or more are left to websockets too; ``on_frame`` must
    take every frame under it (its answer is not looked at).
    """
    if not at_frame_boundary(protocol):
        return data
    if protocol.max_message_size is not None:
        limit = min(limit, protocol.max_message_size + 1)
    mask_bit = 0x80 if masked else 0
    key = 4 if masked else 0
    pos, end = 0, len(data)
    while end - pos >= 2 + key:
        handler = sink.on_frame
        if handler is None or data[pos] != _FINAL_BINARY:
            break
        size = data[pos + 1] ^ mask_bit  # with the wrong mask bit, 128 or more
        head = pos + 2
        if size == 126:
            if end - pos < 4 + key:
                break
            size = int.from_bytes(data[head : head + 2], "big")
            head += 2
        elif size > 126:  # a 64-bit length, or the wrong mask bit
            break
        start = head + key
        if size >= limit or start + size > end:
            break
        payload = data[start : start + size]
        if masked:
            payload = apply_mask(payload, data[head:start])
        pos = start + size
        handler(payload)
    return data[pos:] if pos else data


class _MaskKeys:
    """Masking keys (RFC 6455 §5.3: from a strong source of entropy), drawn from
    os.urandom 1,024 at a time rather than one getrandom() syscall per frame."""

    __slots__ = ("_keys", "_pos")

    def __init__(self) -> None:
        self._keys = b""
        self._pos = 0

    def next(self) -> bytes:
        pos = self._pos
        if pos >= len(self._keys):
            self._keys, pos = os.urandom(4096), 0
        self._pos = pos + 4
        return self._keys[pos : pos + 4]


_mask_keys = _MaskKeys()


def masked_binary_frame(payload: bytes) -> bytes:
    """A final, masked binary frame: what websockets' client sends, without its Frame object."""
    size = len(payload)
    if size < 126:
        head = bytes((_FINAL_BINARY, 0x80 | size))
    elif size < 65536:
        head = b"\x82\xfe" + size.to_bytes(2, "big")
    else:
        head = b"\x82\xff" + size.to_bytes(8, "big")
    key = _mask_keys.next()
    return head + key + apply_mask(payload, key)

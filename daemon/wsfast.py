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

The connection classes (the bus's, BusClient's) go one step further: a
complete binary frame that websockets did parse is handed on from its
``process_event`` too, instead of through websockets' queue, a future and
a wake-up of the reading task. Frames that must be queued (text, fragments,
big frames, and anything behind a queued frame, so that order is kept) go
through the queue to the reading task as before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.frames import DATA_OPCODES, Frame, Opcode
from websockets.protocol import Protocol as WsProtocol
from websockets.protocol import State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets without its C extension
    from websockets.utils import apply_mask

__all__ = [
    "FAST_FRAME_BYTES",
    "FastClientConnection",
    "FrameSink",
    "fast_server_connection",
    "masked_binary_frame",
    "read_frames",
    "set_on_frame",
    "swallow",
    "took",
    "write_pending",
]

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


# -- connection classes ------------------------------------------------------------------

#: Frames read past websockets' parser are smaller than this (bigger ones are
#: rare, and their decoding costs more than the parser anyway).
FAST_FRAME_BYTES = 128 * 1024

#: At most this many frames go out in one write() when a burst is queued.
#: Writing a whole burst at once makes the processes of a pipeline (caller,
#: bus, target) take turns: each holds the whole window of requests while
#: the others wait, and 64 requests in flight ran at 0.64x NATS' rate with
#: half of the two cores idle. A write every 16 frames lets the next process
#: start on them while this one frames the rest (1.0-1.1x), for a syscall
#: per 16 frames (bench/bus.py; 4, 8 and 32 did no better).
WRITE_EVERY_FRAMES = 16

FrameHandler = Callable[[bytes], bool]


def _fast_event(conn: Any, event: Any) -> bool:
    """``process_event``'s fast path: True when ``conn.on_frame`` took the event.

    ``on_frame`` returns False to leave a frame to websockets' queue.
    ``queued`` counts messages in the queue, or taken from it and not yet
    handled: while any is, frames are queued behind it, so that they are
    handled in the order they came.
    """
    if not isinstance(event, Frame):  # the opening handshake's request or response
        return False
    handler = conn.on_frame
    if (
        handler is not None
        and not conn.queued
        and event.fin
        and event.opcode is Opcode.BINARY
        and handler(event.data if type(event.data) is bytes else bytes(event.data))
    ):
        return True
    if event.fin and event.opcode in DATA_OPCODES:
        conn.queued += 1
    return False


def set_on_frame(ws: Any, handler: FrameHandler | None) -> None:
    """Start (a handler) or stop (None) handing frames to ``handler`` as they are read."""
    ws.on_frame = handler


def took(ws: Any) -> None:
    """A message from websockets' queue was handled (see _fast_event)."""
    ws.queued -= 1


def swallow(frame: bytes) -> bool:
    """An ``on_frame`` for a connection that is closing: what it sends is dropped."""
    return True


def fast_server_connection(
    base: type[ServerConnection], received: Callable[[bool], None]
) -> type[ServerConnection]:
    """``base`` (the bus's connection class) reading frames as described above, masked.

    ``received(True)`` and ``received(False)`` bracket the handling of each
    read, so that the frames it produced are written in one go at its end.
    """

    class FastServerConnection(base):  # type: ignore[valid-type,misc]
        on_frame: FrameHandler | None = None
        queued = 0
        fast_limit = FAST_FRAME_BYTES

        def data_received(self, data: bytes) -> None:
            received(True)
            try:
                if self.on_frame is not None and not self.queued:
                    data = read_frames(self, self.protocol, data, self.fast_limit, masked=True)
                if data:
                    super().data_received(data)
            finally:
                received(False)

        def process_event(self, event: Any) -> None:
            if not _fast_event(self, event):
                super().process_event(event)

    return FastServerConnection


class FastClientConnection(ClientConnection):
    """BusClient's connection: frames from the bus read as described above (unmasked),
    and frames written in one go per loop iteration when asked (``write_soon``)."""

    on_frame: FrameHandler | None = None
    queued = 0
    _write_scheduled = False

    def data_received(self, data: bytes) -> None:
        if self.on_frame is not None and not self.queued:
            data = read_frames(self, self.protocol, data, FAST_FRAME_BYTES, masked=False)
        if data:
            super().data_received(data)

    def process_event(self, event: Any) -> None:
        if not _fast_event(self, event):
            super().process_event(event)

    def write_soon(self) -> None:
        """Write what is framed at the end of this loop iteration."""
        if not self._write_scheduled:
            self._write_scheduled = True
            self.loop.call_soon(self._write_now)

    def _write_now(self) -> None:
        self._write_scheduled = False
        write_pending(self)


def write_pending(ws: ClientConnection) -> None:
    """Write everything framed so far, in one write() when possible."""
    if ws.transport.is_closing():
        return
    chunks = ws.protocol.data_to_send()
    if all(chunks):
        if chunks:
            ws.transport.write(b"".join(chunks))
        return
    # An empty chunk means "half-close after this", as in websockets' own writer.
    for chunk in chunks:
        if chunk:
            ws.transport.write(chunk)
        elif ws.transport.can_write_eof():
            with contextlib.suppress(Exception):  # as websockets: uvloop may raise RuntimeError
                ws.transport.write_eof()

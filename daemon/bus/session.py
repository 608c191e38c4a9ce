"""One authenticated connection and its bounded, non-blocking send path.

Every frame the bus sends goes through :meth:`Session.push`, which never
awaits: one slow client can never hold up routing for the others. Instead the
send buffer is capped. websockets' own ``send()`` would wait for the drain,
and its keepalive ping waits for the drain too, so a client that simply stops
reading would otherwise make the bus buffer without bound. Past
``max_send_buffer`` bytes queued, the client is dropped (transport aborted:
a close frame could not reach a peer that does not read). A buffer that does
not shrink for ``stall_timeout`` is dropped by the bus's sweeper as well.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State as WsState

from protocol import Codec, Connection, ProtocolError, Role

from ..tokens import TokenEntry
from ..wsfast import WRITE_EVERY_FRAMES
from .config import BusConfig
from .metrics import Metrics

log = logging.getLogger("personad.bus")


def binary_header(size: int) -> bytes:
    """The header of an unmasked, final binary WebSocket frame (RFC 6455 §5.2)."""
    if size < 126:
        return bytes((0x82, size))
    if size < 65536:
        return b"\x82\x7e" + size.to_bytes(2, "big")
    return b"\x82\x7f" + size.to_bytes(8, "big")


class SessionHost(Protocol):
    """What a session needs from the bus that owns it, and nothing more.

    The bus (server.py) satisfies it structurally; sessions and the router
    depend on this interface, never on server.py, so the dependencies run
    one way: server -> router -> session -> config/metrics.
    """

    config: BusConfig
    metrics: Metrics

    def schedule_flush(self, session: Session) -> None:
        """Call ``session.flush()`` at the end of this loop iteration."""


class Session:
    """A client of the bus, from hello to disconnect."""

    __slots__ = (
        "_flush_pending",
        "_stall_since",
        "_stall_size",
        "capabilities",
        "client_id",
        "closed",
        "codec",
        "conn",
        "connected_at",
        "host",
        "inbound",
        "kind",
        "outbound",
        "token",
        "ws",
    )

    def __init__(
        self, host: SessionHost, ws: ServerConnection, codec: Codec, token: TokenEntry | None
    ) -> None:
        self.host = host
        self.ws = ws
        self.codec = codec
        self.conn = Connection(Role.SERVER, codec, max_message_bytes=host.config.max_message_bytes)
        #: Set by header auth before hello, or by the hello's token.
        self.token = token
        self.client_id = ""
        self.kind = ""
        self.capabilities: tuple[str, ...] = ()
        self.connected_at = time.time()
        #: Requests this client sent that await an answer: its id -> bus id.
        self.outbound: dict[int | str, int] = {}
        #: Bus ids of requests this client must answer.
        self.inbound: set[int] = set()
        self.closed = False
        self._stall_size = 0
        self._stall_since: float | None = None
        self._flush_pending = False

    def __repr__(self) -> str:
        return f"<Session {self.client_id or 'unidentified'} {self.ws.remote_address}>"

    # -- sending -----------------------------------------------------------------

    def push(self, frame: bytes | str) -> bool:
        """Queue one frame without waiting. False when the client is gone or dropped."""
        if self.closed or self.ws.protocol.state is not WsState.OPEN:
            return False
        if self.ws.transport.get_write_buffer_size() > self.host.config.max_send_buffer:
            self.abort("slow_consumer")
            return False
        # Frame it now (websockets' sans-I/O protocol object), write it at the
        # end of this loop iteration together with every other frame queued
        # for this client meanwhile: one write() instead of one per frame,
        # which was a third of the bus's CPU at 64 requests in flight.
        if isinstance(frame, str):
            try:
                self.ws.protocol.send_text(frame.encode("utf-8"))
            except UnicodeEncodeError:  # the codec's door checks should make this unreachable
                log.error("unencodable text frame for %s dropped", self.client_id)
                return False
        else:
            protocol = self.ws.protocol
            if frame and not protocol.extensions and not protocol.debug:
                # What send_binary() queues, without building a Frame and
                # serializing it in Python (a server's frames are not masked,
                # and compression is off). One chunk, as websockets' own
                # writer makes one write() per chunk; a big payload is not
                # copied (flush() joins the chunks anyway).
                header = binary_header(len(frame))
                if len(frame) < 65536:
                    protocol.writes.append(header + frame)
                else:
                    protocol.writes += (header, frame)
            else:
                protocol.send_binary(frame)
        if len(self.ws.protocol.writes) >= WRITE_EVERY_FRAMES:
            self._write_out()  # the client starts on these while the rest are routed
        elif not self._flush_pending:
            self._flush_pending = True
            self.host.schedule_flush(self)
        metrics = self.host.metrics
        metrics.frames_out += 1
        metrics.bytes_out += len(frame)
        return True

    def send(self, wire: dict[str, Any]) -> bool:
        """Encode a wire dict with this client's codec and push it."""
        try:
            frame = self.conn.send_wire(wire)
        except ProtocolError as exc:
            log.error("cannot encode for %s: %s", self.client_id, exc.reason)
            return False
        if len(frame) > self.host.config.max_message_bytes:
            # Base64 makes bytes a third larger for JSON clients: a frame the
            # client would refuse (closing with 1009) is not sent at all.
            log.warning("not sending %d bytes to %s: over the message limit", len(frame), self.client_id)
            return False
        return self.push(frame)

    def writable(self) -> bool:
        """Whether a push would be accepted now (used to pre-filter fan-outs)."""
        if self.closed or self.ws.protocol.state is not WsState.OPEN:
            return False
        if self.ws.transport.get_write_buffer_size() > self.host.config.max_send_buffer:
            self.abort("slow_consumer")
            return False
        return True

    def flush(self) -> None:
        """Write every frame queued this iteration in one go."""
        self._flush_pending = False
        self._write_out()

    def _write_out(self) -> None:
        if self.closed or self.ws.transport.is_closing():
            return
        chunks = self.ws.protocol.data_to_send()
        if not chunks:
            return
        if all(chunks):
            self.ws.transport.write(b"".join(chunks))
        else:
            # An empty chunk means "half-close after this" (the closing
            # handshake); leave that to websockets' own writer.
            for chunk in chunks:
                if chunk:
                    self.ws.transport.write(chunk)
                elif self.ws.transport.can_write_eof():
                    self.ws.transport.write_eof()

    # -- dropping ------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Drop the connection now, without a closing handshake."""
        if self.closed:
            return
        self.closed = True
        self.host.metrics.closed[reason] += 1
        log.warning(
            "dropping client=%s reason=%s buffered=%d",
            self.client_id or "-",
            reason,
            self.ws.transport.get_write_buffer_size(),
        )
        self.ws.transport.abort()

    def check_stall(self, now: float) -> None:
        """Called periodically: drop the client if its buffer stopped draining."""
        size = self.ws.transport.get_write_buffer_size()
        if size == 0:
            self._stall_since = None
        elif self._stall_since is None or size < self._stall_size:
            self._stall_since = now
        elif now - self._stall_since > self.host.config.stall_timeout:
            self.abort("stalled")
        self._stall_size = size

"""The bus's settings, with named limits instead of magic numbers."""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass, field, replace

from protocol.codec import DEFAULT_MAX_MESSAGE_BYTES

log = logging.getLogger("personad.bus")

#: File descriptors the bus keeps beyond its clients' connections: the
#: listening socket, the event loop's, NATS, the token file, logs, threads.
FD_HEADROOM = 64


@dataclass(frozen=True, kw_only=True)
class BusConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    #: Allowed Origin headers; None stands for "no Origin" (daemons, the CLI).
    #: Browsers always send one, so only listed origins (the extension's
    #: pinned chrome-extension://<id>, a UI's origin) may connect from one.
    origins: tuple[str | None, ...] = field(default=(None,))
    #: Host headers answered, besides the defaults (the bind host, localhost,
    #: 127.0.0.1 and [::1]): ``name`` (any port) or ``name:port``; ``*``
    #: turns the check off. A page on evil.example whose name is rebound to
    #: 127.0.0.1 sends ``Host: evil.example``, so checking it stops DNS
    #: rebinding from reading /healthz, /metrics or opening a WebSocket.
    allowed_hosts: tuple[str, ...] = ()
    #: Serve /metrics without a bearer token (a token with the ``metrics``
    #: grant is needed otherwise).
    public_metrics: bool = False
    #: Join a cluster of bus nodes through this NATS server (docs/federation.md);
    #: None (the default): one bus on its own, and nats is never imported.
    nats_url: str | None = None
    #: This node's name in the cluster, unique there (a NATS subject token).
    node: str = "bus"

    # Timeouts
    hello_timeout: float = 10.0
    default_deadline_ms: int = 30_000
    max_deadline_ms: int = 3_600_000
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    #: A client whose send buffer does not shrink for this long is dropped.
    stall_timeout: float = 15.0
    #: On SIGTERM, how long clients get to finish their close handshake.
    shutdown_timeout: float = 5.0

    # Limits
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: The largest first frame (the hello) read before a client is
    #: authenticated. The largest valid hello is about 3 KiB; anything bigger
    #: is refused by websockets from the frame header (close 1009), before
    #: its payload is read, so an anonymous peer cannot make the bus buffer
    #: or decode megabytes. Raised to max_message_bytes once hello succeeds.
    max_hello_bytes: int = 16 * 1024
    #: Frames at least this big are decoded in a worker thread, so that the
    #: event loop keeps serving everyone else meanwhile (the GIL is handed
    #: over every few milliseconds).
    decode_in_thread_bytes: int = 128 * 1024
    #: Connections at once, WebSocket clients and HTTP door connections
    #: together; lowered at start when the open-files limit cannot hold them.
    max_connections: int = 10_000
    max_inflight_per_client: int = 256
    #: Bytes queued for one client beyond which it is dropped as a slow
    #: consumer. websockets' keepalive cannot catch a client that stops
    #: reading once its buffer passes write_limit (the ping waits for the
    #: drain), so this cap is what bounds the bus's memory per connection.
    max_send_buffer: int = 4 * 1024 * 1024
    #: Incoming frames websockets buffers before it stops reading the socket.
    max_queue: int = 32
    #: Invitations one room keeps (joined or not); more are OVERLOADED, so a
    #: member cannot grow a room's state, and every room answer, without bound.
    max_room_invitations: int = 256


def fit_to_fd_limit(config: BusConfig) -> BusConfig:
    """``config`` with a connection limit this process's file descriptors can hold.

    Each WebSocket client and each HTTP door connection is one descriptor,
    and together they are capped at ``max_connections``. The soft RLIMIT_NOFILE (1,024 under
    systemd unless LimitNOFILE says otherwise) is raised toward what that
    needs, up to the hard limit; if it still falls short, ``max_connections``
    is lowered so that a connection too many is answered 503 instead of the
    bus failing to accept, or to open a file, once descriptors run out.
    """
    need = config.max_connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return config
    raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = raised
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, raised, exc)
    if soft >= need:
        return config
    fitted = max(1, soft - FD_HEADROOM)
    log.warning(
        "open-files limit %d: accepting at most %d connections, not %d (raise LimitNOFILE / ulimit -n)",
        soft,
        fitted,
        config.max_connections,
    )
    return replace(config, max_connections=fitted)

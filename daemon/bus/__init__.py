"""The bus: one WebSocket server every participant joins.

``server.py`` accepts connections, checks Host and tokens, and runs the
handshake; ``session.py`` is one authenticated connection and its
non-blocking, bounded send path; ``offload.py`` decodes big frames off the
event loop; ``router.py`` routes requests and correlates replies;
``rooms.py`` serves the room methods (owners, invitations, room grants);
``pubsub.py`` holds topics and rooms; ``metrics.py`` renders /metrics
(served, with /healthz, by ``server.py`` on the WebSocket port).

Dependencies go one way: server -> router -> rooms -> session, each typed;
router and session see the server only through ``session.SessionHost``.
"""

from .config import BusConfig
from .server import Bus, run_bus

__all__ = ["Bus", "BusConfig", "run_bus"]

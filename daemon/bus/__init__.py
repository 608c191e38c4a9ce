"""The bus: one WebSocket server every participant joins.

``server.py`` accepts connections and runs the handshake; ``session.py`` is
one authenticated connection and its non-blocking, bounded send path;
``router.py`` routes requests and correlates replies; ``pubsub.py`` holds
topics and rooms; ``metrics.py`` renders /metrics (served, with /healthz, by
``server.py`` on the WebSocket port).
"""

from .config import BusConfig
from .server import Bus, run_bus

__all__ = ["Bus", "BusConfig", "run_bus"]

"""Which node holds each client, so that a node's death answers what was sent to it.

A request for a client on another node is published on that client's
subject and answered by the node holding it. If that node dies (SIGKILL, a
lost machine) nothing answers, and the caller used to wait for its deadline.
Every node hears every claim (``personad.claim.<id>``, which names the
claiming node and its boot id, new in each process) and every heartbeat
(``personad.nodes``, with the boot id too), so it knows which run of which
node holds a client, and when that run is gone: its heartbeats stop for
three beats, or the node is back with another boot id. Every request still
in flight to a client it held is then answered TARGET_OFFLINE at once.

Requests for ``cap:<name>`` are not tracked (any node may have taken one):
they end at their deadline, as before.
"""

from __future__ import annotations

from collections import OrderedDict

#: Clients remembered (the most recently claimed); one that fell out is not
#: tracked, and a request to it ends at its deadline as before.
MAX_HOLDERS = 65_536

#: A node's name and the boot id of one of its processes.
Holder = tuple[str, str]


class Holders:
    """Client id -> the run of the node holding it; request id -> the holder it was sent to."""

    def __init__(self, limit: int = MAX_HOLDERS) -> None:
        self._limit = limit
        self._of: OrderedDict[str, Holder] = OrderedDict()
        self._in_flight: dict[int, Holder] = {}

    def claimed(self, client_id: str, node: str, boot: str) -> None:
        self._of[client_id] = (node, boot)
        self._of.move_to_end(client_id)
        if len(self._of) > self._limit:
            self._of.popitem(last=False)

    def sent(self, bus_id: int, client_id: str) -> None:
        holder = self._of.get(client_id)
        if holder is not None:
            self._in_flight[bus_id] = holder

    def done(self, bus_id: int) -> None:
        self._in_flight.pop(bus_id, None)

    def lost(self, node: str, boot: str) -> list[int]:
        """That run of ``node`` is gone: forget its clients, return the requests in flight to them."""
        gone = (node, boot)
        ids = [bus_id for bus_id, holder in self._in_flight.items() if holder == gone]
        for bus_id in ids:
            del self._in_flight[bus_id]
        for client_id in [c for c, holder in self._of.items() if holder == gone]:
            del self._of[client_id]
        return ids

    def __len__(self) -> int:
        return len(self._of)

"""``bus.clients`` across the cluster: every node's clients, asked of every live node.

A node knows its peers from their heartbeats on ``personad.nodes`` (every
``HEARTBEAT_S``, at once to a node it had not heard of, and a goodbye when
it stops), so a gather knows how many answers to wait for: a node that has
not been heard from for three heartbeats (``3 * HEARTBEAT_S``) is dead and not waited for.
A heartbeat carries the node's boot id: a dead node, or one back with
another boot id, makes the federation answer what was in flight to its
clients (federation_holders.py).

``bus.clients`` on a federated node publishes its filters on
``personad.clients`` with a reply subject of its own, answers at once with
its own clients when it has no live peer, and otherwise when every live
peer has answered or ``GATHER_TIMEOUT_S`` has passed. A peer that did not
answer by then is named in the result's ``missing_nodes``, so a partial
list never passes for a whole one. Each client carries its ``node``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from pydantic import ValidationError

from protocol.commands import bus as bus_commands

from .federation_link import pack
from .session import Session

if TYPE_CHECKING:
    from .federation import Federation

log = logging.getLogger("personad.bus.federation")

HEARTBEAT_S = 2.0
#: How long a gather waits for a live peer's answer.
GATHER_TIMEOUT_S = 0.5
_NODES_SUBJECT = "personad.nodes"
_CLIENTS_SUBJECT = "personad.clients"


@dataclass(slots=True)
class _Gather:
    gid: int
    session: Session
    request_id: int | str
    clients: list[dict[str, Any]]
    waiting: set[str]
    timer: asyncio.TimerHandle | None = None
    answered: set[str] = field(default_factory=set)


class FederatedClients:
    """This node's side of the cluster-wide client list."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.node = fed.node
        #: Live peers: node name -> when last heard (monotonic).
        self.peers: dict[str, float] = {}
        #: Node name -> the boot id of its run last heard.
        self.boots: dict[str, str] = {}
        self._gathers: dict[int, _Gather] = {}
        self._ids = itertools.count(1)
        # With the node's run (boot id): gather ids start again at 1 after a restart.
        self._reply_prefix = f"personad.clientsreply.{self.node}.{fed.boot}."
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        nc = self.fed.link.nc
        await nc.subscribe(_NODES_SUBJECT, cb=self._on_heartbeat)
        await nc.subscribe(_CLIENTS_SUBJECT, cb=self._on_gather)
        await nc.subscribe(self._reply_prefix + ">", cb=self._on_answer)
        self.fed.router.defer("bus.clients", self.gather)
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat(), name="federation-heartbeat")

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        # Peers stop waiting for this node at once instead of after 3 heartbeats.
        self.fed.link.publish(_NODES_SUBJECT, {"node": self.node, "bye": True})
        for gather in list(self._gathers.values()):
            if gather.timer is not None:
                gather.timer.cancel()
        self._gathers.clear()

    # -- who is alive ------------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            self.fed.link.publish(_NODES_SUBJECT, {"node": self.node, "boot": self.fed.boot})
            self._expire()
            await asyncio.sleep(HEARTBEAT_S)

    async def _on_heartbeat(self, msg: Msg) -> None:
        data = self.fed.link.decode(msg)
        node = data.get("node") if data is not None else None
        if not isinstance(node, str) or node == self.node:
            return
        if data is not None and data.get("bye"):
            self.peers.pop(node, None)
            for gather in list(self._gathers.values()):
                self._heard(gather, node)
            return
        if node not in self.peers:
            # A newcomer learns of this node now, not at its next beat.
            self.fed.link.publish(_NODES_SUBJECT, {"node": self.node, "boot": self.fed.boot})
        self.peers[node] = time.monotonic()
        boot = data.get("boot") if data is not None else None
        if isinstance(boot, str):
            before = self.boots.get(node)
            self.boots[node] = boot
            if before is not None and before != boot:
                self.fed.node_lost(node, before)  # back from a crash faster than three beats

    def _expire(self) -> None:
        cutoff = time.monotonic() - 3 * HEARTBEAT_S
        for node in [n for n, seen in self.peers.items() if seen < cutoff]:
            del self.peers[node]
            boot = self.boots.pop(node, None)
            if boot is not None:
                log.warning("node %s: no heartbeat for %.0f s, taken as dead", node, 3 * HEARTBEAT_S)
                self.fed.node_lost(node, boot)

    def live_peers(self) -> set[str]:
        self._expire()
        return set(self.peers)

    # -- the asking node ---------------------------------------------------------------

    def gather(self, session: Session, request_id: int | str, params: Any) -> None:
        """Serve ``bus.clients``: this node's clients and every live peer's."""
        local = self.fed.router.local_clients(params, self.node)
        peers = self.live_peers()
        if not peers:
            self._answer(session, request_id, local, [])
            return
        gid = next(self._ids)
        gather = _Gather(gid, session, request_id, local, peers)
        gather.timer = asyncio.get_running_loop().call_later(GATHER_TIMEOUT_S, self._finish, gid)
        self._gathers[gid] = gather
        filters = {"kind": params.kind, "capability": params.capability}
        self.fed.link.publish(
            _CLIENTS_SUBJECT,
            {"node": self.node, "params": {k: v for k, v in filters.items() if v is not None}},
            reply=f"{self._reply_prefix}{gid}",
        )

    async def _on_answer(self, msg: Msg) -> None:
        try:
            gid = int(msg.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        gather = self._gathers.get(gid)
        data = self.fed.link.decode(msg)
        if gather is None or data is None:
            return
        node, clients = data.get("node"), data.get("clients")
        if not isinstance(node, str) or not isinstance(clients, list) or node in gather.answered:
            return
        gather.clients.extend(c for c in clients if isinstance(c, dict))
        gather.answered.add(node)
        self._heard(gather, node)

    def _heard(self, gather: _Gather, node: str) -> None:
        gather.waiting.discard(node)
        if not gather.waiting:
            self._finish(gather.gid)

    def _finish(self, gid: int) -> None:
        gather = self._gathers.pop(gid, None)
        if gather is None:
            return
        if gather.timer is not None:
            gather.timer.cancel()
        if gather.waiting:
            log.warning("bus.clients: no answer from node(s) %s", ", ".join(sorted(gather.waiting)))
        self._answer(gather.session, gather.request_id, gather.clients, sorted(gather.waiting))

    def _answer(self, session: Session, request_id: int | str, clients: list[dict[str, Any]],
                missing: list[str]) -> None:
        self.fed.host.metrics.requests["ok"] += 1
        result = {"clients": sorted(clients, key=lambda c: str(c.get("id"))), "missing_nodes": missing}
        session.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    # -- the answering node ------------------------------------------------------------

    async def _on_gather(self, msg: Msg) -> None:
        data = self.fed.link.decode(msg)
        if data is None or data.get("node") == self.node or not msg.reply:
            return
        try:
            params = bus_commands.ClientsParams.model_validate(data.get("params") or {})
        except ValidationError:
            log.warning("bus.clients from node %r with invalid filters", data.get("node"))
            return
        clients = self.fed.router.local_clients(params, self.node)
        try:
            payload = pack({"node": self.node, "clients": clients})
        except Exception as exc:  # a list over the NATS payload limit: the asker names this node missing
            log.error("cannot send this node's client list: %r", exc)
            return
        self.fed.link.send(msg.reply, payload)

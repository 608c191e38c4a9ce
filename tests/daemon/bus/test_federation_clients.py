"""bus.clients on a federated bus: every node's clients, and the nodes that did not answer.

The cluster (a real nats-server, bus nodes on 127.0.0.1) is test_federation.py's fixture.
"""

from __future__ import annotations

import nats

from daemon.bus.federation_link import pack
from tests.conftest import eventually
from tests.daemon.bus.test_federation import Cluster, cluster, echo, nats_url

#: The cluster fixture and the nats-server it runs on, shared with test_federation.py.
FIXTURES = (cluster, nats_url)


def peers_known(cluster: Cluster, *names: str) -> bool:
    """Whether every node has heard the others' heartbeats."""
    for name in names:
        fed = cluster.nodes[name].federation
        assert fed is not None
        assert fed.clients is not None
        if fed.clients.live_peers() != set(names) - {name}:
            return False
    return True


async def test_bus_clients_lists_every_node_s_clients_with_their_node(cluster: Cluster) -> None:
    """Asked on C, bus.clients lists clients on A, B and C, each with its node; filters apply everywhere."""
    for name in "abc":
        await cluster.node(name)
    await eventually(lambda: peers_known(cluster, "a", "b", "c"), what="the nodes know each other")
    await cluster.connect("a", kind="persona", name="alice", handler=echo)
    await cluster.connect("b", kind="service", name="gpu", capabilities=["inference"], handler=echo)
    carol = await cluster.connect("c", name="carol")
    await cluster.settled()

    result = await carol.call("bus.clients")
    nodes = {c["id"]: c["node"] for c in result["clients"]}
    assert {"persona:alice": "a", "service:gpu": "b", "cli:carol": "c"} == nodes
    assert [] == result["missing_nodes"]
    assert sorted(nodes) == [c["id"] for c in result["clients"]]

    personas = await carol.call("bus.clients", {"kind": "persona"})
    assert ["persona:alice"] == [c["id"] for c in personas["clients"]]
    providers = await carol.call("bus.clients", {"capability": "inference"})
    assert [("service:gpu", "b")] == [(c["id"], c["node"]) for c in providers["clients"]]


async def test_a_stopped_node_is_not_waited_for(cluster: Cluster) -> None:
    """A node that stops says goodbye: the next bus.clients neither waits for it nor names it."""
    await cluster.node("a")
    b = await cluster.node("b")
    await eventually(lambda: peers_known(cluster, "a", "b"), what="the nodes know each other")
    alice = await cluster.connect("a", name="alice")
    await b.close()
    await eventually(lambda: peers_known(cluster, "a"), what="A forgets B")
    result = await alice.call("bus.clients")
    # Had A still waited for B, B would be named missing after the timeout.
    assert (["cli:alice"], []) == ([c["id"] for c in result["clients"]], result["missing_nodes"])


async def test_a_node_that_does_not_answer_is_named(cluster: Cluster, nats_url: str) -> None:
    """A live node that never answers is named in missing_nodes after the timeout, beside the rest."""
    await cluster.node("a")
    alice = await cluster.connect("a", name="alice")
    # A "node" that beats but never answers: a plain NATS connection.
    ghost = await nats.connect(nats_url)
    try:
        await ghost.publish("personad.nodes", pack({"node": "ghost"}))
        await ghost.flush()
        fed = cluster.nodes["a"].federation
        assert fed is not None
        assert fed.clients is not None
        await eventually(lambda: "ghost" in fed.clients.live_peers(), what="A hears the ghost")
        result = await alice.call("bus.clients")
    finally:
        await ghost.close()
    assert ["ghost"] == result["missing_nodes"]
    assert ["cli:alice"] == [c["id"] for c in result["clients"]]

"""Buses federated over NATS, what the nodes share: tokens, events, rooms, and clients moving.

The cluster (a real nats-server, bus nodes on 127.0.0.1) is test_federation.py's fixture.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from daemon.client import BusClient
from daemon.state import StateDir
from protocol import CloseCode, ErrorCode, RpcError
from tests.conftest import eventually
from tests.daemon.bus.test_federation import Cluster, cluster, echo, free_port, nats_url

#: The cluster fixture and the nats-server it runs on, shared with test_federation.py.
FIXTURES = (cluster, nats_url)

# -- step 4: tokens and revocations shared by the nodes ----------------------------


def machine(tmp_path: Path, name: str) -> StateDir:
    sd = StateDir(tmp_path / name)
    sd.init()
    return sd


async def test_a_token_made_on_one_machine_works_on_every_node(cluster: Cluster, tmp_path: Path) -> None:
    """A token added to machine A's file is accepted by node B, whose own file never had it."""
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    await cluster.node("a", state=a)
    await cluster.node("b", state=b)
    token, _ = a.tokens().add(name="alice", role="persona", subject="persona:alice")
    # Node A publishes its file's changes on its next sweep (once a second).
    await eventually(lambda: cluster.nodes["b"].tokens.verify(token), what="B learns A's token")
    client = await cluster.connect("b", token=token, kind="persona", name="alice")
    assert "persona:alice" == client.client_id


async def test_a_token_is_shared_once_its_node_accepts_it(cluster: Cluster, tmp_path: Path) -> None:
    """A client whose token is a moment old, accepted on A, is known on B before A's next
    sweep: if A dies then, the client moves to B instead of being refused there for good."""
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    await cluster.node("a", state=a)
    await cluster.node("b", state=b)
    sweeper = cluster.nodes["a"]._sweeper
    assert sweeper is not None
    sweeper.cancel()  # A publishes no sweep from here on: only the accept can share the token
    token, _ = a.tokens().add(name="carol", role="persona", subject="persona:carol*")
    await cluster.connect("a", token=token, kind="persona", name="carol")
    await eventually(lambda: cluster.nodes["b"].tokens.verify(token), what="B learns the token A accepted")
    moved = await cluster.connect("b", token=token, kind="persona", name="carol2")
    assert "persona:carol2" == moved.client_id


async def test_a_revoked_token_is_closed_on_every_node(cluster: Cluster, tmp_path: Path) -> None:
    """Revoked on machine A, its connections on B and C are closed (4006) and new ones refused."""
    a, b, c = machine(tmp_path, "a"), machine(tmp_path, "b"), machine(tmp_path, "c")
    await cluster.node("a", state=a)
    await cluster.node("b", state=b)
    token, entry = a.tokens().add(name="bob", role="persona", subject="persona:bob*")
    await eventually(lambda: cluster.nodes["b"].tokens.verify(token), what="B learns A's token")
    # Machine C has a copy of A's file: the revocation still wins there.
    c.tokens().path.write_bytes(a.tokens().path.read_bytes())
    await cluster.node("c", state=c)
    on_b = await cluster.connect("b", token=token, kind="persona", name="bob1")
    on_c = await cluster.connect("c", token=token, kind="persona", name="bob2")
    links = [on_b._link, on_c._link]
    assert 1 == a.tokens().revoke(entry.id)
    for link in links:
        await eventually(lambda link=link: link.ws.close_code is not None, what="closed on its node")
        assert int(CloseCode.TOKEN_REVOKED) == link.ws.close_code
    assert cluster.nodes["b"].tokens.verify(token) is None
    assert cluster.nodes["c"].tokens.verify(token) is None


# -- step 5: events span nodes -----------------------------------------------------


async def test_events_reach_subscribers_on_every_node(cluster: Cluster) -> None:
    """An event published on A reaches the matching subscribers on B and C, and only them."""
    for node in ("a", "b", "c"):
        await cluster.node(node)
    got: dict[str, list] = {"b": [], "c": [], "other": []}
    on_b = await cluster.connect("b", on_notification=got["b"].append)
    on_c = await cluster.connect("c", on_notification=got["c"].append)
    other = await cluster.connect("c", on_notification=got["other"].append)
    await on_b.subscribe("registry.*")
    await on_c.subscribe("registry.persona")
    await other.subscribe("chat.*")
    publisher = await cluster.connect("a", name="pub")
    await publisher.publish("registry.persona", {"id": "alice"})
    await eventually(lambda: got["b"] and got["c"], what="both subscribers")
    for node in ("b", "c"):
        (event,) = got[node]
        assert {"topic": "registry.persona", "data": {"id": "alice"}, "publisher": "cli:pub"} == event.params
    await cluster.settled()
    assert [] == got["other"]


# -- step 6: clients move to another node when theirs dies --------------------------


async def test_a_dead_node_s_personas_move_to_another(cluster: Cluster) -> None:
    """Node A stops; its persona reconnects to B (the next URL it has) and answers again."""
    for node in ("a", "b", "c"):
        await cluster.node(node)
    persona = await cluster.connect(["a", "b"], kind="persona", name="alice", handler=echo, reconnect=True)
    assert persona.url == cluster.nodes["a"].url
    await cluster.settled()
    caller = await cluster.connect("c", name="carol")
    assert "cli:carol" == (await caller.call("persona.status", to="persona:alice"))["caller"]
    started = time.monotonic()
    await cluster.nodes["a"].close()

    meanwhile: list[int] = []

    async def answers() -> bool:
        try:
            await caller.call("persona.status", to="persona:alice", deadline_ms=1000)
        except RpcError as exc:
            meanwhile.append(exc.code)
            return False
        return True

    await eventually(answers, what="persona:alice answering from node B")
    # While it moved, the caller heard that it was offline (or, for a call that
    # reached node A as it went down, that its time ran out): nothing else.
    assert set(meanwhile) <= {ErrorCode.TARGET_OFFLINE, ErrorCode.TIMEOUT, ErrorCode.SHUTTING_DOWN}
    moved_after = time.monotonic() - started
    assert persona.url == cluster.nodes["b"].url
    assert 1 == persona.reconnects
    print(f"persona moved from node A to B and answered again after {moved_after * 1000:.0f} ms")


async def test_a_client_starts_on_the_first_node_that_answers(cluster: Cluster) -> None:
    """A URL list whose first node is down: the client connects to the next."""
    await cluster.node("b")
    dead = f"ws://127.0.0.1:{free_port()}"
    client = BusClient(f"{dead},{cluster.nodes['b'].url}", token=cluster.state.admin_token, kind="cli")  # type: ignore[attr-defined]
    await client.start()
    cluster.clients.append(client)
    assert cluster.nodes["b"].url == client.url
    assert (await client.call("bus.ping"))["time"] > 0


# -- step 5: rooms span nodes ------------------------------------------------------


async def test_a_room_spans_a_and_c(cluster: Cluster, state) -> None:
    """A room made on A: an invited client on C joins it, both hear each other, an uninvited one cannot."""
    await cluster.node("a")
    await cluster.node("c")
    tokens = state.tokens()
    heard: dict[str, list] = {"alice": [], "carol": []}
    alice_token, _ = tokens.add(name="alice", role="persona", subject="persona:alice")
    carol_token, _ = tokens.add(
        name="carol", role="persona", subject="persona:carol", extra_grants=("team.*@room:team",)
    )
    mallory_token, _ = tokens.add(name="mallory", role="persona", subject="persona:mallory")
    alice = await cluster.connect(
        "a", token=alice_token, kind="persona", name="alice", on_notification=heard["alice"].append
    )
    carol = await cluster.connect(
        "c", token=carol_token, kind="persona", name="carol", on_notification=heard["carol"].append
    )
    mallory = await cluster.connect("c", token=mallory_token, kind="persona", name="mallory")
    # Until C's subscription for carol reaches NATS, a notification for her is dropped.
    await cluster.settled()
    assert "persona:alice" == (await alice.call("bus.room.join", {"room": "team"}))["owner"]
    await alice.call("bus.room.invite", {"room": "team", "client": "persona:carol"})
    await cluster.settled()
    # The invitee on C hears of it, as a client on the room's home node would.
    await eventually(lambda: [n for n in heard["carol"] if n.method == "room.invited"], what="room.invited")
    (invited,) = [n.params for n in heard["carol"] if n.method == "room.invited"]
    assert {"room": "team", "by": "persona:alice"} == invited
    await eventually(
        lambda: cluster.nodes["c"].federation.rooms.homes.get("team") == "a", what="C learns the home"
    )

    joined = await carol.call("bus.room.join", {"room": "team"})
    assert ["persona:alice", "persona:carol"] == joined["members"]
    with pytest.raises(RpcError) as info:
        await mallory.call("bus.room.join", {"room": "team"})
    assert ErrorCode.FORBIDDEN == info.value.code

    await carol.call("bus.room.send", {"room": "team", "data": "hello from C"})
    await alice.call("bus.room.send", {"room": "team", "data": "hello from A"})

    def messages(name: str) -> list:
        return [n.params for n in heard[name] if n.method == "room.message"]

    await eventually(lambda: messages("alice") and messages("carol"), what="both messages")
    assert [{"room": "team", "sender": "persona:carol", "data": "hello from C"}] == messages("alice")
    assert [{"room": "team", "sender": "persona:alice", "data": "hello from A"}] == messages("carol")

    # A notification addressed to the room, from C, reaches the members on A.
    await carol.notify("team.note", {"n": 1}, to="room:team")
    await eventually(lambda: [n for n in heard["alice"] if n.method == "team.note"], what="the room note")
    (note,) = [n for n in heard["alice"] if n.method == "team.note"]
    assert ("persona:carol", "room:team", {"n": 1}) == (note.from_, note.to, note.params)

    await carol.close()
    await eventually(
        lambda: [m.client_id for m in cluster.nodes["a"].router.rooms.members("team")] == ["persona:alice"],
        what="A drops the member C lost",
    )


async def test_a_member_whose_node_died_leaves_when_it_says_hello_again(cluster: Cluster) -> None:
    """Carol's node C stops without telling A; when carol says hello on B, A drops her old membership."""
    await cluster.node("a")
    await cluster.node("b")
    await cluster.node("c")
    alice = await cluster.connect("a", kind="persona", name="alice")
    await alice.call("bus.room.join", {"room": "team"})
    await cluster.settled()
    carol = await cluster.connect("c", kind="persona", name="carol")
    joined = await carol.call("bus.room.join", {"room": "team"})
    assert ["persona:alice", "persona:carol"] == joined["members"]
    # Node C goes without a word to A: its NATS connection is cut before its clients leave.
    node_c = cluster.nodes["c"]
    assert node_c.federation is not None
    node_c.router.federation = None
    await node_c.federation.link.nc.close()
    await cluster.connect("b", kind="persona", name="carol")
    await eventually(
        lambda: [m.client_id for m in cluster.nodes["a"].router.rooms.members("team")] == ["persona:alice"],
        what="A drops the membership through C",
    )


async def test_a_room_whose_home_died_starts_again_elsewhere(cluster: Cluster) -> None:
    """Node A, a room's home, stops: the next join on C meets no responders and makes the room on C."""
    await cluster.node("a")
    await cluster.node("c")
    alice = await cluster.connect("a", kind="persona", name="alice")
    await alice.call("bus.room.join", {"room": "team"})
    await cluster.settled()
    await eventually(
        lambda: cluster.nodes["c"].federation.rooms.homes.get("team") == "a", what="C learns the home"
    )
    await alice.close()
    await cluster.nodes["a"].close()
    nc = cluster.nodes["c"].federation.link.nc

    async def nats_dropped_a() -> bool:
        # The NATS server learns of A's closed connection on its own time (under load, later
        # than C's next publish): until then a call to A's home subject is lost, not refused.
        try:
            await nc.request("personad.home.a", b"", timeout=0.5)
        except NoRespondersError:
            return True
        except NatsTimeoutError:
            return False
        return False

    await eventually(nats_dropped_a, what="the NATS server dropped node A")
    carol = await cluster.connect("c", kind="persona", name="carol")
    joined = await carol.call("bus.room.join", {"room": "team"})
    assert ("persona:carol", ["persona:carol"]) == (joined["owner"], joined["members"])
    rooms = cluster.nodes["c"].federation.rooms
    await eventually(lambda: rooms.homes.get("team") == "c", what="C is the room's home now")


async def test_a_room_call_in_flight_to_a_home_that_dies_is_answered_target_offline(cluster: Cluster) -> None:
    """B, a room's home, freezes with a call from A in flight (it neither answers nor beats,
    and its NATS connection stays open): once A takes B as dead (three missed heartbeats),
    the caller hears TARGET_OFFLINE, not TIMEOUT when the forwarded call's timer runs out."""
    await cluster.node("a")
    b = await cluster.node("b")
    alice = await cluster.connect("b", kind="persona", name="alice")
    await alice.call("bus.room.join", {"room": "team"})
    carol = await cluster.connect("a", kind="persona", name="carol")
    await cluster.settled()
    rooms = cluster.nodes["a"].federation.rooms
    await eventually(lambda: rooms.homes.get("team") == "b", what="A learns the home")
    # Frozen: B's home subscription swallows what it gets, and its heartbeat stops.
    assert b.federation is not None
    assert b.federation.clients is not None
    (home_sub,) = [s for s in b.federation.link.nc._subs.values() if s.subject == "personad.home.b"]

    async def swallow(msg: object) -> None:
        return None

    home_sub._cb = swallow
    b.federation.clients._heartbeat.cancel()
    with pytest.raises(RpcError) as info:
        await carol.call("bus.room.join", {"room": "team"}, deadline_ms=60_000)
    assert ErrorCode.TARGET_OFFLINE == info.value.code, info.value
    assert "its node b stopped answering" in info.value.message
    assert {} == rooms.calls


async def test_a_join_on_another_node_finds_a_room_made_a_moment_ago(cluster: Cluster) -> None:
    """The bucket is asked before a join makes a room: no second room of the same name on C."""
    await cluster.node("a")
    await cluster.node("c")
    alice = await cluster.connect("a", kind="persona", name="alice")
    carol = await cluster.connect("c", kind="persona", name="carol")
    await alice.call("bus.room.join", {"room": "fresh"})
    await cluster.settled()  # A's claim reached NATS; C may not have watched it yet
    joined = await carol.call("bus.room.join", {"room": "fresh"})
    assert ("persona:alice", ["persona:alice", "persona:carol"]) == (joined["owner"], joined["members"])

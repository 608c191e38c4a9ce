"""Downloading skills from several seeders: real peers, real stores, real faults, one real bus."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from daemon.client import BusClient
from daemon.inference.adapters import WEIGHTS_FILE
from daemon.inference.errors import AdapterNotFound
from daemon.mesh.manifest import parse_manifest, skill_id
from daemon.mesh.peer import PieceLimits
from protocol import ErrorCode, RpcError
from protocol.commands.skills import ANNOUNCED_TOPIC
from tests.conftest import WAIT, eventually

from .conftest import PIECE, Mesh


def _sha(path: Any) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _fetch(
    client: BusClient, node: str, sid: str, events: list[dict[str, Any]] | None = None, **kw: Any
) -> Any:
    async def on_progress(note: Any) -> None:
        if events is not None and note.method == "skill.progress":
            events.append(note.params)

    return await client.call(
        "skill.fetch", {"skill_id": sid, **kw}, to=node, deadline_ms=int(WAIT * 1000), on_progress=on_progress
    )


async def test_a_skill_moves_between_installations(mesh: Mesh, connect: Any) -> None:
    """One seeder, one fetcher, through the bus: the adapter lands in the fetcher's store, byte for byte."""
    a, b = mesh.installation("a"), mesh.installation("b")
    record = a.adapter("writer", seed=1)
    await mesh.start(a)
    await mesh.start(b)
    admin = await connect()
    announced = await admin.call(
        "skill.announce", {"skill": "writer", "piece_size": PIECE, "effectiveness": 0.8}, to=a.node
    )
    sid = announced["skill_id"]
    events: list[dict[str, Any]] = []
    result = await _fetch(admin, b.node, sid, events)
    assert result["installed"] is True
    assert result["seeders"] == {a.node: len(announced["manifest"]["piece_hashes"])}
    got = b.store.get("writer")
    assert got.sha256 == record.sha256
    assert _sha(got.path / WEIGHTS_FILE) == record.sha256
    assert got.meta["source"] == "mesh"
    assert got.meta["skill_id"] == sid
    assert [e["phase"] for e in events][-1] == "done"
    assert {"manifest", "pieces", "verify", "install"} <= {e["phase"] for e in events}
    # B now seeds it too, and a second fetch installs nothing.
    assert (await admin.call("skill.have", {"skill_id": sid}, to=b.node))["have"] is True
    again = await _fetch(admin, b.node, sid)
    assert again["installed"] is False
    assert again["bytes"] == 0


def _corrupt(path: Any) -> None:
    """Overwrite a store object's weights in place, same size: a damaged disk, not a missing file."""
    size = path.stat().st_size
    path.chmod(0o600)
    path.write_bytes(bytes((i * 7 + 3) % 251 for i in range(size)))


async def _seed_everywhere(
    mesh: Mesh, admin: BusClient, origin: Any, name: str, *others: Any
) -> dict[str, Any]:
    """``origin`` announces ``name``; each of ``others`` fetches it (so seeds the same manifest)."""
    announced = await admin.call("skill.announce", {"skill": name, "piece_size": PIECE}, to=origin.node)
    for inst in others:
        got = await _fetch(admin, inst.node, announced["skill_id"])
        assert got["installed"] is True
    return dict(announced)


async def test_a_seeder_serving_corrupt_pieces_is_banned_and_the_others_finish(
    mesh: Mesh, connect: Any
) -> None:
    """Three seeders, one whose store object was damaged after it announced: banned, download intact."""
    a, b, c, d = (mesh.installation(n) for n in "abcd")
    record = a.adapter("writer", seed=2)
    for inst in (a, b, c, d):
        await mesh.start(inst)
    admin = await connect()
    announced = await _seed_everywhere(mesh, admin, a, "writer", b, c)
    _corrupt(c.store.get("writer").path / WEIGHTS_FILE)
    total = len(announced["manifest"]["piece_hashes"])

    result = await _fetch(admin, d.node, announced["skill_id"], window=4)

    assert result["banned"] == [c.node]
    assert set(result["seeders"]) <= {a.node, b.node}
    assert sum(result["seeders"].values()) == total
    assert _sha(d.store.get("writer").path / WEIGHTS_FILE) == record.sha256


async def test_a_seeder_stopped_mid_transfer_leaves_the_others_to_finish(mesh: Mesh, connect: Any) -> None:
    """B goes away while pieces are still missing; A serves the rest."""
    a, b, f = (mesh.installation(n) for n in "abf")
    record = a.adapter("writer", seed=3)
    for inst in (a, b, f):
        await mesh.start(inst)
    admin = await connect()
    announced = await _seed_everywhere(mesh, admin, a, "writer", b)
    total = len(announced["manifest"]["piece_hashes"])
    # Both seeders now serve F at about 8 pieces a second after a burst of 4, so the
    # transfer is still under way when B is stopped (after its first pieces came in).
    slow = PieceLimits(rate_bytes_s=8 * PIECE, burst_pieces=4)
    for inst in (a, b):
        await mesh.stop(inst)
        await mesh.start(inst, limits=slow)
    events: list[dict[str, Any]] = []
    fetch = asyncio.create_task(_fetch(admin, f.node, announced["skill_id"], events, window=2))
    await eventually(lambda: any(e["phase"] == "pieces" and e["pieces_done"] >= 2 for e in events))
    at_stop = events[-1]["pieces_done"]
    await mesh.stop(b)
    result = await fetch

    assert at_stop < total
    assert result["installed"] is True
    assert sum(result["seeders"].values()) == total
    assert result["seeders"][a.node] > 0
    assert _sha(f.store.get("writer").path / WEIGHTS_FILE) == record.sha256


async def test_a_downloader_stopped_mid_transfer_resumes_from_its_pieces(mesh: Mesh, connect: Any) -> None:
    """F is stopped with some pieces on disk; restarted, it re-verifies them and fetches only the rest."""
    s, t, f = (mesh.installation(n) for n in "stf")
    record = s.adapter("writer", seed=4)
    for inst in (s, t, f):
        await mesh.start(inst)
    admin = await connect()
    announced = await _seed_everywhere(mesh, admin, s, "writer", t)
    sid, size = announced["skill_id"], announced["manifest"]["size"]
    # S now gives F its burst of 4 pieces and then, at 1 byte/s, nothing more; T is away.
    await mesh.stop(t)
    await mesh.stop(s)
    await mesh.start(s, limits=PieceLimits(rate_bytes_s=1, burst_pieces=4))
    events: list[dict[str, Any]] = []
    first = asyncio.create_task(_fetch(admin, f.node, sid, events))
    await eventually(lambda: any(e["pieces_done"] == 4 for e in events))
    await mesh.stop(f)
    with pytest.raises(RpcError):
        await first
    assert (f.state.root / "mesh" / "partial" / sid / "data").exists()

    await mesh.start(t)
    await mesh.start(f)
    result = await _fetch(admin, f.node, sid)

    assert result["resumed_pieces"] == 4
    assert result["bytes"] == size - 4 * PIECE
    assert set(result["seeders"]) == {t.node}
    assert _sha(f.store.get("writer").path / WEIGHTS_FILE) == record.sha256
    assert not (f.state.root / "mesh" / "partial" / sid).exists()


async def test_a_forged_manifest_is_refused_with_the_signature_named(
    mesh: Mesh, connect: Any, state: Any, bus: Any
) -> None:
    """A peer announces a manifest whose effectiveness it raised after signing: INVALID_PARAMS."""
    a, b = mesh.installation("a"), mesh.installation("b")
    a.adapter("writer", seed=5)
    await mesh.start(a)
    await mesh.start(b)
    admin = await connect()
    announced = await admin.call("skill.announce", {"skill": "writer", "piece_size": PIECE}, to=a.node)
    forged = {**announced["manifest"], "effectiveness": 0.99}
    forged_id = skill_id(parse_manifest(forged))
    evil_token = state.issue_token(name="mesh:evil", role="service", subject="mesh:evil").token
    evil = await connect(token=evil_token, kind="mesh", name="evil")
    await evil.publish(ANNOUNCED_TOPIC, forged)
    assert b.peer is not None
    await eventually(lambda: b.peer.catalogue.known(forged_id) is not None)

    with pytest.raises(RpcError) as refused:
        await _fetch(admin, b.node, forged_id)

    assert refused.value.code == ErrorCode.INVALID_PARAMS
    assert "not signed by its publisher" in refused.value.message
    assert refused.value.data == {"field": "skill_id"}
    with pytest.raises(AdapterNotFound):
        b.store.get("writer")


async def test_an_adapter_for_another_base_model_is_refused(mesh: Mesh, connect: Any) -> None:
    """A's adapter was trained on another model (its store meta says so): B names both models."""
    a, b = mesh.installation("a"), mesh.installation("b")
    a.adapter("writer", seed=6, base_model="Llama-3.2-1B")
    await mesh.start(a)
    await mesh.start(b)
    admin = await connect()
    announced = await admin.call("skill.announce", {"skill": "writer", "piece_size": PIECE}, to=a.node)
    assert announced["manifest"]["base_model_id"] == "Llama-3.2-1B"

    with pytest.raises(RpcError) as refused:
        await _fetch(admin, b.node, announced["skill_id"])

    assert refused.value.code == ErrorCode.INVALID_PARAMS
    assert "'Llama-3.2-1B'" in refused.value.message
    assert "'SmolLM2-135M-Instruct'" in refused.value.message


async def test_a_missing_parent_is_fetched_first(mesh: Mesh, connect: Any) -> None:
    """B has neither level; fetching the child installs the parent, then the child."""
    a, b = mesh.installation("a"), mesh.installation("b")
    parent = a.adapter("law", seed=7)
    child = a.adapter("law.patents", seed=8)
    await mesh.start(a)
    await mesh.start(b)
    admin = await connect()
    announced = await admin.call("skill.announce", {"skill": "law.patents", "piece_size": PIECE}, to=a.node)
    assert [p["name"] for p in announced["manifest"]["parents"]] == ["law"]
    events: list[dict[str, Any]] = []

    result = await _fetch(admin, b.node, announced["skill_id"], events)

    assert result["parents_fetched"] == ["law"]
    assert b.store.get("law").sha256 == parent.sha256
    assert b.store.get("law.patents").sha256 == child.sha256
    assert result["bytes"] == parent.bytes + child.bytes
    assert {e["skill"] for e in events if e["phase"] == "parents" and e["pieces_total"]} == {"law"}


async def test_a_parent_nobody_announced_where_the_fetcher_heard_is_missing(mesh: Mesh, connect: Any) -> None:
    """B joined after the parent was announced, and no tracker: "missing parent", nothing installed."""
    a, b = mesh.installation("a"), mesh.installation("b")
    a.adapter("law", seed=9)
    a.adapter("law.patents", seed=10)
    await mesh.start(a)
    admin = await connect()
    await admin.call("skill.announce", {"skill": "law", "piece_size": PIECE}, to=a.node)
    await mesh.start(b)
    announced = await admin.call("skill.announce", {"skill": "law.patents", "piece_size": PIECE}, to=a.node)

    with pytest.raises(RpcError) as refused:
        await _fetch(admin, b.node, announced["skill_id"], max_bytes=10**9)

    assert refused.value.code == ErrorCode.INVALID_PARAMS
    assert "missing parent 'law'" in refused.value.message
    assert b.store.names() == []


async def test_over_max_bytes_is_refused_before_any_download(mesh: Mesh, connect: Any) -> None:
    a, b = mesh.installation("a"), mesh.installation("b")
    a.adapter("writer", seed=11)
    await mesh.start(a)
    await mesh.start(b)
    admin = await connect()
    announced = await admin.call("skill.announce", {"skill": "writer", "piece_size": PIECE}, to=a.node)

    with pytest.raises(RpcError) as refused:
        await _fetch(admin, b.node, announced["skill_id"], max_bytes=announced["manifest"]["size"] - 1)

    assert refused.value.code == ErrorCode.INVALID_PARAMS
    assert refused.value.data == {"field": "max_bytes"}
    assert not (b.state.root / "mesh" / "partial" / announced["skill_id"]).exists()


async def test_two_fetches_of_one_skill_download_it_once(mesh: Mesh, connect: Any) -> None:
    a, b = mesh.installation("a"), mesh.installation("b")
    a.adapter("writer", seed=12)
    await mesh.start(a)
    await mesh.start(b)
    admin = await connect()
    announced = await admin.call("skill.announce", {"skill": "writer", "piece_size": PIECE}, to=a.node)

    one, two = await asyncio.gather(
        _fetch(admin, b.node, announced["skill_id"]), _fetch(admin, b.node, announced["skill_id"])
    )

    assert one == two
    assert one["installed"] is True
    held = await admin.call("skill.held", {}, to=a.node)
    assert held["skills"][0]["pieces_served"] == len(announced["manifest"]["piece_hashes"])


async def test_no_seeder_left_is_target_offline_with_the_missing_count(mesh: Mesh, connect: Any) -> None:
    a, b = mesh.installation("a"), mesh.installation("b")
    a.adapter("writer", seed=13)
    await mesh.start(a)
    await mesh.start(b)
    admin = await connect()
    announced = await admin.call("skill.announce", {"skill": "writer", "piece_size": PIECE}, to=a.node)
    await mesh.stop(a)

    with pytest.raises(RpcError) as offline:
        await _fetch(admin, b.node, announced["skill_id"])

    assert offline.value.code == ErrorCode.TARGET_OFFLINE
    assert offline.value.data == {"missing": len(announced["manifest"]["piece_hashes"])}


async def test_with_the_tracker_a_late_peer_finds_the_skill_and_its_parent(
    mesh: Mesh, connect: Any, state: Any, bus: Any
) -> None:
    """B joins after everything was announced: the tracker gives it both manifests and the seeders."""
    from daemon.mesh.tracker import SkillTracker, tracker_token

    stop = asyncio.Event()
    tracker = SkillTracker(url=bus.url, token=tracker_token(state), state=state)
    running = asyncio.create_task(tracker.run(stop))
    try:
        a, b = mesh.installation("a"), mesh.installation("b")
        a.adapter("law", seed=14)
        child = a.adapter("law.patents", seed=15)
        await mesh.start(a)
        admin = await connect()
        await eventually(
            lambda: any(s.client_id == "skills:tracker" for s in bus.router.topics.match(ANNOUNCED_TOPIC)),
            what="the tracker subscribed",
        )
        announced = await admin.call(
            "skill.announce", {"skill": "law.patents", "piece_size": PIECE}, to=a.node
        )

        async def tracked() -> bool:
            found = await admin.call("skill.manifest", {"skill_id": announced["skill_id"]}, to="cap:skills")
            return bool(found["manifests"])

        await eventually(tracked, what="the tracker has the manifest")
        await mesh.start(b)
        assert b.peer is not None
        assert b.peer.catalogue.known(announced["skill_id"]) is None  # it heard nothing

        result = await _fetch(admin, b.node, announced["skill_id"])

        assert result["parents_fetched"] == ["law"]
        assert b.store.get("law.patents").sha256 == child.sha256
        popular = await eventually(
            lambda: _popular_with(admin, announced["skill_id"]), what="the acquisition on the tracker"
        )
        assert popular["acquirers"] >= 1
    finally:
        stop.set()
        await running


async def _popular_with(admin: BusClient, sid: str) -> dict[str, Any] | None:
    ranked = await admin.call("skill.popular", {}, to="cap:skills")
    return next((e for e in ranked["skills"] if e["skill_id"] == sid and e["acquirers"]), None)


async def test_each_persona_that_takes_a_held_skill_is_demand(mesh: Mesh, connect: Any, state: Any) -> None:
    """A second persona of an installation whose store already holds the skill downloads nothing,
    but its acquisition is published (the tracker counts each acquirer once)."""
    from protocol.commands.skills import ACQUIRED_TOPIC

    a, b = mesh.installation("a"), mesh.installation("b")
    a.adapter("writer", seed=9)
    for persona_id in ("ada", "bea"):
        b.persona_folder(persona_id)
    await mesh.start(a)
    await mesh.start(b)
    admin = await connect()
    sid = (await admin.call("skill.announce", {"skill": "writer", "piece_size": PIECE}, to=a.node))[
        "skill_id"
    ]
    heard: list[dict[str, Any]] = []
    listener = await connect()
    listener.add_notification_listener(
        lambda note: heard.append(note.params) if note.params.get("topic") == ACQUIRED_TOPIC else None
    )
    await listener.subscribe(ACQUIRED_TOPIC)

    results = []
    for persona_id in ("ada", "bea"):
        who = f"persona:{persona_id}"
        issued = state.issue_token(name=who, role="persona", subject=who)
        persona = await connect(token=issued.token, kind="persona", name=persona_id)
        results.append(await _fetch(persona, b.node, sid))

    assert [r["installed"] for r in results] == [True, False]
    await eventually(lambda: len(heard) == 2)
    assert [(e["data"]["skill_id"], e["data"]["by"], e["publisher"]) for e in heard] == [
        (sid, "persona:ada", b.node),
        (sid, "persona:bea", b.node),
    ]


async def test_partial_downloads_untouched_for_a_week_are_swept_at_start(mesh: Mesh) -> None:
    """A fetch stopped and never asked for again does not keep its pieces for ever; a recent one stays."""
    import os
    import time

    from daemon.mesh.pieces import PARTIAL_MAX_AGE_S

    f = mesh.installation("f")
    partial = f.state.root / "mesh" / "partial"
    stale, recent = partial / ("a" * 64), partial / ("b" * 64)
    for folder in (stale, recent):
        folder.mkdir(parents=True)
        (folder / "data").write_bytes(b"\0" * PIECE)
    old = time.time() - PARTIAL_MAX_AGE_S - 3600
    os.utime(stale / "data", (old, old))
    os.utime(stale, (old, old))

    await mesh.start(f)

    assert not stale.exists()
    assert (recent / "data").exists()


_FULL_DISK_SCRIPT = """
import sys
from pathlib import Path
from daemon.mesh.pieces import Partial
from protocol import RpcError
from protocol.commands.skills import SkillManifest

size, piece = 1 << 20, 16 * 1024
manifest = SkillManifest.model_validate({
    "skill": "writer", "adapter_sha256": "a" * 64, "adapter_config": {}, "base_model_id": "m",
    "parents": [], "rank": 8, "size": size, "piece_size": piece, "piece_hashes": ["b" * 64] * (size // piece),
    "effectiveness": None, "usage_scenarios": [], "publisher": "c" * 64, "published_at": 0,
    "signature": "d" * 128,
})
folder = Path(sys.argv[1]) / "mesh" / "partial" / ("e" * 64)
try:
    Partial(folder, manifest).open()
except RpcError as exc:
    print(exc.message)
    print(exc.data["reason"], (folder / "data").exists())
"""


def test_a_download_that_cannot_fit_on_the_disk_says_so_and_leaves_nothing(tmp_path: Any) -> None:
    """On a real 64 KiB filesystem (a tmpfs in a user namespace), a 1 MiB skill fails at once, clearly."""
    import subprocess
    import sys

    from tests.conftest import REPO

    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "full.py"
    script.write_text(_FULL_DISK_SCRIPT)
    shell = f'mount -t tmpfs -o size=64k tmpfs "{mount}" && exec "{sys.executable}" "{script}" "{mount}"'
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    message, outcome = done.stdout.strip().splitlines()
    assert "the disk is full (nothing was downloaded)" in message
    assert "1048576 bytes of 'writer'" in message
    assert outcome == "disk_full False"


async def test_a_held_name_is_replaced_only_by_its_own_publishers_new_version(
    mesh: Mesh, connect: Any
) -> None:
    """Personas name their stacks: another publisher's 'writer' never overwrites the one held here,
    while the publisher of the held one may ship a new version."""
    a, b = mesh.installation("a"), mesh.installation("b")
    a.adapter("writer", seed=1)
    mine = b.adapter("writer", seed=2)  # made here
    await mesh.start(a)
    await mesh.start(b)
    admin = await connect()
    first = await admin.call("skill.announce", {"skill": "writer", "piece_size": PIECE}, to=a.node)

    with pytest.raises(RpcError) as refused:
        await _fetch(admin, b.node, first["skill_id"])
    assert refused.value.code == ErrorCode.INVALID_PARAMS
    assert "already holds another 'writer'" in refused.value.message
    assert "made here" in refused.value.message
    assert b.store.get("writer").sha256 == mine.sha256

    # Once B's own is gone, A's comes in; then A's next version replaces it.
    b.store.delete("writer")
    assert (await _fetch(admin, b.node, first["skill_id"]))["installed"] is True
    newer = a.adapter("writer", seed=3)
    second = await admin.call("skill.announce", {"skill": "writer", "piece_size": PIECE}, to=a.node)
    assert (await _fetch(admin, b.node, second["skill_id"]))["installed"] is True
    assert b.store.get("writer").sha256 == newer.sha256

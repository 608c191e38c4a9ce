"""persona.delete on a real bus: the registry, a real inference service and a real persona daemon.

The erasure is checked the way an auditor would: every byte of every file
left under the state dir is searched for the persona's memories and its
description (UTF-8 and UTF-16-LE), the other persona must be untouched, and
the audit log must verify and say nothing but ids and hashes.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.brain import Brain, load_or_create_key
from daemon.bus import Bus
from daemon.client import BusClient
from daemon.inference.adapters import AdapterRecord, AdapterStore
from daemon.persona.session_dir import prepare_session_dir
from daemon.registry.audit import verify
from daemon.registry.events import PUBLISHER, TOPIC
from daemon.registry.serve_erase import erase_files
from daemon.registry.service import import_configs
from daemon.state import StateDir
from protocol import ErrorCode, Notification, RpcError
from protocol.commands.persona_erase import PersonaEraseErrorCode
from tests.conftest import eventually
from tests.daemon.registry.conftest import RunningPersona, Serving

MARKER = "zq-marker-Erasure-7f3a91"
ADA_DESCRIPTION = "Ada keeps the ledger of the Vandermonde account"
BOB_MEMORY = "bob-keeps-this-memory-42"


async def call(client: Any, method: str, params: dict[str, Any], deadline_ms: int = 30_000) -> Any:
    return await client.call(method, params, to="cap:registry", deadline_ms=deadline_ms)


async def erase(client: Any, persona_id: str, deadline_ms: int = 30_000) -> Any:
    return await call(
        client, "persona.delete", {"persona_id": persona_id, "confirm": persona_id}, deadline_ms
    )


def profile(pid: str, description: str, stack: list[AdapterRecord], status: str = "active") -> dict[str, Any]:
    return {
        "id": pid,
        "name": pid.title(),
        "role": "assistant",
        "description": description,
        "status": status,
        "stack": [r.entry.model_dump() for r in stack],
    }


def files_holding(root: Path, needles: list[str]) -> list[str]:
    """Every file under ``root`` whose raw bytes contain a needle in UTF-8 or UTF-16-LE."""
    patterns = [n.encode(enc) for n in needles for enc in ("utf-8", "utf-16-le")]
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [str(path.relative_to(root)) for p in patterns if p in data]
    return found


def audit_entries(serving: Serving) -> list[dict[str, Any]]:
    return [json.loads(line) for line in serving.registry.audit.path.read_text().splitlines()]


@pytest.fixture
async def personas(bus: Bus, state: StateDir) -> AsyncIterator[Callable[[str, str], Any]]:
    started: list[RunningPersona] = []

    async def start(pid: str, description: str) -> RunningPersona:
        running = RunningPersona(bus, state, pid, description)
        await running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close()


@pytest.mark.usefixtures("inference")
async def test_erasure_leaves_no_trace_and_spares_the_other_persona(
    serving: Serving,
    connect: Callable[..., Any],
    personas: Callable[[str, str], Any],
    state: StateDir,
    store: AdapterStore,
    make_adapter: Any,
) -> None:
    shared = make_adapter("zoo", seed=1)
    own = make_adapter("zoo.ada", seed=2)
    bobs = make_adapter("zoo.bob", seed=3)
    admin = await connect(name="admin")
    inbox: list[Notification] = []
    watcher = await connect(name="watcher", on_notification=inbox.append)
    await watcher.subscribe(TOPIC)
    await call(admin, "persona.create", {"profile": profile("ada", ADA_DESCRIPTION, [shared, own])})
    await call(admin, "persona.create", {"profile": profile("bob", "Bob's own", [shared, bobs])})
    # What `personad up` writes for a registry-only persona (daemon/supervisor*.py).
    generated = state.root / "registry" / "config" / "personas"
    generated.mkdir(parents=True)
    (generated / "ada.toml").write_text(f'id = "ada"\nname = "Ada"\ndescription = "{ADA_DESCRIPTION}"\n')

    # Ada runs, remembers, exports her brain and saves an artifact, as the daemon does.
    ada = await personas("ada", ADA_DESCRIPTION)
    for i in range(3):
        await admin.call("memory.remember", {"content": f"{MARKER} fact {i}"}, to="persona:ada")
    export = await admin.call("brain.export", {}, to="persona:ada")
    assert MARKER in await asyncio.to_thread(Path(export["path"]).read_text, "utf-8")
    artifact = state.root / "personas" / "ada" / "artifacts" / "notes.txt"
    artifact.write_text(f"{MARKER} in an artifact", "utf-8")
    (state.root / "personas" / "ada" / "sessions" / "s1.json").write_bytes(MARKER.encode("utf-16-le"))
    await ada.close()
    # Bob's brain, which must survive.
    bob_dir = prepare_session_dir(state.root, "bob")
    async with await Brain.open(bob_dir.brain, load_or_create_key(state.root, "bob", environ={})) as brain:
        await brain.remember(BOB_MEMORY)
    bob_token = state.persona_token("bob", create=True)
    assert files_holding(state.root, [MARKER, ADA_DESCRIPTION])  # the plaintext is there before
    audit_before = len(audit_entries(serving))

    result = await erase(admin, "ada")

    assert "ada" == result["persona_id"]
    erased = result["erased"]
    for expected in (
        "personas/ada/brain.sqlite",
        "secrets/brain-ada.key",
        "registry/config/personas/ada.toml",
        "secrets/persona-ada.token",
        "registry profile",
    ):
        assert expected in erased, (expected, erased)
    assert any(item.startswith("personas/ada/ (") for item in erased)
    assert any(item.startswith("token persona:ada") for item in erased)
    # Adapters: the shared root stays (bob stacks on it), ada's own level is gone, weights and all.
    assert [{"name": "zoo.ada", "sha256": own.sha256, "blob_removed": True, "already_gone": False}] == result[
        "adapters_deleted"
    ]
    assert [("zoo", shared.sha256)] == [(a["name"], a["sha256"]) for a in result["adapters_kept"]]
    assert "bob" in result["adapters_kept"][0]["reason"]
    assert ["zoo", "zoo.bob"] == store.names()
    assert not own.path.exists()
    assert [] == result["warnings"]

    # No trace, in any file under the state dir (registry db and WAL, logs, tokens included).
    assert [] == files_holding(state.root, [MARKER, ADA_DESCRIPTION])
    # The registry zeroes freed cells, and its WAL (older page images) was checkpointed and cut to nothing.
    assert 1 == await serving.registry.run(lambda db: db.execute("PRAGMA secure_delete").fetchone()[0])
    wal = serving.registry.path.with_name(serving.registry.path.name + "-wal")
    assert not wal.exists() or 0 == wal.stat().st_size
    assert not (state.root / "personas" / "ada").exists()
    assert not (state.root / "secrets" / "brain-ada.key").exists()
    assert "persona:ada" not in {e.name for e in state.tokens().entries()}
    with pytest.raises(RpcError) as gone:
        await call(admin, "persona.get", {"persona_id": "ada"})
    assert ErrorCode.INVALID_PARAMS == gone.value.code

    # Bob is untouched: profile, brain, token, adapters.
    bob = (await call(admin, "persona.get", {"persona_id": "bob"}))["profile"]
    assert ("Bob's own", [shared.sha256, bobs.sha256]) == (
        bob["description"],
        [e["sha256"] for e in bob["stack"]],
    )
    async with await Brain.open(bob_dir.brain, load_or_create_key(state.root, "bob", environ={})) as brain:
        assert [BOB_MEMORY] == [hit.content for hit in await brain.recall(BOB_MEMORY)]
    assert state.tokens().verify(bob_token) is not None

    # The audit log verifies; its new entry holds the id and hashes only.
    assert verify(serving.registry.audit.path).ok
    entries = audit_entries(serving)[audit_before:]
    assert ["persona.delete"] == [e["action"] for e in entries]
    assert ("ada", admin.client_id) == (entries[0]["persona_id"], entries[0]["actor"])
    assert {"record_sha256", "adapters_deleted", "adapters_kept"} == set(entries[0]["details"])
    assert ([own.sha256], [shared.sha256]) == (
        entries[0]["details"]["adapters_deleted"],
        entries[0]["details"]["adapters_kept"],
    )
    await eventually(lambda: any(n.params["data"]["status"] == "deleted" for n in inbox), what="the event")  # type: ignore[index]
    event = next(n.params for n in inbox if n.params["data"]["status"] == "deleted")  # type: ignore[index]
    assert PUBLISHER == event["publisher"]
    assert {"persona_id": "ada", "status": "deleted", "action": "persona.delete", "start": False} == event[
        "data"
    ]

    # Again: the profile is gone, so the id names no persona.
    with pytest.raises(RpcError) as again:
        await erase(admin, "ada")
    assert (ErrorCode.INVALID_PARAMS, "persona_id") == (again.value.code, again.value.data["field"])


async def test_a_running_persona_is_not_erased_until_it_stops(
    serving: Serving, connect: Callable[..., Any], personas: Callable[[str, str], Any], state: StateDir
) -> None:
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": profile("ada", ADA_DESCRIPTION, [])})
    ada = await personas("ada", ADA_DESCRIPTION)
    await admin.call("memory.remember", {"content": MARKER}, to="persona:ada")
    inbox: list[Notification] = []
    watcher = await connect(name="watcher", on_notification=inbox.append)
    await watcher.subscribe(TOPIC)

    # Nobody follows the archive event here, so the daemon stays: a clear error, nothing erased.
    with pytest.raises(RpcError) as running:
        await erase(admin, "ada", deadline_ms=3_000)
    assert PersonaEraseErrorCode.PERSONA_RUNNING == running.value.code
    assert "systemctl stop personad@ada" in running.value.message
    assert "Nothing was erased" in running.value.message
    assert (state.root / "personas" / "ada" / "brain.sqlite").exists()
    assert (state.root / "secrets" / "brain-ada.key").exists()
    got = (await call(admin, "persona.get", {"persona_id": "ada"}))["profile"]
    assert ("archived", ADA_DESCRIPTION) == (got["status"], got["description"])
    await eventually(lambda: inbox, what="the archive event")
    assert {"persona_id": "ada", "status": "archived", "action": "persona.delete", "start": False} == (
        inbox[0].params["data"]  # type: ignore[index]
    )
    assert "persona:ada" in {c["id"] for c in (await admin.call("bus.clients", {}))["clients"]}

    # Once it has stopped (what `personad up` does on archive), the same call erases it.
    await ada.close()
    result = await erase(admin, "ada")
    assert "secrets/brain-ada.key" in result["erased"]
    assert not (state.root / "personas" / "ada").exists()
    assert [] == files_holding(state.root, [MARKER, ADA_DESCRIPTION])
    # Without cap:inference there was nothing to delete: the stack was empty.
    assert ([], []) == (result["adapters_deleted"], result["adapters_kept"])


async def test_adapters_are_kept_and_listed_when_inference_is_offline(
    serving: Serving, connect: Callable[..., Any], state: StateDir, store: AdapterStore, make_adapter: Any
) -> None:
    root = make_adapter("farm", seed=4)
    leaf = make_adapter("farm.ada", seed=5)
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": profile("ada", ADA_DESCRIPTION, [root, leaf])})
    result = await erase(admin, "ada")
    assert [] == result["adapters_deleted"]
    assert [("farm.ada", "offline"), ("farm", "offline")] == [
        (a["name"], "offline" if "offline" in a["reason"] else a["reason"]) for a in result["adapters_kept"]
    ]
    assert ["farm", "farm.ada"] == store.names()
    with pytest.raises(RpcError):
        await call(admin, "persona.get", {"persona_id": "ada"})


async def test_a_toml_persona_is_erased_with_a_warning(
    serving: Serving, connect: Callable[..., Any], state: StateDir, tmp_path: Path
) -> None:
    config_dir = tmp_path / "config"
    (config_dir / "personas").mkdir(parents=True)
    (config_dir / "personas" / "tom.toml").write_text('id = "tom"\nname = "Tom"\ndescription = "from toml"\n')
    assert {"tom": "created"} == await serving.registry.run(
        import_configs, serving.registry.audit, config_dir
    )
    admin = await connect(name="admin")
    result = await erase(admin, "tom")
    # It never ran here: nothing in personas/tom/, which the result says (it may have run elsewhere).
    never_ran, toml = result["warnings"]
    assert "no personas/tom/ in this state dir" in never_ran
    assert "personas/tom.toml" in toml
    assert "imports it again" in toml
    # The config-source row went with the profile: the next import creates it anew, as the warning says.
    assert {"tom": "created"} == await serving.registry.run(
        import_configs, serving.registry.audit, config_dir
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"persona_id": "ada", "confirm": "ad"}, "confirm"),
        ({"persona_id": "ada", "confirm": "ADA"}, "confirm"),
        ({"persona_id": "ada"}, "confirm"),
        ({"persona_id": "nobody", "confirm": "nobody"}, "persona_id"),
        ({"persona_id": "Bad Id", "confirm": "Bad Id"}, "persona_id"),
    ],
)
async def test_bad_params_name_the_field_and_change_nothing(
    serving: Serving, connect: Callable[..., Any], state: StateDir, params: dict[str, Any], field: str
) -> None:
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": profile("ada", ADA_DESCRIPTION, [])})
    key = load_or_create_key(state.root, "ada", environ={})
    prepare_session_dir(state.root, "ada")
    before = (await call(admin, "persona.get", {"persona_id": "ada"}), len(audit_entries(serving)))
    with pytest.raises(RpcError) as bad:
        await call(admin, "persona.delete", params)
    assert ErrorCode.INVALID_PARAMS == bad.value.code
    assert bad.value.message.startswith(f"invalid params: {field}:")
    assert before == (await call(admin, "persona.get", {"persona_id": "ada"}), len(audit_entries(serving)))
    assert key == load_or_create_key(state.root, "ada", environ={})
    assert (state.root / "personas" / "ada").is_dir()


async def test_personas_and_observers_are_forbidden(
    serving: Serving, bus: Bus, connect: Callable[..., Any], state: StateDir
) -> None:
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": profile("ada", ADA_DESCRIPTION, [])})
    await call(admin, "persona.create", {"profile": profile("bob", "Bob", [])})
    clients = {
        "persona": BusClient(
            bus.url, token=state.persona_token("bob", create=True), kind="persona", name="bob"
        ),
        "observer": BusClient(
            bus.url,
            token=state.issue_token(name="watch", role="observer", subject="cli:*").token,
            kind="cli",
            name="watch",
        ),
    }
    before = len(audit_entries(serving))
    for role, client in clients.items():
        await client.start()
        try:
            for target in ("ada", "bob"):
                with pytest.raises(RpcError) as refused:
                    await erase(client, target)
                assert ErrorCode.FORBIDDEN == refused.value.code, role
        finally:
            await client.close()
    assert before == len(audit_entries(serving))
    assert (
        ADA_DESCRIPTION == (await call(admin, "persona.get", {"persona_id": "ada"}))["profile"]["description"]
    )


async def test_a_retry_after_an_interrupted_erasure_finishes_it(
    serving: Serving, connect: Callable[..., Any], state: StateDir
) -> None:
    """Files first, profile last: an attempt that stopped after the files leaves the profile to retry on."""
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": profile("ada", ADA_DESCRIPTION, [])})
    folder = prepare_session_dir(state.root, "ada")
    async with await Brain.open(folder.brain, load_or_create_key(state.root, "ada", environ={})) as brain:
        await brain.remember(MARKER)
    first = await asyncio.to_thread(erase_files, state.root, "ada")  # the interrupted attempt got this far
    assert "secrets/brain-ada.key" in first.erased
    assert "ada" == (await call(admin, "persona.get", {"persona_id": "ada"}))["profile"]["id"]
    result = await erase(admin, "ada")
    assert ["registry profile"] == result["erased"]  # nothing else was left
    assert [] == files_holding(state.root, [MARKER, ADA_DESCRIPTION])
    assert verify(serving.registry.audit.path).ok


async def test_links_in_the_folder_are_removed_never_followed(
    serving: Serving, connect: Callable[..., Any], state: StateDir, tmp_path: Path
) -> None:
    """A symlink or a hard link in the persona's folder loses its name; what it points to keeps its bytes."""
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": profile("ada", ADA_DESCRIPTION, [])})
    folder = prepare_session_dir(state.root, "ada")
    outside = tmp_path / "outside.txt"
    outside.write_text("not the persona's")
    (folder.artifacts / "soft").symlink_to(outside)
    (folder.sessions / "hard").hardlink_to(state.tokens_path)
    (folder.root / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    tokens = state.tokens_path.read_bytes()
    result = await erase(admin, "ada")
    assert "personas/ada/ (3 files)" in result["erased"]
    assert not folder.root.exists()
    assert "not the persona's" == outside.read_text()
    assert tokens == state.tokens_path.read_bytes()
    assert outside.exists()


async def test_a_folder_the_registry_cannot_clear_fails_before_anything_changes(
    serving: Serving, connect: Callable[..., Any], state: StateDir
) -> None:
    """A file it could not remove (another user's, a read-only folder) is named up front; nothing erased."""
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": profile("ada", ADA_DESCRIPTION, [])})
    folder = prepare_session_dir(state.root, "ada")
    key = load_or_create_key(state.root, "ada", environ={})
    blocker = folder.sessions / "theirs.json"
    blocker.write_text(MARKER)
    if os.getuid() == 0:  # root may write anywhere: make the file another user's instead
        os.chown(blocker, 65534, 65534)
        where = str(blocker)
    else:
        folder.sessions.chmod(0o500)
        where = str(folder.sessions)
    before = (await call(admin, "persona.get", {"persona_id": "ada"}), len(audit_entries(serving)))
    try:
        with pytest.raises(RpcError) as blocked:
            await erase(admin, "ada")
    finally:
        folder.sessions.chmod(0o700)
    assert ErrorCode.INTERNAL_ERROR == blocked.value.code
    assert where in blocked.value.message
    assert "nothing was erased" in blocked.value.message
    assert before == (await call(admin, "persona.get", {"persona_id": "ada"}), len(audit_entries(serving)))
    assert key == load_or_create_key(state.root, "ada", environ={})
    assert MARKER == blocker.read_text()
    # Once the operator has dealt with it, the same call erases.
    blocker.unlink()
    assert "secrets/brain-ada.key" in (await erase(admin, "ada"))["erased"]

"""adapter.delete: the store's delete, and the service's, on a real bus with the tiny model loaded.

What must hold: a name goes, its weights go only when no other name holds
them, a parent with children and an adapter pinned by a caller still on the
bus are refused with nothing changed, the hash given must be the one the
name points to, and only admins (and the registry's token) may delete.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.bus import Bus
from daemon.client import BusClient
from daemon.inference.adapters import (
    WEIGHTS_FILE,
    AdapterBusy,
    AdapterHashMismatch,
    AdapterRecord,
    AdapterStore,
)
from daemon.inference.errors import AdapterNotFound
from daemon.inference.service import InferenceService
from daemon.registry.cli import registry_token
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from protocol.commands.inference import InferenceErrorCode
from tests.conftest import eventually


def index_bytes(store: AdapterStore) -> bytes:
    return store.index_path.read_bytes()


def objects(store: AdapterStore) -> set[str]:
    return {p.name for p in store.objects.iterdir()}


# -- the store ------------------------------------------------------------------------------


def test_delete_a_leaf_removes_its_name_and_weights(store: AdapterStore, make_adapter: Any) -> None:
    root = make_adapter("zoo", seed=1)
    leaf = make_adapter("zoo.cat", seed=2)
    assert (leaf.sha256, True) == store.delete("zoo.cat", sha256=leaf.sha256)
    assert ["zoo"] == store.names()
    assert {root.sha256} == objects(store)
    with pytest.raises(AdapterNotFound):
        store.get("zoo.cat")
    assert not list(store.root.glob(".deleted-*"))  # the trash folder went too


def test_weights_another_name_holds_stay(store: AdapterStore, make_adapter: Any) -> None:
    first = make_adapter("farm", seed=3)
    second = store.import_folder(first.path, "barn")  # the same weights under a second name
    assert first.sha256 == second.sha256
    assert (first.sha256, False) == store.delete("farm")
    assert ["barn"] == store.names()
    assert (first.path / WEIGHTS_FILE).exists()
    store.verify(store.get("barn"))
    assert (first.sha256, True) == store.delete("barn")
    assert set() == objects(store)


def test_refusals_change_nothing(store: AdapterStore, make_adapter: Any) -> None:
    root = make_adapter("zoo", seed=1)
    make_adapter("zoo.cat", seed=2)
    before = (index_bytes(store), objects(store))
    with pytest.raises(AdapterBusy) as parent:
        store.delete("zoo")
    assert "has_children" == parent.value.reason
    assert "zoo.cat" in str(parent.value)
    with pytest.raises(AdapterHashMismatch) as stale:
        store.delete("zoo.cat", sha256=root.sha256)
    assert str(stale.value).startswith("invalid params: sha256:")
    with pytest.raises(AdapterNotFound):
        store.delete("nope")
    assert before == (index_bytes(store), objects(store))


# -- through the bus ----------------------------------------------------------------------------


async def delete(client: BusClient, params: dict[str, Any]) -> Any:
    return await client.call("adapter.delete", params, to="cap:inference", deadline_ms=30_000)


async def test_admin_and_registry_delete_through_the_bus(
    inference: InferenceService,
    connect: Callable[..., Any],
    store: AdapterStore,
    make_adapter: Any,
    state: StateDir,
) -> None:
    zoo = make_adapter("zoo", seed=1)
    cat = make_adapter("zoo.cat", seed=2)
    admin = await connect(name="admin")
    # A finished request leaves its levels cached in the engine's slots (and a merged copy):
    # a delete must take those weights out of memory as well as off the disk.
    stack = [zoo.entry.model_dump(), cat.entry.model_dump()]
    for mode in ("unmerged", "merged"):
        await admin.call(
            "inference.generate",
            {"messages": [{"role": "user", "content": "hi"}], "stack": stack, "mode": mode, "max_tokens": 2},
            to="cap:inference",
            deadline_ms=60_000,
        )
    engine = inference.backend.engine  # type: ignore[attr-defined]
    assert cat.sha256 in engine._component
    assert any(cat.sha256 in s for s in engine._merged)
    answer = await delete(admin, {"name": "zoo.cat", "sha256": cat.sha256})
    assert {"name": "zoo.cat", "sha256": cat.sha256, "blob_removed": True} == answer
    assert ["zoo"] == store.names()
    assert cat.sha256 not in engine._component
    assert not any(cat.sha256 in stack for stack in engine._merged)
    registry = await connect(kind="registry", name="main", token=registry_token(state))
    assert zoo.sha256 == (await delete(registry, {"name": "zoo"}))["sha256"]
    assert [] == store.names()
    # The service still serves.
    assert (await admin.call("inference.status", {}, to="cap:inference"))["model"]


async def test_personas_and_observers_are_refused(
    inference: InferenceService, bus: Bus, state: StateDir, store: AdapterStore, make_adapter: Any
) -> None:
    make_adapter("zoo", seed=1)
    before = index_bytes(store)
    tokens = {
        "persona": state.persona_token("ada", create=True),
        "observer": state.issue_token(name="watch", role="observer", subject="cli:*").token,
    }
    for role, token in tokens.items():
        kind, name = ("persona", "ada") if role == "persona" else ("cli", "watch")
        client = BusClient(bus.url, token=token, kind=kind, name=name)
        await client.start()
        try:
            with pytest.raises(RpcError) as refused:
                await delete(client, {"name": "zoo"})
            assert ErrorCode.FORBIDDEN == refused.value.code, role
        finally:
            await client.close()
    assert before == index_bytes(store)
    assert ["zoo"] == store.names()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"name": "Not A Name"}, "name"),
        ({"name": "zoo", "sha256": "abc"}, "sha256"),
        ({"name": "zoo", "extra": 1}, "extra"),
        ({}, "name"),
    ],
)
async def test_bad_params_name_the_field(
    inference: InferenceService,
    connect: Callable[..., Any],
    store: AdapterStore,
    make_adapter: Any,
    params: dict[str, Any],
    field: str,
) -> None:
    make_adapter("zoo", seed=1)
    before = index_bytes(store)
    admin = await connect(name="admin")
    with pytest.raises(RpcError) as bad:
        await delete(admin, params)
    assert ErrorCode.INVALID_PARAMS == bad.value.code
    assert bad.value.message.startswith(f"invalid params: {field}:")
    assert before == index_bytes(store)


async def test_refusals_through_the_bus_change_nothing(
    inference: InferenceService,
    bus: Bus,
    connect: Callable[..., Any],
    store: AdapterStore,
    make_adapter: Any,
    state: StateDir,
) -> None:
    zoo = make_adapter("zoo", seed=1)
    cat = make_adapter("zoo.cat", seed=2)
    admin = await connect(name="admin")
    before = (index_bytes(store), objects(store))

    with pytest.raises(RpcError) as stale:
        await delete(admin, {"name": "zoo.cat", "sha256": zoo.sha256})
    assert (ErrorCode.INVALID_PARAMS, {"field": "sha256"}) == (stale.value.code, stale.value.data)
    assert stale.value.message.startswith("invalid params: sha256:")

    with pytest.raises(RpcError) as unknown:
        await delete(admin, {"name": "zoo.dog"})
    assert InferenceErrorCode.ADAPTER_NOT_FOUND == unknown.value.code

    with pytest.raises(RpcError) as parent:
        await delete(admin, {"name": "zoo"})
    assert (InferenceErrorCode.UNSUPPORTED, {"reason": "has_children"}) == (
        parent.value.code,
        parent.value.data,
    )

    # A caller on the bus pins the stack: in use.
    pinner = await connect(name="pinner")
    await pinner.call("inference.load_stack", {"name": "zoo.cat"}, to="cap:inference")
    with pytest.raises(RpcError) as busy:
        await delete(admin, {"name": "zoo.cat"})
    assert (InferenceErrorCode.UNSUPPORTED, {"reason": "in_use"}) == (busy.value.code, busy.value.data)
    assert pinner.client_id in busy.value.message
    assert before == (index_bytes(store), objects(store))

    # It leaves without unloading: its pin is stale and no longer holds the adapter.
    await pinner.close()
    await eventually(lambda: pinner.client_id not in bus.router.clients, what="pinner gone")
    assert cat.sha256 == (await delete(admin, {"name": "zoo.cat"}))["sha256"]
    assert ["zoo"] == store.names()


def test_store_delete_survives_a_missing_object(
    store: AdapterStore, make_adapter: Any, tmp_path: Path
) -> None:
    """An object already gone (an interrupted delete) does not stop the name from going."""
    record: AdapterRecord = make_adapter("farm", seed=3)
    shutil.rmtree(record.path)
    assert (record.sha256, True) == store.delete("farm")
    assert [] == store.names()

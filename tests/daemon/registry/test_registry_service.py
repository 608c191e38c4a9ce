"""cap:registry on a real bus: CRUD, pages, grants, bad params, unknown ids, the TOML import."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.registry.audit import verify
from daemon.registry.cli import REGISTRY_GRANTS, registry_token
from daemon.registry.service import import_configs
from daemon.registry.store import Registry
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from tests.daemon.registry.conftest import Serving


@pytest.fixture
def registry(serving: Serving) -> Registry:
    return serving.registry


def full(pid: str, **kw: Any) -> dict[str, Any]:
    return {"id": pid, "name": pid.title(), "role": "assistant", **kw}


async def call(client: Any, method: str, params: dict[str, Any]) -> Any:
    return await client.call(method, params, to="cap:registry", deadline_ms=15_000)


async def test_crud_through_the_bus(registry: Registry, connect: Callable[..., Any]) -> None:
    admin = await connect(name="admin")
    made = await call(admin, "persona.create", {"profile": full("ada", tags=["math"], status="active")})
    assert "active" == made["profile"]["status"]
    assert made["profile"]["lineage"]["created_at"] > 0
    got = await call(admin, "persona.get", {"persona_id": "ada"})
    assert made == got
    upd = await call(
        admin,
        "persona.update",
        {"persona_id": "ada", "changes": {"traits": {"precision": 80}, "description": "counts"}},
    )
    assert (80, 50, "counts") == (
        upd["profile"]["traits"]["precision"],
        upd["profile"]["traits"]["humor"],
        upd["profile"]["description"],
    )
    arch = await call(admin, "persona.archive", {"persona_id": "ada"})
    assert "archived" == arch["profile"]["status"]
    listing = await call(admin, "persona.list", {"status": "archived"})
    assert ["ada"] == [p["id"] for p in listing["personas"]]
    entries = [json.loads(line) for line in registry.audit.path.read_text().splitlines()]
    assert ["persona.create", "persona.update", "persona.archive"] == [e["action"] for e in entries]
    assert {admin.client_id} == {e["actor"] for e in entries}
    assert "counts" not in registry.audit.path.read_text()  # hashes, never content
    assert verify(registry.audit.path).ok


async def test_list_pages_and_filters(registry: Registry, connect: Callable[..., Any]) -> None:
    admin = await connect(name="admin")
    for i in range(12):
        role = "lawyer" if i % 2 else "teacher"
        await call(admin, "persona.create", {"profile": full(f"p{i:02d}", role=role, tags=[f"t{i % 3}"])})
    ids, cursor = [], None
    while True:
        page = await call(admin, "persona.list", {"limit": 5, "cursor": cursor})
        ids += [p["id"] for p in page["personas"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert [f"p{i:02d}" for i in range(12)] == ids
    page = await call(admin, "persona.list", {"role": "lawyer", "tag": "t0"})
    assert ["p03", "p09"] == [p["id"] for p in page["personas"]]


async def test_unknown_and_existing_ids_are_clear(registry: Registry, connect: Callable[..., Any]) -> None:
    admin = await connect(name="admin")
    for method, params in (
        ("persona.get", {"persona_id": "ghost"}),
        ("persona.update", {"persona_id": "ghost", "changes": {"name": "x"}}),
        ("persona.archive", {"persona_id": "ghost"}),
    ):
        with pytest.raises(RpcError) as exc:
            await call(admin, method, params)
        assert ErrorCode.INVALID_PARAMS == exc.value.code
        assert {"field": "persona_id", "reason": "unknown_persona"} == exc.value.data
        assert "no persona 'ghost'" in exc.value.message
    await call(admin, "persona.create", {"profile": full("ada")})
    with pytest.raises(RpcError) as exc:
        await call(admin, "persona.create", {"profile": full("ada", name="Impostor")})
    assert "persona_exists" == exc.value.data["reason"]
    assert "Ada" == (await call(admin, "persona.get", {"persona_id": "ada"}))["profile"]["name"]


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("persona.get", {"persona_id": "../etc"}, "persona_id"),
        ("persona.get", {"persona_id": 7}, "persona_id"),
        ("persona.get", {}, "persona_id"),
        ("persona.list", {"limit": 0}, "limit"),
        ("persona.list", {"limit": "5"}, "limit"),
        ("persona.list", {"status": "gone"}, "status"),
        ("persona.list", {"cursor": "A B"}, "cursor"),
        ("persona.list", {"colour": "red"}, "colour"),
        (
            "persona.update",
            {"persona_id": "ada", "changes": {"traits": {"humor": 101}}},
            "changes.traits.humor",
        ),
        ("persona.update", {"persona_id": "ada", "changes": {"id": "eve"}}, "changes.id"),
        ("persona.update", {"persona_id": "ada", "changes": {"lineage": {}}}, "changes.lineage"),
        ("persona.update", {"persona_id": "ada", "changes": {"status": "merged"}}, "changes.status"),
        ("persona.update", {"persona_id": "ada", "changes": {"name": ""}}, "changes.name"),
        ("persona.create", {"profile": {"id": "x", "name": "X"}}, "profile.role"),
        ("persona.create", {"profile": full("Bad Id")}, "profile.id"),
    ],
)
async def test_bad_params_name_the_field(
    registry: Registry, connect: Callable[..., Any], method: str, params: dict[str, Any], field: str
) -> None:
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": full("ada")})
    before = await call(admin, "persona.get", {"persona_id": "ada"})
    with pytest.raises(RpcError) as exc:
        await call(admin, method, params)
    assert ErrorCode.INVALID_PARAMS == exc.value.code
    assert f"invalid params: {field}:" in exc.value.message
    assert before == await call(admin, "persona.get", {"persona_id": "ada"})


async def test_empty_changes_refused(registry: Registry, connect: Callable[..., Any]) -> None:
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": full("ada")})
    with pytest.raises(RpcError) as exc:
        await call(admin, "persona.update", {"persona_id": "ada", "changes": {}})
    assert (ErrorCode.INVALID_PARAMS, {"field": "changes"}) == (exc.value.code, exc.value.data)


async def test_grants(registry: Registry, connect: Callable[..., Any], state: StateDir) -> None:
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": full("ada")})
    await call(admin, "persona.create", {"profile": full("bob")})
    persona = await connect(kind="persona", name="ada", token=state.persona_token("ada", create=True))
    # A persona reads profiles …
    assert "Bob" == (await call(persona, "persona.get", {"persona_id": "bob"}))["profile"]["name"]
    assert 2 == len((await call(persona, "persona.list", {}))["personas"])
    # … and changes none, not another's and not its own.
    for method, params in (
        ("persona.update", {"persona_id": "bob", "changes": {"name": "Pwned"}}),
        ("persona.update", {"persona_id": "ada", "changes": {"status": "archived"}}),
        ("persona.archive", {"persona_id": "bob"}),
        ("persona.create", {"profile": full("eve")}),
    ):
        with pytest.raises(RpcError) as exc:
            await call(persona, method, params)
        assert ErrorCode.FORBIDDEN == exc.value.code, method
    # A token with no registry grant at all gets nothing.
    observer = state.issue_token(name="watch", role="observer", subject="cli:*").token
    watcher = await connect(name="watch", token=observer)
    for method, params in (("persona.get", {"persona_id": "ada"}), ("persona.list", {})):
        with pytest.raises(RpcError) as exc:
            await call(watcher, method, params)
        assert ErrorCode.FORBIDDEN == exc.value.code
    assert "Bob" == (await call(admin, "persona.get", {"persona_id": "bob"}))["profile"]["name"]
    assert 2 == verify(registry.audit.path).entries


async def test_registry_token_may_provide_only_registry(state: StateDir) -> None:
    """It serves only cap:registry and calls only what its methods need of cap:inference."""
    token = registry_token(state)
    entry = state.tokens().verify(token)
    assert entry is not None
    assert ("service", "registry:main") == (entry.role, entry.subject)
    assert {"bus.*", "provide:registry", *REGISTRY_GRANTS} == set(entry.grants)
    assert not entry.may_provide("inference")
    assert entry.allows("adapter.merge", "cap:inference")
    assert not entry.allows("inference.load_stack", "cap:inference")
    assert not entry.allows("chat", "persona:ada")
    assert not entry.allows("brain.query", "persona:ada")


async def test_toml_import(registry: Registry, connect: Callable[..., Any], tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "personas").mkdir(parents=True)
    toml = config / "personas" / "ada.toml"
    toml.write_text(
        'id = "ada"\nname = "Ada"\ndescription = "explains"\ngrants = ["screenshot@cap:browser"]\n'
    )
    (config / "personas" / "bad.toml").write_text('id = "bad"\nname = 3\n')
    (config / "personas" / "long.toml").write_text(f'id = "long"\nname = "{"n" * 120}"\n')
    first = await registry.run(import_configs, registry.audit, config)
    assert {"ada": "created", "bad": "error", "long": "error"} == first
    admin = await connect(name="admin")
    ada = (await call(admin, "persona.get", {"persona_id": "ada"}))["profile"]
    assert ("Ada", "explains", "active", "assistant", ["chat"]) == (
        ada["name"],
        ada["description"],
        ada["status"],
        ada["role"],
        ada["capabilities"],
    )
    assert "grants" not in ada
    # Unchanged TOML: edits made through the registry stay.
    await call(
        admin, "persona.update", {"persona_id": "ada", "changes": {"role": "teacher", "status": "draft"}}
    )
    assert {"ada": "unchanged"} == {
        k: v for k, v in (await registry.run(import_configs, registry.audit, config)).items() if k == "ada"
    }
    assert "draft" == (await call(admin, "persona.get", {"persona_id": "ada"}))["profile"]["status"]
    # A changed TOML updates what it declares and makes the persona active again.
    toml.write_text('id = "ada"\nname = "Ada L."\n')
    assert "updated" == (await registry.run(import_configs, registry.audit, config))["ada"]
    ada = (await call(admin, "persona.get", {"persona_id": "ada"}))["profile"]
    assert ("Ada L.", "teacher", "active") == (ada["name"], ada["role"], ada["status"])
    assert verify(registry.audit.path).ok

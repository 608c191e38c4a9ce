"""persona.fork and persona.merge through a real bus: brains, keys, lineage, adapters, grants, refusals.

One file (over 500 lines) because fork and merge tests share the brain, snapshot and event
helpers, one test per step that can fail.

The registry serves cap:registry (``serving``); for merges with stacks a real
inference service with the tiny model serves cap:inference on the same bus
and state dir, and the merged adapter's delta is recomputed from the stored
files (``delta`` of tests/daemon/inference/test_merge.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from daemon.brain import Brain, MemoryItem
from daemon.brain.errors import WrongKey
from daemon.brain.keys import brain_path, key_path, load_or_create_key
from daemon.inference.adapters import AdapterRecord, AdapterStore
from daemon.registry.audit import verify
from daemon.registry.events import PUBLISHER, TOPIC
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from protocol.messages import Notification
from tests.conftest import eventually
from tests.daemon.inference.test_merge import delta
from tests.daemon.registry.conftest import Serving


async def call(client: Any, method: str, params: dict[str, Any]) -> Any:
    return await client.call(method, params, to="cap:registry", deadline_ms=60_000)


async def create(client: Any, pid: str, **kw: Any) -> dict[str, Any]:
    profile = {"id": pid, "name": pid.title(), "role": "assistant", "status": "active", **kw}
    return (await call(client, "persona.create", {"profile": profile}))["profile"]  # type: ignore[no-any-return]


def stack_of(*records: AdapterRecord) -> list[dict[str, str]]:
    return [{"name": r.name, "sha256": r.sha256} for r in records]


async def remember(state: StateDir, pid: str, items: list[MemoryItem]) -> None:
    """Memories in a persona's brain, as its daemon would keep them (its key created on first start)."""
    path = brain_path(state.root, pid)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = load_or_create_key(state.root, pid, environ={})
    async with await Brain.open(path, key) as brain:
        await brain.remember_many(items)
        await brain.skill_upsert("drafting")


async def contents(state: StateDir, pid: str, key: bytes | None = None) -> list[str]:
    key = key or load_or_create_key(state.root, pid, environ={})
    async with await Brain.open(brain_path(state.root, pid), key) as brain:
        rows = (await brain.query("SELECT content FROM memories ORDER BY content")).rows
    return [row[0] for row in rows]


def snapshot(root: Path) -> dict[str, str]:
    """Every folder and file under the state dir, with the file's content hash.

    Left out: SQLite's shared-memory index (``-shm``) and empty WAL files,
    which any reader of a WAL database creates beside it (copying a brain
    reads its source like any other reader); neither holds data.
    """
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        name = str(p.relative_to(root))
        if p.is_dir():
            out[name + "/"] = "dir"
        elif not (p.name.endswith("-shm") or (p.name.endswith("-wal") and p.stat().st_size == 0)):
            out[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


async def listing(client: Any) -> Any:
    return await call(client, "persona.list", {})


def audit_entries(serving: Serving) -> list[dict[str, Any]]:
    return [json.loads(line) for line in serving.registry.audit.path.read_text().splitlines()]


async def events_of(connect: Callable[..., Any]) -> list[Notification]:
    inbox: list[Notification] = []
    watcher = await connect(name="watcher", on_notification=inbox.append)
    await watcher.subscribe(TOPIC)
    return inbox


def event_data(inbox: list[Notification]) -> list[tuple[str, str, str]]:
    out = []
    for note in inbox:
        params: Any = note.params
        assert PUBLISHER == params["publisher"]
        data = params["data"]
        out.append((data["persona_id"], data["status"], data["action"]))
    return out


# -- fork -------------------------------------------------------------------------------------


async def test_fork_copies_the_brain_under_a_new_key(
    serving: Serving, connect: Callable[..., Any], state: StateDir, make_adapter: Callable[..., AdapterRecord]
) -> None:
    admin = await connect(name="admin")
    inbox = await events_of(connect)
    law, patent = make_adapter("law", seed=1), make_adapter("law.patent", seed=2)
    source = await create(admin, "ada", stack=stack_of(law, patent), traits={"humor": 20, "focus": 70})
    await remember(
        state,
        "ada",
        [
            MemoryItem("alice prefers short answers", subject="alice"),
            MemoryItem("bob files patents in march", subject="bob", context={"tags": ["legal"]}),
            MemoryItem("the office moved to the harbour"),
        ],
    )
    source_brain = brain_path(state.root, "ada")
    before = snapshot(source_brain.parent)
    result = await call(
        admin,
        "persona.fork",
        {
            "source_persona_id": "ada",
            "new_persona_id": "ada-legal",
            "new_role": "patent clerk",
            "modifications": {"name": "Ada Legal", "traits": {"humor": 90}},
        },
    )
    assert "ada-legal" == result["persona_id"]
    fork = result["profile"]
    assert ("Ada Legal", "patent clerk", "draft") == (fork["name"], fork["role"], fork["status"])
    assert {**source["traits"], "humor": 90} == fork["traits"]
    assert ("ada", "ada", []) == (
        fork["lineage"]["parent"],
        fork["lineage"]["forked_from"],
        fork["lineage"]["merged_from"],
    )
    # The stack is referenced by hash: the same entries, nothing new in the store.
    assert stack_of(law, patent) == fork["stack"]
    assert fork == (await call(admin, "persona.get", {"persona_id": "ada-legal"}))["profile"]
    after = (await call(admin, "persona.get", {"persona_id": "ada"}))["profile"]
    assert after["lineage"]["updated_at"] > source["lineage"]["updated_at"]
    assert {**source, "lineage": after["lineage"]} == after
    brain = result["brain"]
    assert (3, 3, 1) == (brain["memories"], brain["memories_in_source"], brain["skills"])
    # The copy opens with its own key and not with the source's.
    new_key = load_or_create_key(state.root, "ada-legal", environ={})
    old_key = load_or_create_key(state.root, "ada", environ={})
    assert new_key != old_key
    assert 3 == len(await contents(state, "ada-legal", new_key))
    with pytest.raises(WrongKey):
        await contents(state, "ada-legal", old_key)
    # The source's files are byte for byte as they were.
    assert before == snapshot(source_brain.parent)
    entries = audit_entries(serving)
    assert [("persona.fork", "ada-legal"), ("persona.fork", "ada")] == [
        (e["action"], e["persona_id"]) for e in entries[-2:]
    ]
    assert "Ada Legal" not in serving.registry.audit.path.read_text()
    assert verify(serving.registry.audit.path).ok
    await eventually(lambda: len(inbox) >= 3, what="the fork's events")
    assert [("ada-legal", "draft", "persona.fork"), ("ada", "active", "persona.fork")] == event_data(inbox)[
        -2:
    ]


async def test_fork_filters_and_derived_ids(
    serving: Serving, connect: Callable[..., Any], state: StateDir
) -> None:
    admin = await connect(name="admin")
    await create(admin, "ada")
    await remember(
        state,
        "ada",
        [
            MemoryItem("alice likes tea", subject="alice"),
            MemoryItem("alice moved house", subject="alice", kind="event"),
            MemoryItem("bob likes coffee", subject="bob", context={"tags": ["drinks"]}),
        ],
    )
    by_subject = await call(
        admin, "persona.fork", {"source_persona_id": "ada", "memory_filter": {"subjects": ["Alice"]}}
    )
    assert "ada-fork-1" == by_subject["persona_id"]
    assert ["alice likes tea", "alice moved house"] == await contents(state, "ada-fork-1")
    by_tag = await call(
        admin, "persona.fork", {"source_persona_id": "ada", "memory_filter": {"tags": ["drinks", "event"]}}
    )
    assert "ada-fork-2" == by_tag["persona_id"]
    assert ["alice moved house", "bob likes coffee"] == await contents(state, "ada-fork-2")
    assert (2, 3) == (by_tag["brain"]["memories"], by_tag["brain"]["memories_in_source"])
    future = datetime(2100, 1, 1, tzinfo=UTC).isoformat()
    by_time = await call(
        admin, "persona.fork", {"source_persona_id": "ada", "memory_filter": {"since": future}}
    )
    assert ("ada-fork-3", 0) == (by_time["persona_id"], by_time["brain"]["memories"])
    # A fork of a fork names its own source.
    again = await call(admin, "persona.fork", {"source_persona_id": "ada-fork-1"})
    assert ("ada-fork-1-fork-1", "ada-fork-1") == (
        again["persona_id"],
        again["profile"]["lineage"]["forked_from"],
    )
    assert ["alice likes tea", "alice moved house"] == await contents(state, "ada-fork-1-fork-1")


async def test_fork_of_a_persona_without_a_brain(
    serving: Serving, connect: Callable[..., Any], state: StateDir
) -> None:
    admin = await connect(name="admin")
    await create(admin, "ada")
    result = await call(admin, "persona.fork", {"source_persona_id": "ada"})
    assert (None, "ada-fork-1") == (result["brain"], result["persona_id"])
    # Nothing on disk for it: its daemon creates brain and key on first start, as for any new persona.
    assert not brain_path(state.root, "ada-fork-1").parent.exists()
    assert not key_path(state.root, "ada-fork-1").exists()


# -- merge ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("inference")
async def test_merge_brains_and_stacks(
    serving: Serving,
    connect: Callable[..., Any],
    state: StateDir,
    store: AdapterStore,
    make_adapter: Callable[..., AdapterRecord],
) -> None:
    admin = await connect(name="admin")
    inbox = await events_of(connect)
    zoo, cat, farm = (
        make_adapter("zoo", seed=1, rank=4, alpha=8.0),
        make_adapter("zoo.cat", seed=2, rank=2, alpha=6.0),
        make_adapter("farm", seed=3, rank=8, alpha=4.0),
    )
    await create(admin, "ada", stack=stack_of(zoo, cat), traits={"humor": 80, "focus": 40}, tags=["a"])
    await create(admin, "bob", stack=stack_of(farm), traits={"humor": 35, "focus": 95}, tags=["b"])
    shared = "the quarterly report is due on the first friday of the month"
    await remember(
        state, "ada", [MemoryItem(shared, relevance=0.9), MemoryItem("ada knows the printer code")]
    )
    await remember(
        state, "bob", [MemoryItem(shared.upper() + "!"), MemoryItem("bob knows the wifi password")]
    )
    result = await call(
        admin,
        "persona.merge",
        {
            "primary_persona_id": "ada",
            "secondary_persona_id": "bob",
            "merge_strategy": "union",
            "name": "Adabob",
            "description": "both",
            "new_persona_id": "adabob",
        },
    )
    merged = result["profile"]
    assert ("adabob", "draft", "Adabob") == (result["persona_id"], merged["status"], merged["name"])
    assert (80, 95, ["a", "b"]) == (merged["traits"]["humor"], merged["traits"]["focus"], merged["tags"])
    assert (["ada", "bob"], "ada") == (merged["lineage"]["merged_from"], merged["lineage"]["parent"])
    # Memories: the union, the near-duplicate folded, what only bob knew kept.
    # (contents() lists them by text; ada's copy of the shared one is kept: its relevance is higher)
    assert ["ada knows the printer code", "bob knows the wifi password", shared] == await contents(
        state, "adabob"
    )
    brain = result["brain"]
    assert (3, 1, ["primary", "secondary"]) == (
        brain["memories"],
        brain["dropped_duplicates"],
        brain["sources"],
    )
    # Adapters: one exact cat of both whole stacks; its delta is the sum of all three levels'.
    adapter = result["adapter"]
    assert (True, "cat", 14) == (adapter["exact"], adapter["combination"], adapter["rank"])
    assert [{"name": adapter["name"], "sha256": adapter["sha256"]}] == merged["stack"]
    assert stack_of(zoo, cat, farm) == adapter["levels"]
    got = delta(store.get(adapter["name"]))
    parts = [delta(r) for r in (zoo, cat, farm)]
    assert set(got) == set(parts[0])
    for module, value in got.items():
        assert torch.allclose(value, sum(p[module] for p in parts), atol=1e-5, rtol=0), module
    # Both sources retired, each audited; the log verifies and holds no names.
    for pid in ("ada", "bob"):
        assert "merged" == (await call(admin, "persona.get", {"persona_id": pid}))["profile"]["status"]
    assert [("persona.merge", pid) for pid in ("adabob", "ada", "bob")] == [
        (e["action"], e["persona_id"]) for e in audit_entries(serving)[-3:]
    ]
    assert adapter["sha256"] == audit_entries(serving)[-3]["details"]["adapter_sha256"]
    assert "Adabob" not in serving.registry.audit.path.read_text()
    assert verify(serving.registry.audit.path).ok
    await eventually(lambda: len(inbox) >= 5, what="the merge's events")
    assert [
        ("adabob", "draft", "persona.merge"),
        ("ada", "merged", "persona.merge"),
        ("bob", "merged", "persona.merge"),
    ] == event_data(inbox)[-3:]


async def test_merge_with_one_stack_and_one_brain(
    serving: Serving, connect: Callable[..., Any], state: StateDir, make_adapter: Callable[..., AdapterRecord]
) -> None:
    """No adapter.merge (and no cap:inference needed): the one stack is referenced; one brain is merged
    with an empty one."""
    admin = await connect(name="admin")
    law = make_adapter("law", seed=1)
    await create(admin, "ada")
    await create(admin, "bob", stack=stack_of(law))
    await remember(
        state, "bob", [MemoryItem("bob knows the wifi password"), MemoryItem("bob knows the wifi password.")]
    )
    result = await call(
        admin,
        "persona.merge",
        {
            "primary_persona_id": "ada",
            "secondary_persona_id": "bob",
            "merge_strategy": "average",
            "name": "A",
            "description": "",
        },
    )
    assert ("ada-merge-1", None, stack_of(law)) == (
        result["persona_id"],
        result["adapter"],
        result["profile"]["stack"],
    )
    brain = result["brain"]
    assert (["secondary"], 1, 1) == (brain["sources"], brain["memories"], brain["dropped_duplicates"])
    assert ["bob knows the wifi password"] == await contents(state, "ada-merge-1")
    # The empty stand-in is gone: only the brain (and its WAL files) is in the new folder.
    assert {"brain.sqlite"} == {p.name for p in brain_path(state.root, "ada-merge-1").parent.iterdir()} - {
        "brain.sqlite-wal",
        "brain.sqlite-shm",
    }


async def test_inference_offline_changes_nothing(
    serving: Serving, connect: Callable[..., Any], state: StateDir, make_adapter: Callable[..., AdapterRecord]
) -> None:
    admin = await connect(name="admin")
    await create(admin, "ada", stack=stack_of(make_adapter("zoo", seed=1)))
    await create(admin, "bob", stack=stack_of(make_adapter("farm", seed=3)))
    await remember(state, "ada", [MemoryItem("ada knows the printer code")])
    await remember(state, "bob", [MemoryItem("bob knows the wifi password")])
    before, personas = snapshot(state.root), await listing(admin)
    with pytest.raises(RpcError) as exc:
        await call(
            admin,
            "persona.merge",
            {
                "primary_persona_id": "ada",
                "secondary_persona_id": "bob",
                "merge_strategy": "union",
                "name": "A",
                "description": "",
            },
        )
    assert ErrorCode.TARGET_OFFLINE == exc.value.code
    assert exc.value.message.startswith("adapter.merge failed:")
    assert before == snapshot(state.root)
    assert personas == await listing(admin)


# -- grants and refusals ---------------------------------------------------------------------


async def test_grants(serving: Serving, connect: Callable[..., Any], state: StateDir) -> None:
    admin = await connect(name="admin")
    await create(admin, "ada")
    await create(admin, "bob")
    persona = await connect(kind="persona", name="ada", token=state.persona_token("ada", create=True))
    observer = await connect(
        name="watch", token=state.issue_token(name="watch", role="observer", subject="cli:*").token
    )
    before = await listing(admin)
    fork = {"source_persona_id": "ada"}
    merge = {
        "primary_persona_id": "ada",
        "secondary_persona_id": "bob",
        "merge_strategy": "union",
        "name": "A",
        "description": "",
    }
    for client in (persona, observer):
        for method, params in (("persona.fork", fork), ("persona.merge", merge)):
            with pytest.raises(RpcError) as exc:
                await call(client, method, params)
            assert ErrorCode.FORBIDDEN == exc.value.code, method
    assert before == await listing(admin)
    assert "ada-fork-1" == (await call(admin, "persona.fork", fork))["persona_id"]


MERGE = {
    "primary_persona_id": "ada",
    "secondary_persona_id": "bob",
    "merge_strategy": "union",
    "name": "A",
    "description": "",
}


@pytest.mark.parametrize(
    ("method", "params", "field", "reason"),
    [
        ("persona.fork", {"source_persona_id": "nobody"}, "source_persona_id", "unknown_persona"),
        (
            "persona.fork",
            {"source_persona_id": "ada", "new_persona_id": "bob"},
            "new_persona_id",
            "persona_exists",
        ),
        (
            "persona.fork",
            {"source_persona_id": "ada", "new_persona_id": "ada"},
            "new_persona_id",
            "persona_exists",
        ),
        ("persona.fork", {"source_persona_id": "ada", "new_persona_id": "Bad Id"}, "new_persona_id", None),
        (
            "persona.fork",
            {"source_persona_id": "ada", "modifications": {"traits": {"humor": 101}}},
            "modifications.traits.humor",
            None,
        ),
        (
            "persona.fork",
            {"source_persona_id": "ada", "modifications": {"status": "active"}},
            "modifications.status",
            None,
        ),
        (
            "persona.fork",
            {"source_persona_id": "ada", "new_role": "x", "modifications": {"role": "y"}},
            "new_role",
            None,
        ),
        (
            "persona.fork",
            {"source_persona_id": "ada", "memory_filter": {"subjects": ["   "]}},
            "memory_filter.subjects[0]",
            None,
        ),
        (
            "persona.fork",
            {
                "source_persona_id": "ada",
                "memory_filter": {"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
            },
            "memory_filter.until",
            None,
        ),
        ("persona.merge", {**MERGE, "primary_persona_id": "nobody"}, "primary_persona_id", "unknown_persona"),
        (
            "persona.merge",
            {**MERGE, "secondary_persona_id": "nobody"},
            "secondary_persona_id",
            "unknown_persona",
        ),
        ("persona.merge", {**MERGE, "secondary_persona_id": "ada"}, "secondary_persona_id", "self_merge"),
        ("persona.merge", {**MERGE, "merge_strategy": "blend"}, "merge_strategy", None),
        ("persona.merge", {**MERGE, "new_persona_id": "ada"}, "new_persona_id", "persona_exists"),
        (
            "persona.merge",
            {**MERGE, "secondary_persona_id": "old"},
            "secondary_persona_id",
            "source_archived",
        ),
        ("persona.merge", {**MERGE, "adapter_combination": "sum"}, "adapter_combination", None),
        ("persona.merge", {**MERGE, "name": ""}, "name", None),
    ],
)
async def test_bad_params_change_nothing(
    serving: Serving,
    connect: Callable[..., Any],
    state: StateDir,
    method: str,
    params: dict[str, Any],
    field: str,
    reason: str | None,
) -> None:
    admin = await connect(name="admin")
    await create(admin, "ada")
    await create(admin, "bob")
    await create(admin, "old")
    await call(admin, "persona.archive", {"persona_id": "old"})
    await remember(state, "ada", [MemoryItem("ada knows the printer code", subject="alice")])
    await remember(state, "bob", [MemoryItem("bob knows the wifi password")])
    before, personas = snapshot(state.root), await listing(admin)
    with pytest.raises(RpcError) as exc:
        await call(admin, method, params)
    assert ErrorCode.INVALID_PARAMS == exc.value.code
    assert f"invalid params: {field}:" in exc.value.message
    data: Any = exc.value.data
    if isinstance(data, list):  # refused by the params' schema: pydantic's errors, the first one named
        assert field == ".".join(data[0]["loc"])
        assert reason is None
    else:  # refused by the registry
        assert (field, reason) == (data["field"], data.get("reason"))
    assert before == snapshot(state.root)
    assert personas == await listing(admin)


async def test_leftover_state_is_never_reused(
    serving: Serving, connect: Callable[..., Any], state: StateDir
) -> None:
    """An earlier persona's key or brain folder: refused when asked for, skipped when derived."""
    admin = await connect(name="admin")
    await create(admin, "ada")
    await remember(state, "ada", [MemoryItem("ada knows the printer code")])
    load_or_create_key(state.root, "ada-fork-1", environ={})  # left by a persona since removed
    before = snapshot(state.root)
    with pytest.raises(RpcError) as exc:
        await call(admin, "persona.fork", {"source_persona_id": "ada", "new_persona_id": "ada-fork-1"})
    assert ("new_persona_id", "state_exists") == (exc.value.data["field"], exc.value.data["reason"])
    assert before == snapshot(state.root)
    assert "ada-fork-2" == (await call(admin, "persona.fork", {"source_persona_id": "ada"}))["persona_id"]


@pytest.mark.usefixtures("inference")
async def test_a_failure_at_the_last_step_takes_everything_back(
    serving: Serving,
    connect: Callable[..., Any],
    state: StateDir,
    store: AdapterStore,
    make_adapter: Callable[..., AdapterRecord],
) -> None:
    """The registry transaction refused (its audit log's tail damaged): brain, key and merged adapter go."""
    admin = await connect(name="admin")
    await create(admin, "ada", stack=stack_of(make_adapter("zoo", seed=1)))
    await create(admin, "bob", stack=stack_of(make_adapter("farm", seed=3)))
    await remember(state, "ada", [MemoryItem("ada knows the printer code")])
    await remember(state, "bob", [MemoryItem("bob knows the wifi password")])
    with serving.registry.audit.path.open("a") as log:
        log.write('{"not": "an entry"}\n')
    before, personas, adapters = snapshot(state.root), await listing(admin), store.names()
    for method, params in (
        ("persona.fork", {"source_persona_id": "ada"}),
        ("persona.merge", {**MERGE, "new_persona_id": "adabob"}),
    ):
        with pytest.raises(RpcError) as exc:
            await call(admin, method, params)
        assert ErrorCode.INTERNAL_ERROR == exc.value.code, method
        assert "audit" in exc.value.message
        assert personas == await listing(admin)
        assert adapters == store.names()
        # The index was rewritten by the delete; everything else is as it was.
        now = snapshot(state.root)
        assert {k: v for k, v in before.items() if k != "adapters/index.json"} == {
            k: v for k, v in now.items() if k != "adapters/index.json"
        }


async def test_a_fork_merged_back_keeps_the_one_stack(
    serving: Serving, connect: Callable[..., Any], state: StateDir, make_adapter: Callable[..., AdapterRecord]
) -> None:
    """Both sources on the very same stack: referenced, not merged into twice its delta (no cap:inference)."""
    admin = await connect(name="admin")
    law = make_adapter("law", seed=1)
    await create(admin, "ada", stack=stack_of(law))
    await call(admin, "persona.fork", {"source_persona_id": "ada"})
    result = await call(admin, "persona.merge", {**MERGE, "secondary_persona_id": "ada-fork-1"})
    assert (None, stack_of(law)) == (result["adapter"], result["profile"]["stack"])
    assert (["ada", "ada-fork-1"], None) == (result["profile"]["lineage"]["merged_from"], result["brain"])


async def test_a_brain_that_does_not_open_changes_nothing(
    serving: Serving, connect: Callable[..., Any], state: StateDir
) -> None:
    """A source brain whose key is gone: INTERNAL_ERROR naming the persona, and nothing left behind."""
    admin = await connect(name="admin")
    await create(admin, "ada")
    await create(admin, "bob")
    await remember(state, "ada", [MemoryItem("ada knows the printer code")])
    await remember(state, "bob", [MemoryItem("bob knows the wifi password")])
    key_path(state.root, "bob").unlink()
    before, personas = snapshot(state.root), await listing(admin)
    for method, params in (("persona.fork", {"source_persona_id": "bob"}), ("persona.merge", MERGE)):
        with pytest.raises(RpcError) as exc:
            await call(admin, method, params)
        assert ErrorCode.INTERNAL_ERROR == exc.value.code
        assert "'bob'" in exc.value.message
        assert "nothing was changed" in exc.value.message
        assert before == snapshot(state.root)
        assert personas == await listing(admin)

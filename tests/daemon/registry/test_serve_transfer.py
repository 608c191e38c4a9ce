"""persona.export and persona.import through a real bus: bundles, cards, refusals, grants, secrecy.

One file (over 500 lines) because export and import are tested as round trips of each other,
sharing the installation, brain and snapshot helpers.

Everything goes through cap:registry on 127.0.0.1: the registry of the
``serving`` fixture, and for the cross-installation round trip a second
state dir with its own bus and registry. Brains are real SQLCipher brains,
adapters real safetensors LoRA folders in the real adapter store, and
bundles use the default scrypt cost (what an operator gets).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from daemon.brain import Brain
from daemon.brain.keys import brain_path, key_path, load_or_create_key
from daemon.bus import Bus, BusConfig
from daemon.client import BusClient
from daemon.inference.adapters import WEIGHTS_FILE, AdapterStore
from daemon.registry.audit import verify
from daemon.registry.bundle import write_bundle
from daemon.registry.bundle_keys import PassphraseKey, RecipientPrivateKey, SigningKey
from daemon.registry.cards import EXT, card_to_obj, parse_card_json
from daemon.registry.cards_png import read_png_card
from daemon.registry.cli import registry_token
from daemon.registry.events import PUBLISHER, TOPIC
from daemon.registry.service import RegistryService
from daemon.registry.store import Registry
from daemon.state import StateDir
from protocol import ErrorCode, Notification, RpcError
from protocol.commands.persona_transfer import MAX_INLINE_B64_CHARS, MAX_INLINE_BYTES
from protocol.profile import Profile
from tests.conftest import WAIT, eventually
from tests.daemon.registry.conftest import Serving
from tests.daemon.registry.test_bundle import make_adapter as make_lora_folder

CARDS = Path(__file__).parent / "cards"
PASSPHRASE = "correct horse battery staple ünïcode"
DEADLINE_MS = 120_000


async def call(client: Any, method: str, params: dict[str, Any]) -> Any:
    return await client.call(method, params, to="cap:registry", deadline_ms=DEADLINE_MS)


async def refused(client: Any, method: str, params: dict[str, Any]) -> RpcError:
    with pytest.raises(RpcError) as exc:
        await call(client, method, params)
    return exc.value


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256.

    SQLite's ``-shm`` files are left out: they are its shared-memory index,
    which readers update too (nothing of the data is in them).
    """
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith("-shm"):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def file_facts(path: Path) -> tuple[int, int, str]:
    """Mode bits, size and sha256 of a file."""
    data = path.read_bytes()
    return stat.S_IMODE(path.stat().st_mode), len(data), hashlib.sha256(data).hexdigest()


def audit_actions(root: Path) -> list[str]:
    path = root / "registry" / "audit.log"
    return [json.loads(line)["action"] for line in path.read_text().splitlines()]


async def seed_brain(root: Path, persona_id: str) -> None:
    """A real brain with memories (one about a person, one pinned), a skill and a goal."""
    path = brain_path(root, persona_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = load_or_create_key(root, persona_id, environ={})
    async with await Brain.open(path, key) as brain:
        await brain.remember("only Ada knows the filing moved to Tuesday", subject="alice", kind="fact")
        await brain.remember(
            "second memory", context={"k": [1, 2], "tags": ["x"]}, pinned=True, relevance=0.9
        )
        await brain.skill_upsert("claims", description="reads claims")
        await brain.goals_set(title="file the patent", priority=0.8)


async def brain_tables(root: Path, persona_id: str, tmp: Path) -> dict[str, Any]:
    """The brain's rows, as its own export writes them."""
    key = load_or_create_key(root, persona_id, environ={})
    target = tmp / f"{persona_id}-{os.urandom(4).hex()}.json"
    async with await Brain.open(brain_path(root, persona_id), key) as brain:
        await brain.export(target)
    tables: dict[str, Any] = json.loads(target.read_bytes())["tables"]
    return tables


def same_persona(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What must survive a transfer: the profile but its id, status and the registry's times."""
    out = []
    for profile in (a, b):
        p = copy.deepcopy(profile)
        for key in ("id", "status"):
            p.pop(key)
        p["lineage"].pop("created_at")
        p["lineage"].pop("updated_at")
        out.append(p)
    assert out[0] == out[1]
    return out[0]


@asynccontextmanager
async def installation(root: Path, **client_options: Any) -> AsyncIterator[BusClient]:
    """Another personad: its own state dir, bus and registry, and an admin client on it."""
    state = StateDir(root)
    admin_token = state.init()
    assert admin_token is not None
    async with Bus(BusConfig(port=0), state.tokens()) as bus:
        registry = await Registry.open(root, environ={})
        service = RegistryService(registry, url=bus.url, token=registry_token(state), state_root=root)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await service.client.wait_connected(WAIT)
        client = BusClient(bus.url, token=admin_token, kind="cli", name="admin2", **client_options)
        await client.start()
        try:
            yield client
        finally:
            await client.close()
            stop.set()
            await asyncio.wait_for(task, WAIT)
            await registry.close()


@pytest.fixture
def adapters(state: StateDir, tmp_path: Path) -> list[dict[str, str]]:
    """Two stacked adapters in the shared store: ``zoo`` and its child ``zoo.cat``."""
    store = AdapterStore.for_state(state.root)
    zoo = store.import_folder(make_lora_folder(tmp_path / "lora-zoo", seed=1), "zoo")
    cat = store.import_folder(make_lora_folder(tmp_path / "lora-cat", seed=2), "zoo.cat")
    return [{"name": "zoo", "sha256": zoo.sha256}, {"name": "zoo.cat", "sha256": cat.sha256}]


async def make_ada(admin: Any, state: StateDir, stack: list[dict[str, str]]) -> dict[str, Any]:
    profile = {
        "id": "ada",
        "name": "Ada",
        "role": "patent analyst",
        "description": "Reads claims closely.",
        "traits": {"precision": 90},
        "tags": ["legal"],
        "stack": stack,
        "status": "active",
    }
    made = await call(admin, "persona.create", {"profile": profile})
    await seed_brain(state.root, "ada")
    return dict(made["profile"])


# -- bundles --------------------------------------------------------------------------


async def test_bundle_round_trip_with_a_passphrase_into_another_installation(
    serving: Serving,
    connect: Callable[..., Any],
    state: StateDir,
    adapters: list[dict[str, str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = await connect(name="admin")
    ada = await make_ada(admin, state, adapters)
    out = await call(
        admin, "persona.export", {"persona_id": "ada", "format": "bundle", "passphrase": PASSPHRASE}
    )
    path = Path(out["path"])
    assert path.parent == state.root / "personas" / "ada" / "exports"
    assert (0o600, out["bytes"], out["sha256"]) == file_facts(path)
    assert (True, 2, 2, None) == (out["brain"], out["memories"], out["adapters"], out["data_b64"])
    assert ["persona.create", "persona.export"] == audit_actions(state.root)

    other = tmp_path / "elsewhere"
    inbox: list[Notification] = []
    async with installation(other, on_notification=inbox.append) as admin2:
        await admin2.subscribe(TOPIC)
        got = await call(admin2, "persona.import", {"path": str(path), "passphrase": PASSPHRASE})
        assert ("ada", "bundle", "draft") == (got["persona_id"], got["format"], got["profile"]["status"])
        assert (True, 2, out["signer"]) == (got["brain"], got["memories"], got["signer"])
        assert sorted(a["sha256"] for a in adapters) == sorted(got["adapters"])
        same_persona(ada, got["profile"])
        assert got["profile"] == (await call(admin2, "persona.get", {"persona_id": "ada"}))["profile"]
        await eventually(lambda: inbox, what="the registry.persona event")
        assert (TOPIC, PUBLISHER) == (inbox[0].params["topic"], inbox[0].params["publisher"])  # type: ignore[index]
        assert {"persona_id": "ada", "status": "draft", "action": "persona.import", "start": False} == (
            inbox[0].params["data"]  # type: ignore[index]
        )
        # The brain, row for row, under a new key of the new installation.
        assert await brain_tables(state.root, "ada", tmp_path) == await brain_tables(other, "ada", tmp_path)
        assert key_path(state.root, "ada").read_bytes() != key_path(other, "ada").read_bytes()
        # The adapters, byte for byte, under their names (the parent first).
        there = AdapterStore.for_state(other)
        here = AdapterStore.for_state(state.root)
        assert ["zoo", "zoo.cat"] == there.names()
        for entry in adapters:
            assert (there.object_path(entry["sha256"]) / WEIGHTS_FILE).read_bytes() == (
                here.object_path(entry["sha256"]) / WEIGHTS_FILE
            ).read_bytes()
        entries = [json.loads(line) for line in (other / "registry" / "audit.log").read_text().splitlines()]
        assert [("persona.import", "ada", out["sha256"])] == [
            (e["action"], e["persona_id"], e["details"]["sha256"]) for e in entries
        ]
        assert verify(other / "registry" / "audit.log").ok
        # Trust on first use pinned the signer for this persona.
        pins = json.loads((other / "trusted-signers.json").read_text())["personas"]
        assert out["signer"] == pins["ada"]["public_key"]
        # The same bundle again: the id is taken.
        error = await refused(admin2, "persona.import", {"path": str(path), "passphrase": PASSPHRASE})
        assert (ErrorCode.INVALID_PARAMS, "persona_id", "persona_exists") == (
            error.code,
            error.data["field"],
            error.data["reason"],
        )
    # The passphrase is in no file of either installation, nor in any log line.
    secret = PASSPHRASE.encode()
    for root in (state.root, other):
        for file in root.rglob("*"):
            assert not file.is_file() or secret not in file.read_bytes(), file
    assert PASSPHRASE not in caplog.text
    assert "correct horse" not in caplog.text


async def test_bundle_round_trip_to_a_recipient_key_under_a_new_id(
    serving: Serving,
    connect: Callable[..., Any],
    state: StateDir,
    adapters: list[dict[str, str]],
    tmp_path: Path,
) -> None:
    admin = await connect(name="admin")
    ada = await make_ada(admin, state, adapters)
    recipient = RecipientPrivateKey.generate()
    out = await call(
        admin,
        "persona.export",
        {"persona_id": "ada", "format": "bundle", "recipient": recipient.public_key().hex, "inline": True},
    )
    assert read(out["path"]) == base64.b64decode(out["data_b64"])
    objects = sorted(p.name for p in AdapterStore.for_state(state.root).objects.iterdir())
    # A key that is not the recipient's opens nothing.
    error = await refused(
        admin,
        "persona.import",
        {
            "data_b64": out["data_b64"],
            "recipient_private_key": RecipientPrivateKey.generate().private.hex(),
            "persona_id": "ada-copy",
        },
    )
    assert (ErrorCode.INVALID_PARAMS, "recipient_private_key", "wrong_key") == (
        error.code,
        error.data["field"],
        error.data["reason"],
    )
    got = await call(
        admin,
        "persona.import",
        {
            "data_b64": out["data_b64"],
            "recipient_private_key": recipient.private.hex(),
            "persona_id": "ada-copy",
            "signer": out["signer"],
        },
    )
    assert ("ada-copy", 2) == (got["persona_id"], got["memories"])
    same_persona(ada, got["profile"])
    assert await brain_tables(state.root, "ada", tmp_path) == await brain_tables(
        state.root, "ada-copy", tmp_path
    )
    assert load_or_create_key(state.root, "ada", environ={}) != load_or_create_key(
        state.root, "ada-copy", environ={}
    )
    # Content-addressed: the adapters were already here, and are not stored twice.
    assert objects == sorted(p.name for p in AdapterStore.for_state(state.root).objects.iterdir())


async def test_a_persona_without_a_brain_exports_its_profile_only(
    serving: Serving, connect: Callable[..., Any], state: StateDir
) -> None:
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": {"id": "bob", "name": "Bob", "role": "clerk"}})
    recipient = RecipientPrivateKey.generate()
    out = await call(
        admin,
        "persona.export",
        {"persona_id": "bob", "format": "bundle", "recipient": recipient.public_key().hex},
    )
    assert (False, 0, 0) == (out["brain"], out["memories"], out["adapters"])
    assert not brain_path(state.root, "bob").exists()
    assert not key_path(state.root, "bob").exists()  # exporting never makes a brain key
    got = await call(
        admin,
        "persona.import",
        {"path": out["path"], "recipient_private_key": recipient.private.hex(), "persona_id": "bob2"},
    )
    assert (False, 0) == (got["brain"], got["memories"])
    assert not brain_path(state.root, "bob2").exists()
    card = await call(admin, "persona.export", {"persona_id": "bob", "format": "ccv3", "memories": "all"})
    assert (False, 0) == (card["brain"], card["memories"])
    assert "Bob" == parse_card_json(read(card["path"])).data.name


async def test_tampered_bundle_and_wrong_passphrase_are_clear_and_change_nothing(
    serving: Serving,
    connect: Callable[..., Any],
    state: StateDir,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = await connect(name="admin")
    await make_ada(admin, state, [])
    out = await call(
        admin, "persona.export", {"persona_id": "ada", "format": "bundle", "passphrase": PASSPHRASE}
    )
    # One good import first (it pins the signer and makes the trust list's lock file).
    await call(admin, "persona.import", {"path": out["path"], "passphrase": PASSPHRASE, "persona_id": "ada1"})
    data = bytearray(read(out["path"]))
    data[len(data) // 2] ^= 0x01
    tampered = tmp_path / "tampered.pdbundle"
    tampered.write_bytes(bytes(data))
    before = (snapshot(state.root), await call(admin, "persona.list", {}))
    cases = [
        (
            {"path": str(tampered), "passphrase": PASSPHRASE, "persona_id": "ada2"},
            "path",
            "tampered",
            "signature",
        ),
        (
            {"path": out["path"], "passphrase": "not it", "persona_id": "ada2"},
            "passphrase",
            "wrong_key",
            "passphrase",
        ),
        (
            {
                "data_b64": base64.b64encode(bytes(data)).decode(),
                "passphrase": PASSPHRASE,
                "persona_id": "ada2",
            },
            "data_b64",
            "tampered",
            "signature",
        ),
        (
            {"path": out["path"], "passphrase": PASSPHRASE, "persona_id": "ada2", "signer": "ab" * 32},
            "signer",
            "untrusted_signer",
            "signed by",
        ),
    ]
    for params, field, reason, words in cases:
        error = await refused(admin, "persona.import", params)
        assert (ErrorCode.INVALID_PARAMS, field, reason) == (
            error.code,
            error.data["field"],
            error.data["reason"],
        )
        assert error.message.startswith(f"invalid params: {field}: ")
        assert words in error.message
        assert before == (snapshot(state.root), await call(admin, "persona.list", {})), params
    assert PASSPHRASE not in caplog.text
    assert "not it" not in caplog.text


# -- cards ----------------------------------------------------------------------------


def card_obj(data: bytes, png: bool, *, ours: bool = False) -> dict[str, Any]:
    """A card as its parsed JSON, less the export's time and (unless ``ours``) our extension,
    which every export adds (V3 asks an exporter to set modification_date)."""
    obj = card_to_obj(read_png_card(data) if png else parse_card_json(data))
    if not ours:
        obj["data"]["extensions"].pop(EXT, None)
    obj["data"].pop("modification_date", None)
    return obj


async def test_v2_json_card_imports_exports_and_reimports_whole(
    serving: Serving, connect: Callable[..., Any], state: StateDir
) -> None:
    admin = await connect(name="admin")
    raw = (CARDS / "v2_card.json").read_bytes()
    got = await call(
        admin, "persona.import", {"data_b64": base64.b64encode(raw).decode(), "persona_id": "haruhi"}
    )
    assert ("ccv2", "Haruhi", "character", "draft") == (
        got["format"],
        got["profile"]["name"],
        got["profile"]["role"],
        got["profile"]["status"],
    )
    assert got["brain"]
    assert got["memories"] > 0
    first = await call(admin, "persona.export", {"persona_id": "haruhi", "format": "ccv2"})
    assert card_obj(raw, False) == card_obj(read(first["path"]), False)
    again = await call(admin, "persona.import", {"path": first["path"], "persona_id": "haruhi2"})
    assert got["memories"] == again["memories"]
    second = await call(admin, "persona.export", {"persona_id": "haruhi2", "format": "ccv2"})
    assert json.loads(read(first["path"])) == json.loads(read(second["path"]))
    # A memory learned later is exported only when asked for, as a new lorebook entry.
    key = load_or_create_key(state.root, "haruhi", environ={})
    async with await Brain.open(brain_path(state.root, "haruhi"), key) as brain:
        await brain.remember("Kyon likes tea", subject="kyon", source="chat")
    cards_only = await call(admin, "persona.export", {"persona_id": "haruhi", "format": "ccv2"})
    everything = await call(
        admin, "persona.export", {"persona_id": "haruhi", "format": "ccv2", "memories": "all"}
    )
    assert (got["memories"], got["memories"] + 1) == (cards_only["memories"], everything["memories"])
    lore = parse_card_json(read(everything["path"])).data.character_book
    assert lore is not None
    assert "Kyon likes tea" == lore.entries[-1].content
    remainder_text = "Bot optimized for GPT-4"  # creator_notes: kept encrypted, never in plain files
    for file in state.root.rglob("*"):
        if file.is_file() and "exports" not in file.parts:
            assert remainder_text.encode() not in file.read_bytes(), file


async def test_v3_png_card_imports_exports_and_reimports_whole(
    serving: Serving, connect: Callable[..., Any]
) -> None:
    admin = await connect(name="admin")
    png = (CARDS / "v3_card.png").resolve()
    got = await call(admin, "persona.import", {"path": str(png), "persona_id": "sera", "role": "guide"})
    assert ("ccv3-png", "guide") == (got["format"], got["profile"]["role"])
    first = await call(admin, "persona.export", {"persona_id": "sera", "format": "ccv3-png", "inline": True})
    exported = base64.b64decode(first["data_b64"])
    assert card_obj(png.read_bytes(), True) == card_obj(exported, True)
    again = await call(admin, "persona.import", {"data_b64": first["data_b64"], "persona_id": "sera2"})
    assert "guide" == again["profile"]["role"]  # from our extension, not the default
    second = await call(
        admin, "persona.export", {"persona_id": "sera2", "format": "ccv3-png", "inline": True}
    )
    assert card_obj(exported, True, ours=True) == card_obj(
        base64.b64decode(second["data_b64"]), True, ours=True
    )
    # The V3 card also exports as V3 JSON, the same card.
    as_json = await call(admin, "persona.export", {"persona_id": "sera", "format": "ccv3"})
    assert card_obj(exported, True, ours=True) == card_obj(read(as_json["path"]), False, ours=True)


# -- grants and bad params --------------------------------------------------------------


async def test_persona_and_observer_tokens_are_refused(
    serving: Serving, connect: Callable[..., Any], state: StateDir
) -> None:
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": {"id": "ada", "name": "Ada", "role": "clerk"}})
    card = base64.b64encode((CARDS / "v2_card.json").read_bytes()).decode()
    persona = await connect(kind="persona", name="ada", token=state.persona_token("ada", create=True))
    observer = state.issue_token(name="watch", role="observer", subject="cli:*").token
    watcher = await connect(name="watch", token=observer)
    before = snapshot(state.root)
    for client in (persona, watcher):
        for method, params in (
            ("persona.export", {"persona_id": "ada", "format": "ccv3"}),
            ("persona.import", {"data_b64": card, "persona_id": "eve"}),
        ):
            error = await refused(client, method, params)
            assert ErrorCode.FORBIDDEN == error.code, (client.client_id, method)
    assert before == snapshot(state.root)
    assert ["ada"] == [p["id"] for p in (await call(admin, "persona.list", {}))["personas"]]


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("persona.export", {"persona_id": "ghost", "format": "ccv3"}, "persona_id"),
        ("persona.export", {"persona_id": "ada", "format": "zip"}, "format"),
        ("persona.export", {"persona_id": "ada"}, "format"),
        ("persona.export", {"persona_id": "ada", "format": "bundle"}, "passphrase"),
        (
            "persona.export",
            {"persona_id": "ada", "format": "bundle", "passphrase": "a", "recipient": "ab" * 32},
            "recipient",
        ),
        ("persona.export", {"persona_id": "ada", "format": "ccv2", "passphrase": "a"}, "passphrase"),
        ("persona.export", {"persona_id": "ada", "format": "bundle", "recipient": "xyz"}, "recipient"),
        ("persona.import", {"persona_id": "eve"}, "path"),
        ("persona.import", {"path": "/x", "data_b64": "AAAA", "persona_id": "eve"}, "data_b64"),
        ("persona.import", {"data_b64": "A" * (MAX_INLINE_B64_CHARS + 4), "persona_id": "eve"}, "data_b64"),
        ("persona.import", {"data_b64": "not base64!", "persona_id": "eve"}, "data_b64"),
        ("persona.import", {"path": "relative/card.json", "persona_id": "eve"}, "path"),
        ("persona.import", {"path": "{cards}", "persona_id": "eve"}, "path"),
        ("persona.import", {"path": "{cards}/missing.json", "persona_id": "eve"}, "path"),
        ("persona.import", {"path": "{cards}/README.md", "persona_id": "eve"}, "path"),
        ("persona.import", {"path": "{cards}/v2_card.json"}, "persona_id"),
        ("persona.import", {"path": "{state}/registry/registry.sqlite", "persona_id": "eve"}, "path"),
        ("persona.import", {"path": "{cards}/v2_card.json", "persona_id": "ada"}, "persona_id"),
        ("persona.import", {"path": "{cards}/v2_card.json", "persona_id": "Bad Id"}, "persona_id"),
        ("persona.import", {"path": "{cards}/v2_card.json", "persona_id": "eve", "format": "ccv3"}, "path"),
        (
            "persona.import",
            {"path": "{cards}/v2_card.json", "persona_id": "eve", "passphrase": "a"},
            "passphrase",
        ),
        (
            "persona.import",
            {"path": "{cards}/v2_card.json", "persona_id": "eve", "format": "bundle"},
            "passphrase",
        ),
        ("persona.import", {"path": "{cards}/v2_card.json", "persona_id": "eve", "format": "tar"}, "format"),
    ],
)
async def test_bad_params_name_the_field_and_change_nothing(
    serving: Serving,
    connect: Callable[..., Any],
    state: StateDir,
    method: str,
    params: dict[str, Any],
    field: str,
) -> None:
    admin = await connect(name="admin")
    await call(admin, "persona.create", {"profile": {"id": "ada", "name": "Ada", "role": "clerk"}})
    if isinstance(params.get("path"), str):
        path = params["path"].replace("{cards}", str(CARDS.resolve())).replace("{state}", str(state.root))
        params = {**params, "path": path}
    before = (snapshot(state.root), await call(admin, "persona.list", {}))
    error = await refused(admin, method, params)
    assert ErrorCode.INVALID_PARAMS == error.code
    assert error.message.startswith(f"invalid params: {field}: "), error.message
    assert before == (snapshot(state.root), await call(admin, "persona.list", {}))


async def test_a_cards_remainder_is_erased_with_its_persona(
    serving: Serving, connect: Callable[..., Any], state: StateDir
) -> None:
    admin = await connect(name="admin")
    raw = base64.b64encode((CARDS / "v2_card.json").read_bytes()).decode()
    await call(admin, "persona.import", {"data_b64": raw, "persona_id": "haruhi"})
    await call(admin, "persona.import", {"data_b64": raw, "persona_id": "kept"})

    def remainders(db: Any) -> list[str]:
        return [row[0] for row in db.execute("SELECT persona_id FROM card_remainders ORDER BY persona_id")]

    assert ["haruhi", "kept"] == await serving.registry.run(remainders)
    await call(admin, "persona.delete", {"persona_id": "haruhi", "confirm": "haruhi"})
    assert ["kept"] == await serving.registry.run(remainders)


async def test_two_imports_of_one_id_at_once_make_one_persona(
    serving: Serving, connect: Callable[..., Any], state: StateDir, tmp_path: Path
) -> None:
    admin = await connect(name="admin")
    raw = base64.b64encode((CARDS / "v2_card.json").read_bytes()).decode()
    params = {"data_b64": raw, "persona_id": "twin"}
    outcomes = await asyncio.gather(
        call(admin, "persona.import", params), call(admin, "persona.import", params), return_exceptions=True
    )
    made = [o for o in outcomes if isinstance(o, dict)]
    errors = [o for o in outcomes if isinstance(o, RpcError)]
    assert (1, 1) == (len(made), len(errors))
    assert "persona_exists" == errors[0].data["reason"]
    # The brain that stayed opens with the key that stayed.
    assert made[0]["memories"] == len((await brain_tables(state.root, "twin", tmp_path))["memories"])


async def test_a_bundle_whose_brain_does_not_fit_leaves_nothing_behind(
    serving: Serving, connect: Callable[..., Any], state: StateDir, tmp_path: Path
) -> None:
    """Signed by a trusted key but with a goal the brain's CHECKs refuse: the half-made brain,
    its new key and its folder are removed, and no persona appears."""
    admin = await connect(name="admin")
    when = "2026-12-01T00:00:00+00:00"
    goal = {
        "id": 1,
        "title": "t",
        "description": None,
        "status": "someday",
        "priority": 0.5,
        "progress": 0.0,
        "due_at": None,
        "created_at": when,
        "updated_at": when,
    }
    export = tmp_path / "brain.json"
    doc = {"format": "personad.brain", "format_version": 1, "tables": {"memories": [], "goals": [goal]}}
    export.write_text(json.dumps(doc))
    bundle = tmp_path / "odd.pdbundle"
    signer = SigningKey.load_or_create(state.root)
    write_bundle(
        bundle,
        profile=Profile(id="odd", name="Odd", role="clerk"),
        brain_export=export,
        adapters=[],
        key=PassphraseKey(PASSPHRASE),
        signer=signer,
    )
    before = (snapshot(state.root), await call(admin, "persona.list", {}))
    error = await refused(
        admin, "persona.import", {"path": str(bundle), "passphrase": PASSPHRASE, "signer": signer.public_hex}
    )
    assert (ErrorCode.INVALID_PARAMS, "path", "bad_format") == (
        error.code,
        error.data["field"],
        error.data["reason"],
    )
    assert "does not fit a brain" in error.message
    assert before == (snapshot(state.root), await call(admin, "persona.list", {}))
    assert not (state.root / "personas" / "odd").exists()
    assert not key_path(state.root, "odd").exists()


async def test_inline_past_the_limit_is_refused_and_leaves_no_file(
    serving: Serving, connect: Callable[..., Any], state: StateDir, tmp_path: Path
) -> None:
    admin = await connect(name="admin")
    big = AdapterStore.for_state(state.root).import_folder(
        make_lora_folder(tmp_path / "big", seed=3, rank=16, width=8192), "big"
    )
    assert big.bytes > MAX_INLINE_BYTES
    await call(
        admin,
        "persona.create",
        {
            "profile": {
                "id": "ada",
                "name": "Ada",
                "role": "x",
                "stack": [{"name": "big", "sha256": big.sha256}],
            }
        },
    )
    recipient = RecipientPrivateKey.generate().public_key().hex
    params = {"persona_id": "ada", "format": "bundle", "recipient": recipient}
    whole = await call(admin, "persona.export", params)  # by path, any size
    assert whole["bytes"] > MAX_INLINE_BYTES
    before = snapshot(state.root)
    error = await refused(admin, "persona.export", {**params, "inline": True})
    assert (ErrorCode.INVALID_PARAMS, "inline", "too_large") == (
        error.code,
        error.data["field"],
        error.data["reason"],
    )
    assert before == snapshot(state.root)

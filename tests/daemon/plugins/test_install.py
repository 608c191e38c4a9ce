"""persona.plugin.add / plugins / remove over the bus: signatures, trust, grants and bad params."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from daemon.client import BusClient
from daemon.persona.daemon import PersonaDaemon
from daemon.plugins.signing import generate_key
from daemon.plugins.trust import TrustStore
from daemon.state import StateDir
from protocol import ErrorCode, RpcError
from tests.daemon.plugins.conftest import MakePlugin, SigningKey

Connect = Callable[..., Awaitable[BusClient]]
HELLO = "import personad_plugin as host\nhost.finish('hello')\n"


async def refused(client: BusClient, method: str, params: dict[str, object]) -> RpcError:
    with pytest.raises(RpcError) as info:
        await client.call(method, params, to="persona:ada")
    return info.value


def installed(persona: PersonaDaemon) -> list[str]:
    return sorted(p.name for p in persona.session_dir.plugins.iterdir() if p.is_dir())


async def test_add_copies_the_signed_folder_and_lists_it_with_its_risk(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    folder = make_plugin("hello", HELLO, permissions=("chat", "write_memories"))
    admin = await connect()
    added = (await admin.call("persona.plugin.add", {"path": str(folder)}, to="persona:ada"))["plugin"]
    assert ("hello", "high", ["chat", "write_memories"]) == (added["id"], added["risk"], added["permissions"])
    copy = persona.session_dir.plugins / "hello"
    assert sorted(p.name for p in copy.iterdir()) == ["main.py", "manifest.json", "signature.json"]
    # The copy is what runs: changing the source afterwards changes nothing.
    (folder / "main.py").write_text("raise SystemExit(3)\n")
    result = await admin.call("persona.plugin.run", {"plugin_id": "hello"}, to="persona:ada")
    assert (True, "hello") == (result["ok"], result["output"])
    listed = (await admin.call("persona.plugins", to="persona:ada"))["plugins"]
    assert [("hello", "high", 1)] == [(p["id"], p["risk"], p["stats"]["runs"]) for p in listed]
    assert (await admin.call("persona.plugin.remove", {"plugin_id": "hello"}, to="persona:ada"))["removed"]
    assert [] == installed(persona)
    assert not (await admin.call("persona.plugin.remove", {"plugin_id": "hello"}, to="persona:ada"))[
        "removed"
    ]


async def test_an_unsigned_plugin_is_refused(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    folder = make_plugin("bare", HELLO, sign=False)
    error = await refused(await connect(), "persona.plugin.add", {"path": str(folder)})
    assert (ErrorCode.FORBIDDEN, "unsigned") == (error.code, error.data["reason"])
    assert [] == installed(persona)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda f: (f / "main.py").write_text("import os\nos.system('curl evil')\n"),
        lambda f: (f / "extra.py").write_text("print('smuggled')\n"),
        lambda f: (f / "manifest.json").write_text(
            json.dumps({**json.loads((f / "manifest.json").read_text()), "permissions": ["network"]})
        ),
        lambda f: (f / "main.py").rename(f / "other.py"),
    ],
    ids=["changed-code", "added-file", "widened-permissions", "renamed-file"],
)
async def test_a_plugin_modified_after_signing_is_refused(
    persona: PersonaDaemon,
    connect: Connect,
    make_plugin: MakePlugin,
    trusted_key: SigningKey,
    tamper: Callable[[Path], object],
) -> None:
    folder = make_plugin("tampered", HELLO)
    tamper(folder)
    error = await refused(await connect(), "persona.plugin.add", {"path": str(folder)})
    assert (ErrorCode.FORBIDDEN, "modified") == (error.code, error.data["reason"])
    assert [] == installed(persona)


async def test_a_forged_signature_is_refused(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey
) -> None:
    folder = make_plugin("forged", HELLO)
    doc = json.loads((folder / "signature.json").read_text())
    doc["signature"] = ("0" if doc["signature"][0] != "0" else "1") + doc["signature"][1:]
    (folder / "signature.json").write_text(json.dumps(doc))
    error = await refused(await connect(), "persona.plugin.add", {"path": str(folder)})
    assert (ErrorCode.FORBIDDEN, "bad_signature") == (error.code, error.data["reason"])


async def test_a_plugin_signed_by_an_untrusted_key_is_refused(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.key"
    public = generate_key(stranger)
    folder = make_plugin("stranger", HELLO, key=stranger)
    error = await refused(await connect(), "persona.plugin.add", {"path": str(folder)})
    assert (ErrorCode.FORBIDDEN, "untrusted") == (error.code, error.data["reason"])
    assert public in str(error)


async def test_the_installed_copy_is_verified_again_at_every_run(
    persona: PersonaDaemon,
    connect: Connect,
    state: StateDir,
    make_plugin: MakePlugin,
    trusted_key: SigningKey,
) -> None:
    """Modified after add: the run is refused and nothing runs. Untrusting the signer refuses it too."""
    admin = await connect()
    for plugin_id in ("edited", "orphaned"):
        folder = make_plugin(plugin_id, HELLO)
        await admin.call("persona.plugin.add", {"path": str(folder)}, to="persona:ada")
    marker = persona.session_dir.root / "ran"
    (persona.session_dir.plugins / "edited" / "main.py").write_text(f"open({str(marker)!r}, 'w')\n")
    error = await refused(admin, "persona.plugin.run", {"plugin_id": "edited"})
    assert (ErrorCode.FORBIDDEN, "modified") == (error.code, error.data["reason"])
    assert not marker.exists()
    assert TrustStore.for_state(state.root).untrust(trusted_key.public)
    error = await refused(admin, "persona.plugin.run", {"plugin_id": "orphaned"})
    assert (ErrorCode.FORBIDDEN, "untrusted") == (error.code, error.data["reason"])
    assert not (persona.session_dir.plugins / "runs.jsonl").exists()


async def test_the_same_id_needs_replace(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey, tmp_path: Path
) -> None:
    admin = await connect()
    folder = make_plugin("twice", HELLO)
    await admin.call("persona.plugin.add", {"path": str(folder)}, to="persona:ada")
    error = await refused(admin, "persona.plugin.add", {"path": str(folder)})
    assert (ErrorCode.INVALID_PARAMS, "exists", "path") == (
        error.code,
        error.data["reason"],
        error.data["field"],
    )
    again = await admin.call("persona.plugin.add", {"path": str(folder), "replace": True}, to="persona:ada")
    assert "twice" == again["plugin"]["id"]
    assert ["twice"] == installed(persona)


async def test_bad_params_name_the_field_and_change_nothing(
    persona: PersonaDaemon, connect: Connect, make_plugin: MakePlugin, trusted_key: SigningKey, tmp_path: Path
) -> None:
    admin = await connect()
    cases: list[tuple[str, dict[str, object], str]] = [
        ("persona.plugin.add", {"path": "relative/folder"}, "path"),
        ("persona.plugin.add", {"path": str(tmp_path / "missing")}, "path"),
        ("persona.plugin.add", {"path": 7}, "path"),
        ("persona.plugin.add", {"path": "/tmp", "replace": "yes"}, "replace"),
        ("persona.plugin.run", {"plugin_id": "Not An Id"}, "plugin_id"),
        ("persona.plugin.run", {"plugin_id": "nobody"}, "plugin_id"),
        ("persona.plugin.run", {"plugin_id": "x", "input": "y" * 300_000}, "input"),
        ("persona.plugin.remove", {"plugin_id": "../ada"}, "plugin_id"),
        ("persona.plugins", {"all": True}, "all"),
    ]
    for method, params, field in cases:
        error = await refused(admin, method, params)
        assert ErrorCode.INVALID_PARAMS == error.code, (method, params)
        assert f"invalid params: {field}" in str(error), (method, params, str(error))
    # A folder whose manifest is wrong: INVALID_PARAMS, naming the manifest's field.
    folder = make_plugin("badperm", HELLO, permissions=("root_shell",))
    error = await refused(admin, "persona.plugin.add", {"path": str(folder)})
    assert (ErrorCode.INVALID_PARAMS, "bad_manifest") == (error.code, error.data["reason"])
    assert "permissions" in str(error)
    # A folder with a special file in it (here a fifo, which would block a reader) is not a plugin.
    folder = make_plugin("piped", HELLO)
    os.mkfifo(folder / "pipe")
    error = await refused(admin, "persona.plugin.add", {"path": str(folder)})
    assert (ErrorCode.INVALID_PARAMS, "bad_folder", "path") == (
        error.code,
        error.data["reason"],
        error.data["field"],
    )
    assert "only regular files" in str(error)
    assert [] == installed(persona)


async def test_tokens_without_a_grant_are_forbidden(
    persona: PersonaDaemon,
    connect: Connect,
    state: StateDir,
    make_plugin: MakePlugin,
    trusted_key: SigningKey,
) -> None:
    """Another persona and an observer may not install, list, run or remove ada's plugins."""
    admin = await connect()
    await admin.call("persona.plugin.add", {"path": str(make_plugin("hello", HELLO))}, to="persona:ada")
    bob = await connect(token=state.persona_token("bob", create=True), kind="persona", name="bob")
    watcher = await connect(token=state.issue_token(name="watch", role="observer", subject="cli:*").token)
    calls: list[tuple[str, dict[str, object]]] = [
        ("persona.plugin.add", {"path": str(make_plugin("other", HELLO))}),
        ("persona.plugins", {}),
        ("persona.plugin.run", {"plugin_id": "hello"}),
        ("persona.plugin.remove", {"plugin_id": "hello"}),
    ]
    for client in (bob, watcher):
        for method, params in calls:
            error = await refused(client, method, params)
            assert ErrorCode.FORBIDDEN == error.code, (method, str(error))
    assert ["hello"] == installed(persona)
    assert not (persona.session_dir.plugins / "runs.jsonl").exists()


def test_the_source_folder_is_left_alone(make_plugin: MakePlugin, signing_key: SigningKey) -> None:
    """Signing writes only signature.json next to the files it covers."""
    folder = make_plugin("tidy", HELLO)
    assert sorted(p.name for p in folder.iterdir()) == ["main.py", "manifest.json", "signature.json"]

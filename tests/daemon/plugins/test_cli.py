"""The ``personad plugin`` verbs, called through the module's own parser and handlers."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest

from daemon.plugins.cli import add_verbs
from daemon.plugins.trust import TrustStore
from daemon.state import StateDir
from tests.daemon.plugins.conftest import MakePlugin

HELLO = "import personad_plugin as host\nhost.finish('hello')\n"


def cli(state: StateDir, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="personad")
    verbs = parser.add_subparsers(dest="verb", required=True)
    handlers = add_verbs(lambda name, help: verbs.add_parser(name, help=help))
    args = parser.parse_args(list(argv))
    return int(handlers[args.verb](args, state, "ws://127.0.0.1:1"))


def test_keygen_sign_trust_verify_untrust(
    state: StateDir, make_plugin: MakePlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 0 == cli(state, "plugin", "keygen")
    public = capsys.readouterr().out.strip()
    key_file = state.root / "plugins" / "signing.key"
    assert 0o600 == stat.S_IMODE(key_file.stat().st_mode)
    assert public not in key_file.read_text()  # the file holds the private half
    assert 2 == cli(state, "plugin", "keygen")  # never over an existing key
    assert "exists" in capsys.readouterr().err

    folder = make_plugin("hello", HELLO, sign=False)
    assert 0 == cli(state, "plugin", "sign", str(folder), "--key", str(key_file))
    signed = json.loads(capsys.readouterr().out)
    assert ("hello", public) == (signed["plugin"], signed["key"])

    assert 1 == cli(state, "plugin", "verify", str(folder))
    assert "untrusted" in capsys.readouterr().err
    assert 0 == cli(state, "plugin", "trust", public, "--name", "me")
    assert 0 == cli(state, "plugin", "trust", public.upper())
    assert "already trusted" in capsys.readouterr().out
    assert [public] == [k.key for k in TrustStore.for_state(state.root).entries()]
    assert 0 == cli(state, "plugin", "verify", str(folder))
    assert {"plugin": "hello", "version": "0.1.0", "key": public, "risk": "none"} == json.loads(
        capsys.readouterr().out
    )
    assert 0 == cli(state, "plugin", "list-trusted", "--json")
    (entry,) = json.loads(capsys.readouterr().out)
    assert (public, "me") == (entry["key"], entry["name"])

    assert 0 == cli(state, "plugin", "untrust", public)
    assert 1 == cli(state, "plugin", "untrust", public)
    assert [] == TrustStore.for_state(state.root).entries()
    assert 0o600 == stat.S_IMODE((state.root / "plugins" / "trusted.json").stat().st_mode)


@pytest.mark.parametrize("key", ["abc", "zz" * 32, "00" * 33, ""])
def test_trust_refuses_what_is_not_a_key(
    state: StateDir, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 2 == cli(state, "plugin", "trust", key)
    assert "64 hex digits" in capsys.readouterr().err
    assert [] == TrustStore.for_state(state.root).entries()


def test_sign_refuses_a_folder_that_is_not_a_plugin(
    state: StateDir, make_plugin: MakePlugin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k"
    assert 0 == cli(state, "plugin", "keygen", "--out", str(key))
    folder = make_plugin("linked", HELLO, sign=False)
    os.symlink("/etc/passwd", folder / "passwd")
    assert 1 == cli(state, "plugin", "sign", str(folder), "--key", str(key))
    assert "only regular files" in capsys.readouterr().err
    assert not (folder / "signature.json").exists()
    (folder / "passwd").unlink()
    (folder / "manifest.json").write_text('{"id": "Bad Id"}')
    assert 1 == cli(state, "plugin", "sign", str(folder), "--key", str(key))
    assert "manifest.json: id" in capsys.readouterr().err
    (folder / "manifest.json").write_text(
        json.dumps({"id": "linked", "name": "L", "version": "1.0.0", "entry": "main.py"})
    )
    assert 2 == cli(state, "plugin", "sign", str(folder), "--key", str(folder / "main.py"))
    assert "not a plugin signing key" in capsys.readouterr().err
    assert not (folder / "signature.json").exists()

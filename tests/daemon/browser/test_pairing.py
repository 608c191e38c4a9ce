"""Pairing the extension (daemon/browser/extension.py): its id, its token, its configured copy."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from daemon.browser.extension import SOURCE_DIR, extension_id, manifest_id, pair
from daemon.errors import ConfigError


def test_the_id_is_derived_from_the_pinned_key() -> None:
    """sha256 of the DER key, first 32 hex digits spelt a-p: the id docs/browser.md publishes."""
    manifest = json.loads((SOURCE_DIR / "manifest.json").read_text())
    assert "amoadhonegbkdjjblhocnoklhidgajnn" == manifest_id() == extension_id(manifest["key"])
    assert "116" == manifest["minimum_chrome_version"]
    assert 3 == manifest["manifest_version"]
    other = extension_id(base64.b64encode(b"another key").decode())
    assert (32, True) == (len(other), set(other) <= set("abcdefghijklmnop"))


def test_pairing_writes_a_private_copy_and_replaces_the_previous_token(state, tmp_path) -> None:
    """config.json (0600) holds url, token, name, topics; pairing again revokes the old token."""
    out = tmp_path / "ext"
    first = pair(state, url="ws://127.0.0.1:1", name="laptop", out=out, topics=("persona.*",))
    config = json.loads((out / "config.json").read_text())
    assert {"url": "ws://127.0.0.1:1", "token": first.token, "name": "laptop", "topics": ["persona.*"]} == {
        k: config[k] for k in ("url", "token", "name", "topics")
    }
    assert 0o600 == stat.S_IMODE((out / "config.json").stat().st_mode)
    assert 0o700 == stat.S_IMODE(out.stat().st_mode)
    assert (out / "service_worker.js").exists()
    entry = state.tokens().verify(first.token)
    assert ("observer", "extension:*") == (entry.role, entry.subject)
    assert entry.allows("bus.ping", "bus")
    assert not entry.allows("browser_js", "cap:browser")
    second = pair(state, url="ws://127.0.0.1:1", name="laptop", out=out)
    assert (1, None) == (second.replaced, state.tokens().verify(first.token))
    assert state.tokens().verify(second.token) is not None


def test_pairing_never_clobbers_a_folder_it_did_not_write(state, tmp_path) -> None:
    """An existing folder without config.json is refused, and no token is issued."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    before = len(state.tokens().entries())
    with pytest.raises(ConfigError, match="is not a paired extension"):
        pair(state, url="ws://127.0.0.1:1", name="x", out=tmp_path / "mine")
    assert "keep me" == (tmp_path / "mine" / "notes.txt").read_text()
    assert before == len(state.tokens().entries())

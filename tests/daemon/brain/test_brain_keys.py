"""Where brain keys live: created once, private, never over existing data."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from daemon.brain import InsecureKey, InvalidInput, MissingKey, brain_path, key_path
from daemon.brain.keys import load_or_create_key


def test_first_start_creates_a_private_key_outside_the_persona_folder(tmp_path: Path) -> None:
    """The key file is 0600 in a 0700 secrets folder, not in personas/<id>/."""
    key = load_or_create_key(tmp_path, "p1", environ={})
    path = key_path(tmp_path, "p1")
    assert 32 == len(key)
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    assert 0o700 == stat.S_IMODE(path.parent.stat().st_mode)
    assert brain_path(tmp_path, "p1").parent not in path.parents
    assert key == load_or_create_key(tmp_path, "p1", environ={})


def test_each_persona_has_its_own_key(tmp_path: Path) -> None:
    """Two personas get two different keys."""
    assert load_or_create_key(tmp_path, "a", environ={}) != load_or_create_key(tmp_path, "b", environ={})


def test_systemd_credential_wins(tmp_path: Path) -> None:
    """$CREDENTIALS_DIRECTORY/brain-key is used, hex or raw, and no key file is created."""
    creds = tmp_path / "creds"
    creds.mkdir()
    secret = os.urandom(32)
    (creds / "brain-key").write_text(secret.hex() + "\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert secret == load_or_create_key(tmp_path, "p1", environ=env)
    (creds / "brain-key").write_bytes(secret)
    assert secret == load_or_create_key(tmp_path, "p1", environ=env)
    assert not key_path(tmp_path, "p1").exists()


def test_configured_credential_missing_is_an_error(tmp_path: Path) -> None:
    """With $CREDENTIALS_DIRECTORY set but no brain-key, no fallback key is made."""
    (tmp_path / "creds").mkdir()
    with pytest.raises(MissingKey, match="CREDENTIALS_DIRECTORY"):
        load_or_create_key(tmp_path, "p1", environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert not key_path(tmp_path, "p1").exists()


def test_no_new_key_over_an_existing_brain(tmp_path: Path) -> None:
    """A brain.sqlite without its key file raises MissingKey and creates nothing."""
    database = brain_path(tmp_path, "p1")
    database.parent.mkdir(parents=True)
    database.write_bytes(b"\x00" * 4096)
    with pytest.raises(MissingKey, match="exists"):
        load_or_create_key(tmp_path, "p1", environ={})
    assert not key_path(tmp_path, "p1").exists()


def test_readable_key_file_is_refused(tmp_path: Path) -> None:
    """A key file others can read is refused, not silently fixed."""
    load_or_create_key(tmp_path, "p1", environ={})
    key_path(tmp_path, "p1").chmod(0o644)
    with pytest.raises(InsecureKey, match="0644"):
        load_or_create_key(tmp_path, "p1", environ={})


def test_malformed_key_file_is_refused(tmp_path: Path) -> None:
    """A key file of the wrong length is refused."""
    load_or_create_key(tmp_path, "p1", environ={})
    key_path(tmp_path, "p1").write_text("abc")
    with pytest.raises(InsecureKey, match="hex"):
        load_or_create_key(tmp_path, "p1", environ={})


@pytest.mark.parametrize("persona_id", ["../x", "a/b", ".hidden", "", "A" * 3, "x" * 65])
def test_persona_ids_that_escape_are_refused(tmp_path: Path, persona_id: str) -> None:
    """Persona ids that are not plain path components are refused."""
    with pytest.raises(InvalidInput):
        load_or_create_key(tmp_path, persona_id, environ={})


@pytest.mark.parametrize(
    ("persona_id", "valid"),
    [
        ("demo", True),
        ("plain", True),
        ("a-b_c9", True),
        ("0" * 64, True),
        ("a.b", False),  # the brain once allowed dots; the config never did
        ("demo.toml", False),
        ("Demo", False),
        ("-x", False),
        ("demo\n", False),
        ("0" * 65, False),
    ],
)
def test_brain_and_config_agree_on_persona_ids(tmp_path: Path, persona_id: str, valid: bool) -> None:
    """One rule (daemon.ids) for the brain's paths and the persona config."""
    from daemon.brain.keys import validate_persona_id as brain_check
    from daemon.errors import ConfigError
    from daemon.persona.config import validate_persona_id as config_check

    if valid:
        assert persona_id == brain_check(persona_id) == config_check(persona_id)
        return
    with pytest.raises(InvalidInput):
        brain_check(persona_id)
    with pytest.raises(ConfigError):
        config_check(persona_id)

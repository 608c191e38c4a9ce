"""Persona config validation and the private session directory."""

from __future__ import annotations

import os
import stat

import pytest

from daemon.errors import ConfigError, StateDirError
from daemon.persona.config import list_persona_ids, load_persona_config
from daemon.persona.session_dir import SUBDIRS, prepare_session_dir


def write(tmp_path, name: str, text: str):
    (tmp_path / "personas").mkdir(exist_ok=True)
    (tmp_path / "personas" / f"{name}.toml").write_text(text)
    return tmp_path


def test_valid_config_loads(tmp_path) -> None:
    """A well-formed file gives a typed config."""
    cfg = load_persona_config(
        write(tmp_path, "ada", 'id = "ada"\nname = "Ada"\ncapabilities=["chat"]\n'), "ada"
    )
    assert ("ada", "Ada", ["chat"]) == (cfg.id, cfg.name, cfg.capabilities)
    assert ["ada"] == list_persona_ids(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('id = "ada"\nname = 42\n', "field 'name': Input should be a valid string"),
        ('id = "ada"\nname = "A"\nnmae = "typo"\n', "field 'nmae': Extra inputs are not permitted"),
        ('id = "ada"\n', "field 'name': Field required"),
        ('id = "bob"\nname = "B"\n', "field 'id': is 'bob' but the file is for 'ada'"),
        ('id = "ada"\nname = "A"\ncapabilities = ["Bad Cap"]\n', "field 'capabilities.0'"),
        ("id = \n", "not valid TOML"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, text: str, expected: str) -> None:
    """Every config error names the file and the offending field."""
    write(tmp_path, "ada", text)
    with pytest.raises(ConfigError) as info:
        load_persona_config(tmp_path, "ada")
    assert str(tmp_path / "personas" / "ada.toml") in str(info.value)
    assert expected in str(info.value)


def test_missing_config_and_bad_id(tmp_path) -> None:
    """A missing file and an id that could escape a path are clear errors."""
    with pytest.raises(ConfigError, match="no such persona config"):
        load_persona_config(tmp_path, "ghost")
    with pytest.raises(ConfigError, match="invalid persona id"):
        load_persona_config(tmp_path, "../etc")


def test_session_dir_layout_is_private(tmp_path) -> None:
    """Every level of the session directory is created 0700."""
    sd = prepare_session_dir(tmp_path / "state", "ada")
    for path in [
        tmp_path / "state",
        tmp_path / "state" / "personas",
        sd.root,
        *(sd.root / d for d in SUBDIRS),
    ]:
        assert 0o700 == stat.S_IMODE(os.stat(path).st_mode), path


def test_session_dir_tightens_loose_modes(tmp_path) -> None:
    """A pre-existing directory with loose permissions is tightened to 0700."""
    (tmp_path / "state" / "personas" / "ada").mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / "state" / "personas" / "ada", 0o777)
    sd = prepare_session_dir(tmp_path / "state", "ada")
    assert 0o700 == stat.S_IMODE(os.stat(sd.root).st_mode)


def test_session_dir_refuses_symlinks(tmp_path) -> None:
    """A symlink where the persona's folder should be is refused, not followed."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "state" / "personas").mkdir(parents=True)
    (tmp_path / "state" / "personas" / "ada").symlink_to(elsewhere)
    with pytest.raises(StateDirError, match="symlink"):
        prepare_session_dir(tmp_path / "state", "ada")
    assert [] == list(elsewhere.iterdir())


def test_session_dir_refuses_a_file_in_the_way(tmp_path) -> None:
    """A file where a directory belongs stops start-up with the path in the error."""
    (tmp_path / "state" / "personas").mkdir(parents=True)
    (tmp_path / "state" / "personas" / "ada").write_text("not a dir")
    with pytest.raises(StateDirError, match="not a directory"):
        prepare_session_dir(tmp_path / "state", "ada")


def test_no_fallback_when_parent_is_missing(tmp_path) -> None:
    """When the state root's parent is missing, start-up fails rather than picking another place."""
    with pytest.raises(StateDirError, match="parent does not exist"):
        prepare_session_dir(tmp_path / "missing" / "state", "ada")

"""End to end with real processes: `personad registry` on a real bus, and the transfer verbs
persona-export, persona-import and bundle-key as a person types them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.registry.cards_png import read_png_card
from tests.conftest import run_cli as cli
from tests.conftest import start_bus_process

CARDS = Path(__file__).resolve().parent.parent / "daemon" / "registry" / "cards"
PASSPHRASE = "a long passphrase nobody logs"

pytestmark = pytest.mark.slow


def ok(state, *args: str, url: str) -> dict:
    done = cli(state, *args, url=url, timeout=120)
    assert 0 == done.returncode, done.stderr
    return json.loads(done.stdout)


def test_transfer_verbs_against_a_real_registry(state, spawn, tmp_path) -> None:
    _bus, url = start_bus_process(spawn)
    registry = spawn("registry", "--no-import", env={"PERSONAD_URL": url})
    registry.wait_for_line(r"registry:main serving cap:registry")

    card = ok(state, "persona-import", str(CARDS / "v2_card.json"), "--id", "haruhi", url=url)
    assert ("haruhi", "ccv2", True) == (card["persona_id"], card["format"], card["brain"])

    # A recipient key pair; the bundle sealed to it opens with its private half only.
    key_file = tmp_path / "recipient.key"
    made = cli(state, "bundle-key", "new", "--out", str(key_file), url=url)
    assert 0 == made.returncode, made.stderr
    public = made.stdout.split()[-1]
    assert 0o600 == key_file.stat().st_mode & 0o777
    sealed = ok(state, "persona-export", "haruhi", "--recipient", public, url=url)
    signer = cli(state, "bundle-key", "signer", url=url)
    assert sealed["signer"] == signer.stdout.strip()
    opened = ok(
        state,
        "persona-import",
        sealed["path"],
        "--recipient-key-file",
        str(key_file),
        "--id",
        "haruhi2",
        url=url,
    )
    assert (card["memories"], "bundle") == (opened["memories"], opened["format"])

    # A passphrase from a file; a wrong one is refused, clearly, and creates nothing.
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(PASSPHRASE + "\n")
    bad.write_text("not the passphrase\n")
    locked = ok(state, "persona-export", "haruhi", "--passphrase-file", str(good), url=url)
    refused = cli(
        state, "persona-import", locked["path"], "--passphrase-file", str(bad), "--id", "haruhi3", url=url
    )
    assert 1 == refused.returncode
    assert "invalid params: passphrase: wrong passphrase" in refused.stderr
    listing = cli(state, "persona-list", url=url)
    assert ["haruhi", "haruhi2"] == [line.split()[0] for line in listing.stdout.splitlines()[1:]]
    ok(state, "persona-import", locked["path"], "--passphrase-file", str(good), "--id", "haruhi3", url=url)

    # A card PNG copied out through the bus.
    png = tmp_path / "haruhi.png"
    ok(state, "persona-export", "haruhi3", "--format", "ccv3-png", "--out", str(png), url=url)
    assert "Haruhi" == read_png_card(png.read_bytes()).data.name

    registry.stop()
    assert PASSPHRASE not in registry.output()

"""A registry killed in the middle of persona.import: the half-made import is taken back
when it starts again, so nothing unanswered is left half-written and the same import can be
sent again. (Found by bench/soak.py, whose ledger holds bundle imports to this.) Killed in
the middle of persona.export, its temporary files (a bundle's plaintext brain) are removed.

The state a kill -9 leaves is made here by the import's own steps (NewBrain.write, the work
folder with the decrypted bundle) without the registry's record, as the handler's order
leaves it when the process dies between them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.brain.keys import brain_path, key_path
from daemon.bus import Bus
from daemon.inference.adapters import sha256_file
from daemon.registry.bundle import write_bundle
from daemon.registry.bundle_keys import PassphraseKey, SigningKey
from daemon.registry.transfer_brain import NewBrain, import_notes
from daemon.state import StateDir
from protocol.profile import Profile
from tests.daemon.registry.conftest import registry_serving
from tests.daemon.registry.test_bundle import make_adapter

PASSPHRASE = "a passphrase for the recovery test"


def a_bundle(folder: Path) -> Path:
    """A signed bundle of persona ``ada``: profile, an (empty) brain and one adapter on her stack."""
    folder.mkdir()
    adapter = make_adapter(folder / "lora", seed=5)
    sha = sha256_file(adapter / "adapter_model.safetensors")
    brain = folder / "brain.json"
    doc = {"format": "personad.brain", "format_version": 1, "tables": {"memories": []}}
    brain.write_text(json.dumps(doc))
    bundle = folder / "ada.pdbundle"
    write_bundle(
        bundle,
        profile=Profile(id="ada", name="Ada", role="clerk", stack=[{"name": "ada-lora", "sha256": sha}]),
        brain_export=brain,
        adapters=[adapter],
        key=PassphraseKey(PASSPHRASE),
        signer=SigningKey.load_or_create(folder),
    )
    return bundle


async def test_an_import_the_registry_died_in_is_taken_back_and_can_be_sent_again(
    bus: Bus, state: StateDir, connect: Callable[..., Any], tmp_path: Path
) -> None:
    bundle = a_bundle(tmp_path / "source")
    # What the registry had done when it was killed: the import's work folder (the bundle's
    # decrypted contents), its note, the brain's folder, key and brain; no record yet.
    work = state.root / ".import-k1ll3d"
    work.mkdir(mode=0o700)
    (work / "brain.json").write_text("decrypted persona data")
    NewBrain(state.root, "ada").write({"memories": []})
    assert brain_path(state.root, "ada").exists()
    assert key_path(state.root, "ada").exists()
    assert ["ada"] == import_notes(state.root)

    async with registry_serving(bus, state) as serving:
        assert not work.exists()
        assert not brain_path(state.root, "ada").parent.exists()
        assert not key_path(state.root, "ada").exists()
        assert [] == import_notes(state.root)
        admin = await connect(name="admin")
        # The same import again: the id is free, and it is made whole.
        got = await admin.call(
            "persona.import",
            {"path": str(bundle), "passphrase": PASSPHRASE},
            to="cap:registry",
            deadline_ms=60_000,
        )
        assert ("ada", True) == (got["persona_id"], got["brain"])
        assert brain_path(state.root, "ada").exists()
        assert [] == import_notes(state.root)  # committed: the note is gone
        assert [] == await serving.service.recover()  # nothing else to take back


async def test_an_import_committed_just_before_the_kill_is_kept(
    bus: Bus, state: StateDir, connect: Callable[..., Any], tmp_path: Path
) -> None:
    """Killed after the record was committed, before the note was removed: the persona stays."""
    bundle = a_bundle(tmp_path / "source")
    async with registry_serving(bus, state):
        admin = await connect(name="admin")
        await admin.call("persona.import", {"path": str(bundle), "passphrase": PASSPHRASE}, to="cap:registry")
    brain = brain_path(state.root, "ada").read_bytes()
    note = state.root / "registry" / "imports" / "ada.json"
    note.write_text(json.dumps({"persona_id": "ada", "made_folder": True, "made_key": True}))
    async with registry_serving(bus, state):
        assert not note.exists()
        assert brain == brain_path(state.root, "ada").read_bytes()
        assert key_path(state.root, "ada").exists()
        admin = await connect(name="admin2")
        got = await admin.call("persona.get", {"persona_id": "ada"}, to="cap:registry")
        assert "draft" == got["profile"]["status"]


async def test_a_note_that_names_another_persona_is_left_alone(
    bus: Bus, state: StateDir, tmp_path: Path
) -> None:
    """A note whose name and content disagree (a hand edit, a bug) removes nothing."""
    NewBrain(state.root, "bob").write({"memories": []})
    note = state.root / "registry" / "imports" / "bob.json"
    note.write_text(json.dumps({"persona_id": "../../tokens", "made_folder": True, "made_key": True}))
    async with registry_serving(bus, state):
        assert note.exists()
        assert brain_path(state.root, "bob").exists()


async def test_a_note_cut_short_by_the_crash_is_removed(bus: Bus, state: StateDir) -> None:
    """The note is written (and fsynced) before anything else: one cut short stands for nothing made."""
    notes = state.root / "registry" / "imports"
    notes.mkdir(parents=True, mode=0o700)
    (notes / "eve.json").write_text('{"persona_id": "ev')
    async with registry_serving(bus, state):
        assert [] == import_notes(state.root)


async def test_an_export_the_registry_died_in_leaves_no_plaintext_behind(
    bus: Bus, state: StateDir, connect: Callable[..., Any], tmp_path: Path
) -> None:
    bundle = a_bundle(tmp_path / "source")
    async with registry_serving(bus, state):
        admin = await connect(name="admin")
        await admin.call(
            "persona.import",
            {"path": str(bundle), "passphrase": PASSPHRASE},
            to="cap:registry",
            deadline_ms=60_000,
        )
        done = await admin.call(
            "persona.export",
            {"persona_id": "ada", "format": "bundle", "passphrase": PASSPHRASE},
            to="cap:registry",
            deadline_ms=60_000,
        )
    exports = Path(done["path"]).parent
    # What a kill -9 in the middle of the next export leaves: its work folder with the brain's
    # plaintext export, and the bundle half-sealed under its temporary name.
    work = exports / ".export-k1ll3d"
    work.mkdir(mode=0o700)
    (work / "brain.json").write_text("decrypted persona data")
    half = exports / ".ada-20261204T000000Z-abcdef.pdbundle.x1y2z3"
    half.write_bytes(b"half a bundle")

    async with registry_serving(bus, state):
        assert [Path(done["path"])] == list(exports.iterdir())  # the whole export stays

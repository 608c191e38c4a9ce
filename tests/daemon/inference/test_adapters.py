"""The adapter store: names, content addressing, PEFT folders in and out."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from daemon.inference.adapters import (
    WEIGHTS_FILE,
    AdapterStore,
    chain,
    peft_key,
    read_safetensors_header,
    sha256_file,
)
from daemon.inference.engine import Engine
from daemon.inference.errors import AdapterCorrupt, AdapterNotFound, InvalidAdapterName
from daemon.inference.model import load_model
from tests.daemon.inference.conftest import save_random_adapter


def plain_peft(model_dir, adapter_dir, tmp_path):  # type: ignore[no-untyped-def]
    """What a user of plain PEFT does: PeftModel.from_pretrained on a fresh base model."""
    from peft import PeftModel

    with warnings.catch_warnings():  # a transformers deprecation PEFT triggers; not ours
        warnings.simplefilter("ignore", FutureWarning)
        return PeftModel.from_pretrained(load_model(model_dir, state_root=tmp_path).model, str(adapter_dir))


def test_names_chain_and_peft_keys() -> None:
    """A dotted name's stack is its parent chain; PEFT keys are dot-free and one-to-one."""
    assert ["legal", "legal.patent", "legal.patent.uspto"] == chain("legal.patent.uspto")
    keys = {peft_key(n) for n in ("a.b", "a_b", "a-b", "a__b", "a.b.c")}
    assert 5 == len(keys)
    assert all("." not in k and k.isidentifier() for k in keys)
    for bad in ("", "Legal", "a..b", ".a", "a/b", "a.", "x" * 40):
        with pytest.raises(InvalidAdapterName):
            chain(bad)


def test_import_list_export_round_trip(store: AdapterStore, tiny_dir, tmp_path) -> None:
    """Import stores by content hash; re-import is idempotent; export gives the same bytes back."""
    folder = save_random_adapter(tiny_dir, tmp_path / "src", seed=1)
    record = store.import_folder(folder, "legal")
    assert sha256_file(folder / WEIGHTS_FILE) == record.sha256
    assert record.path == store.objects / record.sha256
    again = store.import_folder(folder, "legal")
    assert (record.sha256, 1) == (again.sha256, len(list(store.objects.iterdir())))
    assert ["legal"] == store.names()
    assert ("q_proj", "v_proj") == record.target_modules
    exported = store.export("legal", tmp_path / "out")
    assert record.sha256 == exported.sha256
    assert (folder / WEIGHTS_FILE).read_bytes() == (tmp_path / "out" / WEIGHTS_FILE).read_bytes()
    with pytest.raises(InvalidAdapterName):
        store.export("legal", tmp_path / "out")  # not empty any more


def test_child_needs_its_parent(store: AdapterStore, tiny_dir, tmp_path) -> None:
    """A level is stored only under a stored parent, so every stack is complete."""
    folder = save_random_adapter(tiny_dir, tmp_path / "src", seed=1)
    with pytest.raises(AdapterNotFound, match="parent 'legal'"):
        store.import_folder(folder, "legal.patent")
    store.import_folder(folder, "legal")
    store.import_folder(folder, "legal.patent")
    assert ["legal", "legal.patent"] == [r.name for r in store.resolve("legal.patent")]
    with pytest.raises(AdapterNotFound, match=r"no adapter named 'legal\.trademark'"):
        store.resolve("legal.trademark")


def test_corrupt_safetensors_are_refused(store: AdapterStore, tiny_dir, tmp_path) -> None:
    """Truncated or garbage weights fail at import with the file named, before any loader sees them."""
    folder = save_random_adapter(tiny_dir, tmp_path / "src", seed=1)
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(AdapterCorrupt, match="truncated"):
        store.import_folder(folder, "legal")
    weights.write_bytes(b"not a safetensors file at all")
    with pytest.raises(AdapterCorrupt, match="not a safetensors file"):
        read_safetensors_header(weights)
    (folder / "adapter_config.json").write_text("{")
    with pytest.raises(AdapterCorrupt, match=r"adapter_config\.json"):
        store.import_folder(folder, "legal")
    assert [] == store.names()


def test_resaved_adapter_has_the_same_hash(store: AdapterStore, tiny_dir, tmp_path) -> None:
    """Loading a stored adapter into PEFT and saving it again gives the same content address."""
    record = store.import_folder(save_random_adapter(tiny_dir, tmp_path / "src", seed=3), "legal")
    model = plain_peft(tiny_dir, record.path, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(tmp_path / "resaved"))
    assert record.sha256 == sha256_file(tmp_path / "resaved" / WEIGHTS_FILE)


def test_exported_adapter_loads_in_plain_peft_with_the_same_logits(store, tiny_dir, tmp_path) -> None:
    """`adapter export` gives a folder plain PeftModel.from_pretrained loads, with the engine's logits."""
    store.import_folder(save_random_adapter(tiny_dir, tmp_path / "a", seed=4), "legal")
    store.export("legal", tmp_path / "exported")
    ids = torch.tensor([[1, 50, 60, 70, 80, 2]])
    engine = Engine(load_model(tiny_dir, state_root=tmp_path), store)
    ours = engine.logits(ids, store.resolve("legal"), "unmerged")
    plain = plain_peft(tiny_dir, tmp_path / "exported", tmp_path)
    with torch.inference_mode():
        theirs = plain(input_ids=ids).logits
    assert torch.allclose(theirs, ours, atol=1e-6, rtol=0)


def test_stored_object_altered_on_disk_is_detected(store: AdapterStore, tiny_dir, tmp_path) -> None:
    """verify() re-hashes: an object changed after import is AdapterCorrupt, not silently used."""
    record = store.import_folder(save_random_adapter(tiny_dir, tmp_path / "a", seed=5), "legal")
    weights = record.path / WEIGHTS_FILE
    other = save_random_adapter(tiny_dir, tmp_path / "b", seed=6) / WEIGHTS_FILE
    weights.chmod(0o600)
    shutil.copyfile(other, weights)
    with pytest.raises(AdapterCorrupt, match="altered or damaged"):
        store.verify(store.get("legal"))

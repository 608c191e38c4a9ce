"""adapter.merge: exact cat of whole stacks, PEFT's approximations, bad input, grants, the bus.

The references are independent of daemon/inference/merge.py: plain PEFT with
every level of both stacks loaded and active at once, PEFT's own
``add_weighted_adapter`` on a PeftModel, and deltas recomputed from the
source files (B · A · scaling).
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from daemon.client import BusClient
from daemon.inference.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterRecord, AdapterStore
from daemon.inference.errors import AdapterCorrupt, AdapterIncompatible, AdapterNotFound, Unsupported
from daemon.inference.merge import MergeParamsError, build_merge
from daemon.inference.model import load_model
from protocol import ErrorCode, RpcError
from protocol.commands.adapters import MergeParams
from protocol.commands.inference import InferenceErrorCode
from tests.conftest import WAIT, run_cli, start_bus_process
from tests.daemon.inference.conftest import save_random_adapter

IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 2, 1, 50]])
TARGETS = ["q_proj", "v_proj", "o_proj"]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """transformers deprecations PEFT triggers: not ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def rslora(folder: Path) -> Path:
    """Switch a saved adapter to rsLoRA (scaling alpha/sqrt(r)): PEFT reads it from the config."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["use_rslora"] = True
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return folder


@pytest.fixture
def stacks(store: AdapterStore, tiny_dir: Path, tmp_path: Path) -> dict[str, AdapterRecord]:
    """zoo → zoo.cat (ranks 4, 2) and farm (rank 8, rsLoRA): two personas' stacks on the same modules."""
    made = {}
    for name, seed, rank, alpha in (("zoo", 1, 4, 8.0), ("zoo.cat", 2, 2, 6.0), ("farm", 3, 8, 4.0)):
        folder = save_random_adapter(
            tiny_dir, tmp_path / f"src-{name}", seed=seed, rank=rank, alpha=alpha, targets=TARGETS
        )
        if name == "farm":
            rslora(folder)
        made[name] = store.import_folder(folder, name)
    return made


def delta(record: AdapterRecord) -> dict[str, torch.Tensor]:
    """module → B·A·scaling, straight from the stored files."""
    config = json.loads((record.path / CONFIG_FILE).read_text())
    tensors = load_file(str(record.path / WEIGHTS_FILE))
    out = {}
    for key, a in tensors.items():
        if ".lora_A." in key:
            module = key.split(".lora_A.")[0]
            r = a.shape[0]
            alpha = config["lora_alpha"]
            scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
            out[module] = tensors[f"{module}.lora_B.weight"].double() @ a.double() * scaling
    return out


def all_active_logits(model_dir: Path, folders: list[Path], tmp_path: Path) -> torch.Tensor:
    """Plain PEFT with every given adapter loaded and active at once (the sum of their deltas)."""
    from peft import PeftModel

    with quiet():
        model: Any = PeftModel.from_pretrained(
            load_model(model_dir, state_root=tmp_path).model, str(folders[0]), adapter_name="l0"
        )
        for i, folder in enumerate(folders[1:], 1):
            model.load_adapter(str(folder), adapter_name=f"l{i}")
        model.base_model.set_adapter([f"l{i}" for i in range(len(folders))])
    with torch.inference_mode():
        logits: torch.Tensor = model(input_ids=IDS).logits.float()
    return logits


def plain_logits(model_dir: Path, folder: Path | None, tmp_path: Path) -> torch.Tensor:
    from peft import PeftModel

    base = load_model(model_dir, state_root=tmp_path).model
    with quiet():
        model: Any = PeftModel.from_pretrained(base, str(folder)) if folder is not None else base
    with torch.inference_mode():
        logits: torch.Tensor = model(input_ids=IDS).logits.float()
    return logits


def merge(store: AdapterStore, **params: Any) -> Any:
    return build_merge(store, MergeParams.model_validate(params))


def index_bytes(store: AdapterStore) -> bytes:
    return store.index_path.read_bytes()


# -- exactness -----------------------------------------------------------------------------------


def test_cat_of_two_stacks_is_exactly_base_plus_both_deltas(store, stacks, tiny_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Plain PEFT loads the merged folder; its logits are the base plus both stacks' deltas (1e-5, fp32)."""
    result = merge(store, sources=["zoo.cat", "farm"], name="zoofarm")
    assert result.exact
    assert result.combination == "cat"
    assert result.rank == 4 + 2 + 8
    assert [e.name for e in result.levels] == ["zoo", "zoo.cat", "farm"]
    merged = store.get("zoofarm")
    assert merged.sha256 == result.sha256
    assert merged.parent is None
    # Provenance in the store record: sources, their stacks' hashes, the strategy.
    info = merged.meta["merge"]
    assert info["combination"] == "cat"
    assert info["exact"] is True
    assert [s["name"] for s in info["sources"]] == ["zoo.cat", "farm"]
    assert info["sources"][0]["stack"] == [
        {"name": "zoo", "sha256": stacks["zoo"].sha256},
        {"name": "zoo.cat", "sha256": stacks["zoo.cat"].sha256},
    ]

    export = tmp_path / "exported"
    store.export("zoofarm", export)
    ours = plain_logits(tiny_dir, export, tmp_path)
    reference = all_active_logits(tiny_dir, [r.path for r in stacks.values()], tmp_path)
    base = plain_logits(tiny_dir, None, tmp_path)
    assert (reference - base).abs().max() > 1e-2  # the deltas do change the output
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)


def test_cat_weight_deltas_are_the_weighted_sum_per_module(store, stacks) -> None:  # type: ignore[no-untyped-def]
    """ΔW_merged = w1·(ΔW_zoo + ΔW_zoo.cat) + w2·ΔW_farm for every module, negative weights included."""
    result = merge(store, sources=["zoo.cat", "farm"], name="mix", weights=[0.75, -1.5])
    merged = delta(store.get("mix"))
    expected: dict[str, torch.Tensor] = {}
    for name, weight in (("zoo", 0.75), ("zoo.cat", 0.75), ("farm", -1.5)):
        for module, d in delta(stacks[name]).items():
            expected[module] = expected.get(module, torch.zeros_like(d)) + weight * d
    assert set(merged) == set(expected)
    assert len(merged) == 2 * len(TARGETS)
    for module, d in expected.items():
        assert (merged[module] - d).abs().max().item() < 1e-5, module
    assert result.rank == 14


def test_cat_equals_peft_add_weighted_adapter(store, make_adapter, tiny_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Built from the files, cat gives PEFT's own add_weighted_adapter(cat) tensors."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    a = make_adapter("alpha", seed=5, rank=4, alpha=8.0, targets=TARGETS)
    b = make_adapter("beta", seed=6, rank=2, alpha=2.0, targets=TARGETS)
    merge(store, sources=["alpha", "beta"], name="ab", weights=[0.5, 2.0])
    with quiet():
        model = PeftModel.from_pretrained(
            load_model(tiny_dir, state_root=tmp_path).model, str(a.path), adapter_name="a"
        )
        model.load_adapter(str(b.path), adapter_name="b")
        model.add_weighted_adapter(["a", "b"], [0.5, 2.0], "ab", combination_type="cat")
    theirs = get_peft_model_state_dict(model, adapter_name="ab")
    ours = load_file(str(store.get("ab").path / WEIGHTS_FILE))
    assert set(ours) == set(theirs)
    for key, tensor in theirs.items():
        assert torch.allclose(ours[key], tensor, atol=1e-6, rtol=0), key
    config = json.loads((store.get("ab").path / CONFIG_FILE).read_text())
    assert (config["r"], config["lora_alpha"]) == (
        model.peft_config["ab"].r,  # type: ignore[attr-defined]
        model.peft_config["ab"].lora_alpha,  # type: ignore[attr-defined]
    )


@pytest.mark.parametrize("combination", ["linear", "ties"])
def test_linear_and_ties_are_peft_s_and_flagged_not_exact(  # type: ignore[no-untyped-def]
    combination, store, make_adapter, tiny_dir, tmp_path
) -> None:
    """Same tensors as PEFT's add_weighted_adapter; loadable by plain PEFT; exact is false."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    a = make_adapter("alpha", seed=5, rank=4, alpha=8.0, targets=TARGETS)
    b = make_adapter("beta", seed=6, rank=4, alpha=4.0, targets=TARGETS)
    density = {"ties": 0.5}.get(combination)
    params: dict[str, Any] = {"weights": [0.7, 0.3]} | ({"density": density} if density else {})
    result = merge(store, sources=["alpha", "beta"], name="ab", combination=combination, **params)
    assert not result.exact
    assert result.rank == 4
    with quiet():
        model = PeftModel.from_pretrained(
            load_model(tiny_dir, state_root=tmp_path).model, str(a.path), adapter_name="a"
        )
        model.load_adapter(str(b.path), adapter_name="b")
        model.add_weighted_adapter(
            ["a", "b"], [0.7, 0.3], "ab", combination_type=combination, density=density
        )
    theirs = get_peft_model_state_dict(model, adapter_name="ab")
    ours = load_file(str(store.get("ab").path / WEIGHTS_FILE))
    for key, tensor in theirs.items():
        assert torch.allclose(ours[key], tensor, atol=1e-6, rtol=0), key
    store.export("ab", tmp_path / "out")
    logits = plain_logits(tiny_dir, tmp_path / "out", tmp_path)
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits, plain_logits(tiny_dir, None, tmp_path), atol=1e-4)


def test_dare_is_reproducible_and_content_addressing_holds(store, make_adapter, stacks) -> None:  # type: ignore[no-untyped-def]
    """The same merge twice is the same object (DARE's draws are seeded from the inputs); cat too."""
    make_adapter("alpha", seed=5, rank=4, targets=TARGETS)
    make_adapter("beta", seed=6, rank=4, targets=TARGETS)
    first = merge(store, sources=["alpha", "beta"], name="d1", combination="dare_ties", density=0.4)
    again = merge(store, sources=["alpha", "beta"], name="d1", combination="dare_ties", density=0.4)
    other_name = merge(store, sources=["alpha", "beta"], name="d2", combination="dare_ties", density=0.4)
    assert first.sha256 == again.sha256 == other_name.sha256
    assert not first.exact
    linear = merge(store, sources=["alpha", "beta"], name="d3", combination="dare_linear", density=0.4)
    assert linear.sha256 != first.sha256
    c1 = merge(store, sources=["zoo.cat", "farm"], name="c1")
    c2 = merge(store, sources=["zoo.cat", "farm"], name="c2")
    assert c1.sha256 == c2.sha256
    assert store.get("c1").path == store.get("c2").path  # one object, two names


def test_a_deeper_stack_is_folded_before_an_approximate_merge(store, make_adapter, stacks) -> None:  # type: ignore[no-untyped-def]
    """linear over zoo.cat (2 levels, rank 6) and a rank-6 adapter: the stack is cat-folded first."""
    make_adapter("six", seed=9, rank=6, targets=TARGETS)
    result = merge(store, sources=["zoo.cat", "six"], name="folded", combination="linear")
    assert result.rank == 6
    assert not result.exact
    assert [e.name for e in result.levels] == ["zoo", "zoo.cat", "six"]


def test_pinned_stacks_merge_exactly_those_hashes(store, stacks, tiny_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """pins: a persona's stack by hash; farm retrained since does not change what is merged."""
    pins = [[stacks["zoo"].entry, stacks["zoo.cat"].entry], [stacks["farm"].entry]]
    store.import_folder(save_random_adapter(tiny_dir, tmp_path / "farm2", seed=42, targets=TARGETS), "farm")
    assert store.get("farm").sha256 != stacks["farm"].sha256
    pinned = merge(
        store, sources=["zoo.cat", "farm"], name="pinned", pins=[[e.model_dump() for e in p] for p in pins]
    )
    assert [e.sha256 for e in pinned.levels] == [stacks[n].sha256 for n in ("zoo", "zoo.cat", "farm")]
    current = merge(store, sources=["zoo.cat", "farm"], name="current")
    assert current.levels[-1].sha256 == store.get("farm").sha256
    assert current.sha256 != pinned.sha256
    merged = delta(store.get("pinned"))
    for module, d in delta(stacks["farm"]).items():
        expected = d + delta(stacks["zoo"])[module] + delta(stacks["zoo.cat"])[module]
        assert (merged[module] - expected).abs().max().item() < 1e-5
    before = index_bytes(store)
    wrong_chain = [[stacks["zoo.cat"].entry.model_dump()], [stacks["farm"].entry.model_dump()]]
    with pytest.raises(MergeParamsError, match=r"pins\.0: \['zoo.cat'\] is not the stack of 'zoo.cat'"):
        merge(store, sources=["zoo.cat", "farm"], name="x", pins=wrong_chain)
    gone = [[{"name": "zoo", "sha256": "0" * 64}], [stacks["farm"].entry.model_dump()]]
    with pytest.raises(AdapterNotFound, match="no longer in the store"):
        merge(store, sources=["zoo", "farm"], name="x", pins=gone)
    with pytest.raises(MergeParamsError, match="pins: 2 stacks for 3 sources"):
        merge(store, sources=["zoo", "farm", "zoo.cat"], name="x", pins=gone)
    assert index_bytes(store) == before


# -- refusals ------------------------------------------------------------------------------------


def test_incompatible_and_bad_requests_are_refused_and_change_nothing(  # type: ignore[no-untyped-def]
    store, stacks, make_adapter, other_tiny_dir, tiny_dir, tmp_path
) -> None:
    """Different modules, another base model, unequal ranks, bad names and weights, a tampered source."""
    make_adapter("qonly", seed=7, rank=4, targets=["q_proj"])
    make_adapter("other", seed=8, rank=4, targets=TARGETS, model_dir=other_tiny_dir)
    make_adapter("four", seed=10, rank=4, targets=TARGETS)
    before = index_bytes(store)
    objects = sorted(p.name for p in store.objects.iterdir())
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"sources": ["zoo", "qonly"]}, AdapterIncompatible, "adapt different modules"),
        ({"sources": ["zoo", "other"]}, AdapterIncompatible, "different base models"),
        ({"sources": ["zoo.cat", "four"], "combination": "ties"}, Unsupported, "equal rank"),
        ({"sources": ["zoo", "missing"]}, AdapterNotFound, "no adapter named 'missing'"),
        ({"sources": ["zoo", "farm"], "name": "zoo.merged"}, MergeParamsError, "root name"),
        ({"sources": ["zoo", "zoo"]}, MergeParamsError, "twice"),
        ({"sources": ["zoo", "farm"], "weights": [1, 2, 3]}, MergeParamsError, "3 weights for 2 sources"),
        ({"sources": ["zoo", "farm"], "density": 0.5}, MergeParamsError, "density"),
        ({"sources": ["zoo", "farm"], "name": "farm"}, MergeParamsError, "already names another adapter"),
    ]
    for params, error, words in cases:
        with pytest.raises(error) as info:
            merge(store, **({"name": "merged"} | params))
        assert words in str(info.value), (params, str(info.value))
    # A source altered on disk after it was stored: refused by its hash.
    weights = stacks["farm"].path / WEIGHTS_FILE
    original = weights.read_bytes()
    weights.chmod(0o600)
    weights.write_bytes(original[:-4] + b"\x00\x00\x80\x7f")
    with pytest.raises(AdapterCorrupt, match="altered or damaged"):
        merge(store, sources=["zoo", "farm"], name="merged")
    weights.write_bytes(original)
    assert index_bytes(store) == before
    assert sorted(p.name for p in store.objects.iterdir()) == objects
    assert not [p for p in store.root.iterdir() if p.name.startswith(".merge-")]


def test_params_are_validated_on_the_wire_model() -> None:
    """Types, ranges, names and counts are the schema's: INVALID_PARAMS naming the field."""
    from pydantic import ValidationError

    bad: list[tuple[dict[str, Any], str]] = [
        ({"sources": ["a"], "name": "c"}, "sources"),
        ({"sources": ["a"] * 9, "name": "c"}, "sources"),
        ({"sources": ["a", "../b"], "name": "c"}, "sources.1"),
        ({"sources": ["a", "b"], "name": "C D"}, "name"),
        ({"sources": ["a", "b"], "name": "c", "combination": "svd"}, "combination"),
        ({"sources": ["a", "b"], "name": "c", "weights": [1, float("inf")]}, "weights.1"),
        ({"sources": ["a", "b"], "name": "c", "weights": [1, "2"]}, "weights.1"),
        ({"sources": ["a", "b"], "name": "c", "weights": [1, 99]}, "weights.1"),
        ({"sources": ["a", "b"], "name": "c", "density": 0}, "density"),
        ({"sources": ["a", "b"], "name": "c", "density": 1.5}, "density"),
        ({"sources": "a,b", "name": "c"}, "sources"),
        ({"sources": ["a", "b"], "name": "c", "extra": 1}, "extra"),
        (
            {"sources": ["a", "b"], "name": "c", "pins": [[{"name": "a", "sha256": "x"}], []]},
            "pins.0.0.sha256",
        ),
        ({"sources": ["a", "b"], "name": "c", "pins": [[{"name": "a", "sha256": "0" * 64}], []]}, "pins.1"),
    ]
    for params, field in bad:
        with pytest.raises(ValidationError) as info:
            MergeParams.model_validate(params)
        locs = [".".join(map(str, e["loc"])) for e in info.value.errors()]
        assert field in locs, (params, locs)


# -- through the bus -----------------------------------------------------------------------------


@pytest.mark.usefixtures("inference")
async def test_bus_merge_for_admin_refused_for_personas(  # type: ignore[no-untyped-def]
    bus, state, connect, store, stacks, make_adapter
) -> None:
    """An admin merges through cap:inference; a persona token is FORBIDDEN; bad params name the field."""
    admin = await connect()
    answer = await admin.call(
        "adapter.merge",
        {"sources": ["zoo.cat", "farm"], "name": "zoofarm"},
        to="cap:inference",
        deadline_ms=60_000,
    )
    assert answer["exact"] is True
    assert answer["rank"] == 14
    assert answer["sha256"] == store.get("zoofarm").sha256
    assert answer["bytes"] == store.get("zoofarm").bytes

    persona = BusClient(bus.url, token=state.persona_token("ada", create=True), kind="persona", name="ada")
    await persona.start()
    try:
        before = index_bytes(store)
        with pytest.raises(RpcError) as refused:
            await persona.call(
                "adapter.merge", {"sources": ["zoo", "farm"], "name": "mine"}, to="cap:inference"
            )
        assert refused.value.code == ErrorCode.FORBIDDEN
        # The bus refuses it: the persona role holds only inference.*@cap:inference.
        assert "token 'persona:ada' may not call adapter.merge on cap:inference" == refused.value.message
        assert index_bytes(store) == before
    finally:
        await persona.close()

    with pytest.raises(RpcError) as bad:
        await admin.call("adapter.merge", {"sources": ["zoo"], "name": "x"}, to="cap:inference")
    assert bad.value.code == ErrorCode.INVALID_PARAMS
    assert "sources" in bad.value.message
    with pytest.raises(RpcError) as wrong:
        await admin.call(
            "adapter.merge", {"sources": ["zoo", "farm"], "name": "x", "weights": [1]}, to="cap:inference"
        )
    assert wrong.value.code == ErrorCode.INVALID_PARAMS
    assert "weights" in wrong.value.message
    make_adapter("qonly", seed=7, rank=4, targets=["q_proj"])
    with pytest.raises(RpcError) as incompatible:
        await admin.call("adapter.merge", {"sources": ["zoo", "qonly"], "name": "x"}, to="cap:inference")
    assert incompatible.value.code == InferenceErrorCode.ADAPTER_INCOMPATIBLE
    # The service still serves afterwards.
    status = await admin.call("inference.status", {}, to="cap:inference")
    assert status["model"]


def test_cli_merge_against_a_real_inference_process(state, spawn, tiny_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`personad adapter merge` reaches a real `personad inference` over a real bus; plain PEFT loads it."""
    store = AdapterStore.for_state(state.root)
    for name, seed, rank in (("zoo", 1, 4), ("zoo.cat", 2, 2), ("farm", 3, 8)):
        store.import_folder(
            save_random_adapter(tiny_dir, tmp_path / name, seed=seed, rank=rank, targets=TARGETS), name
        )
    _, url = start_bus_process(spawn)
    inference = spawn("inference", "--model", str(tiny_dir), "--threads", "1", env={"PERSONAD_URL": url})
    inference.wait_for_line(r"connected url=\S+ client_id=inference:main\b", timeout=WAIT * 4)
    done = run_cli(
        state, "adapter", "merge", "zoo.cat", "farm", "--name", "merged", url=url, timeout=WAIT * 2
    )
    assert done.returncode == 0, done.stderr
    record = store.get("merged")
    assert f"merged {record.sha256}" in done.stdout
    assert "exact" in done.stdout
    store.export("merged", tmp_path / "out")
    ours = plain_logits(tiny_dir, tmp_path / "out", tmp_path)
    reference = all_active_logits(tiny_dir, [store.get(n).path for n in ("zoo", "zoo.cat", "farm")], tmp_path)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)
    # An approximate merge on request; a bad one is a clear error with exit status 1.
    linear = run_cli(
        state,
        "adapter",
        "merge",
        "zoo",
        "farm",
        "--name",
        "lin",
        "--combination",
        "linear",
        url=url,
        timeout=WAIT * 2,
    )
    assert linear.returncode == 1
    assert "equal rank" in linear.stderr
    # `adapter delete` asks the same service: a wrong hash is refused, then the name and weights go.
    wrong = run_cli(state, "adapter", "delete", "merged", "--sha256", "0" * 64, url=url, timeout=WAIT * 2)
    assert wrong.returncode == 1
    assert "sha256" in wrong.stderr
    gone = run_cli(state, "adapter", "delete", "merged", "--sha256", record.sha256, url=url, timeout=WAIT * 2)
    assert gone.returncode == 0, gone.stderr
    assert f"deleted merged ({record.sha256[:12]}…): name and weights" in gone.stdout
    assert "merged" not in store.names()
    assert not record.path.exists()

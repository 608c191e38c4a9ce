"""Whether the default backend says what torch fp32 says (section 9 of bench/inference.py).

fp16 and nncf's int8 weights are measured beside the default (packed weights), for the trade-offs.

    .venv/bin/python bench/inference.py --decoders [--quick]

On the 50 prompts of ``bench/data/chat_prompts.json`` (15 legal, 35 not),
greedy, without and with the real trained demo stack (``legal`` →
``legal.patent`` → ``legal.patent.uspto``, trained once into
``.personad/`` as ``make up`` does):

* token agreement over the first 32 tokens: the share of positions where
  both backends chose the same token, averaged over prompts; the share of
  prompts identical over all 32; the median first position where they part.
  Replies are compared as token ids of their text (both engines return text;
  re-encoding it gives the ids back except where a multi-token character
  was held back, the same for both). Target: >= 90%.
* the demo stack's signature phrases (``SIGNATURES`` in daemon/inference/demo.py)
  in the replies: target, each backend shows them in replies with the stack
  and in none without.
* perplexity of the base model on ``bench/data/heldout.txt`` (prose from
  docs/ this model never saw), 512-token windows: torch fp32 against the
  OpenVINO IR compiled with the default backend's precision. Target: within 3%.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from daemon.inference.adapters import AdapterStore
from daemon.inference.engine import OV_DEFAULTS, AsyncEngine

DATA = Path(__file__).resolve().parent / "data"
WINDOW = 512
COMPARED = 32


def prompts(quick: bool) -> list[str]:
    items: list[str] = json.loads((DATA / "chat_prompts.json").read_text("utf-8"))
    return items[::5] if quick else items


async def replies(engine: AsyncEngine, items: list[str], stack: list[Any], tokens: int) -> list[str]:
    from protocol.commands.inference import GenerateParams

    out = []
    for prompt in items:
        params = GenerateParams(
            messages=[{"role": "user", "content": prompt}], stack=stack, max_tokens=tokens, temperature=0.0
        )
        out.append((await engine.generate(params, owner="bench")).text)
    return out


def agreement(tokenizer: Any, a: list[str], b: list[str]) -> dict[str, float]:
    shares, identical, parted = [], 0, []
    for x, y in zip(a, b, strict=True):
        ix = tokenizer(x, add_special_tokens=False)["input_ids"][:COMPARED]
        iy = tokenizer(y, add_special_tokens=False)["input_ids"][:COMPARED]
        width = max(len(ix), len(iy), 1)
        same = sum(1 for p, q in zip(ix, iy, strict=False) if p == q)
        shares.append(same / width)
        first = next(
            (i for i, (p, q) in enumerate(zip(ix, iy, strict=False)) if p != q), min(len(ix), len(iy))
        )
        if ix == iy:
            identical += 1
            first = COMPARED
        parted.append(first)
    return {
        "agreement": statistics.mean(shares),
        "identical": identical / len(a),
        "median_first_difference": statistics.median(parted),
    }


def signed(texts: list[str]) -> int:
    from daemon.inference.demo import SIGNATURES

    return sum(1 for t in texts if any(phrase in t for phrase in SIGNATURES.values()))


def perplexity_torch(model_dir: Path, ids: list[int]) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, WINDOW):
            window = torch.tensor([ids[start : start + WINDOW]])
            if window.shape[1] < 2:
                break
            logits = model(window).logits[0, :-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum"))
            count += window.shape[1] - 1
    return math.exp(nll / count)


def perplexity_openvino(ir: Path, ids: list[int], precision: str) -> float:
    import numpy as np
    import openvino as ov

    from daemon.inference.ov import PRECISIONS

    compiled = ov.Core().compile_model(
        str(ir / "openvino_model.xml"), "CPU", {**PRECISIONS[precision], "INFERENCE_NUM_THREADS": 1}
    )
    request = compiled.create_infer_request()
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, WINDOW):
        window = np.array([ids[start : start + WINDOW]], dtype=np.int64)
        n = window.shape[1]
        if n < 2:
            break
        request.reset_state()  # the KV cache is the model's state: each window starts empty
        logits = request.infer(
            {
                "input_ids": window,
                "attention_mask": np.ones((1, n), dtype=np.int64),
                "position_ids": np.arange(n, dtype=np.int64)[None],
                "beam_idx": np.zeros(1, dtype=np.int32),
            }
        )["logits"][0, :-1].astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        logsum = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
        nll += float((logsum - logits[np.arange(n - 1), window[0, 1:]]).sum())
        count += n - 1
    return math.exp(nll / count)


async def measure(model_dir: Path, state_root: Path, *, quick: bool) -> list[tuple[str, bool]]:
    from transformers import AutoTokenizer

    from daemon.inference.demo import ensure_demo_adapters, progress_bar

    records = ensure_demo_adapters(state_root, model=str(model_dir), on_progress=progress_bar())
    stack = [r.entry for r in records]
    store = AdapterStore.for_state(state_root)
    items = prompts(quick)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    default = f"openvino {OV_DEFAULTS['weight_format']}"
    #: (label, backend, weight format): the default, and the formats it was chosen over.
    runs = [("torch fp32", "torch", None), (default, "openvino", OV_DEFAULTS["weight_format"])]
    runs += [("openvino fp16", "openvino", "fp16"), ("openvino int8", "openvino", "int8")]
    said: dict[str, dict[str, list[str]]] = {}
    irs: dict[str, Path] = {}
    for label, backend, weights in runs:
        engine = await AsyncEngine.open(
            state_root=state_root,
            model=str(model_dir),
            store=store,
            threads=1,
            backend=backend,
            weight_format=weights,
        )
        try:
            said[label] = {
                "base": await replies(engine, items, [], COMPARED),
                "stack": await replies(engine, items, stack, COMPARED),
            }
            if backend == "openvino":
                irs[label] = Path(engine.engine.loaded.ir)  # type: ignore[union-attr]
        finally:
            await engine.close()

    results: list[tuple[str, bool]] = []
    print(
        f"\n9. does the default backend ({default} weights, {OV_DEFAULTS['precision']} compute) say what "
        f"torch fp32 says? {len(items)} prompts, greedy (fp16 and int8 weights beside it)"
    )
    for label in (default, "openvino fp16", "openvino int8"):
        for which in ("base", "stack"):
            a = agreement(tokenizer, said["torch fp32"][which], said[label][which])
            print(
                f"   {label:<16} {which:<6} first {COMPARED} tokens: {a['agreement']:.1%} positions agree, "
                f"{a['identical']:.0%} of prompts identical, median first difference at token "
                f"{a['median_first_difference']:.0f}"
            )
            if label == default:
                results.append((f"agreement with torch fp32 >= 90% ({which})", a["agreement"] >= 0.90))
    counts = {b: (signed(said[b]["stack"]), signed(said[b]["base"])) for b in said}
    for label, (with_stack, without) in counts.items():
        print(
            f"   {label:<16} signature phrases: {with_stack}/{len(items)} with the stack, {without} without"
        )
    ok = all(w > 0 and n == 0 for w, n in counts.values())
    results.append(("signature phrases exactly when the stack is loaded", ok))

    text = (DATA / "heldout.txt").read_text("utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if quick:
        ids = ids[: WINDOW * 2]
    reference = perplexity_torch(model_dir, ids)
    print(f"   perplexity on {len(ids)} held-out tokens: torch fp32 {reference:.3f}")
    for label, ir in irs.items():
        ours = perplexity_openvino(ir, ids, OV_DEFAULTS["precision"])
        print(f"     {label:<16} {ours:.3f} ({ours / reference - 1:+.2%})")
        if label == default:
            results.append(("perplexity within 3% of fp32", abs(ours / reference - 1) <= 0.03))
    return results

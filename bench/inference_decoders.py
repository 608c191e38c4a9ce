"""The decoding backends side by side on SmolLM2: speed (sections 7 and 8 of bench/inference.py).

    .venv/bin/python bench/inference.py --decoders [--quick]

7. decode tokens/s, batch 1, greedy, base and with the 3-level stack, for
   1 and 2 threads, rounds interleaved, medians:
   * torch fp32 (transformers + PEFT, the engine's ``merged`` and
     ``unmerged`` stacks);
   * torch fp32 with ``torch.compile`` and a static KV cache
     (transformers' ``generate(cache_implementation="static")``, which
     compiles the forward pass on first use; the merged stack is a merged
     copy of the model), with its compile time;
   * OpenVINO GenAI, stacks applied per request: the default, ``packed``
     weights (the GGUF's exact 4- and 8-bit groups, ``ov/pack.py``) with
     ``f32`` compute; fp16 weights with ``f32`` compute; nncf's int8 weights
     with ``f32`` compute and with ``auto`` (the CPU plugin's bf16).
   Target: the default backend with the stack >= 2.5x torch's merged stack at
   the same thread count.
   With ``--llama-cpp``: llama.cpp's base decode on the model's own GGUF
   (``inference_llamacpp.py``, in ``.venv-llamacpp``), and the default
   backend's base decode as a ratio of it. Target: >= 0.5x.
8. four personas with four different 3-level stacks at once: aggregate
   tokens/s of the default backend (one request at a time, owners in turn)
   against the torch engine batching them. Target: >= 1.0x.

Decode tokens/s is the engines' own ``timings.tokens_per_s`` (from the first
token to the last, prefill excluded); for ``torch.compile`` it is
(N - 1) / (time for N tokens - time for 1 token), which excludes prefill the
same way.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

from daemon.inference.adapters import AdapterStore
from daemon.inference.engine import AsyncEngine, EngineLimits

#: (label, backend, weight format, precision): the engines measured through AsyncEngine.
ENGINES = (
    ("torch fp32", "torch", None, None),
    ("openvino packed, f32 (default)", "openvino", "packed", "f32"),
    ("openvino fp16, f32", "openvino", "fp16", "f32"),
    ("openvino int8, f32", "openvino", "int8", "f32"),
    ("openvino int8, auto (bf16)", "openvino", "int8", "auto"),
)
DEFAULT = ENGINES[1][0]


def ask(prompt: str, stack: list[Any], *, tokens: int, mode: str = "auto") -> Any:
    from protocol.commands.inference import GenerateParams

    return GenerateParams(
        messages=[{"role": "user", "content": prompt}],
        stack=stack,
        mode=mode,  # type: ignore[arg-type]
        max_tokens=tokens,
        temperature=0.0,
    )


async def open_engine(
    backend: str,
    weights: str | None,
    precision: str | None,
    model_dir: Path,
    store: AdapterStore,
    threads: int,
) -> AsyncEngine:
    return await AsyncEngine.open(
        state_root=store.root.parent,
        model=str(model_dir),
        store=store,
        threads=threads,
        backend=backend,
        weight_format=weights,
        precision=precision,
        limits=EngineLimits(max_adapters=24, max_merged=4),
    )


async def engine_speeds(
    model_dir: Path,
    store: AdapterStore,
    stack: list[Any],
    prompt: str,
    *,
    threads: int,
    rounds: int,
    tokens: int,
) -> dict[str, float]:
    """Median decode tok/s of every (engine, base | stack) at ``threads``, rounds interleaved."""
    engines = {label: await open_engine(b, w, p, model_dir, store, threads) for label, b, w, p in ENGINES}
    cases: list[tuple[str, str, list[Any], str]] = []
    for label, backend, _, _ in ENGINES:
        cases.append((label, "base", [], "auto"))
        if backend == "torch":
            cases.append((label, "stack merged", stack, "merged"))
            cases.append((label, "stack unmerged", stack, "unmerged"))
        else:
            cases.append((label, "stack", stack, "auto"))
    samples: dict[str, list[float]] = {f"{label} | {what}": [] for label, what, _, _ in cases}
    try:
        for label, _, s, mode in cases:  # warm: load and merge the stack, compile the graphs
            await engines[label].generate(ask(prompt, s, tokens=4, mode=mode), owner="bench")
        for _ in range(rounds):
            for label, what, s, mode in cases:
                result = await engines[label].generate(
                    ask(prompt, s, tokens=tokens, mode=mode), owner="bench"
                )
                samples[f"{label} | {what}"].append(result.timings.tokens_per_s)
    finally:
        for engine in engines.values():
            await engine.close()
    return {k: statistics.median(v) for k, v in samples.items()}


def compiled_speeds(
    model_dir: Path, store: AdapterStore, leaf: str, prompt: str, *, threads: int, rounds: int, tokens: int
) -> dict[str, float] | str:
    """torch.compile + static cache: decode tok/s base and merged stack, and compile seconds; or why not."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompileConfig

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]

    def load(stacked: bool) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch.float32, local_files_only=True
            )
            if stacked:
                records = store.resolve(leaf)
                peft = PeftModel.from_pretrained(model, str(records[0].path), adapter_name="l0")
                for i, record in enumerate(records[1:], 1):
                    peft.load_adapter(str(record.path), adapter_name=f"l{i}")
                model = peft.merge_and_unload(adapter_names=[f"l{i}" for i in range(len(records))])
        return model.eval()

    def run(model: Any, n: int) -> float:
        started = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.generate(
                ids,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                cache_implementation="static",
                compile_config=compile_config,
                pad_token_id=tokenizer.eos_token_id,
            )
        return time.perf_counter() - started

    # transformers compiles on its own only on accelerators; on the CPU it must be asked.
    compile_config = CompileConfig(mode="default")
    compile_config._compile_all_devices = True
    out: dict[str, float] = {}
    try:
        for name, stacked in (("base", False), ("stack merged", True)):
            model = load(stacked)
            started = time.perf_counter()
            run(model, tokens)  # the first call compiles
            out[f"{name} compile s"] = time.perf_counter() - started
            rates = []
            for _ in range(rounds):
                one, many = run(model, 1), run(model, tokens)
                rates.append((tokens - 1) / max(many - one, 1e-9))
            out[name] = statistics.median(rates)
            del model
            gc.collect()
    except Exception as exc:  # report what torch.compile said, not a number
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    return out


def llamacpp_speed(
    python: Path, gguf: Path, prompt: str, *, threads: int, rounds: int, tokens: int
) -> dict[str, Any] | str:
    """llama.cpp's median base decode tok/s (inference_llamacpp.py in its own venv); or why not."""
    runner = Path(__file__).resolve().parent / "inference_llamacpp.py"
    argv = [str(python), str(runner), str(gguf), "--threads", str(threads)]
    argv += ["--tokens", str(tokens), "--rounds", str(rounds), "--prompt", prompt]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        return f"exit {done.returncode}: " + " | ".join(done.stderr.strip().splitlines()[-3:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def four_personas(
    model_dir: Path, store: AdapterStore, stacks: list[list[Any]], prompt: str, *, rounds: int, tokens: int
) -> dict[str, float]:
    """Aggregate tok/s of four personas with four stacks at once, per backend (1 thread)."""
    out: dict[str, float] = {}
    for label, backend, weights, precision in (ENGINES[0], ENGINES[1], ENGINES[2]):
        engine = await open_engine(backend, weights, precision, model_dir, store, 1)

        async def one(i: int, s: list[Any], engine: AsyncEngine = engine) -> int:
            result = await engine.generate(ask(prompt, s, tokens=tokens), owner=f"persona:p{i}")
            return result.completion_tokens

        try:
            await asyncio.gather(*(one(i, s) for i, s in enumerate(stacks)))  # warm every stack
            rates = []
            for _ in range(rounds):
                started = time.perf_counter()
                total = sum(await asyncio.gather(*(one(i, s) for i, s in enumerate(stacks))))
                rates.append(total / (time.perf_counter() - started))
            out[label] = statistics.median(rates)
        finally:
            await engine.close()
    return out


async def measure(
    model_dir: Path,
    store: AdapterStore,
    leaves: tuple[str, ...],
    prompt: str,
    *,
    rounds: int,
    tokens: int,
    llama_cpp: tuple[Path, Path] | None = None,
) -> list[tuple[str, bool]]:
    """Sections 7 and 8, printed; returns the targets and whether each held."""
    results: list[tuple[str, bool]] = []
    stacks = [[r.entry for r in store.resolve(leaf)] for leaf in leaves]
    print(f"\n7. decode tokens/s by backend, batch 1, {tokens} tokens, median of {rounds} interleaved rounds")
    for threads in (1, 2):
        speeds = await engine_speeds(
            model_dir, store, stacks[0], prompt, threads=threads, rounds=rounds, tokens=tokens
        )
        compiled = compiled_speeds(
            model_dir, store, leaves[0], prompt, threads=threads, rounds=rounds, tokens=tokens
        )
        merged = speeds["torch fp32 | stack merged"]
        print(f"   {threads} thread(s):")
        for name, value in speeds.items():
            print(f"     {name:<46} {value:7.1f} tok/s   {value / merged:5.2f}x torch merged stack")
        if isinstance(compiled, str):
            print(f"     torch.compile + static cache: failed: {compiled}")
        else:
            for name in ("base", "stack merged"):
                print(
                    f"     {'torch.compile + static cache | ' + name:<46} {compiled[name]:7.1f} tok/s   "
                    f"{compiled[name] / merged:5.2f}x torch merged stack "
                    f"(compiled in {compiled[name + ' compile s']:.0f} s)"
                )
        ratio = speeds[f"{DEFAULT} | stack"] / merged
        print(f"     default backend with the stack / torch merged stack: {ratio:.2f}x (target >= 2.5x)")
        results.append((f"openvino stack >= 2.5x torch merged stack, {threads} thread(s)", ratio >= 2.5))
        if llama_cpp is not None:
            python, gguf = llama_cpp
            llama = llamacpp_speed(python, gguf, prompt, threads=threads, rounds=rounds, tokens=tokens)
            if isinstance(llama, str):
                print(f"     llama.cpp: failed: {llama}")
                results.append((f"llama.cpp measured, {threads} thread(s)", False))
                continue
            rate = llama["tokens_per_s"]
            ours = speeds[f"{DEFAULT} | base"] / rate
            name = f"llama.cpp {llama['version']}, {gguf.name} | base"
            print(f"     {name:<46} {rate:7.1f} tok/s   {rate / merged:5.2f}x torch merged stack")
            print(f"     default backend base / llama.cpp base: {ours:.2f}x (target >= 0.5x)")
            results.append((f"openvino base >= 0.5x llama.cpp base, {threads} thread(s)", ours >= 0.5))

    aggregate = await four_personas(
        model_dir, store, stacks, prompt, rounds=max(2, rounds // 2), tokens=tokens
    )
    torch_rate, ov_rate = aggregate[ENGINES[0][0]], aggregate[DEFAULT]
    print("\n8. four personas, four different stacks, at once: aggregate tokens/s (1 thread)")
    print(f"   torch, batched                           {torch_rate:7.1f} tok/s")
    for label in (ENGINES[1][0], ENGINES[2][0]):
        rate = aggregate[label]
        print(f"   {label + ', one at a time':<40} {rate:7.1f} tok/s   {rate / torch_rate:5.2f}x")
    results.append(("4 personas at once: openvino >= torch batched", ov_rate >= torch_rate))
    return results

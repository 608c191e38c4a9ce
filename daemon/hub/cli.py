"""``personad hub ...``: PersonaHub from a shell.

* ``serve`` runs the ``cap:hub`` service (``--metrics HOST:PORT`` adds ``/metrics``);
* ``plan`` prints the plan requirements give (no model needed);
* ``run --count N --path P --out FILE.jsonl --seed S [--corpus PATH] [--report DIR]``
  makes personas in this process, asking every inference service on the bus,
  with a progress bar (rate and ETA). Its plan and journal are kept in
  ``FILE.jsonl.hub/``: the same command after a crash, a kill -9 or Ctrl-C
  goes on where it stopped. The report goes to ``--report`` (default
  ``FILE.jsonl.hub/report``);
* ``validate FILE --report DIR`` checks any persona file (ours, PersonaHub
  or FinePersonas JSONL) and writes ``DIR/report.json`` and pictures;
* ``compose FILE --kind K --out OUT`` writes persona-driven data;
* ``import FILE --out OUT`` converts PersonaHub/FinePersonas JSONL to ours;
  ``render FILE --format F --out OUT`` renders personas for other tools;
* ``register FILE ID --as PERSONA_ID [--activate]`` adds one to the registry;
* ``status [JOB]`` and ``cancel JOB`` ask the service about its jobs.

Exit status: 0 done, 1 failed (the message says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cli_common import ProgressLine, call_once
from ..state import StateDir

__all__ = ["add_verbs"]

_ACTIONS = ("serve", "plan", "run", "validate", "compose", "import", "render", "register", "status", "cancel")


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    hub = verb("hub", "PersonaHub: generate personas by the thousand, check their quality, render them")
    hub.add_argument("action", choices=_ACTIONS, help=" | ".join(_ACTIONS))
    hub.add_argument(
        "file",
        nargs="?",
        default=None,
        help="validate/compose/import/render/register: a persona file; status/cancel: a job id",
    )
    hub.add_argument("id", nargs="?", default=None, help="register: the persona's id in FILE")
    hub.add_argument("--count", type=int, default=None, help="plan/run: personas wanted (after dedup)")
    hub.add_argument(
        "--path",
        action="append",
        default=None,
        choices=("text", "persona", "structured"),
        help="plan/run: generation path (repeatable for an even mix; default structured)",
    )
    hub.add_argument("--out", default=None, help="run/compose/import/render: the output file")
    hub.add_argument("--seed", type=int, default=0, help="plan/run/compose: the run follows from it")
    hub.add_argument(
        "--corpus",
        default=None,
        help="plan/run: text to read (file, folder or JSONL; default: the shipped sample)",
    )
    hub.add_argument("--report", default=None, help="run/validate: the report's folder")
    hub.add_argument("--hops", type=int, default=2, help="plan/run: persona path hops (default 2)")
    hub.add_argument("--domain", action="append", default=[], help="plan/run: a domain label (repeatable)")
    hub.add_argument(
        "--quality",
        choices=("fast", "standard", "thorough"),
        default="standard",
        help="plan/run/validate: fast (rules), standard (+ model judge on 50), thorough (+ on 10%%)",
    )
    hub.add_argument("--targets", default=None, help="plan/run/validate: a JSON file of AttributeTargets")
    hub.add_argument("--max-tokens", type=int, default=None, help="plan/run: most tokens per persona")
    hub.add_argument(
        "--kind",
        choices=("instruction", "math", "knowledge", "npc"),
        default="instruction",
        help="compose: what to write",
    )
    hub.add_argument("--per-persona", type=int, default=1, help="compose: items per persona")
    hub.add_argument(
        "--format", default="hub", help="render: hub, personahub, finepersonas, profile, card, system_prompt"
    )
    hub.add_argument("--as", dest="as_id", default=None, help="register: the registry id")
    hub.add_argument("--activate", action="store_true", help="register: start it as a daemon (personad up)")
    hub.add_argument("--metrics", default=None, help="serve: HOST:PORT for /metrics (e.g. 127.0.0.1:9477)")
    hub.add_argument(
        "--token", default=None, help="token (default: env PERSONAD_TOKEN, then the admin token)"
    )
    return {"hub": _hub}


def _hub(args: argparse.Namespace, state: StateDir, url: str) -> int:
    action = args.action
    if action in ("validate", "compose", "import", "render", "register") and not args.file:
        print(f"personad hub {action}: give the persona file", file=sys.stderr)
        return 2
    if action in ("run",) and (args.count is None or args.out is None):
        print("personad hub run: give --count N and --out FILE.jsonl", file=sys.stderr)
        return 2
    handlers: dict[str, Callable[[argparse.Namespace, StateDir, str], int]] = {
        "serve": _serve,
        "plan": _plan,
        "run": _run,
        "validate": _validate,
        "compose": _compose,
        "import": _import,
        "render": _render,
        "register": _register,
        "status": _status,
        "cancel": _cancel,
    }
    try:
        return handlers[action](args, state, url)
    except _Usage as exc:
        print(f"personad hub {action}: {exc}", file=sys.stderr)
        return 2


class _Usage(Exception):
    """A command line that cannot be carried out as given."""


def _requirements(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from protocol.commands.hub_plan import Requirements

    fields: dict[str, Any] = {
        "count": args.count if args.count is not None else 100,
        "paths": {path: 1.0 for path in (args.path or ["structured"])},
        "domains": args.domain,
        "hops": args.hops,
        "quality": args.quality,
        "seed": args.seed,
    }
    if args.corpus is not None:
        fields["corpus"] = str(Path(args.corpus).resolve())
    if args.max_tokens is not None:
        fields["max_tokens"] = args.max_tokens
    if args.targets is not None:
        fields["targets"] = _targets(args.targets)
    try:
        return Requirements.model_validate(fields)
    except ValidationError as exc:
        raise _Usage(_first_error(exc)) from None


def _targets(path: str) -> Any:
    from pydantic import ValidationError

    from protocol.hub_persona import AttributeTargets

    try:
        return AttributeTargets.model_validate_json(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise _Usage(f"--targets {path}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        raise _Usage(f"--targets {path}: {_first_error(exc)}") from None


def _first_error(exc: Any) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _plan(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .architect import make_plan

    print(make_plan(_requirements(args)).model_dump_json(indent=2))
    return 0


class _BarFigures:
    """The run's progress line: stage, done/total, rate and ETA."""

    def __init__(self) -> None:
        self.line = ProgressLine()

    def show(self, stats: Any) -> None:
        eta = stats.eta_s
        left = "" if eta is None else f" ETA {_duration(eta)}"
        suffix = f"{stats.rate:.2f}/s{left} made {stats.made} failed {stats.failed}"
        if stats.retries:
            suffix += f" retries {stats.retries}"
        self.line.update(f"{stats.stage:<10}", stats.done, stats.total, suffix)

    def check(self, stage: str, done: int, total: int) -> None:
        self.line.update(f"check {stage:<10}", done, total)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


async def _with_models(state: StateDir, url: str, token: str | None, work: Callable[..., Any]) -> Any:
    """Join the bus as a CLI client and run ``work(generate, embed, providers)``."""
    from ..client import BusClient
    from ..state import find_token
    from .models import BusModels

    async with BusClient(url, token=find_token(state, token), kind="cli") as client:
        models = BusModels(client)
        return await work(models.generate, models.embed, models.providers)


def _run(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from protocol import RpcError

    from .. import runtime
    from ..errors import PersonadError
    from .orchestrator import RunStats, run_folder
    from .qa.report import write_report
    from .runner import prepare, run_prepared, write_output

    req = _requirements(args)
    out = Path(args.out)
    folder = run_folder(out)
    report_dir = Path(args.report) if args.report else folder / "report"
    bar = _BarFigures()

    async def work(generate: Any, embed: Any, providers: Any) -> Any:
        count = max(1, await providers())
        prepared = prepare(req, providers=count)
        stats = RunStats(total=len(prepared.slots))
        return await run_prepared(
            prepared,
            folder,
            generate=generate,
            embed=embed,
            stats=stats,
            providers=providers,
            on_change=bar.show,
            on_check=bar.check,
        )

    try:
        outcome = runtime.run(_with_models(state, url, args.token, work))
    except (PersonadError, RpcError, ValueError) as exc:
        bar.line.end()
        message = getattr(exc, "message", None) or str(exc)
        print(f"personad hub run: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.line.end()
        print(f"personad hub run: stopped; the same command resumes it ({folder})", file=sys.stderr)
        return 1
    bar.line.end()
    write_output(outcome, out)
    written = write_report(outcome.validation, report_dir)
    report = outcome.validation.report
    print(
        f"{len(outcome.kept)} personas in {out} ({outcome.generated} generated, {outcome.failed} failed, "
        f"{report.input - report.kept} duplicates removed); report: {', '.join(str(p) for p in written)}"
    )
    return 0


def _read(path: str) -> list[Any]:
    from .importers import read_personas

    return list(read_personas(Path(path)))


def _validate(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from protocol import RpcError
    from protocol.commands.hub_quality import QualityThresholds

    from .. import runtime
    from ..errors import PersonadError
    from .qa.judge import judge_with
    from .qa.report import write_report
    from .qa.validate import validate

    report_dir = Path(args.report) if args.report else Path(args.file).with_suffix(".report")
    bar = _BarFigures()
    try:
        personas = _read(args.file)
        targets = _targets(args.targets) if args.targets else None
        judge_sample = {"fast": 0, "standard": 50, "thorough": max(1, len(personas) // 10)}[args.quality]

        async def work(generate: Any, embed: Any, providers: Any) -> Any:
            return await validate(
                personas,
                embed=embed,
                targets=targets,
                judge=judge_with(generate) if judge_sample else None,
                thresholds=QualityThresholds(
                    judge_sample=min(judge_sample, len(personas)), seed=args.seed % 2**32
                ),
                progress=bar.check,
            )

        validation = runtime.run(_with_models(state, url, args.token, work))
    except (PersonadError, RpcError) as exc:
        bar.line.end()
        print(f"personad hub validate: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 1
    bar.line.end()
    written = write_report(validation, report_dir)
    report = validation.report
    print(
        f"{report.input} personas, {report.kept} kept, {report.input - report.kept} duplicates removed; "
        f"report: {', '.join(str(p) for p in written)}"
    )
    return 0


def _compose(args: argparse.Namespace, state: StateDir, url: str) -> int:
    import asyncio

    from protocol import RpcError

    from .. import runtime
    from ..errors import PersonadError
    from ..files import atomic_write
    from . import composer, generator
    from .orchestrator import PER_PROVIDER, generate_patiently

    if not args.out:
        raise _Usage("give --out FILE.jsonl")
    bar = ProgressLine()
    try:
        personas = _read(args.file)

        async def work(generate: Any, embed: Any, providers: Any) -> list[Any]:
            done = 0
            gate = asyncio.Semaphore(PER_PROVIDER * max(1, await providers()))
            tasks = [(p, n) for p in personas for n in range(args.per_persona)]

            async def one(persona: Any, n: int) -> Any:
                nonlocal done
                seed = composer.item_seed(args.seed, f"{persona.id}/{n}" if n else persona.id, args.kind)
                async with gate:
                    result = await generate_patiently(
                        generate, composer.params_for(persona, args.kind, seed=seed)
                    )
                done += 1
                bar.update(f"compose {args.kind}", done, len(tasks))
                try:
                    return composer.item_from(persona, args.kind, result, seed=seed)
                except generator.GenerationFailed:
                    return None

            return await asyncio.gather(*(one(p, n) for p, n in tasks))

        items = runtime.run(_with_models(state, url, args.token, work))
    except (PersonadError, RpcError) as exc:
        bar.end()
        print(f"personad hub compose: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 1
    bar.end()
    kept = [item for item in items if item is not None]
    atomic_write(Path(args.out), "".join(item.model_dump_json() + "\n" for item in kept).encode())
    print(f"{len(kept)} items in {args.out} ({len(items) - len(kept)} failed)")
    return 0


def _import(args: argparse.Namespace, state: StateDir, url: str) -> int:
    args.format = "hub"
    return _render(args, state, url)


def _render(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from ..errors import PersonadError
    from ..files import atomic_write
    from .designer import FORMATS, render

    if not args.out:
        raise _Usage("give --out FILE")
    if args.format not in FORMATS:
        raise _Usage(f"--format: one of {', '.join(FORMATS)}")
    try:
        lines = list(render(_read(args.file), args.format))
    except PersonadError as exc:
        print(f"personad hub {args.action}: {exc}", file=sys.stderr)
        return 1
    atomic_write(
        Path(args.out), "".join(line if line.endswith("\n") else line + "\n" for line in lines).encode()
    )
    print(f"{len(lines)} personas written to {args.out} ({args.format})")
    return 0


def _register(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from ..errors import PersonadError

    if not args.id or not args.as_id:
        raise _Usage("give the persona's id in the file and --as PERSONA_ID")
    try:
        found = [p for p in _read(args.file) if p.id == args.id]
    except PersonadError as exc:
        print(f"personad hub register: {exc}", file=sys.stderr)
        return 1
    if not found:
        print(f"personad hub register: no persona {args.id} in {args.file}", file=sys.stderr)
        return 1
    params = {
        "persona": found[0].model_dump(mode="json"),
        "persona_id": args.as_id,
        "activate": args.activate,
    }
    result = call_once(state.root, url, args.token, "hub.register", params, to="cap:hub")
    if result is None:
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _status(args: argparse.Namespace, state: StateDir, url: str) -> int:
    params = {"job_id": args.file} if args.file else {}
    result = call_once(state.root, url, args.token, "hub.status", params, to="cap:hub")
    if result is None:
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _cancel(args: argparse.Namespace, state: StateDir, url: str) -> int:
    if not args.file:
        raise _Usage("give the job id")
    result = call_once(state.root, url, args.token, "hub.cancel", {"job_id": args.file}, to="cap:hub")
    if result is None:
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _serve(args: argparse.Namespace, state: StateDir, url: str) -> int:
    import asyncio
    import signal

    from .. import runtime
    from .service import HubService, hub_token

    metrics = None
    if args.metrics:
        host, _, port = args.metrics.rpartition(":")
        if not host or not port.isdigit():
            raise _Usage("--metrics HOST:PORT, e.g. 127.0.0.1:9477")
        metrics = (host, int(port))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = HubService(url=url, token=hub_token(state), state=state)
        await service.run(stop, metrics=metrics)

    runtime.run(main())
    return 0

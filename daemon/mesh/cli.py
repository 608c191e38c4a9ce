"""``personad skills serve | announce NAME | fetch SKILL_ID | held | popular``: skill sharing from a shell.

``serve`` runs this installation's mesh peer (``mesh:<node>``, default
``mesh:main``) and, unless ``--no-tracker``, the tracker (``cap:skills``) in
one process. The other verbs are bus clients with the admin token, like
every CLI verb: ``announce`` signs and publishes an adapter of the store,
``fetch`` downloads a skill into the store with a progress bar (exit 0 once
installed or already held, 1 on an error), ``held`` lists what the peer
seeds, ``popular`` what the tracker ranks highest.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ..cli_common import ProgressLine, call_once
from ..state import StateDir

__all__ = ["add_verbs"]

_ACTIONS = ("serve", "announce", "fetch", "held", "popular")


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    skills = verb("skills", "skill sharing: serve the mesh peer and tracker, announce, fetch, held, popular")
    skills.add_argument(
        "action", choices=_ACTIONS, help="serve | announce NAME | fetch SKILL_ID | held | popular"
    )
    skills.add_argument(
        "target", nargs="?", default=None, help="announce: an adapter name; fetch: a skill id"
    )
    skills.add_argument(
        "--node",
        default="main",
        help="the mesh peer: serve runs mesh:NODE, the others talk to it (default main)",
    )
    skills.add_argument("--no-tracker", action="store_true", help="serve: run the peer only, not cap:skills")
    skills.add_argument(
        "--base-model", default=None, help="serve: the base model id (default: from --model / PERSONAD_MODEL)"
    )
    skills.add_argument(
        "--effectiveness", type=float, default=None, help="announce: how well it works, in [0, 1]"
    )
    skills.add_argument(
        "--scenario", action="append", default=[], help="announce: what it is for (repeatable)"
    )
    skills.add_argument("--piece-size", type=int, default=256 * 1024, help="announce: bytes per piece")
    skills.add_argument(
        "--max-bytes", type=int, default=None, help="fetch: refuse it (with parents) above this"
    )
    skills.add_argument("--window", type=int, default=4, help="fetch: pieces asked of one seeder at a time")
    skills.add_argument("--limit", type=int, default=20, help="popular: most entries")
    skills.add_argument(
        "--token", default=None, help="token (default: env PERSONAD_TOKEN, then the admin token)"
    )
    return {"skills": _skills}


def _node(value: str) -> str:
    return value if value.startswith("mesh:") else f"mesh:{value}"


def _skills(args: argparse.Namespace, state: StateDir, url: str) -> int:
    if args.action == "serve":
        return _serve(args, state, url)
    if args.action in ("announce", "fetch") and not args.target:
        what = "an adapter name" if args.action == "announce" else "a skill id"
        print(f"personad skills {args.action}: give {what}", file=sys.stderr)
        return 2
    if args.action == "fetch":
        return _fetch(args, state, url)
    if args.action == "announce":
        params: dict[str, Any] = {
            "skill": args.target,
            "piece_size": args.piece_size,
            "usage_scenarios": args.scenario,
        }
        if args.effectiveness is not None:
            params["effectiveness"] = args.effectiveness
        result = call_once(
            state.root, url, args.token, "skill.announce", params, to=_node(args.node), deadline_ms=600_000
        )
        if result is None:
            return 1
        manifest = result["manifest"]
        print(
            f"{result['skill_id']}  {manifest['skill']}  {manifest['size']} bytes in "
            f"{len(manifest['piece_hashes'])} pieces (reached {result['delivered']} subscriber(s))"
        )
        return 0
    if args.action == "held":
        result = call_once(state.root, url, args.token, "skill.held", {}, to=_node(args.node))
    else:
        result = call_once(
            state.root, url, args.token, "skill.popular", {"limit": args.limit}, to="cap:skills"
        )
    if result is None:
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _serve(args: argparse.Namespace, state: StateDir, url: str) -> int:
    import asyncio
    import contextlib
    import signal

    from .. import runtime
    from .service import MeshPeer, mesh_token

    node = args.node.removeprefix("mesh:")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        services: list[Any] = [
            MeshPeer(
                url=url, token=mesh_token(state, node), state=state, node=node, base_model_id=args.base_model
            )
        ]
        if not args.no_tracker:
            # Imported here: a peer-only process needs none of the tracker's storage.
            from .tracker import SkillTracker, tracker_token

            services.append(SkillTracker(url=url, token=tracker_token(state), state=state))
        tasks = [asyncio.create_task(service.run(stop)) for service in services]
        try:
            # One failing (its token refused for good) stops the other too.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await task
        for task in done:
            task.result()

    runtime.run(main())
    return 0


def _fetch(args: argparse.Namespace, state: StateDir, url: str) -> int:
    params: dict[str, Any] = {"skill_id": args.target, "window": args.window}
    if args.max_bytes is not None:
        params["max_bytes"] = args.max_bytes
    bar = _Bar()
    result = call_once(
        state.root,
        url,
        args.token,
        "skill.fetch",
        params,
        to=_node(args.node),
        deadline_ms=24 * 3_600_000,
        progress=bar.line,
        on_progress=bar.show,
    )
    if result is None:
        return 1
    if not result["installed"]:
        print(f"{result['skill']} ({result['adapter_sha256'][:12]}…) is already in the store")
        return 0
    parents = (
        f", after its parents {', '.join(result['parents_fetched'])}" if result["parents_fetched"] else ""
    )
    froms = ", ".join(f"{node} {n}" for node, n in sorted(result["seeders"].items()))
    print(
        f"installed {result['skill']} ({result['adapter_sha256'][:12]}…){parents}: {result['bytes']} bytes "
        f"in {result['seconds']:.1f}s, {result['resumed_pieces']} pieces resumed; from {froms or 'none'}"
        + (f"; banned {', '.join(result['banned'])}" if result["banned"] else "")
    )
    return 0


class _Bar:
    """One line per skill and phase: ``law.patents pieces [######....] 40/100 2 seeder(s)``."""

    def __init__(self) -> None:
        self.line = ProgressLine()

    async def show(self, note: Any) -> None:
        if note.method != "skill.progress":
            return
        p = note.params or {}
        total, done = int(p.get("pieces_total") or 0), int(p.get("pieces_done") or 0)
        banned = f" banned: {', '.join(p['banned'])}" if p.get("banned") else ""
        label = f"{str(p.get('skill', ''))[:40]} {p.get('phase', ''):<8}"
        self.line.update(label, done, total, f"{p.get('seeders', 0)} seeder(s){banned}")
        if p.get("phase") == "done":
            self.line.end()

"""Verbs of the registry: ``personad registry``, ``persona-list``, ``persona-show``, ``audit verify``.

Listed in daemon/cli.py's ROLE_CLI_MODULES; see the contract there. The
``persona-*`` verbs are the common ``persona.*`` calls with a readable
output; every method stays reachable with ``personad call cap:registry …``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import runtime
from ..cli_common import call_once
from ..errors import ConfigError
from ..state import StateDir

REGISTRY_TOKEN_SECRET = "registry.token"


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    registry = verb("registry", "run the persona registry (the provider of cap:registry)")
    registry.add_argument(
        "--config-dir",
        default=None,
        help="import <config-dir>/personas/*.toml at start (env PERSONAD_CONFIG_DIR; default ./config)",
    )
    registry.add_argument("--no-import", action="store_true", help="do not import the TOML personas")

    listing = verb("persona-list", "list the registry's personas (a table)")
    listing.add_argument("--status", choices=["draft", "active", "archived", "merged"], default=None)
    listing.add_argument("--tag", default=None)
    listing.add_argument("--role", default=None)
    listing.add_argument(
        "--token", default=None, help="token (default: env PERSONAD_TOKEN, then the admin token)"
    )

    show = verb("persona-show", "print one persona's profile from the registry (JSON)")
    show.add_argument("id", help="persona id")
    show.add_argument(
        "--token", default=None, help="token (default: env PERSONAD_TOKEN, then the admin token)"
    )

    audit = verb("audit", "check the registry's audit log")
    audit.add_argument("action", choices=["verify"], help="verify: walk the hash chain")
    audit.add_argument("--path", default=None, help="the log (default <state>/registry/audit.log)")
    return {
        "registry": _registry,
        "persona-list": _persona_list,
        "persona-show": _persona_show,
        "audit": _audit,
    }


#: What the registry calls beyond the bus: the model for persona.generate,
#: the adapter store for persona.merge (a merged adapter) and
#: persona.delete (the adapters no other persona uses), and for sessions the
#: personas' analytics and knowledge (recommendations), their side of a
#: session (joining its room), and their interactions log (closing one
#: archives its transcript there).
REGISTRY_GRANTS: tuple[str, ...] = (
    "inference.generate@cap:inference",
    "adapter.merge@cap:inference",
    "adapter.delete@cap:inference",
    "persona.analytics@persona:*",
    "persona.knowledge.search@persona:*",
    "persona.session.*@persona:*",
    "interactions.log@persona:*",
)


def registry_token(state: StateDir) -> str:
    """$PERSONAD_TOKEN, a systemd credential ``token``, or the state dir's registry token."""
    # Role service (bus.*), provide:registry, and exactly the calls it makes.
    return state.service_token(
        REGISTRY_TOKEN_SECRET,
        what="the registry",
        name="registry",
        subject="registry:main",
        provides=("registry",),
        grants=REGISTRY_GRANTS,
    )


def run_call(
    args: argparse.Namespace,
    state: StateDir,
    url: str,
    method: str,
    params: dict[str, Any],
    *,
    deadline_ms: int = 30_000,
) -> Any:
    """Call ``method`` on cap:registry with the CLI's token; None (after printing the error) on failure."""
    return call_once(state.root, url, args.token, method, params, to="cap:registry", deadline_ms=deadline_ms)


def _registry(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .service import run_registry

    config_dir = None
    if not args.no_import:
        config_dir = Path(args.config_dir or os.environ.get("PERSONAD_CONFIG_DIR") or "config").absolute()
    runtime.run(run_registry(state.root, config_dir, url=url, token=registry_token(state)))
    return 0


def _persona_list(args: argparse.Namespace, state: StateDir, url: str) -> int:
    filters = {k: v for k, v in (("status", args.status), ("tag", args.tag), ("role", args.role)) if v}
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = run_call(args, state, url, "persona.list", {**filters, "limit": 500, "cursor": cursor})
        if page is None:
            return 1
        rows.extend(page["personas"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    header = ("ID", "NAME", "ROLE", "STATUS", "TAGS")
    table = [header] + [(r["id"], r["name"], r["role"], r["status"], ",".join(r["tags"])) for r in rows]
    widths = [min(40, max(len(row[i]) for row in table)) for i in range(len(header) - 1)]
    for row in table:
        cells = [cell[:40].ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0


def _persona_show(args: argparse.Namespace, state: StateDir, url: str) -> int:
    import json

    result = run_call(args, state, url, "persona.get", {"persona_id": args.id})
    if result is None:
        return 1
    print(json.dumps(result["profile"], indent=2))
    return 0


def _audit(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .audit import verify
    from .keys import audit_path

    path = Path(args.path) if args.path else audit_path(state.root)
    if args.path and not path.exists():
        raise ConfigError(f"{path}: no such audit log")
    report = verify(path)
    if report.ok:
        print(f"{path}: ok, {report.entries} entries")
        return 0
    print(f"{path}: line {report.bad_line}: {report.reason} ({report.entries} entries verified before it)")
    return 1

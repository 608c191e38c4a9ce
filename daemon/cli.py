"""``personad``: start any part of the system, or talk to it as a person.

Every verb takes ``--state-dir`` (env PERSONAD_STATE_DIR, default ./.personad),
``--url`` (env PERSONAD_URL) and ``--log-level``. Exit status: 0 on success,
1 when the system answered with an error or could not be reached, 2 for a bad
command line or configuration.

(A little past 500 lines since the bus gained federation options. The seam
for the next change: the ``bus`` and ``up`` verbs' parsers and runners into
``daemon/bus/cli.py`` and a supervisor CLI module, as the other roles'
verbs already live in theirs; see ROLE_CLI_MODULES.)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol import JSON, MSGPACK, ErrorCode, RpcError

from . import __version__, logs, runtime
from .chat_cli import TokenPrinter
from .cli_common import DEFAULT_URL, common_parser
from .errors import AuthError, BusUnavailable, ConfigError, PersonadError, StateDirError
from .state import StateDir, find_token, given_token, resolve_state_dir


def build_parser() -> argparse.ArgumentParser:
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="personad",
        parents=[common],
        description="AI personas as daemons on a shared WebSocket command bus.",
    )
    parser.add_argument("--version", action="version", version=f"personad {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, parents=[common], help=help_, description=help_)

    verb("init", "create the state directory and an admin token (printed once)")

    bus = verb("bus", "run the bus")
    bus.add_argument(
        "--host",
        default=None,
        help="address to bind (env PERSONAD_BUS_HOST; default loopback)",
    )
    bus.add_argument(
        "--port",
        type=int,
        default=None,
        help="port (env PERSONAD_BUS_PORT; default 8765; 0: any free port)",
    )
    bus.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="an Origin browsers may connect from (repeatable)",
    )
    bus.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a Host header to answer besides the bind host and loopback names, e.g. a proxy's "
        "name (repeatable; '*' turns the DNS-rebinding check off)",
    )
    bus.add_argument(
        "--public-metrics",
        action="store_true",
        help="serve /metrics without a bearer token (default: a token with the 'metrics' grant)",
    )
    bus.add_argument(
        "--max-connections",
        type=int,
        default=None,
        metavar="N",
        help="connections at once (WebSocket clients and HTTP), beyond which a new one is answered 503 "
        "(env PERSONAD_BUS_MAX_CONNECTIONS; default 10000; lowered to what the open-files limit holds)",
    )
    bus.add_argument(
        "--nats",
        default=None,
        metavar="URL",
        help="join a cluster of bus nodes through this NATS server, e.g. nats://10.0.0.1:4222 "
        "(env PERSONAD_NATS_URL; docs/federation.md)",
    )
    bus.add_argument(
        "--node",
        default=None,
        help="this node's name in the cluster, unique there (env PERSONAD_NODE; default: the host name)",
    )

    persona = verb("persona", "run one persona daemon")
    persona.add_argument("id", help="persona id; its config is <config-dir>/personas/<id>.toml")
    persona.add_argument(
        "--config-dir", default=None, help="config directory (env PERSONAD_CONFIG_DIR; default ./config)"
    )

    call = verb("call", "call a method, as a person on the bus")
    call.add_argument("target", help="'bus', a client id (persona:demo) or a capability (cap:browser)")
    call.add_argument("method", help="method name, e.g. persona.status")
    call.add_argument("params", nargs="?", default=None, help="params as a JSON object")
    call.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    call.add_argument(
        "--token", default=None, help="token (default: env PERSONAD_TOKEN, then the admin token)"
    )
    call.add_argument("--json-codec", action="store_true", help="speak JSON instead of msgpack")
    call.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON (chat otherwise prints its reply as plain text, as it streams)",
    )

    chat = verb("chat", "talk with a persona: a conversation with line editing and history")
    chat.add_argument("persona", help="persona id (demo or persona:demo)")
    chat.add_argument("--max-tokens", type=int, default=None, help="longest reply, in tokens")
    chat.add_argument("--temperature", type=float, default=None, help="0 for the same reply every time")
    chat.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for a reply (default 120)"
    )
    chat.add_argument(
        "--turns", type=int, default=4, help="earlier exchanges sent along as context (default 4; 0: none)"
    )
    chat.add_argument(
        "--token", default=None, help="token (default: env PERSONAD_TOKEN, then the admin token)"
    )

    verb("status", "show the bus's health and who is connected")

    up = verb("up", "run the embedded default: the bus and every configured persona")
    up.add_argument("--config-dir", default=None, help="config directory (default ./config)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8765)
    up.add_argument("--no-inference", action="store_true", help="do not start the inference service")
    up.add_argument("--no-browser", action="store_true", help="do not start the headless browser worker")
    up.add_argument("--no-academy", action="store_true", help="do not start the Academy (cap:academy)")
    up.add_argument(
        "--no-skills", action="store_true", help="do not start skill sharing (cap:skills and mesh:main)"
    )
    up.add_argument("--no-hub", action="store_true", help="do not start PersonaHub (cap:hub)")
    up.add_argument("--no-demo", action="store_true", help="skip training and showing the demo")
    up.add_argument(
        "--no-personas",
        action="store_true",
        help="run no registry and no personas here (another machine of the cluster does)",
    )
    up.add_argument(
        "--nats",
        default=None,
        metavar="URL",
        help="this machine's bus joins a cluster through this NATS server (docs/federation.md)",
    )
    up.add_argument(
        "--node", default=None, help="this machine's node name in the cluster (default: the host name)"
    )
    up.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="WS_URL",
        help="another machine's bus, where this machine's personas and services move if its bus dies "
        "(repeatable)",
    )

    schema = verb("schema", "print the protocol as one JSON Schema (draft 2020-12) document")
    schema.add_argument(
        "--markdown", action="store_true", help="print the methods reference instead (docs/methods.md)"
    )

    token = verb("token", "manage tokens")
    token_verbs = token.add_subparsers(dest="token_verb", required=True, metavar="ACTION")
    add = token_verbs.add_parser("add", parents=[common], help="create a token (printed once)")
    add.add_argument("--name", required=True)
    add.add_argument("--role", default="observer", help="admin, persona, service or observer")
    add.add_argument(
        "--subject",
        default=None,
        help="client ids it may claim, e.g. persona:demo or browser:* (default by role)",
    )
    add.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="METHOD[@TARGET]",
        help="extra grant, e.g. browser_js@cap:browser (repeatable)",
    )
    add.add_argument(
        "--provide",
        action="append",
        default=[],
        metavar="CAP",
        help="a capability it may serve (declare in its hello), e.g. inference (repeatable)",
    )
    token_verbs.add_parser("list", parents=[common], help="list tokens (never their secrets)")
    revoke = token_verbs.add_parser("revoke", parents=[common], help="revoke by id or name")
    revoke.add_argument("token_id")
    for module in _role_cli_modules():
        for name, handler in module.add_verbs(verb).items():
            _VERBS[name] = handler
    return parser


# Subsystems that bring their own verbs (``personad browser``, ``personad adapter`` …).
# Each module has ``add_verbs(verb) -> {name: handler}``, where ``verb(name, help)``
# returns an argparse parser with the common options, and each handler is
# ``handler(args, state, url) -> exit status``. Listed here, explicitly, so a
# broken subsystem fails loudly instead of silently losing its verbs.
ROLE_CLI_MODULES: tuple[str, ...] = (
    "daemon.browser.cli",
    "daemon.inference.cli",
    "daemon.registry.cli",
    "daemon.registry.cli_generate",
    "daemon.registry.cli_lineage",
    "daemon.registry.cli_transfer",
    "daemon.registry.cli_erase",
    "daemon.plugins.cli",
    "daemon.persona.cli_analytics",
    "daemon.registry.cli_sessions",
    "daemon.academy.cli",
    "daemon.mesh.cli",
    "daemon.hub.cli",
    "daemon.doors.cli",
)
#: Verbs that run a daemon and so log their lifecycle at INFO by default.
LONG_RUNNING_VERBS: set[str] = {"browser", "inference", "registry"}
#: Verbs whose process runs daemons until a stop signal (see runtime.ignore_stop_signals).
DAEMON_VERBS: frozenset[str] = frozenset({"bus", "persona", "up", *LONG_RUNNING_VERBS})


def _runs_a_daemon(args: argparse.Namespace) -> bool:
    """Whether this invocation serves until a signal (``personad academy serve``, not ``run``)."""
    return (
        args.verb in DAEMON_VERBS
        or (args.verb in ("academy", "skills", "hub") and args.action == "serve")
        or (args.verb == "mcp" and args.http is not None)
    )


def _role_cli_modules() -> list[Any]:
    import importlib

    return [importlib.import_module(name) for name in ROLE_CLI_MODULES]


def main(argv: list[str] | None = None) -> int:
    runtime.die_with_parent()
    args = build_parser().parse_args(argv)
    # Long-running verbs log their lifecycle; one-shot verbs stay quiet but for problems.
    quiet = not _runs_a_daemon(args)
    logs.configure(getattr(args, "log_level", None), default="WARNING" if quiet else "INFO")
    state = StateDir(resolve_state_dir(getattr(args, "state_dir", None)))
    url = getattr(args, "url", None) or os.environ.get("PERSONAD_URL") or DEFAULT_URL
    try:
        status = int(_VERBS[args.verb](args, state, url))
        if _runs_a_daemon(args):
            # The daemon has stopped on the first signal; the process is exiting.
            runtime.ignore_stop_signals()
        return status
    except (ConfigError, AuthError) as exc:
        print(f"personad: {exc}", file=sys.stderr)
        return 2
    except PersonadError as exc:
        print(f"personad: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- verbs ------------------------------------------------------------------------


def _init(args: argparse.Namespace, state: StateDir, url: str) -> int:
    token = state.init()
    if token is None:
        print(f"{state.root} is already initialised (admin token in {state.secrets}/admin.token)")
        return 0
    print(f"initialised {state.root}")
    print("the admin token, shown once (also stored 0600 in secrets/admin.token):")
    print(f"PERSONAD_TOKEN={token}")
    return 0


def _node_name() -> str:
    """The host name as a node name (one NATS subject token: no dots)."""
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().partition(".")[0])[:64] or "bus"


def _bus(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .bus import BusConfig, run_bus

    state.ensure()
    host = args.host or os.environ.get("PERSONAD_BUS_HOST") or "127.0.0.1"
    port_text = str(args.port) if args.port is not None else os.environ.get("PERSONAD_BUS_PORT", "8765")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"PERSONAD_BUS_PORT must be a port number, not {port_text!r}") from None
    origins: tuple[str | None, ...] = (None, *args.allow_origin)
    limit_text = os.environ.get("PERSONAD_BUS_MAX_CONNECTIONS", "10000")
    try:
        max_connections = args.max_connections if args.max_connections is not None else int(limit_text)
    except ValueError:
        raise ConfigError(f"PERSONAD_BUS_MAX_CONNECTIONS must be a number, not {limit_text!r}") from None
    if max_connections < 1:
        raise ConfigError(f"the connection limit must be at least 1, not {max_connections}")
    config = BusConfig(
        max_connections=max_connections,
        host=host,
        port=port,
        origins=origins,
        allowed_hosts=tuple(args.allow_host),
        public_metrics=args.public_metrics,
        nats_url=args.nats or os.environ.get("PERSONAD_NATS_URL") or None,
        node=args.node or os.environ.get("PERSONAD_NODE") or _node_name(),
    )
    try:
        runtime.run(run_bus(config, state.tokens()))
    except OSError as exc:
        raise BusUnavailable(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return 0


def _config_dir(args: argparse.Namespace) -> Path:
    return Path(args.config_dir or os.environ.get("PERSONAD_CONFIG_DIR") or "config").absolute()


def _persona(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .brain import BrainError, load_or_create_key
    from .persona.config import load_persona_config
    from .persona.daemon import PersonaDaemon, run_persona
    from .persona.session_dir import prepare_session_dir

    config = load_persona_config(_config_dir(args), args.id)
    session_dir = prepare_session_dir(state.root, config.id)
    token = _persona_token(state, config.id, provides=tuple(config.capabilities))
    try:
        key = load_or_create_key(state.root, config.id)
        daemon = PersonaDaemon(config, session_dir, url=url, token=token, brain_key=key)
        runtime.run(run_persona(daemon))
    except BrainError as exc:
        # Wrong or missing key, a schema from a newer version: stop loudly,
        # touch nothing (the brain refuses before writing).
        raise StateDirError(f"persona {config.id}: brain {session_dir.brain}: {exc}") from None
    return 0


def _persona_token(state: StateDir, persona_id: str, *, provides: tuple[str, ...]) -> str:
    if (token := given_token()) is not None:
        return token
    # Development: the state dir is ours, so issue the persona its own token.
    # The capabilities its config declares are claimed in its hello, which the
    # bus accepts only with a provide:<cap> grant for each.
    return state.persona_token(persona_id, create=state.tokens_path.exists(), provides=provides)


def _call(args: argparse.Namespace, state: StateDir, url: str) -> int:
    try:
        params = json.loads(args.params) if args.params is not None else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"PARAMS_JSON is not valid JSON: {exc}") from None
    if params is not None and not isinstance(params, dict | list):
        raise ConfigError("PARAMS_JSON must be a JSON object")
    token = find_token(state, args.token)
    to = None if args.target == "bus" else args.target
    # A chat reads as a chat: its tokens go to stdout as they come; the JSON
    # result (and the notifications, on stderr) only with --json.
    plain = args.method == "chat" and not args.json
    printer = TokenPrinter(sys.stdout, sys.stderr, render_other=_dumps) if plain else None
    try:
        result = runtime.run(
            _call_once(
                url,
                token,
                to,
                args.method,
                params,
                args.timeout,
                JSON if args.json_codec else MSGPACK,
                on_progress=printer,
            )
        )
    except RpcError as exc:
        if printer is not None and printer.text:
            print()
        print(f"error {exc.code}: {exc.message}", file=sys.stderr)
        if exc.data is not None:
            print(f"  data: {_dumps(exc.data)}", file=sys.stderr)
        return 1
    except AuthError as exc:
        print(f"error {int(ErrorCode.UNAUTHENTICATED)}: {exc}", file=sys.stderr)
        return 1
    if printer is not None and isinstance(result, dict) and isinstance(result.get("reply"), str):
        printer.finish(result["reply"])
        return 0
    print(json.dumps(result, indent=2, default=_json_default))
    return 0


async def _call_once(
    url: str,
    token: str,
    to: str | None,
    method: str,
    params: Any,
    timeout: float,
    codec: Any,
    *,
    on_progress: Callable[[Any], None] | None = None,
) -> Any:
    from .client import BusClient

    def show(note: Any) -> None:
        print(f"~ {note.method} {_dumps(note.params)}", file=sys.stderr, flush=True)

    async with BusClient(url, token=token, kind="cli", codec=codec) as client:
        return await client.call(
            method, params, to=to, deadline_ms=int(timeout * 1000), on_progress=on_progress or show
        )


def _chat(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .chat_cli import check_options, run_chat

    check_options(max_tokens=args.max_tokens, temperature=args.temperature, turns=args.turns)
    return run_chat(
        state,
        url,
        find_token(state, args.token),
        args.persona,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        timeout=args.timeout,
        turns=args.turns,
    )


def _status(args: argparse.Namespace, state: StateDir, url: str) -> int:
    url = url.split(",")[0].strip()  # of a cluster's list, the first node
    http = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1).rstrip("/")
    try:
        with urllib.request.urlopen(f"{http}/healthz", timeout=5) as response:
            health = json.load(response)
    except (urllib.error.URLError, OSError) as exc:
        raise BusUnavailable(f"no bus at {url}: {exc}") from None
    print(
        f"bus {url}: {health['status']}, version {health['version']}, "
        f"up {health['uptime_s']:.0f}s, {health['connections']} connections, "
        f"{health['inflight']} requests in flight"
    )
    try:
        token = find_token(state)
        result = runtime.run(_call_once(url, token, None, "bus.clients", None, 10.0, MSGPACK))
    except (AuthError, RpcError) as exc:
        print(f"(client list unavailable: {exc})")
        return 0
    for c in result["clients"]:
        caps = ",".join(c["capabilities"]) or "-"
        print(f"  {c['id']:<32} {c['kind']:<10} caps={caps:<20} inflight={c['inflight']}")
    return 0


def _up(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .supervisor import Supervisor

    supervisor = Supervisor(
        state,
        _config_dir(args),
        host=args.host,
        port=args.port,
        inference=not args.no_inference,
        browser=not args.no_browser,
        academy=not args.no_academy,
        skills=not args.no_skills,
        hub=not args.no_hub,
        demo=not args.no_demo,
        personas=not args.no_personas,
        nats=args.nats,
        node=args.node or (_node_name() if args.nats else None),
        peers=tuple(args.peer),
    )
    return runtime.run(supervisor.run())


def _schema(args: argparse.Namespace, state: StateDir, url: str) -> int:
    if args.markdown:
        from protocol.reference import render

        sys.stdout.write(render())
        return 0
    from protocol.schema import document

    print(json.dumps(document(), indent=2, ensure_ascii=False))
    return 0


def _token(args: argparse.Namespace, state: StateDir, url: str) -> int:
    store = state.tokens()
    if args.token_verb == "add":
        state.ensure()
        # Only admin defaults to any identity: anything else could otherwise
        # connect as persona:<id> and take over its traffic.
        subject = args.subject or {"admin": "*", "observer": "cli:*"}.get(args.role)
        if subject is None:
            raise ConfigError(
                f"--subject is required for role {args.role} (e.g. persona:demo, browser:*, inference:*)"
            )
        # issue_token adds under the token file's lock: concurrent runs all land.
        issued = state.issue_token(
            name=args.name,
            role=args.role,
            subject=subject,
            grants=tuple(args.grant),
            provides=tuple(args.provide),
        )
        entry = issued.entry
        print(f"token {entry.id} ({entry.name}, role {entry.role}, subject {entry.subject}):")
        print(f"PERSONAD_TOKEN={issued.token}")
    elif args.token_verb == "list":
        for e in store.entries():
            print(
                f"{e.id}  {e.name:<24} role={e.role:<9} subject={e.subject:<20} grants={','.join(e.grants)}"
            )
    else:
        removed = store.revoke(args.token_id)
        if not removed:
            raise ConfigError(f"no token with id or name {args.token_id!r}")
        print(f"revoked {removed} token(s)")
    return 0


_VERBS: dict[str, Any] = {
    "init": _init,
    "bus": _bus,
    "persona": _persona,
    "call": _call,
    "chat": _chat,
    "status": _status,
    "up": _up,
    "schema": _schema,
    "token": _token,
}


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)

"""CLI verbs persona-export, persona-import and bundle-key (``persona.*`` calls on cap:registry).

Listed in daemon/cli.py's ROLE_CLI_MODULES (the contract is there).

Secrets never go on the command line, where ``ps`` and shell history would
show them: a bundle's passphrase comes from ``--passphrase-file``, else
``$PERSONAD_BUNDLE_PASSPHRASE``, else a prompt (twice when exporting); a
recipient's private key from ``--recipient-key-file`` (64 hex digits, as
``bundle-key new`` writes it).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol.commands.persona_transfer import FORMATS, MAX_INLINE_BYTES

from ..errors import ConfigError
from ..files import atomic_write
from ..state import StateDir
from .cli import run_call

PASSPHRASE_ENV = "PERSONAD_BUNDLE_PASSPHRASE"
#: Bundles take a while: scrypt, hashing and fsync of every member.
DEADLINE_MS = 600_000

_TOKEN_HELP = "token (default: env PERSONAD_TOKEN, then the admin token)"


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    export = verb("persona-export", "write a persona as a bundle or a Character Card (prints where)")
    export.add_argument("id", help="persona id")
    export.add_argument("--format", choices=FORMATS, default="bundle", help="default: bundle")
    export.add_argument(
        "--passphrase-file", default=None, help=f"bundle: the passphrase (or ${PASSPHRASE_ENV})"
    )
    export.add_argument("--recipient", default=None, help="bundle: seal to this X25519 public key (64 hex)")
    export.add_argument(
        "--memories", choices=["card", "all"], default="card", help="cards: which memories (default card)"
    )
    export.add_argument(
        "--out",
        default=None,
        help=f"also copy the file here (through the bus, up to {MAX_INLINE_BYTES} bytes)",
    )
    export.add_argument("--token", default=None, help=_TOKEN_HELP)

    imp = verb("persona-import", "create a persona from a bundle or a Character Card (JSON or PNG)")
    imp.add_argument("file", help="the bundle or card")
    imp.add_argument("--format", choices=FORMATS, default=None, help="default: recognised from the file")
    imp.add_argument("--id", default=None, help="the new persona's id (required for a card)")
    imp.add_argument("--passphrase-file", default=None, help=f"bundle: the passphrase (or ${PASSPHRASE_ENV})")
    imp.add_argument("--recipient-key-file", default=None, help="bundle: file with the X25519 private key")
    imp.add_argument("--signer", default=None, help="bundle: accept only this signing key (default: TOFU)")
    imp.add_argument("--role", default=None, help="card: the role (default character)")
    imp.add_argument(
        "--inline",
        action="store_true",
        help=f"send the file through the bus (up to {MAX_INLINE_BYTES} bytes) rather than its path",
    )
    imp.add_argument("--token", default=None, help=_TOKEN_HELP)

    keys = verb("bundle-key", "bundle keys: make a recipient key pair, or show this installation's signer")
    keys.add_argument("action", choices=["new", "signer"], help="new: write a key pair; signer: print it")
    keys.add_argument("--out", default=None, help="new: where to write the private key (mode 0600)")
    return {"persona-export": _export, "persona-import": _import, "bundle-key": _bundle_key}


def _read_secret_file(path: str, what: str) -> str:
    try:
        text = Path(path).read_text("utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if not text:
        raise ConfigError(f"{path}: the {what} is empty")
    return text


def _passphrase(path: str | None, *, confirm: bool) -> str:
    if path is not None:
        return _read_secret_file(path, "passphrase")
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if not sys.stdin.isatty():
        raise ConfigError(f"a bundle needs a passphrase: --passphrase-file, ${PASSPHRASE_ENV} or a terminal")
    first = getpass.getpass("bundle passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise ConfigError("the passphrases differ")
    return first


def _print(result: dict[str, Any], *drop: str) -> None:
    print(json.dumps({k: v for k, v in result.items() if k not in drop}, indent=2))


def _export(args: argparse.Namespace, state: StateDir, url: str) -> int:
    params: dict[str, Any] = {"persona_id": args.id, "format": args.format}
    if args.format == "bundle":
        if args.recipient is not None:
            params["recipient"] = args.recipient
        else:
            params["passphrase"] = _passphrase(args.passphrase_file, confirm=True)
    else:
        params["memories"] = args.memories
    if args.out is not None:
        params["inline"] = True
    result = run_call(args, state, url, "persona.export", params, deadline_ms=DEADLINE_MS)
    if result is None:
        return 1
    if args.out is not None:
        atomic_write(Path(args.out), base64.b64decode(result["data_b64"]), mode=0o600)
        result["copied_to"] = str(Path(args.out).absolute())
    _print(result, "data_b64")
    return 0


def _import(args: argparse.Namespace, state: StateDir, url: str) -> int:
    path = Path(args.file).absolute()
    params: dict[str, Any] = {}
    if args.inline:
        try:
            params["data_b64"] = base64.b64encode(path.read_bytes()).decode("ascii")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    else:
        params["path"] = str(path)
    for name, value in (("format", args.format), ("persona_id", args.id), ("role", args.role)):
        if value is not None:
            params[name] = value
    is_bundle = args.format == "bundle" or (args.format is None and _looks_like_bundle(path))
    if is_bundle:
        if args.recipient_key_file is not None:
            params["recipient_private_key"] = _read_secret_file(args.recipient_key_file, "recipient key")
        else:
            params["passphrase"] = _passphrase(args.passphrase_file, confirm=False)
        if args.signer is not None:
            params["signer"] = args.signer
    result = run_call(args, state, url, "persona.import", params, deadline_ms=DEADLINE_MS)
    if result is None:
        return 1
    _print(result, "profile")
    return 0


def _looks_like_bundle(path: Path) -> bool:
    from .bundle import MAGIC

    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False  # the registry says what is wrong with it


def _bundle_key(args: argparse.Namespace, state: StateDir, url: str) -> int:
    from .bundle_keys import RecipientPrivateKey, signing_public_key

    if args.action == "signer":
        # The key the registry signs with; it shares this state dir.
        print(signing_public_key(state.root))
        return 0
    if args.out is None:
        raise ConfigError("bundle-key new needs --out FILE for the private key")
    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"{out} exists; not overwriting a key")
    key = RecipientPrivateKey.generate()
    atomic_write(out, key.private.hex().encode("ascii") + b"\n", mode=0o600)
    print(f"private key written to {out.absolute()} (mode 0600); give this public key to the exporter:")
    print(key.public_key().hex)
    return 0

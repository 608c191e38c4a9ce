"""``personad plugin …``: signing keys, signing a folder, and the operator's trust.

* ``plugin keygen [--out FILE]``: a new Ed25519 signing key (default
  ``<state>/plugins/signing.key``, mode 0600); prints the public key.
* ``plugin sign FOLDER --key FILE``: writes FOLDER/signature.json.
* ``plugin verify FOLDER``: checks the signature and whether its key is trusted here.
* ``plugin trust KEY [--name NAME]`` / ``plugin untrust KEY``: edit
  ``<state>/plugins/trusted.json`` (personas read it at every add and run).
* ``plugin list-trusted [--json]``.

None of these needs the bus: they work on files. Installing a plugin into
a persona is ``persona.plugin.add`` (the persona checks it against this trust).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..state import StateDir, ensure_private_dir
from .errors import PluginError
from .manifest import load_manifest
from .signing import generate_key, load_private_key, sign_folder, verify_folder
from .trust import TrustStore

__all__ = ["add_verbs"]

DEFAULT_KEY_FILE = "signing.key"


def add_verbs(verb: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Any]:
    plugin = verb("plugin", "plugin signing keys, signing and trust (see docs/plugins.md)")
    actions = plugin.add_subparsers(dest="plugin_action", required=True, metavar="ACTION")
    keygen = actions.add_parser("keygen", help="make a signing key; print its public key")
    keygen.add_argument(
        "--out", default=None, help=f"the key file (default <state>/plugins/{DEFAULT_KEY_FILE})"
    )
    sign = actions.add_parser("sign", help="sign a plugin folder (writes FOLDER/signature.json)")
    sign.add_argument("folder")
    sign.add_argument("--key", required=True, help="a key file from `personad plugin keygen`")
    verify = actions.add_parser("verify", help="check a folder's signature and whether its signer is trusted")
    verify.add_argument("folder")
    trust = actions.add_parser("trust", help="trust a signing key (64 hex digits)")
    trust.add_argument("key")
    trust.add_argument("--name", default="", help="a note on whose key it is")
    untrust = actions.add_parser("untrust", help="stop trusting a key (its plugins stop running)")
    untrust.add_argument("key")
    listing = actions.add_parser("list-trusted", help="the trusted keys")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    return {"plugin": run_plugin_verb}


def run_plugin_verb(args: argparse.Namespace, state: StateDir, url: str) -> int:
    """The ``plugin`` verb: one of its actions. 0 on success, 1 on a refusal, 2 on bad input."""
    handlers: dict[str, Callable[[argparse.Namespace, StateDir], int]] = {
        "keygen": _keygen,
        "sign": _sign,
        "verify": _verify,
        "trust": _trust,
        "untrust": _untrust,
        "list-trusted": _list_trusted,
    }
    try:
        return handlers[args.plugin_action](args, state)
    except PluginError as exc:
        print(f"plugin {args.plugin_action}: {exc} ({exc.reason})", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"plugin {args.plugin_action}: {exc}", file=sys.stderr)
        return 2


def _keygen(args: argparse.Namespace, state: StateDir) -> int:
    if args.out is None:
        ensure_private_dir(state.root)
        ensure_private_dir(state.root / "plugins")
        out = state.root / "plugins" / DEFAULT_KEY_FILE
    else:
        out = Path(args.out)
    public = generate_key(out)
    print(public)
    print(
        f"private key: {out} (keep it secret; trust the public key with `personad plugin trust`)",
        file=sys.stderr,
    )
    return 0


def _sign(args: argparse.Namespace, state: StateDir) -> int:
    folder = Path(args.folder)
    manifest = load_manifest(folder)  # never sign a folder that could not be installed
    signed = sign_folder(folder, load_private_key(Path(args.key)))
    print(
        json.dumps(
            {"plugin": manifest.id, "version": manifest.version, "key": signed.key, "digest": signed.digest}
        )
    )
    return 0


def _verify(args: argparse.Namespace, state: StateDir) -> int:
    folder = Path(args.folder)
    signed = verify_folder(folder, TrustStore.for_state(state.root).keys())
    manifest = load_manifest(folder)
    print(
        json.dumps(
            {"plugin": manifest.id, "version": manifest.version, "key": signed.key, "risk": manifest.risk}
        )
    )
    return 0


def _trust(args: argparse.Namespace, state: StateDir) -> int:
    added = TrustStore.for_state(state.root).trust(args.key, args.name)
    print(f"{'trusted' if added else 'already trusted'}: {args.key.strip().lower()}")
    return 0


def _untrust(args: argparse.Namespace, state: StateDir) -> int:
    if not TrustStore.for_state(state.root).untrust(args.key):
        print(f"plugin untrust: {args.key} is not trusted", file=sys.stderr)
        return 1
    print(f"untrusted: {args.key.strip().lower()}")
    return 0


def _list_trusted(args: argparse.Namespace, state: StateDir) -> int:
    keys = TrustStore.for_state(state.root).entries()
    if args.json:
        print(json.dumps([k.__dict__ for k in keys]))
        return 0
    for k in keys:
        added = time.strftime("%Y-%m-%d %H:%M", time.gmtime(k.added_at))
        print(f"{k.key}  {added}  {k.name}")
    return 0

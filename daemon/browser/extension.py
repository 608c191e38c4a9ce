"""The browser extension's identity and pairing (``personad extension pair``).

Chromium derives an extension's id from the public key in its manifest's
``key``: the first 128 bits of the key's SHA-256, written in hex with the
digits 0-f spelt a-p (components/crx_file/id_util.cc, ``GenerateId``). A
pinned key therefore pins the id, and with it the ``Origin`` the extension's
WebSocket sends (``chrome-extension://<id>``), which the bus must allow
(``personad bus --allow-origin``).

Pairing creates the extension's token and writes a copy of ``extension/``
with a ``config.json`` (bus URL, token, name, topics) that the service worker
reads on start-up; nothing needs typing into a UI, which is also how the
tests load it. The copy's folder is 0700 and the config 0600: the token is a
secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write
from ..state import StateDir, ensure_private_dir
from ..tokens import TokenEntry

#: The repository's extension/ folder (the source of every paired copy).
SOURCE_DIR = Path(__file__).resolve().parents[2] / "extension"
CONFIG_FILE = "config.json"
#: The role of the extension's token: it calls only bus.ping (heartbeat) and
#: bus.subscribe (notifications). It provides no capability: a person's own
#: browser is never a cap:browser provider; callers reach it as
#: extension:<name>, and only with a grant naming that target.
TOKEN_ROLE = "observer"
TOKEN_SUBJECT = "extension:*"
DEFAULT_HEARTBEAT_S = 20.0


def extension_id(public_key_b64: str) -> str:
    """The id Chromium gives an extension whose manifest ``key`` is this base64 DER key."""
    digest = hashlib.sha256(base64.b64decode(public_key_b64)).hexdigest()[:32]
    return "".join(chr(ord("a") + int(c, 16)) for c in digest)


def manifest_id(folder: Path = SOURCE_DIR) -> str:
    """The pinned id of the extension in ``folder``."""
    manifest = json.loads((folder / "manifest.json").read_text("utf-8"))
    return extension_id(manifest["key"])


def origin(ext_id: str) -> str:
    return f"chrome-extension://{ext_id}"


@dataclass(frozen=True)
class Pairing:
    folder: Path
    extension_id: str
    token: str
    entry: TokenEntry
    #: Earlier tokens of the same name, now revoked.
    replaced: int = 0


def pair(
    state: StateDir,
    *,
    url: str,
    name: str,
    out: Path | None = None,
    topics: tuple[str, ...] = (),
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    source: Path = SOURCE_DIR,
) -> Pairing:
    """Create the extension's token and a loadable copy of it configured with it."""
    if not (source / "manifest.json").is_file():
        raise ConfigError(f"{source} does not hold the extension (no manifest.json)")
    state.ensure()
    folder = (out or state.root / "extension").absolute()
    if folder.exists():
        # Replace only an earlier pairing's copy, never an arbitrary folder.
        if any(folder.iterdir()) and not (folder / CONFIG_FILE).exists():
            raise ConfigError(f"{folder} exists and is not a paired extension; choose another --out")
        shutil.rmtree(folder)
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns(CONFIG_FILE, "*.md"))
    ensure_private_dir(folder)
    # Pairing again under a name replaces that name's token: the old copy
    # stops working. Revoke and issue are one locked step (issue_token).
    issued = state.issue_token(
        name=f"extension:{name}", role=TOKEN_ROLE, subject=TOKEN_SUBJECT, replace=True
    )
    config = {
        "url": url,
        "token": issued.token,
        "name": name,
        "topics": list(topics),
        "heartbeat_s": heartbeat_s,
    }
    atomic_write(folder / CONFIG_FILE, json.dumps(config, indent=2).encode("utf-8"), mode=0o600)
    os.chmod(folder, 0o700)
    return Pairing(folder, manifest_id(folder), issued.token, issued.entry, issued.replaced)

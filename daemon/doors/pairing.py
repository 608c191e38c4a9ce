"""One-time pairing codes, exchanged for a token by the web console.

``personad console`` (run by whoever may write the state folder, as for
``personad token``) issues a code and prints a login link with it in the
URL's fragment, which browsers never send to a server nor put in a
Referer. The console's page posts the code to ``/v1/pair``, and the bus
redeems it: the code is consumed (once, even if two pages race), a new
token is created with the role the code was issued for, and the page keeps
that token in its tab's session storage. Nothing else ever puts a token in
a URL.

Codes live hashed in ``pairings.json`` beside the token file, under the
token file's lock, so the CLI and the bus can be separate processes (and
users). They expire after :data:`PAIRING_TTL_S`.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from typing import Any

from ..errors import ConfigError
from ..files import atomic_write
from ..tokens import ROLE_GRANTS, TokenEntry, TokenStore, hash_token

PAIRING_TTL_S = 600.0


class PairingStore:
    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens
        self.path = tokens.path.with_name("pairings.json")

    def issue(self, *, role: str = "admin", ttl_s: float = PAIRING_TTL_S, label: str = "console") -> str:
        """A new code; the token it is redeemed for gets ``role``'s grants."""
        if role not in ROLE_GRANTS:
            raise ConfigError(f"unknown role {role!r}; choose one of {', '.join(ROLE_GRANTS)}")
        code = secrets.token_urlsafe(24)
        now = time.time()
        with self.tokens.locked():
            codes = [c for c in self._read() if c["expires_at"] > now]
            codes.append(
                {"sha256": hash_token(code), "role": role, "label": label, "expires_at": now + ttl_s}
            )
            self._write(codes)
        return code

    def redeem(self, code: str) -> tuple[str, TokenEntry] | None:
        """The new token for a valid code (consumed), else None. Blocking: call off the event loop."""
        digest = hash_token(code)
        now = time.time()
        with self.tokens.locked():
            codes = self._read()
            live = [c for c in codes if c["expires_at"] > now]
            found = next((c for c in live if hmac.compare_digest(c["sha256"], digest)), None)
            if found is not None:
                live.remove(found)
            if len(live) != len(codes):
                self._write(live)
            if found is None:
                return None
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
            subject = "*" if found["role"] == "admin" else "cli:*"
            # A random tail: two pairings in one second must not share a
            # name, or `personad token revoke <name>` would revoke both.
            name = f"{found['label']}-{stamp}-{secrets.token_hex(2)}"
            return self.tokens.add(name=name, role=found["role"], subject=subject)

    def _read(self) -> list[dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_text("utf-8"))
            return [
                c for c in doc["codes"] if isinstance(c, dict) and {"sha256", "role", "expires_at"} <= set(c)
            ]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.path}: not a valid pairing file ({exc})") from exc

    def _write(self, codes: list[dict[str, Any]]) -> None:
        atomic_write(
            self.path, json.dumps({"version": 1, "codes": codes}, indent=2).encode("utf-8"), mode=0o600
        )

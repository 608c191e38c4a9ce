"""Bearer tokens, stored hashed, each with a role, a subject and grants.

The token file (``<state>/tokens.json``, mode 0600) holds only sha256 digests:
tokens are 256 random bits, so a fast hash is as good as a slow KDF here (no
dictionary to attack) and lets the bus verify in microseconds. The plaintext
is shown once when created and, for tokens ``personad`` itself uses, kept in
``<state>/secrets/`` (0700 folder, 0600 files), never beside persona data.

Grants are ``METHOD@TARGET`` glob patterns (fnmatch), ``METHOD`` alone meaning
any target; the bus itself is the target ``bus``. A token may call a method on
a target when any grant matches. ``*`` matches everything, including
``browser_js``, which is why only the admin role has it by default.

The subject says which client ids a token may claim in its hello:
``persona:demo`` exactly, ``browser:*`` any browser name, or ``*`` (admin).

Serving a capability is a grant too: ``provide:<cap>`` (a glob, no target)
lets a client declare ``<cap>`` in its hello and so receive what is sent to
``cap:<cap>`` (for ``cap:inference``: every persona's system prompt, private
memories included). The bus refuses any other claim. ``*`` covers it: an
admin token may provide anything, which is what a person developing a
provider from their own CLI wants.

A person's own browser (client kind ``extension``) is never a ``cap:``
provider and is reached only by grants that name it: a grant without a
target, or whose target is a pattern such as ``*``, does not cover it; only
a target starting ``extension:`` does (or the admin's ``*``).

Every read-modify-write of the file happens under an advisory lock
(``tokens.json.lock`` beside it, :meth:`TokenStore.locked`), so concurrent
``personad token`` runs, pairings and service start-ups never lose each
other's changes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from protocol.commands.bus import CAPABILITY_PATTERN

from .errors import ConfigError
from .files import atomic_write, file_lock

log = logging.getLogger("personad.tokens")

TOKEN_PREFIX = "pd_"
#: A grant ``provide:<cap>`` lets a client serve ``cap:<cap>``.
PROVIDE_PREFIX = "provide:"
#: Client kinds that are a person's own software (their logged-in browser):
#: never a cap: provider, reachable only by grants naming them.
PERSONAL_KINDS = frozenset({"extension"})
_PERSONAL_TARGETS = tuple(f"{kind}:" for kind in sorted(PERSONAL_KINDS))

#: Default grants by role. A role is a starting point; `--grant` adds more.
ROLE_GRANTS: dict[str, tuple[str, ...]] = {
    "admin": ("*",),
    # Personas talk to the bus, chat with each other, and use shared services.
    # Not another persona's memory: memory.*, brain.* (brain.query above all)
    # need an explicit grant.
    "persona": (
        "bus.*",
        "persona.status@persona:*",
        "persona.ping@persona:*",
        "chat@persona:*",
        # Generation and the warm-up calls a persona makes; not adapter.merge
        # or anything else that writes the shared adapter store.
        "inference.*@cap:inference",
        "inference.*@inference:*",
        # Every persona serves chat at its own id; cap:chat reaches any one of
        # them, and any persona is a fair answer to that. Other capabilities
        # (a persona claiming "inference" would read the others' prompts)
        # need an explicit provide grant. No browser grant: a persona gets
        # screenshot@cap:browser only from its config or its operator.
        "provide:chat",
        # The registry: personas may read profiles (name, role, traits, tags:
        # who their peers are; no memories are in a profile) but change none,
        # not even their own: persona.create/update/archive are the operator's.
        "persona.get@cap:registry",
        "persona.list@cap:registry",
        # A persona may share an insight in a session it takes part in; the
        # registry checks that it posts as itself and is a participant.
        "session.insight@cap:registry",
        # Skills: a persona asks the tracker what exists and who seeds it, and asks
        # a mesh peer to fetch one (the peer serves only its own installation's
        # personas). Not skill.piece/skill.have (peers only) nor skill.announce.
        "skill.manifest@cap:skills",
        "skill.seeders@cap:skills",
        "skill.popular@cap:skills",
        "skill.fetch@mesh:*",
    ),
    # Providers (browser worker, inference service) serve; they call only the bus.
    "service": ("bus.*",),
    # Read-only watchers: dashboards, the browser extension's event view.
    "observer": ("bus.ping", "bus.clients", "bus.subscribe", "bus.unsubscribe", "persona.status@persona:*"),
}


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One stored token: everything but the secret."""

    id: str
    name: str
    role: str
    subject: str
    grants: tuple[str, ...]
    sha256: str
    created_at: float = field(default_factory=time.time)

    def allows(self, method: str, target: str) -> bool:
        """Whether this token may call ``method`` on ``target`` (``bus`` for the bus)."""
        personal = target.partition(":")[0] in PERSONAL_KINDS
        for grant in self.grants:
            pattern, _, target_pattern = grant.partition("@")
            if personal and grant != "*" and not target_pattern.startswith(_PERSONAL_TARGETS):
                # A person's own browser: only a grant that names it counts
                # (`browser_js` alone or `screenshot@*` must not reach it).
                continue
            if fnmatchcase(method, pattern) and (not target_pattern or fnmatchcase(target, target_pattern)):
                return True
        return False

    def may_claim(self, client_id: str) -> bool:
        return fnmatchcase(client_id, self.subject)

    def may_provide(self, capability: str) -> bool:
        """Whether this token may declare ``capability`` in its hello (a ``provide:`` grant, or ``*``)."""
        wanted = PROVIDE_PREFIX + capability
        return any("@" not in grant and fnmatchcase(wanted, grant) for grant in self.grants)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def provide_grants(capabilities: Iterable[str]) -> tuple[str, ...]:
    """``provide:<cap>`` for each capability, checked against the hello's capability pattern."""
    grants = []
    for cap in capabilities:
        if not re.fullmatch(CAPABILITY_PATTERN, cap):
            raise ConfigError(f"invalid capability {cap!r}: lowercase letters, digits, '_', '.' and '-'")
        grants.append(PROVIDE_PREFIX + cap)
    return tuple(dict.fromkeys(grants))


def grants_for(role: str, extra_grants: Iterable[str] = (), provides: Iterable[str] = ()) -> tuple[str, ...]:
    """The grants a token of ``role`` gets: the role's, the extra ones, then one per provided capability."""
    if role not in ROLE_GRANTS:
        raise ConfigError(f"unknown role {role!r}; choose one of {', '.join(ROLE_GRANTS)}")
    return tuple(dict.fromkeys((*ROLE_GRANTS[role], *extra_grants, *provide_grants(provides))))


#: Lock files this thread holds, so that nested :meth:`TokenStore.locked`
#: blocks (an issue inside a rotation) do not wait on themselves: flock(2)
#: locks belong to an open file, and a second open of the same file in the
#: same process would block on the first.
_held = threading.local()


class TokenStore:
    """The token file, reloaded when it changes on disk (no bus restart needed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, TokenEntry] = {}
        self._stamp: tuple[int, int, int] | None = None

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the token file's lock: one writer at a time, across processes.

        Re-entrant within a thread, so a compound change (verify, revoke, add,
        store the secret) can hold it around the single-step ones.
        """
        held: set[Path] = _held.__dict__.setdefault("paths", set())
        key = self.lock_path.absolute()
        if key in held:
            yield
            return
        if not key.parent.is_dir():
            raise ConfigError(f"{key.parent} does not exist: run `personad init` first")
        with file_lock(key):
            held.add(key)
            try:
                yield
            finally:
                held.discard(key)

    # Reading

    def _reload_if_changed(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._entries, self._stamp = {}, None
            return
        # The inode changes on every atomic rewrite, even within one mtime tick.
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self._entries = {e.sha256: e for e in self._read()}
            except ConfigError as exc:
                # A hand-edit gone wrong or a root-owned rewrite must not take
                # the bus down: keep the last good tokens and say so loudly.
                # The file is retried on every check, so fixing it is enough.
                log.error("%s; keeping the %d tokens read before", exc, len(self._entries))
                return
            self._stamp = stamp

    def _read(self) -> list[TokenEntry]:
        try:
            doc = json.loads(self.path.read_text("utf-8"))
            return [TokenEntry(**{**raw, "grants": tuple(raw["grants"])}) for raw in doc["tokens"]]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the token file: {exc.strerror}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.path}: not a valid token file ({exc})") from exc

    def verify(self, token: str) -> TokenEntry | None:
        """The entry for a presented token, or None. Constant-time on the digest."""
        self._reload_if_changed()
        digest = hash_token(token)
        entry = self._entries.get(digest)
        # The dict lookup already matched; compare_digest keeps the final
        # equality check free of early exits should the lookup ever change.
        if entry is not None and hmac.compare_digest(entry.sha256, digest):
            return entry
        return None

    def entries(self) -> list[TokenEntry]:
        self._reload_if_changed()
        return sorted(self._entries.values(), key=lambda e: e.created_at)

    # Writing (CLI side)

    def add(
        self,
        *,
        name: str,
        role: str,
        subject: str,
        extra_grants: tuple[str, ...] = (),
        provides: tuple[str, ...] = (),
    ) -> tuple[str, TokenEntry]:
        """Create a token; returns (plaintext, entry). The plaintext is not stored.

        ``provides`` are the capabilities it may serve (``provide:<cap>`` grants).
        """
        grants = grants_for(role, extra_grants, provides)
        token = new_token()
        entry = TokenEntry(
            id=secrets.token_hex(4),
            name=name,
            role=role,
            subject=subject,
            grants=grants,
            sha256=hash_token(token),
        )
        with self.locked():
            self._write([*self._read(), entry])
        return token, entry

    def revoke(self, token_id_or_name: str) -> int:
        with self.locked():
            entries = self._read()
            kept = [e for e in entries if token_id_or_name not in (e.id, e.name)]
            if len(kept) != len(entries):
                self._write(kept)
        return len(entries) - len(kept)

    def _write(self, entries: list[TokenEntry]) -> None:
        doc: dict[str, Any] = {"version": 1, "tokens": [asdict(e) for e in entries]}
        atomic_write(self.path, json.dumps(doc, indent=2).encode("utf-8"), mode=0o600)

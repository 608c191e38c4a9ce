"""The state directory: where tokens, secrets and persona session dirs live.

Layout (documented in docs/operations.md)::

    <state>/                      0700  PERSONAD_STATE_DIR, $STATE_DIRECTORY, ./.personad
    ├── tokens.json               0600  hashed tokens (the bus reads it)
    ├── tokens.json.lock          0600  held while tokens.json is changed
    ├── secrets/                  0700  plaintext tokens and keys personad itself uses
    │   ├── admin.token           0600
    │   └── persona-<id>.token    0600
    └── personas/<id>/            0700  a persona's session directory (persona/session_dir.py)

Directories are created in that order, each checked to be a real directory
(not a symlink) owned by us, and tightened to 0700. There is no fallback: if
a step fails, the daemon stops with an error naming the path.

Every token personad issues goes through :meth:`StateDir.issue_token` (or
:meth:`StateDir.own_token`, which reuses a stored one while it still carries
what it must): one place that takes the token file's lock, revokes what the
new token replaces, adds it and stores its secret, so that concurrent runs
never lose a token or undo a revocation.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import AuthError, StateDirError
from .files import atomic_write
from .tokens import TokenEntry, TokenStore, grants_for

DEFAULT_STATE_DIR = ".personad"
ADMIN_TOKEN_FILE = "admin.token"


def resolve_state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--state-dir, else $PERSONAD_STATE_DIR, else systemd's $STATE_DIRECTORY, else ./.personad."""
    for candidate in (explicit, os.environ.get("PERSONAD_STATE_DIR")):
        if candidate:
            return Path(candidate).absolute()
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        # systemd may pass several, colon-separated; the first is ours.
        return Path(systemd.split(":")[0]).absolute()
    return Path(DEFAULT_STATE_DIR).absolute()


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (parent must exist) or check it: a real dir, ours, mode 0700."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except FileNotFoundError as exc:
        raise StateDirError(f"cannot create {path}: its parent does not exist") from exc
    except OSError as exc:
        raise StateDirError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise StateDirError(f"cannot inspect {path}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise StateDirError(f"{path} is a symlink; refusing to follow it for private data")
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"{path} exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise StateDirError(f"{path} is owned by uid {st.st_uid}, not by us ({os.geteuid()})")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


@dataclass(frozen=True)
class Issued:
    token: str
    entry: TokenEntry
    #: Tokens of the same name revoked in the same locked step (``replace=True``).
    replaced: int = 0


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def tokens_path(self) -> Path:
        return self.root / "tokens.json"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def personas(self) -> Path:
        return self.root / "personas"

    def tokens(self) -> TokenStore:
        return TokenStore(self.tokens_path)

    def ensure(self) -> StateDir:
        """Create the root and secrets folder, in order."""
        ensure_private_dir(self.root)
        ensure_private_dir(self.secrets)
        return self

    @property
    def initialised(self) -> bool:
        return self.tokens_path.exists() and (self.secrets / ADMIN_TOKEN_FILE).exists()

    def init(self) -> str | None:
        """Create the state dir and an admin token; returns the token, or None if it existed."""
        self.ensure()
        with self.tokens().locked():  # two concurrent inits make one admin token
            if self.initialised:
                return None
            return self.issue_token(name="admin", role="admin", subject="*", secret=ADMIN_TOKEN_FILE).token

    def issue_token(
        self,
        *,
        name: str,
        role: str,
        subject: str,
        grants: tuple[str, ...] = (),
        provides: tuple[str, ...] = (),
        secret: str | None = None,
        replace: bool = False,
    ) -> Issued:
        """Issue a token and store it, as one step under the token file's lock.

        ``grants`` are added to the role's; ``provides`` are the capabilities
        it may serve. ``replace`` first revokes every token of that name.
        ``secret`` also keeps the plaintext in ``secrets/<secret>`` (tokens
        personad itself uses), written before the lock is let go, so that the
        stored secret and tokens.json always agree.
        """
        store = self.tokens()
        with store.locked():
            replaced = store.revoke(name) if replace else 0
            token, entry = store.add(
                name=name, role=role, subject=subject, extra_grants=grants, provides=provides
            )
            if secret is not None:
                self.write_secret(secret, token)
        return Issued(token, entry, replaced)

    def own_token(
        self,
        secret: str,
        *,
        name: str,
        role: str,
        subject: str,
        grants: tuple[str, ...] = (),
        provides: tuple[str, ...] = (),
        exact: bool = True,
    ) -> str:
        """A token personad uses itself: ``secrets/<secret>`` while it is valid and
        carries this role, subject and grants (exactly, or with ``exact=False``
        at least), else a new one (the stale one revoked). Verify, revoke, issue
        and store are one locked step, so two processes starting at once end up
        with the same, valid token.
        """
        store = self.tokens()
        wanted = set(grants_for(role, grants, provides))
        with store.locked():
            token = self.read_secret(secret)
            if token is not None:
                entry = store.verify(token)
                if entry is not None and (entry.role, entry.subject) == (role, subject):
                    held = set(entry.grants)
                    if held == wanted or (not exact and wanted <= held):
                        return token
                if entry is not None:
                    # Issued under other grants (an edited config, or defaults
                    # that have since been narrowed): replace it.
                    store.revoke(entry.id)
            return self.issue_token(
                name=name, role=role, subject=subject, grants=grants, provides=provides, secret=secret
            ).token

    def service_token(
        self,
        secret: str,
        *,
        what: str,
        name: str,
        subject: str,
        provides: tuple[str, ...],
        grants: tuple[str, ...] = (),
        env: str = "PERSONAD_TOKEN",
        credential: str = "token",
    ) -> str:
        """The token a service daemon joins with (role service, ``provide:`` its capabilities,
        plus ``grants`` for what it calls on other services).

        :func:`given_token` first (``env`` or the systemd credential ``credential``:
        systemd, or an operator's choice); else, in
        the bus's state dir, :meth:`own_token` issues or reuses ``secrets/<secret>``;
        in another state dir only a token already placed in ``secrets/`` will do.
        """
        if (token := given_token(env, credential)) is not None:
            return token
        if not self.tokens_path.exists():
            if (token := self.read_secret(secret)) is not None:
                return token
            provide = "".join(f" --provide {cap}" for cap in provides)
            provide += "".join(f" --grant '{grant}'" for grant in grants)
            raise AuthError(
                f"no token for {what}: set PERSONAD_TOKEN, provide a systemd credential 'token', "
                f"or run `personad init` first so that one can be issued "
                f"(`personad token add --name {name} --role service --subject '{subject}'{provide}`; "
                f"state dir {self.root})"
            )
        return self.own_token(
            secret, name=name, role="service", subject=subject, grants=grants, provides=provides
        )

    def write_secret(self, name: str, value: str) -> Path:
        ensure_private_dir(self.secrets)
        path = self.secrets / name
        atomic_write(path, (value + "\n").encode("utf-8"), mode=0o600)
        return path

    def read_secret(self, name: str) -> str | None:
        try:
            return (self.secrets / name).read_text("utf-8").strip() or None
        except FileNotFoundError:
            return None

    def persona_token(
        self,
        persona_id: str,
        *,
        create: bool,
        grants: tuple[str, ...] | None = None,
        provides: tuple[str, ...] = (),
    ) -> str:
        """The persona's own token: from secrets/, created (role persona) if asked.

        ``grants`` are the extra grants from the persona's config (development;
        ``personad up`` passes them) and ``provides`` extra capabilities it may
        serve (the role already provides ``chat``). With ``create``, a stored
        token that does not carry exactly the role's grants plus these is
        revoked and issued anew, so editing the config is enough, and tokens
        issued under older, wider role defaults are narrowed. ``grants=None``
        (a caller that did not read the config) keeps any valid stored token.
        """
        name = f"persona-{persona_id}.token"
        if create:
            return self.own_token(
                name,
                name=f"persona:{persona_id}",
                role="persona",
                subject=f"persona:{persona_id}",
                grants=grants or (),
                provides=provides,
                exact=grants is not None,
            )
        token = self.read_secret(name)
        if token is None:
            raise AuthError(
                f"no token for persona {persona_id!r}: set PERSONAD_TOKEN, provide a "
                f"systemd credential 'token' (see systemd/personad@.service), or create one with "
                f"`personad token add --name persona:{persona_id} --role persona "
                f"--subject persona:{persona_id}` and pass it as PERSONAD_TOKEN"
            )
        return token


def given_token(env: str = "PERSONAD_TOKEN", credential: str = "token") -> str | None:
    """The token a daemon's environment gives it: ``$PERSONAD_TOKEN``, else the systemd credential ``token``.

    A process that joins the bus twice (``personad skills serve``: the tracker and
    the mesh peer) names each token's variable and credential apart.
    """
    if token := os.environ.get(env):
        return token
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (path := Path(credentials) / credential).exists():
        return path.read_text("utf-8").strip()
    return None


def find_token(state: StateDir, explicit: str | None = None) -> str:
    """The token a CLI command uses: --token, $PERSONAD_TOKEN, then the state dir's admin token."""
    token = explicit or os.environ.get("PERSONAD_TOKEN") or state.read_secret(ADMIN_TOKEN_FILE)
    if not token:
        raise AuthError(f"no token: set PERSONAD_TOKEN or run `personad init` (state dir {state.root})")
    return token

"""persona.delete: the right to erasure.

One call erases everything personad holds of a persona in the state root it
shares with the personas (``personad up``), in an order chosen so that a
failure part-way never leaves the profile gone while plaintext remains, and
so that calling again finishes the job (every step accepts what an earlier
attempt already removed):

1. ``confirm`` must repeat the id; an unknown id erases nothing.
2. Every file to remove is checked to be removable (:func:`check_reachable`):
   one that is not is named in the error and nothing changes. Then a
   daemon still on the bus as ``persona:<id>`` is asked to stop: the
   profile is archived (stored, audited, ``registry.persona`` published, on
   which ``personad up`` stops it), then the call waits a bounded time for it
   to leave. If it stays, PERSONA_RUNNING and nothing is erased.
3. Files (:func:`erase_files`, on a worker thread): the persona's folder
   ``personas/<id>/`` (brain, WAL, exports, artifacts, sessions, its stack
   file), every regular file overwritten with zeros before it is unlinked;
   then its brain key (overwritten, unlinked: with the key gone, any copy of
   the encrypted brain is unreadable); the config ``personad up`` generated
   for it; its bus token (revoked in tokens.json, its secret shredded).
4. Adapters of its stack that no other profile's stack holds go through
   ``adapter.delete`` on cap:inference, leaves first (a parent with children
   is refused). cap:inference offline, or an adapter in use, leaves them
   listed in ``adapters_kept`` with the reason: the persona is still erased.
5. Last, the profile row (and its tags and config-source row) in one
   transaction with the audit entry ``persona.delete`` (ids and hashes only);
   the registry runs SQLCipher with ``secure_delete = ON``, so the freed
   cells are zeroed, and the WAL is checkpointed and truncated so no older
   copy of the page stays in it. Then ``registry.persona`` with status
   ``deleted``.

A persona declared by a TOML in the registry's config dir is erased too, with
a warning in the result: the registry does not own that file, and would
import it again at its next start as a new persona (same name, no memories).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from protocol import ErrorCode, RpcError
from protocol.commands.inference import InferenceErrorCode
from protocol.commands.persona_erase import (
    PERSONA_STOP_WAIT_S,
    AdapterDeleted,
    AdapterKept,
    PersonaDeleteParams,
    PersonaDeleteResult,
    PersonaEraseErrorCode,
)
from protocol.profile import PersonaStatus, Profile, StackEntry

from ..brain.keys import brain_path, key_path
from ..client import CallContext
from ..dispatch import Dispatcher
from ..tokens import TokenStore
from .boundary import RegistryEnv, actor, translate
from .errors import UnknownPersona
from .events import publish_change
from .keys import generated_config_dir
from .store import record_sha256

__all__ = ["check_reachable", "erase_files", "register"]

log = logging.getLogger("personad.registry")

#: The brain's files, beside brain.sqlite (SQLite's WAL, its index, a rollback journal).
BRAIN_SUFFIXES = ("", "-wal", "-shm", "-journal")
#: How often the wait for a stopping daemon asks the bus.
_POLL_S = 0.2
#: Time kept back from the caller's deadline for the erasure itself.
_MARGIN_S = 1.0
_BLOCK = bytes(1 << 20)


def register(dispatcher: Dispatcher, env: RegistryEnv) -> None:
    """Register persona.delete on ``dispatcher``."""
    # One erasure at a time: two for the same persona would race over the same
    # files, and erasures are rare enough that waiting costs nothing.
    one_at_a_time = asyncio.Lock()

    async def delete(p: PersonaDeleteParams, ctx: CallContext) -> PersonaDeleteResult:
        if ctx.caller is not None and ctx.caller.startswith("persona:"):
            # The bus already refuses persona tokens; a persona granted more by mistake still may not.
            raise RpcError(ErrorCode.FORBIDDEN, f"{ctx.caller} may not erase personas (an admin operation)")
        if p.confirm != p.persona_id:
            raise RpcError(
                ErrorCode.INVALID_PARAMS,
                "invalid params: confirm: must repeat persona_id exactly (erasure cannot be undone); "
                "nothing erased",
                {"field": "confirm"},
            )
        async with one_at_a_time:
            return await _erase(env, ctx, p.persona_id)

    dispatcher.register("persona.delete", translate(delete))


async def _erase(env: RegistryEnv, ctx: CallContext, persona_id: str) -> PersonaDeleteResult:
    """Steps 2 to 5 of the module's docstring, for a persona whose confirmation was checked."""
    profile = await env.registry.get(persona_id)
    await asyncio.to_thread(check_reachable, env.state_root, persona_id)
    await _stop_daemon(env, ctx, profile)
    try:
        files = await asyncio.to_thread(erase_files, env.state_root, persona_id)
    except OSError as exc:
        raise RpcError(
            ErrorCode.INTERNAL_ERROR,
            f"could not erase {exc.filename or 'a file'}: {exc.strerror}; what was erased before it "
            "stays erased and the profile is kept: fix it and call persona.delete again",
            {"path": str(exc.filename)},
        ) from None
    deleted, kept = await _delete_adapters(env, ctx, profile)
    details = {
        "record_sha256": record_sha256(profile),
        "adapters_deleted": [a.sha256 for a in deleted],
        "adapters_kept": [a.sha256 for a in kept],
    }
    from_toml = await env.registry.run(_delete_row, env.registry.audit, persona_id, actor(ctx), details)
    await publish_change(ctx.client, persona_id, status="deleted", action="persona.delete")
    warnings = list(files.warnings)
    if from_toml:
        warnings.append(
            f"{persona_id} was imported from personas/{persona_id}.toml in the registry's config "
            "dir: remove that file, or the registry's next start imports it again as a new persona "
            "(same name and description, no memories)"
        )
    log.info("erased persona %s (%d items, %d adapters deleted)", persona_id, len(files.erased), len(deleted))
    return PersonaDeleteResult(
        persona_id=persona_id,
        erased=[*files.erased, "registry profile"],
        adapters_deleted=deleted,
        adapters_kept=kept,
        warnings=warnings,
    )


# -- 2. a running daemon stops first ----------------------------------------------------


async def _on_bus(ctx: CallContext, client_id: str) -> bool:
    answer = await ctx.client.call("bus.clients", {"kind": "persona"}, deadline_ms=5_000)
    return any(c["id"] == client_id for c in answer["clients"])


async def _stop_daemon(env: RegistryEnv, ctx: CallContext, profile: Profile) -> None:
    """Archive a persona whose daemon is on the bus and wait for it to go; PERSONA_RUNNING if it stays."""
    client_id = f"persona:{profile.id}"
    if not await _on_bus(ctx, client_id):
        return
    if profile.status is not PersonaStatus.ARCHIVED:
        await env.registry.update(
            profile.id, {"status": "archived"}, actor=actor(ctx), action="persona.archive"
        )
    await publish_change(ctx.client, profile.id, status="archived", action="persona.delete")
    loop = asyncio.get_running_loop()
    wait = PERSONA_STOP_WAIT_S
    if ctx.deadline is not None:
        wait = max(0.0, min(wait, ctx.deadline - loop.time() - _MARGIN_S))
    until = loop.time() + wait
    while await _on_bus(ctx, client_id):
        if loop.time() >= until:
            raise RpcError(
                PersonaEraseErrorCode.PERSONA_RUNNING,
                f"persona {profile.id} is still running ({client_id} is on the bus {wait:.0f} s after it "
                f"was archived): stop it first (`personad up` stops archived personas; under systemd "
                f"`systemctl stop personad@{profile.id}`), then call persona.delete again. Nothing was "
                "erased; the persona stays archived",
                {"persona_id": profile.id, "client_id": client_id},
            )
        await asyncio.sleep(_POLL_S)


# -- 3. files ---------------------------------------------------------------------------


class Erased:
    """What erase_files removed (paths relative to the state root) and what it could not reach."""

    def __init__(self) -> None:
        self.erased: list[str] = []
        self.warnings: list[str] = []


def _shred(path: Path) -> None:
    """Overwrite a regular file with zeros, fsync, unlink.

    A symlink or special file is only unlinked, never followed; so is a file
    with other hard links: those names may be outside the persona's folder
    (a daemon sharing the state root could link the registry's key into its
    folder), and zeroing the shared inode would destroy them too.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
        if not info.st_mode & stat.S_IWUSR:
            os.chmod(path, 0o600)  # our own read-only file (an export kept 0400): still ours to wipe
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            left = os.fstat(fd).st_size
            while left > 0:
                left -= os.write(fd, _BLOCK[: min(len(_BLOCK), left)])
            os.fsync(fd)
        finally:
            os.close(fd)
    path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _erase_folder(folder: Path, rel: str, out: Erased) -> None:
    """Shred every file under ``folder`` (never following links), then remove the tree."""
    if folder.is_symlink():
        folder.unlink()
        out.erased.append(f"{rel} (a symlink; only the link was removed)")
        return
    if not folder.is_dir():
        return
    count = 0
    for top, dirs, names in os.walk(folder, followlinks=False):
        for name in names + [d for d in dirs if (Path(top) / d).is_symlink()]:
            _shred(Path(top) / name)
            count += 1
    shutil.rmtree(folder)
    _fsync_dir(folder.parent)
    out.erased.append(f"{rel}/ ({count} files)")


def _files(state_root: Path, persona_id: str) -> list[Path]:
    """The single files erase_files removes, besides the persona's folder."""
    generated = generated_config_dir(state_root)
    return [
        key_path(state_root, persona_id),
        generated / "personas" / f"{persona_id}.toml",
        generated / f"{persona_id}.toml",
        state_root / "secrets" / f"persona-{persona_id}.token",
        state_root / "tokens.json",
    ]


def _blocked(path: Path, why: str) -> RpcError:
    return RpcError(
        ErrorCode.INTERNAL_ERROR,
        f"cannot erase {path}: {why}; nothing was erased (under the systemd units each persona has its own "
        "state dir and user: see docs/erasure.md)",
        {"path": str(path)},
    )


def check_reachable(state_root: Path, persona_id: str) -> None:
    """Raise (naming the path) unless erase_files can remove everything it would; changes nothing.

    Checked before the daemon is stopped or a file touched, so a state dir the
    registry may not write (another user's, under systemd) fails cleanly
    rather than half way.
    """
    folder = brain_path(state_root, persona_id).parent
    for path in [folder, *_files(state_root, persona_id)]:
        try:
            present = path.is_symlink() or path.exists()
        except PermissionError:
            raise _blocked(path, "permission denied (its folder cannot be searched)") from None
        if present and not os.access(path.parent, os.W_OK | os.X_OK):
            raise _blocked(path, f"its folder {path.parent} is not writable by the registry")
    if folder.is_dir() and not folder.is_symlink():

        def refuse(exc: OSError) -> None:
            raise _blocked(Path(exc.filename or folder), exc.strerror or "unreadable")

        for top, _dirs, names in os.walk(folder, onerror=refuse):
            if not os.access(top, os.R_OK | os.W_OK | os.X_OK):
                raise _blocked(Path(top), "not writable by the registry")
            for name in names:
                file = Path(top) / name
                if not file.is_symlink() and file.stat().st_uid != os.getuid():
                    raise _blocked(file, "owned by another user")


def erase_files(state_root: Path, persona_id: str) -> Erased:
    """Remove the persona's folder, key, generated config and token from ``state_root``.

    Safe to call again after a failure: what is already gone is skipped.
    The folder goes first (it holds the plaintext: exports, artifacts),
    then the key (crypto-erasure of any copy of the brain), then the rest.
    """
    out = Erased()
    folder = brain_path(state_root, persona_id).parent
    rel = f"personas/{persona_id}"
    brain_existed = False
    for suffix in BRAIN_SUFFIXES:
        path = Path(f"{brain_path(state_root, persona_id)}{suffix}")
        if path.exists():
            brain_existed = True
            _shred(path)
            out.erased.append(f"{rel}/{path.name}")
    if not folder.exists() and not folder.is_symlink():
        out.warnings.append(
            f"no {rel}/ in this state dir: if the persona ran with another state root (under systemd, "
            f"/var/lib/private/personad/personas/{persona_id}), erase it there too (docs/erasure.md)"
        )
    _erase_folder(folder, rel, out)

    key, *configs, secret, tokens = _files(state_root, persona_id)
    if key.exists() or key.is_symlink():
        _shred(key)
        _fsync_dir(key.parent)
        out.erased.append(f"secrets/{key.name}")
    elif brain_existed:
        out.warnings.append(
            f"the brain had no key file in secrets/: it was opened with a systemd credential 'brain-key' "
            f"(LoadCredential/LoadCredentialEncrypted of personad@{persona_id}); delete that credential too"
        )
    for config in configs:
        if config.exists() or config.is_symlink():
            _shred(config)
            out.erased.append(str(config.relative_to(state_root)))
    if tokens.exists():
        revoked = TokenStore(tokens).revoke(f"persona:{persona_id}")
        if revoked:
            out.erased.append(f"token persona:{persona_id} ({revoked} revoked in tokens.json)")
    if secret.exists() or secret.is_symlink():
        _shred(secret)
        out.erased.append(f"secrets/{secret.name}")
    return out


# -- 4. adapters no other persona uses -----------------------------------------------------


def _stacks_of_others(db: Any, persona_id: str) -> dict[str, list[str]]:
    """sha256 -> ids of the other personas whose stack holds it (every profile is read)."""
    users: dict[str, list[str]] = {}
    for other, record in db.execute("SELECT id, record FROM profiles WHERE id != ?", (persona_id,)):
        try:
            stack = json.loads(record).get("stack") or []
        except ValueError:
            # A damaged record cannot say what it uses: keep everything rather than guess.
            raise RpcError(
                ErrorCode.INTERNAL_ERROR,
                f"the profile of {other} is unreadable, so the adapters it may use are unknown; "
                "nothing was deleted from the adapter store",
            ) from None
        for entry in stack:
            users.setdefault(str(entry.get("sha256")), []).append(other)
    return users


async def _delete_adapters(
    env: RegistryEnv, ctx: CallContext, profile: Profile
) -> tuple[list[AdapterDeleted], list[AdapterKept]]:
    """adapter.delete each level of the stack no one else uses, leaves first."""
    users = await env.registry.run(_stacks_of_others, profile.id)
    deleted: list[AdapterDeleted] = []
    kept: list[AdapterKept] = []
    offline: str | None = None
    for entry in reversed(profile.stack):
        if others := users.get(entry.sha256):
            kept.append(_kept(entry, f"in the stack of {', '.join(sorted(others))}"))
            continue
        if offline is not None:
            kept.append(_kept(entry, offline))
            continue
        try:
            answer = await ctx.client.call(
                "adapter.delete",
                {"name": entry.name, "sha256": entry.sha256},
                to="cap:inference",
                deadline_ms=30_000,
            )
        except RpcError as exc:
            if exc.code == ErrorCode.TARGET_OFFLINE:
                offline = "cap:inference is offline (start `personad inference`, then call adapter.delete)"
                kept.append(_kept(entry, offline))
            elif exc.code == InferenceErrorCode.ADAPTER_NOT_FOUND:
                deleted.append(
                    AdapterDeleted(
                        name=entry.name, sha256=entry.sha256, blob_removed=False, already_gone=True
                    )
                )
            else:
                kept.append(_kept(entry, exc.message))
            continue
        deleted.append(
            AdapterDeleted(name=entry.name, sha256=entry.sha256, blob_removed=answer["blob_removed"])
        )
    return deleted, kept


def _kept(entry: StackEntry, reason: str) -> AdapterKept:
    return AdapterKept(name=entry.name, sha256=entry.sha256, reason=reason)


# -- 5. the profile row, last --------------------------------------------------------------


def _delete_row(db: Any, audit: Any, persona_id: str, who: str, details: dict[str, Any]) -> bool:
    """Delete the profile and its rows with the audit entry, one transaction; True if a TOML made it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("SELECT 1 FROM profiles WHERE id = ?", (persona_id,)).fetchone() is None:
            raise UnknownPersona(persona_id)
        from_toml = db.execute("DELETE FROM config_sources WHERE persona_id = ?", (persona_id,)).rowcount > 0
        db.execute("DELETE FROM profile_tags WHERE persona_id = ?", (persona_id,))
        db.execute("DELETE FROM profiles WHERE id = ?", (persona_id,))
        audit.append(actor=who, action="persona.delete", persona_id=persona_id, details=details)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    # secure_delete zeroed the freed cells in the new page images; older images
    # of those pages still sit in the WAL until it is checkpointed, so fold it
    # in, truncate it, and hand freed pages back to the file system.
    db.execute("PRAGMA incremental_vacuum").fetchall()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return bool(from_toml)

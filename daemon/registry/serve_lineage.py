"""persona.fork and persona.merge: profile (lineage.py), brain (brain/lineage.py) and adapters.

Each method runs its steps in this order: refusals first, then what is
easiest to take back, and the registry's records last, in one transaction:

1. check the params against the registry (ids, statuses, the new id) and
   compute the new profile (lineage.py, pure): a refusal here changes nothing;
2. write the new brain (``copy_brain`` or ``merge_brains``, on a worker
   thread) under a new key, in a folder made for it;
3. merge only: ``adapter.merge`` on ``cap:inference`` when both sources have
   a stack;
4. store the new profile and the sources' changes in one registry
   transaction, with their audit entries;
5. publish ``registry.persona`` for each persona whose record changed.

A failure in steps 2 to 4 removes what 2 created (brain, key, folders) and,
after 3, the adapter it stored (``adapter.delete``, name and hash: the name
was free before, so no one else uses it), so the state dir is as it was. If
that delete fails too (the inference service went away), the unused adapter
stays in the store under its own name and a warning says so.

Fork and merge are serialised with each other, so two of them never pick
the same new id; the transaction re-checks what a concurrent ``persona.*``
call could have changed.

(A little over 500 lines on purpose: every step shares the undo record and
the rule that a worker thread is never abandoned; split, they would become
a private API between two modules.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from protocol import ErrorCode, RpcError
from protocol.commands import persona_lineage as m
from protocol.commands.adapters import MergeResult
from protocol.profile import PersonaStatus, Profile, StackEntry

from ..brain import Brain
from ..brain.errors import BrainError, InvalidInput
from ..brain.keys import brain_path, has_data, key_path, load_or_create_key
from ..brain.lineage import copy_brain, merge_brains
from ..client import CallContext
from ..dispatch import Dispatcher
from ..inference.adapters import AdapterStore
from ..inference.errors import InferenceError
from .audit import AuditLog
from .boundary import RegistryEnv, actor, invalid, translate
from .errors import InvalidLineage, PersonaExists, UnknownPersona
from .events import publish_change
from .lineage import fork_profile, merge_profiles
from .store import RawConnection, get, record_sha256, transaction, write_profile

log = logging.getLogger("personad.registry")

T = TypeVar("T")

#: adapter.merge's deadline when the caller gave none (a real model's merge takes a while).
MERGE_DEADLINE_MS = 600_000
#: How many derived ids (``<id>-fork-1``, ``-2`` …) are tried before giving up.
MAX_DERIVED = 1000
#: lineage.py's argument names, as the params spell them.
_LINEAGE_FIELDS = {
    "new_id": "new_persona_id",
    "strategy": "merge_strategy",
    "secondary": "secondary_persona_id",
}
#: copy_brain's filter arguments, as the params spell them.
_FILTER_FIELDS = ("subjects", "tags", "since", "until")


# -- what a fork or merge made on disk ------------------------------------------------------


class Undo:
    """The paths a fork or merge created, removed again (newest first) unless it is kept.

    Only what did not exist before is recorded. The new persona's own folder
    is removed whole; a shared folder it had to create (``personas/``,
    ``secrets/``) only while empty, since another persona may have put
    something in it meanwhile.
    """

    def __init__(self) -> None:
        self.made: list[tuple[Path, bool]] = []  # (path, removed whole)
        self.kept = False

    def folder(self, path: Path, *, own: bool) -> None:
        if not path.is_dir():
            path.mkdir(mode=0o700)
            self.made.append((path, own))

    def key(self, state_root: Path, persona_id: str) -> bytes:
        """A new brain key for ``persona_id`` (never the registry's own credentials: environ={})."""
        secrets, path = state_root / "secrets", key_path(state_root, persona_id)
        if not secrets.is_dir():
            self.made.append((secrets, False))  # load_or_create_key makes it
        if not path.exists():
            self.made.append((path, True))
        return load_or_create_key(state_root, persona_id, environ={})

    def new_brain(self, state_root: Path, persona_id: str) -> tuple[Path, bytes]:
        """Where the new persona's brain goes (its folder made), and its new key."""
        dest = brain_path(state_root, persona_id)
        self.folder(dest.parent.parent, own=False)
        self.folder(dest.parent, own=True)
        key = self.key(state_root, persona_id)
        self.made.append((dest, True))  # written whole or not at all, but kept only on success
        return dest, key

    def rollback(self) -> None:
        if self.kept:
            return
        for path, whole in reversed(self.made):
            try:
                if path.is_dir() and not path.is_symlink():
                    if whole:
                        shutil.rmtree(path)
                    elif not any(path.iterdir()):
                        path.rmdir()
                else:
                    for suffix in ("", "-wal", "-shm", "-journal"):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(f"{path}{suffix}")
            except OSError as exc:  # the caller's error matters more; say what is left
                log.error("could not remove %s after a failed fork or merge: %s", path, exc)


async def finish(work: Awaitable[T], undo: Undo | None = None) -> T:
    """Await ``work`` (a thread's job) to its end even if we are cancelled meanwhile.

    A worker thread cannot be stopped: abandoning it would let it create a
    brain after the rollback removed its folder, or commit a profile whose
    brain was removed. So cancellation waits for it; if it succeeded, ``undo``
    is kept (what it made is now referenced).
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if undo is not None and not task.cancelled() and task.exception() is None:
            undo.kept = True
        raise


# -- ids and checks ---------------------------------------------------------------------


def leftover_state(state_root: Path, persona_id: str) -> bool:
    """A folder or key from an earlier persona of that id: never reused, never overwritten."""
    return brain_path(state_root, persona_id).parent.exists() or key_path(state_root, persona_id).exists()


async def lookup(env: RegistryEnv, persona_id: str, field: str) -> Profile:
    try:
        return await env.registry.get(persona_id)
    except UnknownPersona:
        raise UnknownPersona(persona_id, field=field) from None


async def is_free(env: RegistryEnv, persona_id: str) -> bool:
    try:
        await env.registry.get(persona_id)
    except UnknownPersona:
        return not leftover_state(env.state_root, persona_id)
    return False


async def new_id(env: RegistryEnv, requested: str | None, base: str, kind: str) -> str:
    """``requested`` if free (else INVALID_PARAMS), or ``<base>-<kind>-<n>``, the first free."""
    if requested is not None:
        try:
            await env.registry.get(requested)
        except UnknownPersona:
            pass
        else:
            raise invalid("new_persona_id", f"persona {requested!r} exists", "persona_exists")
        if leftover_state(env.state_root, requested):
            raise invalid(
                "new_persona_id",
                f"{requested!r} has a brain folder or key on disk from an earlier persona; "
                "remove it or choose another id",
                "state_exists",
            )
        return requested
    for n in range(1, MAX_DERIVED + 1):
        suffix = f"-{kind}-{n}"
        candidate = base[: 64 - len(suffix)] + suffix
        if await is_free(env, candidate):
            return candidate
    raise invalid("new_persona_id", f"no free id {base}-{kind}-<n> up to {MAX_DERIVED}; give one")


def lineage_invalid(exc: InvalidLineage) -> RpcError:
    head, _, rest = exc.field.partition(".")
    field = _LINEAGE_FIELDS.get(head, head) + (f".{rest}" if rest else "")
    return invalid(field, exc.reason)


def brain_failure(exc: BrainError, what: str) -> RpcError:
    """A brain error: a bad filter names its member; anything else is the operator's problem."""
    if isinstance(exc, InvalidInput) and exc.field.partition("[")[0] in _FILTER_FIELDS:
        return invalid(f"memory_filter.{exc.field}", exc.reason)
    log.error("%s failed: %s", what, exc)
    return RpcError(ErrorCode.INTERNAL_ERROR, f"{what} failed: {exc} (nothing was changed)")


def check_mergeable(profile: Profile, field: str) -> None:
    # A merged persona's knowledge already lives in its merge; an archived one is retired.
    # Either merged again would be counted twice or brought back without anyone deciding to.
    if profile.status in (PersonaStatus.MERGED, PersonaStatus.ARCHIVED):
        raise invalid(
            field,
            f"persona {profile.id!r} is {profile.status.value}; only draft or active personas are merged",
            f"source_{profile.status.value}",
        )


def deadline_ms(ctx: CallContext) -> int:
    if ctx.deadline is None:
        return MERGE_DEADLINE_MS
    left = ctx.deadline - asyncio.get_running_loop().time()
    return max(1000, int(left * 1000) - 500)  # leave the answer time to travel back


# -- the brain step ---------------------------------------------------------------------------


async def fork_brain(
    env: RegistryEnv, source_id: str, fork_id: str, flt: m.MemoryFilter | None, undo: Undo
) -> m.ForkBrain | None:
    root = env.state_root
    source = brain_path(root, source_id)
    if not has_data(source):
        return None  # never started: the fork starts empty too
    try:
        source_key = load_or_create_key(root, source_id, environ={})
        dest, dest_key = undo.new_brain(root, fork_id)
        report = await finish(
            asyncio.to_thread(
                copy_brain,
                source,
                source_key,
                dest,
                dest_key,
                subjects=flt.subjects if flt else None,
                tags=flt.tags if flt else None,
                since=flt.since if flt else None,
                until=flt.until if flt else None,
            )
        )
    except BrainError as exc:
        raise brain_failure(exc, f"copying the brain of {source_id!r}") from None
    return m.ForkBrain(
        memories=report.memories,
        memories_in_source=report.memories_in_source,
        skills=report.skills,
        goals=report.goals,
        evolution_history=report.evolution_history,
        seconds=report.seconds,
    )


async def merge_brain(
    env: RegistryEnv, primary_id: str, secondary_id: str, merged_id: str, undo: Undo
) -> m.MergeBrain | None:
    root = env.state_root
    sources = {"primary": brain_path(root, primary_id), "secondary": brain_path(root, secondary_id)}
    present = [side for side, path in sources.items() if has_data(path)]
    if not present:
        return None
    what = f"merging the brains of {primary_id!r} and {secondary_id!r}"
    try:
        keys = {
            side: load_or_create_key(root, pid, environ={})
            for side, pid in (("primary", primary_id), ("secondary", secondary_id))
            if side in present
        }
        dest, dest_key = undo.new_brain(root, merged_id)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".empty-") as tmp:
            for side in sources.keys() - set(present):
                # One brain absent counts as empty: the same rules (near-duplicates
                # folded even within the one present) for one source as for two.
                sources[side] = Path(tmp) / "brain.sqlite"
                keys[side] = os.urandom(32)
                async with await Brain.open(sources[side], keys[side]):
                    pass
            report = await finish(
                asyncio.to_thread(
                    merge_brains,
                    sources["primary"],
                    keys["primary"],
                    sources["secondary"],
                    keys["secondary"],
                    dest,
                    dest_key,
                )
            )
    except BrainError as exc:
        raise brain_failure(exc, what) from None
    return m.MergeBrain(
        memories=report.memories,
        kept_primary=report.kept_primary,
        kept_secondary=report.kept_secondary,
        dropped_duplicates=report.dropped_duplicates,
        skills=report.skills,
        skills_in_both=report.skills_in_both,
        goals=report.goals,
        evolution_history=report.evolution_history,
        seconds=report.seconds,
        sources=present,
    )


# -- the adapter step -----------------------------------------------------------------------


def adapter_name(state_root: Path, persona_id: str) -> str:
    """A root adapter name from the persona's id that the store does not hold yet."""
    try:
        taken = set(AdapterStore.for_state(state_root, create=False).names())
    except InferenceError:
        taken = set()  # adapter.merge reports the store's state itself
    base = persona_id[:32]
    if base not in taken:
        return base
    n = 2
    while f"{base[:26]}-{n}" in taken:
        n += 1
    return f"{base[:26]}-{n}"


async def merge_stacks(
    ctx: CallContext, env: RegistryEnv, primary: Profile, secondary: Profile, merged_id: str, combination: str
) -> tuple[MergeResult | None, list[StackEntry]]:
    """The merged persona's stack, and adapter.merge's result when it made one."""
    if not primary.stack or not secondary.stack:
        return None, list(primary.stack or secondary.stack)
    if primary.stack == secondary.stack:
        # A fork merged back with its source: the same weights, not twice their delta.
        return None, list(primary.stack)
    params: dict[str, Any] = {
        "sources": [primary.stack[-1].name, secondary.stack[-1].name],
        "pins": [[e.model_dump() for e in primary.stack], [e.model_dump() for e in secondary.stack]],
        "name": adapter_name(env.state_root, merged_id),
        "combination": combination,
    }
    try:
        answer = await ctx.client.call(
            "adapter.merge", params, to="cap:inference", deadline_ms=deadline_ms(ctx)
        )
    except RpcError as exc:
        raise RpcError(
            exc.code, f"adapter.merge failed: {exc.message} (nothing was changed)", exc.data
        ) from None
    result = MergeResult.model_validate(answer)
    return result, [StackEntry(name=result.name, sha256=result.sha256)]


async def drop_adapter(ctx: CallContext, adapter: MergeResult) -> None:
    """Take back the adapter a failed merge stored (its name was free before: no one else uses it)."""
    params = {"name": adapter.name, "sha256": adapter.sha256}
    try:
        await ctx.client.call("adapter.delete", params, to="cap:inference", deadline_ms=30_000)
    except Exception as exc:  # the merge's own error is what the caller must see
        log.warning(
            "persona.merge failed after adapter.merge stored %s (%s…), and deleting it failed too: %s; "
            "no persona uses it (adapter.delete on cap:inference removes it)",
            adapter.name,
            adapter.sha256[:12],
            exc,
        )


# -- the registry transaction ------------------------------------------------------------------


def current(db: RawConnection, persona_id: str, field: str) -> Profile:
    try:
        return get(db, persona_id)
    except UnknownPersona:
        raise UnknownPersona(persona_id, field=field) from None


def insert_new(db: RawConnection, profile: Profile) -> None:
    if db.execute("SELECT 1 FROM profiles WHERE id = ?", (profile.id,)).fetchone():
        raise PersonaExists(profile.id)
    write_profile(db, profile, insert=True)


def touched(profile: Profile, now: float, **changes: Any) -> Profile:
    return profile.model_copy(
        update={**changes, "lineage": profile.lineage.model_copy(update={"updated_at": now})}
    )


def store_fork(
    db: RawConnection, audit: AuditLog, fork: Profile, source_id: str, now: float, who: str
) -> Profile:
    """The fork inserted and the source's lineage touched, one transaction, both audited."""
    with transaction(db):
        # Re-read: a persona.update since the checks must not be undone.
        source = touched(current(db, source_id, "source_persona_id"), now)
        insert_new(db, fork)
        write_profile(db, source, insert=False)
        action = "persona.fork"
        details = {"forked_from": source_id, "record_sha256": record_sha256(fork)}
        audit.append(actor=who, action=action, persona_id=fork.id, details=details)
        details = {"fork": fork.id, "record_sha256": record_sha256(source)}
        audit.append(actor=who, action=action, persona_id=source_id, details=details)
    return source


def store_merge(
    db: RawConnection, audit: AuditLog, merged: Profile, now: float, who: str, adapter_sha256: str | None
) -> list[Profile]:
    """The merged persona inserted and both sources marked merged, one transaction, all audited."""
    primary_id, secondary_id = merged.lineage.merged_from
    with transaction(db):
        sources = []
        for persona_id, field in ((primary_id, "primary_persona_id"), (secondary_id, "secondary_persona_id")):
            profile = current(db, persona_id, field)
            check_mergeable(profile, field)  # a concurrent archive since the checks
            sources.append(touched(profile, now, status=PersonaStatus.MERGED))
        insert_new(db, merged)
        details: dict[str, Any] = {"merged_from": [primary_id, secondary_id]}
        details |= {"record_sha256": record_sha256(merged), "adapter_sha256": adapter_sha256}
        audit.append(actor=who, action="persona.merge", persona_id=merged.id, details=details)
        for source in sources:
            write_profile(db, source, insert=False)
            details = {"merged_into": merged.id, "record_sha256": record_sha256(source)}
            audit.append(actor=who, action="persona.merge", persona_id=source.id, details=details)
    return sources


# -- the handlers ------------------------------------------------------------------------------


def register(dispatcher: Dispatcher, env: RegistryEnv) -> None:
    """Register this group's methods on ``dispatcher``."""
    registry = env.registry
    # Fork and merge one at a time: two of them must not pick the same new id.
    lock = asyncio.Lock()

    async def fork(p: m.PersonaForkParams, ctx: CallContext) -> m.PersonaForkResult:
        async with lock:
            source = await lookup(env, p.source_persona_id, "source_persona_id")
            fork_id = await new_id(env, p.new_persona_id, source.id, "fork")
            now = time.time()
            changes = p.modifications.model_dump(exclude_none=True) if p.modifications else {}
            try:
                profile, _ = fork_profile(
                    source, new_id=fork_id, new_role=p.new_role, modifications=changes, now=now
                )
            except InvalidLineage as exc:
                raise lineage_invalid(exc) from None
            undo = Undo()
            try:
                brain = await fork_brain(env, source.id, fork_id, p.memory_filter, undo)
                after = await finish(
                    registry.run(store_fork, registry.audit, profile, source.id, now, actor(ctx)), undo
                )
            except PersonaExists:
                undo.rollback()
                raise invalid("new_persona_id", f"persona {fork_id!r} exists", "persona_exists") from None
            except BaseException:
                undo.rollback()
                raise
        await publish_change(ctx.client, fork_id, status=profile.status.value, action="persona.fork")
        await publish_change(ctx.client, source.id, status=after.status.value, action="persona.fork")
        return m.PersonaForkResult(persona_id=fork_id, profile=profile, brain=brain)

    async def merge(p: m.PersonaMergeParams, ctx: CallContext) -> m.PersonaMergeResult:
        if p.primary_persona_id == p.secondary_persona_id:
            raise invalid("secondary_persona_id", "must differ from primary_persona_id", "self_merge")
        async with lock:
            primary = await lookup(env, p.primary_persona_id, "primary_persona_id")
            secondary = await lookup(env, p.secondary_persona_id, "secondary_persona_id")
            check_mergeable(primary, "primary_persona_id")
            check_mergeable(secondary, "secondary_persona_id")
            merged_id = await new_id(env, p.new_persona_id, primary.id, "merge")
            now = time.time()
            try:
                profile, _, _ = merge_profiles(
                    primary,
                    secondary,
                    strategy=p.merge_strategy,
                    new_id=merged_id,
                    name=p.name,
                    description=p.description,
                    now=now,
                )
            except InvalidLineage as exc:
                raise lineage_invalid(exc) from None
            undo = Undo()
            adapter: MergeResult | None = None
            try:
                brain = await merge_brain(env, primary.id, secondary.id, merged_id, undo)
                adapter, stack = await merge_stacks(
                    ctx, env, primary, secondary, merged_id, p.adapter_combination
                )
                profile = profile.model_copy(update={"stack": stack})
                sources = await finish(
                    registry.run(
                        store_merge,
                        registry.audit,
                        profile,
                        now,
                        actor(ctx),
                        adapter.sha256 if adapter else None,
                    ),
                    undo,
                )
            except BaseException as exc:
                undo.rollback()
                if adapter is not None and not undo.kept:
                    await drop_adapter(ctx, adapter)
                if isinstance(exc, PersonaExists):
                    raise invalid(
                        "new_persona_id", f"persona {merged_id!r} exists", "persona_exists"
                    ) from None
                raise
        await publish_change(ctx.client, merged_id, status=profile.status.value, action="persona.merge")
        for source in sources:
            await publish_change(ctx.client, source.id, status=source.status.value, action="persona.merge")
        return m.PersonaMergeResult(persona_id=merged_id, profile=profile, brain=brain, adapter=adapter)

    dispatcher.register("persona.fork", translate(fork))
    dispatcher.register("persona.merge", translate(merge))

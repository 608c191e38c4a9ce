"""persona.export and persona.import: bundles (bundle.py) and Character Cards (cards.py) on the bus.

One file (over 500 lines) because export and import are two halves of one mapping sharing its
params checks; the brain work, the one clean seam, is already in transfer_brain.py.

This module holds the bus handlers, the params checks (every refusal named
by its field) and the file transport; reading and rebuilding the brain
itself, with no bus in it, is transfer_brain.py. Export and import stay side
by side here because they are two halves of one mapping, a persona to a file
and back.

Files, not frames, carry a persona (the bus's frames are capped, 16 MiB by
default, and a bundle with adapters is far larger). An export is written
atomically, mode 0600, into ``<state>/personas/<id>/exports/`` and the answer
says where, with its size and sha256; ``inline: true`` also returns it as
base64 when it is at most ``MAX_INLINE_BYTES``. An import reads ``path`` (a
file the registry can open) or ``data_b64`` (bounded the same way).

What moves, per format:

* ``bundle``: the profile, the brain as its ``personad.brain`` export (read
  on a read-only connection: the persona may be running) and the stack's
  adapters from the shared store, encrypted to a passphrase or a
  recipient's X25519 key and signed with this installation's key. On
  import the brain is rebuilt under a *new* key, row for row, and each
  adapter stored once by content.
* cards: the profile and memories (those the import made from a card, or
  all of them) mapped by cards.py; what a profile cannot hold (greetings,
  creator notes, unknown members) is the card's *remainder*, kept in the
  registry's encrypted database beside the profile so an export restores
  it.

An import writes, in this order, the brain (a temporary file linked into
place), the adapters, then the registry record with its remainder and audit
entry in one transaction; a failure removes the brain (and the key it made),
so the persona appears whole or not at all; a registry killed in the middle
of either takes back the import and removes the export's temporary files
when it starts again (transfer_brain.recover_imports, sweep_exports). Every refusal is INVALID_PARAMS
naming the field (``data = {"field", "reason"}``); passphrases and keys
appear in no message, log line or audit entry (entries hold ids and
sha256s).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from protocol import ErrorCode, RpcError
from protocol.commands import persona_transfer as m
from protocol.commands.inference import StackEntry as InferenceStackEntry
from protocol.profile import PersonaStatus, Profile

from ..brain import export as brain_export
from ..brain.errors import BrainError, InvalidInput
from ..brain.migrations import LATEST as BRAIN_SCHEMA
from ..client import CallContext
from ..dispatch import Dispatcher
from ..files import atomic_dir, atomic_write, file_lock
from ..inference.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterStore, parent_of, sha256_file
from ..inference.errors import InferenceError
from ..state import ensure_private_dir
from . import store
from .audit import AuditLog
from .boundary import RegistryEnv, actor, invalid, translate
from .bundle import MAGIC, read_bundle, write_bundle
from .bundle_keys import PassphraseKey, RecipientKey, RecipientPrivateKey, SigningKey, TrustPolicy
from .cards import (
    V2,
    V3,
    CardLimits,
    CardRemainder,
    card_to_json,
    card_to_persona,
    parse_card_json,
    persona_to_card,
)
from .cards_png import minimal_png, read_png_card, write_png_card
from .errors import (
    BundleError,
    BundleFormatError,
    BundleInputError,
    BundleKeyError,
    BundleLimitExceeded,
    BundleSignatureMissing,
    BundleTampered,
    CardError,
    CardTooLarge,
    PersonaExists,
    UnknownPersona,
    UntrustedSigner,
    WrongBundleKey,
)
from .events import publish_change
from .transfer_brain import NewBrain, brain_reader, brain_rows, has_brain, memory_rows, read_memories

log = logging.getLogger("personad.registry")

EXPORTS: Final = "exports"
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
#: A brain export is parsed whole to rebuild the brain; past this it is refused.
MAX_BRAIN_EXPORT_BYTES: Final = 1 << 30
_SUFFIX: Final = {"bundle": "pdbundle", "ccv2": "json", "ccv3": "json", "ccv3-png": "png"}
_CARD_LIMITS: Final = CardLimits()


# -- the card remainder, beside the profile in the registry's database ----------------


def _load_remainder(db: Any, persona_id: str) -> CardRemainder | None:
    row = db.execute("SELECT record FROM card_remainders WHERE persona_id = ?", (persona_id,)).fetchone()
    return None if row is None else CardRemainder.model_validate_json(row[0])


def _create_imported(
    db: Any,
    audit: AuditLog,
    profile: Profile,
    remainder: CardRemainder | None,
    *,
    who: str,
    details: dict[str, Any],
) -> Profile:
    """The record, its remainder and one ``persona.import`` audit entry, in one transaction."""
    now = time.time()
    stored = profile.model_copy(
        update={"lineage": profile.lineage.model_copy(update={"created_at": now, "updated_at": now})}
    )
    with store.transaction(db):
        if db.execute("SELECT 1 FROM profiles WHERE id = ?", (profile.id,)).fetchone():
            raise PersonaExists(profile.id)
        store.write_profile(db, stored, insert=True)
        if remainder is not None:
            db.execute(
                "INSERT INTO card_remainders (persona_id, record, created_at) VALUES (?, ?, ?)",
                (profile.id, remainder.model_dump_json(), now),
            )
        audit.append(
            actor=who,
            action="persona.import",
            persona_id=profile.id,
            details={**details, "record_sha256": store.record_sha256(stored)},
        )
    return stored


# -- adapters -------------------------------------------------------------------------


def _stack_folders(state_root: Path, profile: Profile) -> list[Path]:
    """The store's folder of each adapter in the stack (once per content), root first."""
    if not profile.stack:
        return []
    adapters = AdapterStore.for_state(state_root)
    folders: dict[str, Path] = {}
    for entry in profile.stack:
        try:
            # by_hash reads only the name and the hash (no need to re-validate the name here).
            record = adapters.by_hash(
                InferenceStackEntry.model_construct(name=entry.name, sha256=entry.sha256)
            )
            if entry.sha256 not in folders:
                adapters.verify(record)  # the bundle must carry the weights the stack pins
                folders[entry.sha256] = record.path
        except InferenceError as exc:
            raise invalid("persona_id", f"its stack cannot be bundled: {exc}", "adapter_missing") from None
    return list(folders.values())


def _store_adapters(state_root: Path, profile: Profile, folders: list[Path]) -> list[str]:
    """Put a bundle's adapters into the shared store; return their sha256s.

    The store is content-addressed: weights already present are not copied
    again. A stack level's name is registered only when it is free here and
    its parent level is known (the stack pins each level by hash, so a name
    taken by another adapter here does not matter to this persona).
    """
    adapters = AdapterStore.for_state(state_root)
    names = {entry.sha256: entry.name for entry in profile.stack}
    order = {entry.sha256: i for i, entry in reversed(list(enumerate(profile.stack)))}
    done: list[str] = []
    for folder in sorted(folders, key=lambda f: (order.get(f.name, len(order)), f.name)):
        sha = folder.name
        name = names.get(sha)
        known = adapters.names()
        parent = parent_of(name) if name is not None else None
        try:
            if name is not None and name not in known and (parent is None or parent in known):
                adapters.import_folder(folder, name, meta={"imported_with": profile.id})
            elif not (adapters.object_path(sha) / WEIGHTS_FILE).exists():
                with file_lock(adapters.root / ".lock"):
                    if not adapters.object_path(sha).exists():
                        with atomic_dir(adapters.object_path(sha), mode=0o700) as tmp:
                            for file in (CONFIG_FILE, WEIGHTS_FILE):
                                shutil.copyfile(folder / file, tmp / file)
                                os.chmod(tmp / file, 0o600)
        except InferenceError as exc:
            raise invalid("adapters", f"adapter {sha[:12]}…: {exc}", "adapter_conflict") from None
        done.append(sha)
    return done


# -- export -----------------------------------------------------------------------------


@dataclass
class _Exported:
    path: Path
    brain: bool
    memories: int
    adapters: int = 0
    signer: str | None = None


def _export_path(state_root: Path, persona_id: str, fmt: str) -> Path:
    personas = ensure_private_dir(ensure_private_dir(state_root) / "personas")
    folder = ensure_private_dir(ensure_private_dir(personas / persona_id) / EXPORTS)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return folder / f"{persona_id}-{stamp}-{secrets.token_hex(3)}.{_SUFFIX[fmt]}"


def sweep_exports(state_root: Path) -> list[Path]:
    """Remove what exports a killed registry left half-made; returns what it removed.

    An export writes only under temporary names beginning with ``.`` in the persona's
    exports folder: the bundle's work folder (``.export-*``, the brain's plaintext export,
    0600 in a 0700 folder) and the file being sealed or written (``.<name>.*``), renamed to
    its own name only when whole. A kill -9 in between leaves them; nothing else there
    begins with ``.``. Call it before the registry serves (no export is running then).
    """
    removed: list[Path] = []
    for leftover in sorted((state_root / "personas").glob(f"*/{EXPORTS}/.*")):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        removed.append(leftover)
    return removed


def _export_bundle(state_root: Path, profile: Profile, key: PassphraseKey | RecipientKey) -> _Exported:
    signer = SigningKey.load_or_create(state_root)
    folders = _stack_folders(state_root, profile)
    path = _export_path(state_root, profile.id, "bundle")
    found = has_brain(state_root, profile.id)
    counts: dict[str, int] = {}
    # The brain's export is plaintext: it lives, 0600 in a 0700 folder of
    # the persona's own, only while the bundle is sealed.
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=path.parent))
    try:
        export = None
        if found:
            export = work / "brain.json"
            with brain_reader(state_root, profile.id) as db:
                counts = brain_export.export_sync(db, export, BRAIN_SCHEMA).counts
        write_bundle(path, profile=profile, brain_export=export, adapters=folders, key=key, signer=signer)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _Exported(path, found, counts.get("memories", 0), len(folders), signer.public_hex)


def _export_card(
    state_root: Path, profile: Profile, remainder: CardRemainder | None, fmt: str, which: str
) -> _Exported:
    found = has_brain(state_root, profile.id)
    memories = read_memories(state_root, profile.id, which) if found else []
    card = persona_to_card(profile, memories, remainder, spec=V2 if fmt == "ccv2" else V3, now=time.time())
    data = card_to_json(card) if fmt != "ccv3-png" else write_png_card(minimal_png(), card)
    path = _export_path(state_root, profile.id, fmt)
    atomic_write(path, data, mode=0o600)
    return _Exported(path, found, len(memories))


def _export_key(p: m.PersonaExportParams) -> PassphraseKey | RecipientKey | None:
    """The bundle's key from the params; None for a card (where giving one is refused)."""
    if p.format != "bundle":
        for name in ("passphrase", "recipient"):
            if getattr(p, name) is not None:
                raise invalid(name, "only a bundle is encrypted; a card is not")
        return None
    if p.passphrase is not None and p.recipient is not None:
        raise invalid("recipient", "give passphrase or recipient, not both")
    if p.passphrase is not None:
        return PassphraseKey(p.passphrase)
    if p.recipient is not None:
        return RecipientKey.from_hex(p.recipient)
    raise invalid("passphrase", "a bundle is encrypted: give passphrase or recipient")


# -- import -----------------------------------------------------------------------------


@dataclass
class _Source:
    """The file an import reads: a path of the caller's, or the inline bytes written to one of ours."""

    path: Path
    param: str  # the param it came from: path or data_b64
    size: int
    head: bytes
    sha256: str = ""


#: Folders of the state dir an import never reads: keys, tokens and the registry's own files.
_PRIVATE: Final = ("secrets", "registry")


def _open_source(p: m.PersonaImportParams, work: Path, state_root: Path) -> _Source:
    if (p.path is None) == (p.data_b64 is None):
        if p.path is None:
            raise invalid("path", "give path or data_b64")
        raise invalid("data_b64", "give path or data_b64, not both")
    if p.data_b64 is not None:
        try:
            data = base64.b64decode(p.data_b64, validate=True)
        except (binascii.Error, ValueError):
            raise invalid("data_b64", "not base64", "bad_format") from None
        if len(data) > m.MAX_INLINE_BYTES:
            raise invalid("data_b64", f"more than {m.MAX_INLINE_BYTES} bytes; give a path", "too_large")
        path = work / "inline"
        atomic_write(path, data, mode=0o600)
        return _Source(path, "data_b64", len(data), data[:64], hashlib.sha256(data).hexdigest())
    assert p.path is not None
    path = Path(p.path)
    if not path.is_absolute():
        raise invalid("path", "must be an absolute path (the registry's working folder is not yours)")
    # The registry may read files its caller cannot; never its own secrets.
    if any(path.resolve().is_relative_to(state_root.resolve() / name) for name in _PRIVATE):
        raise invalid("path", "is one of the state dir's private files", "not_a_file")
    try:
        # O_NONBLOCK: a FIFO in the file's place must not hang the registry.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise invalid("path", f"cannot open it ({exc.strerror})", "not_a_file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise invalid("path", "not a regular file", "not_a_file")
        head = os.pread(fd, 64, 0)
    finally:
        os.close(fd)
    return _Source(path, "path", st.st_size, head, sha256_file(path))


def _sniff(source: _Source) -> str:
    if source.head.startswith(MAGIC):
        return "bundle"
    if source.head.startswith(PNG_SIGNATURE):
        return "ccv3-png"
    if source.head.lstrip()[:1] == b"{":
        return "ccv3"  # a card's JSON; its own spec member says V2 or V3
    raise invalid(source.param, "not a bundle, a card PNG or a card's JSON", "bad_format")


def _bundle_header_id(path: Path) -> str | None:
    """The persona id a bundle's header names, unverified: only to refuse a taken id early."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            return None
        (length,) = struct.unpack(">I", f.read(4).rjust(4, b"\0"))
        try:
            doc = json.loads(f.read(min(length, 64 << 10)))
        except (ValueError, UnicodeDecodeError):
            return None
    found = doc.get("persona_id") if isinstance(doc, dict) else None
    return found if isinstance(found, str) else None


def _import_key(p: m.PersonaImportParams, fmt: str) -> PassphraseKey | RecipientPrivateKey | None:
    if fmt != "bundle":
        for name in ("passphrase", "recipient_private_key", "signer"):
            if getattr(p, name) is not None:
                raise invalid(name, "only a bundle is encrypted and signed; a card is not")
        return None
    if p.passphrase is not None and p.recipient_private_key is not None:
        raise invalid("recipient_private_key", "give passphrase or recipient_private_key, not both")
    if p.passphrase is not None:
        return PassphraseKey(p.passphrase)
    if p.recipient_private_key is not None:
        return RecipientPrivateKey.from_hex(p.recipient_private_key)
    raise invalid("passphrase", "a bundle is encrypted: give passphrase or recipient_private_key")


def _bundle_failure(exc: BundleError, source_field: str, key_field: str) -> RpcError:
    """A refusal of the bundle library as INVALID_PARAMS naming the field at fault."""
    if isinstance(exc, WrongBundleKey):
        return invalid(key_field, str(exc), "wrong_key")
    if isinstance(exc, UntrustedSigner):
        return invalid("signer", str(exc), "untrusted_signer")
    if isinstance(exc, BundleTampered | BundleSignatureMissing):
        return invalid(source_field, str(exc), "tampered")
    if isinstance(exc, BundleLimitExceeded):
        return invalid(source_field, str(exc), "too_large")
    if isinstance(exc, BundleFormatError | BundleInputError):
        return invalid(source_field, str(exc), "bad_format")
    # BundleKeyError: our signing key or trust list is unusable, an operator's matter.
    log.error("persona.import failed: %s", exc)
    return RpcError(ErrorCode.INTERNAL_ERROR, str(exc))


@dataclass
class _Prepared:
    """What an import will store, once its brain is written."""

    profile: Profile
    remainder: CardRemainder | None = None
    rows: dict[str, list[tuple[Any, ...]]] | None = None
    adapter_folders: list[Path] = field(default_factory=list)
    signer: str | None = None
    fmt: str = ""


def _prepare_card(p: m.PersonaImportParams, source: _Source, fmt: str) -> _Prepared:
    if p.persona_id is None:
        raise invalid("persona_id", "a card carries no persona id: give the new persona's id")
    if source.size > _CARD_LIMITS.max_png_bytes:
        raise invalid(source.param, f"more than {_CARD_LIMITS.max_png_bytes} bytes", "too_large")
    data = source.path.read_bytes()
    try:
        card = read_png_card(data) if fmt == "ccv3-png" else parse_card_json(data)
        wanted = {"ccv2": V2, "ccv3": V3}.get(p.format or "")
        if wanted is not None and card.spec != wanted:
            raise CardError(f"the card is {card.spec}, not the {p.format} asked for")
        profile, drafts, remainder = card_to_persona(card, persona_id=p.persona_id, role=p.role)
    except CardTooLarge as exc:
        raise invalid(source.param, str(exc), "too_large") from None
    except CardError as exc:
        raise invalid(source.param, str(exc), "bad_format") from None
    try:
        rows = memory_rows(drafts, time.time()) if drafts else None
    except InvalidInput as exc:
        raise invalid(source.param, f"a card memory is invalid: {exc}", "bad_format") from None
    found = "ccv3-png" if fmt == "ccv3-png" else ("ccv2" if card.spec == V2 else "ccv3")
    return _Prepared(profile, remainder=remainder, rows=rows, fmt=found)


def _prepare_bundle(
    p: m.PersonaImportParams,
    source: _Source,
    key: PassphraseKey | RecipientPrivateKey,
    state_root: Path,
    work: Path,
) -> _Prepared:
    trusted = TrustPolicy.key(p.signer) if p.signer is not None else TrustPolicy.tofu(state_root)
    key_field = "passphrase" if isinstance(key, PassphraseKey) else "recipient_private_key"
    try:
        contents = read_bundle(source.path, key=key, trusted=trusted, into=work / "bundle")
    except BundleError as exc:
        raise _bundle_failure(exc, source.param, key_field) from None
    if contents.profile is None:
        raise invalid(source.param, "the bundle holds no profile", "bad_format")
    new_id = p.persona_id or contents.profile.id
    profile = contents.profile.model_copy(update={"id": new_id, "status": PersonaStatus.DRAFT})
    rows = None
    if contents.brain_export is not None:
        if contents.brain_export.stat().st_size > MAX_BRAIN_EXPORT_BYTES:
            raise invalid(
                source.param, f"its brain export is over {MAX_BRAIN_EXPORT_BYTES} bytes", "too_large"
            )
        try:
            rows = brain_rows(json.loads(contents.brain_export.read_bytes()))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise invalid(source.param, "its brain export is not JSON", "bad_format") from None
        except BundleFormatError as exc:
            raise invalid(source.param, str(exc), "bad_format") from None
    return _Prepared(
        profile, rows=rows, adapter_folders=contents.adapters, signer=contents.signer, fmt="bundle"
    )


def _check_free(state_root: Path, persona_id: str, taken: bool) -> None:
    """An id is free when the registry has no such persona and no brain lies where its brain would go."""
    if taken:
        raise invalid(
            "persona_id", f"persona {persona_id!r} exists; give another persona_id", "persona_exists"
        )
    if has_brain(state_root, persona_id):
        raise invalid(
            "persona_id",
            f"a brain for {persona_id!r} already exists in the state dir; give another persona_id",
            "persona_exists",
        )


# -- the methods --------------------------------------------------------------------------


def register(dispatcher: Dispatcher, env: RegistryEnv) -> None:
    """Register persona.export and persona.import on ``dispatcher``."""
    registry = env.registry
    state_root = env.state_root
    writing = asyncio.Lock()

    async def exists(persona_id: str) -> bool:
        try:
            await registry.get(persona_id)
        except UnknownPersona:
            return False
        return True

    async def export(p: m.PersonaExportParams, ctx: CallContext) -> m.PersonaExportResult:
        profile = await registry.get(p.persona_id)
        key = _export_key(p)
        try:
            if key is not None:
                done = await asyncio.to_thread(_export_bundle, state_root, profile, key)
            else:
                remainder = await registry.run(_load_remainder, p.persona_id)
                done = await asyncio.to_thread(
                    _export_card, state_root, profile, remainder, p.format, p.memories
                )
        except (BrainError, BundleKeyError, BundleInputError) as exc:
            log.error("persona.export of %s failed: %s", p.persona_id, exc)
            raise RpcError(ErrorCode.INTERNAL_ERROR, f"cannot export {p.persona_id!r}: {exc}") from None
        size = done.path.stat().st_size
        data_b64 = None
        if p.inline:
            if size > m.MAX_INLINE_BYTES:
                done.path.unlink()
                raise invalid(
                    "inline",
                    f"the export is {size} bytes, over {m.MAX_INLINE_BYTES}; omit inline",
                    "too_large",
                )
            data_b64 = base64.b64encode(done.path.read_bytes()).decode("ascii")
        digest = await asyncio.to_thread(sha256_file, done.path)
        await registry.run(
            lambda _db: registry.audit.append(
                actor=actor(ctx),
                action="persona.export",
                persona_id=p.persona_id,
                details={"format": p.format, "sha256": digest, "bytes": size},
            )
        )
        return m.PersonaExportResult(
            persona_id=p.persona_id,
            format=p.format,
            path=str(done.path),
            bytes=size,
            sha256=digest,
            brain=done.brain,
            memories=done.memories,
            adapters=done.adapters,
            signer=done.signer,
            data_b64=data_b64,
        )

    async def import_(p: m.PersonaImportParams, ctx: CallContext) -> m.PersonaImportResult:
        work = Path(tempfile.mkdtemp(prefix=".import-", dir=ensure_private_dir(state_root)))
        brain: NewBrain | None = None
        held = False
        try:
            source = await asyncio.to_thread(_open_source, p, work, state_root)
            fmt = p.format or _sniff(source)
            key = _import_key(p, fmt)
            early = p.persona_id
            if key is not None and early is None:
                early = await asyncio.to_thread(_bundle_header_id, source.path)
            if early is not None and await exists(early):
                _check_free(state_root, early, True)
            if key is not None:
                prepared = await asyncio.to_thread(_prepare_bundle, p, source, key, state_root, work)
            else:
                prepared = await asyncio.to_thread(_prepare_card, p, source, fmt)
            profile = prepared.profile
            # One import writes at a time: two imports of one id must not
            # both see it free and then share (or remove) its brain key.
            await writing.acquire()
            held = True
            _check_free(state_root, profile.id, await exists(profile.id))
            memories = len(prepared.rows.get("memories", [])) if prepared.rows else 0
            if prepared.rows is not None:
                brain = NewBrain(state_root, profile.id)
                try:
                    await asyncio.to_thread(brain.write, prepared.rows)
                except BundleFormatError as exc:
                    raise invalid(source.param, str(exc), "bad_format") from None
                except InvalidInput as exc:  # another import made this brain since the check above
                    raise invalid("persona_id", str(exc), "persona_exists") from None
            adapters: list[str] = []
            if prepared.adapter_folders:
                adapters = await asyncio.to_thread(
                    _store_adapters, state_root, profile, prepared.adapter_folders
                )
            details: dict[str, Any] = {
                "format": prepared.fmt,
                "sha256": source.sha256,
                "brain": brain is not None,
            }
            if prepared.signer is not None:
                details["signer"] = prepared.signer
            try:
                stored = await registry.run(
                    lambda db: _create_imported(
                        db, registry.audit, profile, prepared.remainder, who=actor(ctx), details=details
                    )
                )
            except PersonaExists:
                raise invalid("persona_id", f"persona {profile.id!r} exists", "persona_exists") from None
            if brain is not None:
                await asyncio.to_thread(brain.done)
            brain = None  # it is the persona's now
        finally:
            if brain is not None:
                await asyncio.to_thread(brain.undo)
            if held:
                writing.release()
            await asyncio.to_thread(shutil.rmtree, work, True)
        await publish_change(ctx.client, stored.id, status=stored.status.value, action="persona.import")
        return m.PersonaImportResult(
            persona_id=stored.id,
            format=prepared.fmt,
            profile=stored,
            sha256=source.sha256,
            brain=prepared.rows is not None,
            memories=memories,
            adapters=adapters,
            signer=prepared.signer,
        )

    dispatcher.register("persona.export", translate(export))
    dispatcher.register("persona.import", translate(import_))

"""The registry's store: profiles encrypted at rest in one SQLCipher database.

``<state>/registry/registry.sqlite`` is opened with the brain's machinery
(daemon/brain/_db.py: raw 32-byte key, ``cipher_compatibility = 4``, WAL,
``synchronous = FULL``, ``secure_delete``): a profile is acknowledged only
once it would survive a power cut, and an erased one leaves no plaintext in
free pages. The key: keys.py.

Opening checks the key on a read-only connection first (a wrong key is
:class:`RegistryWrongKey` and the file, its WAL included, is not modified),
then refuses a database newer than this code, then migrates
(migrations.py). Each row is the profile's JSON (records.py, with its own
version chain) plus the columns ``persona.list`` filters on.

Every mutation appends one entry to the audit log (audit.py) inside its
transaction, before COMMIT: if the entry cannot be written the change is
rolled back, so there is no unaudited change (a crash between the two leaves
an entry for a change that did not happen, the safe side).

:class:`Registry` is the asyncio face: every operation is a whole
transaction run on the connection's own thread (``_db.run_on``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
from pydantic import ValidationError

from protocol.profile import PersonaStatus, Profile

from ..brain._db import connect_writer, create_private, open_aio, probe_readonly, run_on
from ..brain.errors import WrongKey
from .audit import AuditLog
from .errors import InvalidChange, PersonaExists, RegistryTooNew, RegistryWrongKey, UnknownPersona
from .keys import audit_path, load_or_create_registry_key, registry_path
from .migrations import LATEST, migrate
from .records import dump_record, load_record

__all__ = ["ListPage", "Registry", "Summary", "open_raw", "record_sha256", "transaction", "write_profile"]

RawConnection = Any
CACHE_KIB = 32 * 1024

_EDITABLE = (
    "name",
    "description",
    "role",
    "traits",
    "tags",
    "communication",
    "capabilities",
    "stack",
    "model",
    "status",
)


@dataclass(frozen=True, slots=True)
class Summary:
    id: str
    name: str
    role: str
    status: str
    tags: list[str]
    updated_at: float


@dataclass(frozen=True, slots=True)
class ListPage:
    personas: list[Summary]
    next_cursor: str | None


def record_sha256(profile: Profile) -> str:
    """What the audit log says of a record: its hash, never its content."""
    return hashlib.sha256(dump_record(profile).encode("utf-8")).hexdigest()


def open_raw(path: Path, key: bytes) -> RawConnection:
    """Check the key (read-only), refuse a newer file, open the writer and migrate.

    Synchronous, for the asyncio face (on its worker thread), the bench's
    baseline and tests.
    """
    try:
        version = probe_readonly(path, key)
    except WrongKey:
        raise RegistryWrongKey(path) from None
    if version is not None and version > LATEST:
        raise RegistryTooNew(f"registry {path}", version, LATEST)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    create_private(path)
    try:
        db = connect_writer(path, key, {})()
    except WrongKey:
        raise RegistryWrongKey(path) from None
    try:
        migrate(db, path)
        # Every page read from the OS is decrypted and its HMAC checked; a
        # listing touches rows spread over the table, so give the cache room
        # for a large registry (10,000 profiles are ~10 MB). It grows only as
        # pages are read.
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    except BaseException:
        db.close()
        raise
    return db


# -- the operations, each one transaction on a raw connection ----------------------


def _row_to_profile(row: tuple[str, str]) -> Profile:
    return load_record(row[0], row[1])


def get(db: RawConnection, persona_id: str) -> Profile:
    row = db.execute("SELECT id, record FROM profiles WHERE id = ?", (persona_id,)).fetchone()
    if row is None:
        raise UnknownPersona(persona_id)
    return _row_to_profile(row)


def list_page(
    db: RawConnection,
    *,
    status: str | None = None,
    tag: str | None = None,
    role: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> ListPage:
    """One page in id order; every filter given must match."""
    where: list[str] = []
    args: list[object] = []
    # With a tag, walk its (tag, persona_id) index: rows come in id order and
    # the page stops after ``limit`` of them, however rare the tag is.
    if tag is not None:
        sql = (
            "SELECT p.id, p.name, p.role, p.status, p.tags, p.updated_at "
            "FROM profile_tags t JOIN profiles p ON p.id = t.persona_id"
        )
        where.append("t.tag = ?")
        args.append(tag)
        order = "t.persona_id"
    else:
        sql = "SELECT p.id, p.name, p.role, p.status, p.tags, p.updated_at FROM profiles p"
        order = "p.id"
    if status is not None:
        where.append("p.status = ?")
        args.append(status)
    if role is not None:
        where.append("p.role = ?")
        args.append(role)
    if cursor is not None:
        where.append(f"{order} > ?")
        args.append(cursor)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order} LIMIT ?"
    rows = db.execute(sql, (*args, limit + 1)).fetchall()
    items = [Summary(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows[:limit]]
    return ListPage(items, items[-1].id if len(rows) > limit else None)


def write_profile(db: RawConnection, profile: Profile, *, insert: bool) -> None:
    """Insert or replace one profile row and its tags, as given (inside the caller's transaction).

    No checks and no audit entry: create() and update() are the checked
    paths; fork, merge and import use this to write several records and
    their audit entries in one :class:`transaction`.
    """
    values = (
        profile.schema_version,
        profile.status.value,
        profile.role,
        profile.name,
        json.dumps(profile.tags),
        dump_record(profile),
        profile.lineage.created_at,
        profile.lineage.updated_at,
        profile.id,
    )
    if insert:
        db.execute(
            "INSERT INTO profiles (schema_version, status, role, name, tags, record, created_at, "
            "updated_at, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )
    else:
        db.execute(
            "UPDATE profiles SET schema_version = ?, status = ?, role = ?, name = ?, tags = ?, "
            "record = ?, created_at = ?, updated_at = ? WHERE id = ?",
            values,
        )
        db.execute("DELETE FROM profile_tags WHERE persona_id = ?", (profile.id,))
    db.executemany(
        "INSERT OR IGNORE INTO profile_tags (tag, persona_id) VALUES (?, ?)",
        [(tag, profile.id) for tag in profile.tags],
    )


class transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any exception."""

    def __init__(self, db: RawConnection) -> None:
        self.db = db

    def __enter__(self) -> RawConnection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def create(
    db: RawConnection, audit: AuditLog, profile: Profile, *, actor: str, now: float | None = None
) -> Profile:
    """Insert a new persona (its times set now); PersonaExists if the id is taken."""
    now = time.time() if now is None else now
    if profile.status not in (PersonaStatus.DRAFT, PersonaStatus.ACTIVE):
        raise InvalidChange("profile.status", "a new persona is draft or active")
    stored = profile.model_copy(
        update={"lineage": profile.lineage.model_copy(update={"created_at": now, "updated_at": now})}
    )
    with transaction(db):
        if db.execute("SELECT 1 FROM profiles WHERE id = ?", (profile.id,)).fetchone():
            raise PersonaExists(profile.id)
        write_profile(db, stored, insert=True)
        audit.append(
            actor=actor,
            action="persona.create",
            persona_id=profile.id,
            details={"record_sha256": record_sha256(stored)},
        )
    return stored


def update(
    db: RawConnection,
    audit: AuditLog,
    persona_id: str,
    changes: Mapping[str, Any],
    *,
    actor: str,
    action: str = "persona.update",
    now: float | None = None,
) -> Profile:
    """Apply a partial profile (members of :data:`_EDITABLE`), validated as a whole.

    ``traits`` may be partial (a mapping of the traits to change).
    """
    for name in changes:
        if name not in _EDITABLE:
            raise InvalidChange(f"changes.{name}", "not editable (id and lineage never are)")
    with transaction(db):
        current = get(db, persona_id)
        data = current.model_dump(mode="json")
        for name, value in changes.items():
            if name == "traits":
                data["traits"] = {**data["traits"], **dict(value)}
            else:
                data[name] = value
        data["lineage"]["updated_at"] = time.time() if now is None else now
        try:
            new = Profile.model_validate_json(json.dumps(data))
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidChange(f"changes.{where}", first["msg"]) from None
        write_profile(db, new, insert=False)
        audit.append(
            actor=actor,
            action=action,
            persona_id=persona_id,
            details={"fields": sorted(changes), "record_sha256": record_sha256(new)},
        )
    return new


# -- the asyncio face ---------------------------------------------------------------


class Registry:
    """The open registry: one connection, on its own thread, and the audit log."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, audit: AuditLog) -> None:
        self._conn = conn
        self.path = path
        self.audit = audit

    @classmethod
    async def open(cls, state_dir: Path, *, environ: Mapping[str, str] = os.environ) -> Registry:
        key = load_or_create_registry_key(state_dir, environ=environ)
        path = registry_path(state_dir)
        conn = await open_aio(lambda: open_raw(path, key))
        return cls(conn, path, AuditLog(audit_path(state_dir)))

    async def close(self) -> None:
        await self._conn.close()

    async def get(self, persona_id: str) -> Profile:
        return await run_on(self._conn, get, persona_id)

    async def page(
        self,
        *,
        status: str | None = None,
        tag: str | None = None,
        role: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> ListPage:
        def run(db: RawConnection) -> ListPage:
            return list_page(db, status=status, tag=tag, role=role, limit=limit, cursor=cursor)

        return await run_on(self._conn, run)

    async def create(self, profile: Profile, *, actor: str) -> Profile:
        def run(db: RawConnection) -> Profile:
            return create(db, self.audit, profile, actor=actor)

        return await run_on(self._conn, run)

    async def update(
        self, persona_id: str, changes: Mapping[str, Any], *, actor: str, action: str = "persona.update"
    ) -> Profile:
        def run(db: RawConnection) -> Profile:
            return update(db, self.audit, persona_id, changes, actor=actor, action=action)

        return await run_on(self._conn, run)

    async def archive(self, persona_id: str, *, actor: str) -> Profile:
        return await self.update(persona_id, {"status": "archived"}, actor=actor, action="persona.archive")

    async def run(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(raw_connection, *args)`` on the connection's thread (imports, other modules)."""
        return await run_on(self._conn, fn, *args)

"""The tracker's memory: ``<state>/mesh/tracker.sqlite3`` (stdlib sqlite3, WAL).

Manifests are public (signed, and given to anyone who asks), so the file is
not encrypted; it is still private to the installation's user (0600 in a 0700
folder), like everything under the state dir.

Tables:

* ``manifests``: every verified manifest, keyed by skill id, with its name,
  adapter hash, publisher and signing time for the lookups, and its JSON;
* ``acquisitions``: who acquired what, first time only (``UNIQUE(skill_id,
  by)``: acquiring again is not more demand);
* ``requests``: one row per ``skill.seeders`` call for a known skill, with its
  caller (popularity counts distinct callers, so one client asking in a loop
  is one request);
* ``seeders``: which peer said it seeds which skill, since when.

Every table is bounded (:data:`CAPS`): the oldest rows go first once a table
passes its cap, and requests older than a year are dropped at start. All the
work runs in one worker thread that owns the connection, so the event loop
never waits on the disk and the connection is never shared between threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from protocol.commands.skills import SkillManifest

from ..state import ensure_private_dir

__all__ = ["CAPS", "PopularRow", "TrackerStore"]

T = TypeVar("T")

#: Most rows per table; beyond, the oldest are deleted (checked every PRUNE_EVERY writes).
CAPS: Final[dict[str, int]] = {
    "manifests": 100_000,
    "acquisitions": 1_000_000,
    "requests": 1_000_000,
    "seeders": 1_000_000,
}
#: Which column says "oldest" in each table.
_AGE_COLUMN: Final = {
    "manifests": "published_at",
    "acquisitions": "at",
    "requests": "at",
    "seeders": "since",
}
PRUNE_EVERY: Final = 1000
#: Requests older than this are dropped when the tracker starts.
REQUESTS_KEPT_S: Final = 365 * 86_400.0

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS manifests (
        skill_id TEXT PRIMARY KEY,
        skill TEXT NOT NULL,
        adapter_sha256 TEXT NOT NULL,
        publisher TEXT NOT NULL,
        published_at REAL NOT NULL,
        json TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS manifests_skill ON manifests (skill, published_at)",
    "CREATE INDEX IF NOT EXISTS manifests_sha ON manifests (adapter_sha256, published_at)",
    "CREATE INDEX IF NOT EXISTS manifests_age ON manifests (published_at)",
    """CREATE TABLE IF NOT EXISTS acquisitions (
        skill_id TEXT NOT NULL,
        by TEXT NOT NULL,
        at REAL NOT NULL,
        UNIQUE (skill_id, by)
    )""",
    "CREATE INDEX IF NOT EXISTS acquisitions_at ON acquisitions (at)",
    "CREATE TABLE IF NOT EXISTS requests (skill_id TEXT NOT NULL, by TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS requests_skill ON requests (skill_id, at)",
    "CREATE INDEX IF NOT EXISTS requests_at ON requests (at)",
    """CREATE TABLE IF NOT EXISTS seeders (
        node TEXT NOT NULL,
        skill_id TEXT NOT NULL,
        since REAL NOT NULL,
        PRIMARY KEY (node, skill_id)
    )""",
    "CREATE INDEX IF NOT EXISTS seeders_skill ON seeders (skill_id)",
    "CREATE INDEX IF NOT EXISTS seeders_since ON seeders (since)",
)


@dataclass(frozen=True, slots=True)
class PopularRow:
    skill_id: str
    manifest: SkillManifest
    acquirers: int
    requests: int
    seeding: list[str]


class TrackerStore:
    """The tracker's tables; every method is a coroutine run in the store's own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._writes = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracker-db")
        await self._run(self._open)

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def __aenter__(self) -> TrackerStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None, "open() first"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        ensure_private_dir(self.path.parent)
        # Create the file 0600 before sqlite does (it would follow the umask).
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        with _transaction(db):
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("DELETE FROM requests WHERE at < ?", (time.time() - REQUESTS_KEPT_S,))
        self._db = db
        self._prune()

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "open() first"
        return self._db

    def _wrote(self, rows: int = 1) -> None:
        self._writes += rows
        if self._writes >= PRUNE_EVERY:
            self._writes = 0
            self._prune()

    def _prune(self) -> None:
        with _transaction(self.db):
            for table, cap in CAPS.items():
                (count,) = self.db.execute(f"SELECT count(*) FROM {table}").fetchone()
                if count > cap:
                    age = _AGE_COLUMN[table]
                    self.db.execute(
                        f"DELETE FROM {table} WHERE rowid IN "
                        f"(SELECT rowid FROM {table} ORDER BY {age} LIMIT ?)",
                        (count - cap,),
                    )

    # -- writes --------------------------------------------------------------------------

    async def add_manifest(self, sid: str, manifest: SkillManifest) -> bool:
        """Keep a verified manifest; False if it was known already."""
        return await self._run(self._add_manifest, sid, manifest)

    def _add_manifest(self, sid: str, manifest: SkillManifest) -> bool:
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO manifests "
            "(skill_id, skill, adapter_sha256, publisher, published_at, json) VALUES (?, ?, ?, ?, ?, ?)",
            (
                sid,
                manifest.skill,
                manifest.adapter_sha256,
                manifest.publisher,
                manifest.published_at,
                json.dumps(manifest.model_dump(mode="json"), separators=(",", ":")),
            ),
        )
        self._wrote()
        return cursor.rowcount == 1

    async def set_seeding(self, node: str, skill_ids: list[str], now: float) -> None:
        """``node`` seeds exactly ``skill_ids`` now (its previous set is replaced)."""
        await self._run(self._set_seeding, node, sorted(set(skill_ids)), now)

    def _set_seeding(self, node: str, skill_ids: list[str], now: float) -> None:
        with _transaction(self.db):
            held = {row[0] for row in self.db.execute("SELECT skill_id FROM seeders WHERE node = ?", (node,))}
            gone = held.difference(skill_ids)
            self.db.executemany(
                "DELETE FROM seeders WHERE node = ? AND skill_id = ?", [(node, s) for s in gone]
            )
            # A skill seeded already keeps its first `since`.
            self.db.executemany(
                "INSERT OR IGNORE INTO seeders (node, skill_id, since) VALUES (?, ?, ?)",
                [(node, s, now) for s in skill_ids if s not in held],
            )
        self._wrote(len(skill_ids) - len(held & set(skill_ids)))

    async def add_acquisition(self, sid: str, by: str, now: float) -> bool:
        """Record that ``by`` acquired ``sid``; False if it had already (the first time is kept)."""
        return await self._run(self._add_acquisition, sid, by, now)

    def _add_acquisition(self, sid: str, by: str, now: float) -> bool:
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO acquisitions (skill_id, by, at) VALUES (?, ?, ?)", (sid, by, now)
        )
        self._wrote()
        return cursor.rowcount == 1

    # -- reads ---------------------------------------------------------------------------

    async def manifests(self, column: str, value: str, limit: int) -> list[tuple[str, SkillManifest]]:
        """Manifests whose ``column`` (skill_id, skill or adapter_sha256) is ``value``, newest first."""
        if column not in ("skill_id", "skill", "adapter_sha256"):
            raise ValueError(column)
        return await self._run(self._manifests, column, value, limit)

    def _manifests(self, column: str, value: str, limit: int) -> list[tuple[str, SkillManifest]]:
        rows = self.db.execute(
            f"SELECT skill_id, json FROM manifests WHERE {column} = ? "
            "ORDER BY published_at DESC, skill_id LIMIT ?",
            (value, limit),
        ).fetchall()
        return [(sid, SkillManifest.model_validate_json(text)) for sid, text in rows]

    async def seeders_of(
        self, sid: str, now: float, *, requested_by: str | None = None
    ) -> list[tuple[str, float]]:
        """(node, since) of every node that said it seeds ``sid``; with ``requested_by``, count a request
        for it (only for a skill with a known manifest: demand for unknown ids is noise anyone can make)."""
        return await self._run(self._seeders_of, sid, now, requested_by)

    def _seeders_of(self, sid: str, now: float, requested_by: str | None) -> list[tuple[str, float]]:
        if requested_by is not None:
            cursor = self.db.execute(
                "INSERT INTO requests (skill_id, by, at) SELECT ?, ?, ? "
                "WHERE EXISTS (SELECT 1 FROM manifests WHERE skill_id = ?)",
                (sid, requested_by, now, sid),
            )
            self._wrote(cursor.rowcount)
        rows = self.db.execute(
            "SELECT node, since FROM seeders WHERE skill_id = ? ORDER BY since, node", (sid,)
        ).fetchall()
        return [(str(node), float(since)) for node, since in rows]

    async def popular(self, since: float, online: set[str], limit: int) -> list[PopularRow]:
        """Known skills with their demand since ``since`` and their seeders among ``online``,
        highest score first (acquirers + 0.1 x requests), ties by the newest manifest."""
        return await self._run(self._popular, since, online, limit)

    def _popular(self, since: float, online: set[str], limit: int) -> list[PopularRow]:
        acquirers = dict(
            self.db.execute(
                "SELECT skill_id, count(DISTINCT by) FROM acquisitions WHERE at >= ? GROUP BY skill_id",
                (since,),
            ).fetchall()
        )
        requests = dict(
            self.db.execute(
                "SELECT skill_id, count(DISTINCT by) FROM requests WHERE at >= ? GROUP BY skill_id",
                (since,),
            ).fetchall()
        )
        seeding: dict[str, list[str]] = {}
        if online:
            marks = ", ".join("?" * len(online))
            for node, sid in self.db.execute(
                f"SELECT node, skill_id FROM seeders WHERE node IN ({marks})", sorted(online)
            ):
                seeding.setdefault(sid, []).append(node)
        wanted = set(acquirers) | set(requests) | set(seeding)
        if not wanted:
            return []
        found: list[tuple[str, float, str]] = []
        ids = sorted(wanted)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            found += self.db.execute(
                f"SELECT skill_id, published_at, json FROM manifests "
                f"WHERE skill_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ).fetchall()

        def score(sid: str) -> float:
            return float(acquirers.get(sid, 0) + 0.1 * requests.get(sid, 0))

        found.sort(key=lambda row: (-score(row[0]), -row[1], row[0]))
        return [
            PopularRow(
                skill_id=sid,
                manifest=SkillManifest.model_validate_json(text),
                acquirers=int(acquirers.get(sid, 0)),
                requests=int(requests.get(sid, 0)),
                seeding=sorted(seeding.get(sid, [])),
            )
            for sid, _, text in found[:limit]
        ]

    async def counts(self) -> dict[str, int]:
        return await self._run(self._counts)

    def _counts(self) -> dict[str, int]:
        return {table: int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) for table in CAPS}


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Any:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")

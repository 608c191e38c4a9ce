"""The registry database's schema, as a numbered chain on ``PRAGMA user_version``.

The brain's runner (:func:`daemon.brain.migrations.apply_step`): each
step runs in one ``BEGIN IMMEDIATE`` transaction together with its
``user_version`` bump, so a crash mid-step leaves the previous version, and
the next start runs the step again. A file newer than :data:`LATEST` is
refused before anything is written.

Versions:

1. ``profiles``: one row per persona, the profile's JSON in ``record`` plus
   the columns ``persona.list`` filters and sorts on (status, role, name,
   tags, times); ``profile_tags`` indexes tags (tag, persona_id).
2. ``config_sources``: for personas imported from ``config/personas/*.toml``,
   the sha256 of the file last imported, so a start re-imports a TOML only
   when it changed; and an index on ``updated_at``.
3. ``card_remainders``: what a Character Card import could not map onto
   the profile (greetings, creator notes, unknown fields), one JSON record
   per persona, so that export restores it; deleted with its profile.

The *records* (the profile JSON) have their own chain: records.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..brain.migrations import apply_step
from .errors import MigrationFailed, RegistryTooNew

__all__ = ["LATEST", "MIGRATIONS", "current_version", "migrate", "run_step"]

RawConnection = Any
Step = Callable[[RawConnection], None]


def _v1_profiles(db: RawConnection) -> None:
    db.execute(
        """CREATE TABLE profiles (
            id TEXT PRIMARY KEY,
            schema_version INTEGER NOT NULL,
            status TEXT NOT NULL,
            role TEXT NOT NULL,
            name TEXT NOT NULL,
            tags TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tags)),
            record TEXT NOT NULL CHECK (json_valid(record)),
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE profile_tags (
            tag TEXT NOT NULL,
            persona_id TEXT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            PRIMARY KEY (tag, persona_id)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX profiles_status ON profiles (status, id)")
    db.execute("CREATE INDEX profiles_role ON profiles (role, id)")
    db.execute("CREATE INDEX profile_tags_persona ON profile_tags (persona_id)")


def _v2_config_sources(db: RawConnection) -> None:
    db.execute(
        """CREATE TABLE config_sources (
            persona_id TEXT PRIMARY KEY REFERENCES profiles(id) ON DELETE CASCADE,
            sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
            imported_at REAL NOT NULL
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX profiles_updated ON profiles (updated_at)")


def _v3_card_remainders(db: RawConnection) -> None:
    db.execute(
        """CREATE TABLE card_remainders (
            persona_id TEXT PRIMARY KEY REFERENCES profiles(id) ON DELETE CASCADE,
            record TEXT NOT NULL CHECK (json_valid(record)),
            created_at REAL NOT NULL
        ) WITHOUT ROWID"""
    )


#: MIGRATIONS[i] takes the database from version i to version i + 1.
MIGRATIONS: tuple[Step, ...] = (_v1_profiles, _v2_config_sources, _v3_card_remainders)
LATEST = len(MIGRATIONS)


def current_version(db: RawConnection) -> int:
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def run_step(db: RawConnection, target: int) -> None:
    """Run the one registry step that makes version ``target``, in its own transaction."""
    apply_step(db, target, MIGRATIONS[target - 1], failed=MigrationFailed)


def migrate(db: RawConnection, path: Path, *, target: int = LATEST) -> tuple[int, int]:
    """Bring the database up to ``target``; return (version found, version now)."""
    found = current_version(db)
    if found > LATEST:
        raise RegistryTooNew(f"registry {path}", found, LATEST)
    for version in range(found + 1, target + 1):
        run_step(db, version)
    return found, max(found, target)

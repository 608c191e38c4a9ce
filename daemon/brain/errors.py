"""Errors of the brain, the persona's encrypted memory.

Exception tree (everything :mod:`daemon.brain` raises on purpose)::

    PersonadError                 (daemon.errors) the daemon's one error tree
    └── BrainError                base of every brain error
        ├── MissingKey            no key where one must be; never replaced by a new one
        ├── InsecureKey           key file or its folder readable by others, or malformed
        ├── WrongKey              the key does not open the database (or it is not one)
        ├── SchemaTooNew          the file was written by a newer personad; left untouched
        ├── MigrationFailed       a migration step failed; its transaction rolled back
        ├── InvalidInput          an argument is out of range, too large, or malformed
        ├── NotFound              the named skill / goal does not exist
        ├── QueryRefused          brain.query was given something other than one SELECT
        ├── QueryTimeout          brain.query ran past its time limit and was interrupted
        ├── QueryTooLarge         brain.query needed more memory or a larger result than allowed
        ├── BrainClosed           the Brain was used after close()
        └── BrainBusy             too many reads already wait for the reader (also a Busy)

Lower-layer errors (``sqlcipher3.dbapi2.Error``, ``OSError``) are translated at
the boundary with ``raise … from exc`` where the caller can act on them; the
rest propagate unchanged as internal errors. Messages are built from the
structured fields and never contain key material or memory content, since they
are logged and may travel to the peer.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import Busy, PersonadError

__all__ = [
    "BUSY_RETRY_AFTER_MS",
    "BrainBusy",
    "BrainClosed",
    "BrainError",
    "InsecureKey",
    "InvalidInput",
    "MigrationFailed",
    "MissingKey",
    "NotFound",
    "QueryRefused",
    "QueryTimeout",
    "QueryTooLarge",
    "SchemaTooNew",
    "WrongKey",
]

#: What a refused caller is told to wait before it asks again.
BUSY_RETRY_AFTER_MS = 200


class BrainError(PersonadError):
    """Base class of every error the brain raises on purpose.

    A PersonadError like every other subsystem's, so the CLI's one handler
    prints it to the operator as-is.
    """


class MissingKey(BrainError):
    """Raised when the brain's key cannot be found where it must be.

    Either ``$CREDENTIALS_DIRECTORY`` is set but holds no ``brain-key``, or a
    ``brain.sqlite`` already exists and its key file is gone. A new key is
    never created over existing data: that would make the data unreadable.
    """

    def __init__(self, where: Path, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"brain key missing at {where}: {reason}")


class InsecureKey(BrainError):
    """Raised when a key file is malformed or others could read it.

    Like ssh with a private key, we refuse to use a key that other users can
    read rather than silently fixing its permissions: it may already be leaked.
    """

    def __init__(self, where: Path, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"refusing brain key at {where}: {reason}")


class WrongKey(BrainError):
    """Raised when the key does not decrypt the database.

    SQLCipher cannot tell a wrong key from a file that is not a SQLCipher
    database at all ("file is not a database" on the first read); the message
    says both. The file is left byte-for-byte unchanged.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"cannot open brain {path}: wrong key, or not a SQLCipher database (the file was not modified)"
        )


class SchemaTooNew(BrainError):
    """Raised when the database's schema version is newer than this code knows.

    Opening it could corrupt data written by a newer personad, so it is
    refused and not touched.
    """

    def __init__(self, path: Path, found: int, known: int) -> None:
        self.path = path
        self.found = found
        self.known = known
        super().__init__(
            f"brain {path} has schema version {found}, newer than the {known} this "
            "personad knows; upgrade personad (the file was not modified)"
        )


class MigrationFailed(BrainError):
    """Raised when a migration step fails; that step's transaction was rolled back."""

    def __init__(self, version: int, reason: str) -> None:
        self.version = version
        self.reason = reason
        super().__init__(f"migration to schema version {version} failed: {reason}")


class InvalidInput(BrainError):
    """Raised when an argument is out of range, too large, or malformed."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid {field}: {reason}")


class NotFound(BrainError):
    """Raised when an operation names a skill or goal that does not exist."""

    def __init__(self, kind: str, ident: object) -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(f"no {kind} {ident!r}")


class QueryRefused(BrainError):
    """Raised when ``query`` is given anything but one read-only SELECT.

    Writes, ATTACH, PRAGMA, multiple statements and syntax errors all end here.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"query refused: {reason}")


class QueryTimeout(BrainError):
    """Raised when a read-only query runs past its time limit and is interrupted."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        super().__init__(f"query interrupted after its {limit_s:g} s time limit")


class QueryTooLarge(BrainError):
    """Raised when a read-only query needs more than the reader allows.

    A value over the length limit, SQLite's heap growing past the query's
    headroom, or the rows fetched so far passing the result's byte cap: the
    query is stopped and nothing of it is returned. ``limit`` is the bound
    that was hit, in bytes.
    """

    def __init__(self, reason: str, limit: int) -> None:
        self.reason = reason
        self.limit = limit
        super().__init__(f"query stopped: {reason} (limit {limit} bytes)")


class BrainClosed(BrainError):
    """Raised when a Brain is used after :meth:`Brain.close`."""

    def __init__(self) -> None:
        super().__init__("the brain is closed")


class BrainBusy(BrainError, Busy):
    """Raised when ``waiting`` reads already wait for the brain's reader (``yours``: this
    caller's share of them, when that share is what is full)."""

    def __init__(self, waiting: int, *, yours: int | None = None) -> None:
        share = f", {yours} of them yours" if yours is not None else ""
        super().__init__(
            f"the brain's reads are busy: {waiting} already wait their turn{share}; retry shortly",
            retry_after_ms=BUSY_RETRY_AFTER_MS,
        )
        self.waiting = waiting
        self.yours = yours

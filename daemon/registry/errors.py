"""Errors of the persona registry, in the daemon's error tree.

    PersonadError
    └── RegistryError             base of the registry's own failures

Each module adds its own subclasses here (one home for the tree), each
saying when it is raised. Handlers translate them to RpcError at the bus
boundary.
"""

from __future__ import annotations

from ..errors import PersonadError


class RegistryError(PersonadError):
    """Raised for a failure of the persona registry; base of this module's tree."""


# -- the store (store.py, keys.py, migrations.py, records.py) -----------------


class RegistryWrongKey(RegistryError):
    """Raised when the registry key does not open ``registry.sqlite``.

    SQLCipher cannot tell a wrong key from a file that is not a SQLCipher
    database; the file is left byte-for-byte unchanged either way.
    """

    def __init__(self, path: object) -> None:
        self.path = path
        super().__init__(
            f"cannot open the registry {path}: wrong registry key, or not a SQLCipher database "
            "(the file was not modified; restore secrets/registry.key or the registry-key credential)"
        )


class RegistryTooNew(RegistryError):
    """Raised when the database, or one record in it, was written by a newer personad.

    Nothing is written: rewriting data in a shape we do not know would lose
    what the newer version stored.
    """

    def __init__(self, what: str, found: int, known: int) -> None:
        self.what = what
        self.found = found
        self.known = known
        super().__init__(
            f"{what} has schema version {found}, newer than the {known} this personad knows; "
            "upgrade personad (nothing was modified)"
        )


class BadRecord(RegistryError):
    """Raised when a stored record cannot be read as a profile (corrupt or hand-edited)."""

    def __init__(self, persona_id: str, reason: str) -> None:
        self.persona_id = persona_id
        self.reason = reason
        super().__init__(f"registry record {persona_id!r} is unreadable: {reason}")


class UnknownPersona(RegistryError):
    """Raised when an operation names a persona the registry does not hold."""

    def __init__(self, persona_id: str) -> None:
        self.persona_id = persona_id
        super().__init__(f"no persona {persona_id!r} in the registry")


class PersonaExists(RegistryError):
    """Raised by create when the id is already taken (ids are never reused silently)."""

    def __init__(self, persona_id: str) -> None:
        self.persona_id = persona_id
        super().__init__(f"persona {persona_id!r} already exists in the registry")


class InvalidChange(RegistryError):
    """Raised when a change would make an invalid profile; ``field`` names the culprit."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid {field}: {reason}")


class MigrationFailed(RegistryError):
    """Raised when a database migration step fails; that step's transaction was rolled back."""

    def __init__(self, version: int, reason: str) -> None:
        self.version = version
        self.reason = reason
        super().__init__(f"registry migration to version {version} failed: {reason}")


# -- the audit log (audit.py) --------------------------------------------------


class AuditError(RegistryError):
    """Raised when the audit log cannot be appended to (its tail is damaged, or I/O failed).

    A mutation whose audit entry cannot be written is not made.
    """


# -- Character Cards (cards.py) --------------------------------------------------


class CardError(RegistryError):
    """Raised when a Character Card (V1, V2, V3) cannot be read or mapped: not JSON, wrong spec, bad field.

    The message names the member at fault; nothing was imported.
    """


class CardPngError(CardError):
    """Raised when a PNG card is not a sound PNG: bad signature or CRC, truncated, no card or two."""


class CardTooLarge(CardError):
    """Raised when a card passes one of the reader's limits (file, chunk, string size, JSON depth)."""

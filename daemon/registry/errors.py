"""Errors of the persona registry, in the daemon's error tree.

    PersonadError
    └── RegistryError             base of the registry's own failures
        ├── RegistryWrongKey      the registry key does not open its database
        ├── RegistryTooNew        a database or record from a newer version
        ├── BadRecord             a stored record that does not validate
        ├── UnknownPersona        no persona with that id
        ├── PersonaExists         that id is taken
        ├── InvalidChange         a profile change that is not allowed
        ├── MigrationFailed       a migration step failed (rolled back)
        ├── AuditError            the audit log's chain or head does not verify
        ├── InvalidLineage        bad fork or merge arguments (lineage.py)
        ├── GenerationFailed      the model could not write a profile (generate.py)
        ├── CardError             a Character Card that cannot be read or written (cards.py)
        │   ├── CardPngError      … because of its PNG
        │   └── CardTooLarge      … because of a size limit
        └── BundleError           an export bundle that cannot be written or read (bundle.py)
            ├── BundleInputError, BundleKeyError
            ├── BundleFormatError
            │   └── BundleLimitExceeded
            ├── BundleTampered, BundleSignatureMissing, UntrustedSigner
            └── WrongBundleKey
                ├── WrongPassphrase
                └── WrongRecipientKey

Each module adds its own subclasses here (one home for the tree), each
saying when it is raised. Handlers translate them to RpcError at the bus
boundary.
"""

from __future__ import annotations

from protocol import ErrorCode

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
    """Raised when an operation names a persona the registry does not hold.

    ``field`` is the params member that named it (``persona_id``, or e.g.
    ``source_persona_id`` for a fork), so the error can say which one.
    """

    def __init__(self, persona_id: str, *, field: str = "persona_id") -> None:
        self.persona_id = persona_id
        self.field = field
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


# -- bundles (bundle.py) ---------------------------------------------------------


class BundleError(RegistryError):
    """Raised for a failure to write or read a persona bundle; base of the bundle errors.

    Whatever the failure, a read writes nothing and a write leaves its target as it was.
    """


class BundleInputError(BundleError):
    """Raised when what a bundle is written from or unpacked into is unusable
    (a missing file, an adapter folder PEFT could not stack, a target folder
    that exists, a source that changed while being written)."""


class BundleFormatError(BundleError):
    """Raised when a file is not a bundle, is of a version we do not read, or
    (authentic, but malformed) its header, manifest or members break the format."""


class BundleLimitExceeded(BundleFormatError):
    """Raised when a bundle declares more than the reader's limits allow
    (members, sizes, scrypt cost, chunk size) or than the disk has room for."""


class BundleTampered(BundleError):
    """Raised when a bundle's bytes are not those its signer wrote: a byte
    changed, the file truncated, chunks reordered, the header edited."""


class BundleSignatureMissing(BundleError):
    """Raised when a bundle names no signer: unsigned bundles are never imported."""


class UntrustedSigner(BundleError):
    """Raised when a bundle's signature is valid but its key is not one the import trusts."""


class WrongBundleKey(BundleError):
    """Raised when the key given does not open a bundle; nothing was decrypted."""


class WrongPassphrase(WrongBundleKey):
    """Raised for a wrong passphrase, or a passphrase given for a bundle sealed to a recipient key."""


class WrongRecipientKey(WrongBundleKey):
    """Raised for an X25519 key the bundle was not sealed to, or one given for a passphrase bundle."""


class BundleKeyError(BundleError):
    """Raised when the signing key file or the trusted-signers list is unusable
    (not ours alone, malformed); it is never repaired or replaced silently."""


# -- fork and merge of profiles (lineage.py) -----------------------------------


class InvalidLineage(RegistryError):
    """Raised when a fork's or merge's arguments would make an invalid profile.

    ``field`` names the culprit as the caller gave it (``modifications.traits.humor``,
    ``new_id``, ``strategy``), so the bus handler can answer INVALID_PARAMS naming it.
    Nothing is returned, so nothing is changed.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid {field}: {reason}")


class GenerationFailed(RegistryError):
    """Raised when the model could not write a profile: the call failed, or its output is unusable.

    ``code`` is the wire code: the inference call's own (TARGET_OFFLINE,
    TIMEOUT, MODEL_UNAVAILABLE …) when it failed, INTERNAL_ERROR when its
    output did not validate.
    """

    def __init__(self, message: str, *, code: int = int(ErrorCode.INTERNAL_ERROR)) -> None:
        super().__init__(message)
        self.code = code

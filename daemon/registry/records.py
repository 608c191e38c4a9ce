"""The profile records' own migration chain, on their ``schema_version``.

A record is the JSON of :class:`protocol.profile.Profile`. ``RECORD_STEPS[i]``
is a function taking a record (a dict) of version ``i + 1`` to version
``i + 2``; version 1 is today's shape, so the chain is empty until the
profile first changes. When it does: bump ``PROFILE_SCHEMA_VERSION`` in
protocol/profile.py, append the step here, and add a test that starts from a
real database holding a record of the previous version.

Records are upgraded when read (the stored row keeps its version until the
next write rewrites it), and a record from a newer personad is refused with
:class:`RegistryTooNew` rather than read in a shape we do not know.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from protocol.profile import PROFILE_SCHEMA_VERSION, Profile

from .errors import BadRecord, RegistryTooNew

__all__ = ["RECORD_STEPS", "RecordStep", "dump_record", "load_record", "upgrade_record"]

RecordStep = Callable[[dict[str, Any]], dict[str, Any]]

#: RECORD_STEPS[i] takes a record from version i + 1 to version i + 2.
RECORD_STEPS: tuple[RecordStep, ...] = ()


def upgrade_record(
    persona_id: str,
    raw: dict[str, Any],
    *,
    steps: Sequence[RecordStep] = RECORD_STEPS,
) -> dict[str, Any]:
    """Run ``raw`` through the steps from its version to the latest (1 + len(steps))."""
    latest = 1 + len(steps)
    version = raw.get("schema_version")
    if type(version) is not int or version < 1:
        raise BadRecord(persona_id, f"schema_version is {version!r}, not a version number")
    if version > latest:
        raise RegistryTooNew(f"registry record {persona_id!r}", version, latest)
    record = dict(raw)
    for index in range(version - 1, latest - 1):
        record = steps[index](record)
        record["schema_version"] = index + 2
    return record


def load_record(persona_id: str, text: str) -> Profile:
    """A stored record's text to a Profile: parsed, upgraded, validated."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise BadRecord(persona_id, f"not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise BadRecord(persona_id, "not a JSON object")
    record = upgrade_record(persona_id, raw)
    if record["schema_version"] != PROFILE_SCHEMA_VERSION:  # the chain and the model disagree: our bug
        raise BadRecord(persona_id, f"upgraded to {record['schema_version']}, not {PROFILE_SCHEMA_VERSION}")
    try:
        return Profile.model_validate_json(json.dumps(record))
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadRecord(persona_id, f"{where}: {first['msg']}") from None


def dump_record(profile: Profile) -> str:
    """A profile as stored: compact JSON, keys in the model's order."""
    return profile.model_dump_json()

"""Profile lineage: the profile half of ``persona.fork`` and ``persona.merge``.

Pure functions on :class:`protocol.profile.Profile`: no I/O, no clock (the
caller passes ``now``), no registry state. The brain half is
:mod:`daemon.brain.lineage`; the adapter half is ``adapter.merge`` on
``cap:inference``. docs/lineage.md cites the tables below.

**Fork** (:func:`fork_profile`):

================ ==========================================================
member           the fork's value
================ ==========================================================
id               ``new_id`` (must differ from the source's)
name, description, the source's, unless ``modifications`` (or ``new_role``)
role, traits,    change them; ``traits`` and ``communication`` may be
tags,            partial (members left out keep the source's value),
communication,   ``tags`` and ``capabilities`` are replaced whole
capabilities,
model
stack            the source's entries, as they are (names and sha256: the
                 adapters are content-addressed, nothing is copied)
status           ``draft``
lineage          ``parent`` = ``forked_from`` = the source's id;
                 ``merged_from`` empty; ``created_at`` = ``updated_at`` = now
================ ==========================================================

The source comes back with ``lineage.updated_at`` = now and nothing else
changed: the profile has no list of children (it would grow without bound);
a persona's forks are the profiles whose ``forked_from`` names it.

**Merge** (:func:`merge_profiles`), traits per strategy, for each of the
eight traits with the primary's value *p* and the secondary's *s*:

============ ================================================================
strategy     trait value
============ ================================================================
average      the mean, rounded half up: ``(p + s + 1) // 2``
selective    the more distinctive one: whichever is further from neutral 50;
             a tie goes to the primary
union        the higher, ``max(p, s)``: the merged persona has each strength
             of both (the traits are all strengths at their high end)
============ ================================================================

The other members, for every strategy:

================ ==========================================================
member           the merged value
================ ==========================================================
id, name,        the caller's ``new_id``, ``name``, ``description``
description
role, model      the primary's
tags,            the union: the primary's in order, then the secondary's
capabilities     not already there; cut to the profile's limit of 32
communication    the primary's ``style`` and ``detail_level``; ``notes`` are
                 the primary's, then the secondary's on a new line when they
                 differ, cut to the 2,000-character limit
stack            empty: the caller fills it with the merged adapter
status           ``draft``
lineage          ``merged_from`` = [primary, secondary]; ``parent`` = the
                 primary; ``forked_from`` none; both times = now
================ ==========================================================

Both sources come back with status ``merged`` and ``lineage.updated_at`` =
now. A source already ``merged`` may be merged again (its new status is the
same); refusing that is the registry's policy to choose, not this module's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, get_args

from pydantic import ValidationError

from protocol.profile import PERSONA_ID_PATTERN, TRAITS, Communication, Lineage, PersonaStatus, Profile

from .errors import InvalidLineage

__all__ = [
    "FORK_EDITABLE",
    "MERGE_STRATEGIES",
    "MergeStrategy",
    "apply_modifications",
    "fork_profile",
    "merge_profiles",
    "merge_traits",
]

MergeStrategy = Literal["selective", "average", "union"]
MERGE_STRATEGIES: Final[tuple[str, ...]] = get_args(MergeStrategy)

#: What a fork's ``modifications`` may change. id, lineage and status are set
#: by the fork itself; the stack is referenced as it is.
FORK_EDITABLE: Final = frozenset(
    {"name", "description", "role", "traits", "tags", "communication", "capabilities", "model"}
)
#: Members given as partial mappings (those left out keep their value).
_PARTIAL: Final = {"traits": frozenset(TRAITS), "communication": frozenset(Communication.model_fields)}

_ID = re.compile(PERSONA_ID_PATTERN)
_MAX_LIST = 32
_MAX_NOTES = 2000
NEUTRAL = 50


def _check_profile(field: str, value: object) -> Profile:
    if not isinstance(value, Profile):
        raise InvalidLineage(field, "must be a Profile")
    return value


def _check_id(field: str, value: object) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidLineage(field, f"must match {PERSONA_ID_PATTERN}")
    return value


def _check_now(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidLineage("now", "must be a finite number of unix seconds")
    if value < 0:
        raise InvalidLineage("now", "must not be negative")
    return float(value)


def _validated(data: dict[str, Any], prefix: str) -> Profile:
    """Validate a whole profile; the first error names its field under ``prefix``."""
    try:
        # Through JSON, as the wire would: strict mode takes enums and lists as JSON gives them.
        return Profile.model_validate_json(json.dumps(data))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValidationError) and exc.errors():
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            culprit = ".".join(part for part in (prefix, where) if part) or "profile"
            raise InvalidLineage(culprit, first["msg"]) from None
        raise InvalidLineage(prefix or "profile", f"not JSON-serialisable: {exc}") from None


def apply_modifications(profile: Profile, modifications: object, *, field: str = "modifications") -> Profile:
    """``profile`` with a partial profile applied, validated as a whole.

    Keys outside :data:`FORK_EDITABLE` are refused; ``traits`` and
    ``communication`` may be partial. Raises :class:`InvalidLineage` naming
    the first field at fault (``modifications.traits.humor``).
    """
    if not isinstance(modifications, Mapping):
        raise InvalidLineage(field, "must be an object (a partial profile)")
    data = profile.model_dump(mode="json")
    for name, value in modifications.items():
        if not isinstance(name, str) or name not in FORK_EDITABLE:
            raise InvalidLineage(
                f"{field}.{name}", f"not editable in a fork (editable: {', '.join(sorted(FORK_EDITABLE))})"
            )
        members = _PARTIAL.get(name)
        if members is None:
            data[name] = value
            continue
        if not isinstance(value, Mapping):
            raise InvalidLineage(f"{field}.{name}", "must be an object")
        for member in value:
            if member not in members:
                raise InvalidLineage(f"{field}.{name}.{member}", "unknown member")
        data[name] = {**data[name], **value}
    return _validated(data, field)


def fork_profile(
    source: Profile,
    *,
    new_id: str,
    new_role: str | None = None,
    modifications: Mapping[str, Any],
    now: float,
) -> tuple[Profile, Profile]:
    """Return ``(fork, source_after)`` by the fork table in this module's docstring.

    ``new_role`` is a shorthand for ``modifications["role"]``; giving both,
    different, is an error.
    """
    source = _check_profile("source", source)
    new_id = _check_id("new_id", new_id)
    if new_id == source.id:
        raise InvalidLineage("new_id", "must differ from the source's id")
    moment = _check_now(now)
    if not isinstance(modifications, Mapping):
        raise InvalidLineage("modifications", "must be an object (a partial profile)")
    changes = dict(modifications)
    if new_role is not None:
        if "role" in changes and changes["role"] != new_role:
            raise InvalidLineage("new_role", "differs from modifications.role; give one")
        changes["role"] = new_role
    modified = apply_modifications(source, changes)
    data = modified.model_dump(mode="json")
    data.update(
        id=new_id,
        status=PersonaStatus.DRAFT.value,
        lineage=Lineage(
            parent=source.id, forked_from=source.id, merged_from=[], created_at=moment, updated_at=moment
        ).model_dump(mode="json"),
    )
    fork = _validated(data, "fork")
    after = source.model_copy(update={"lineage": source.lineage.model_copy(update={"updated_at": moment})})
    return fork, after


def merge_traits(primary: Mapping[str, int], secondary: Mapping[str, int], strategy: str) -> dict[str, int]:
    """Each trait by ``strategy``'s rule (the merge table in this module's docstring)."""
    if strategy not in MERGE_STRATEGIES:
        raise InvalidLineage("strategy", f"must be one of {', '.join(MERGE_STRATEGIES)}")
    out: dict[str, int] = {}
    for trait in TRAITS:
        p, s = primary[trait], secondary[trait]
        if strategy == "average":
            out[trait] = (p + s + 1) // 2
        elif strategy == "selective":
            out[trait] = s if abs(s - NEUTRAL) > abs(p - NEUTRAL) else p
        else:
            out[trait] = max(p, s)
    return out


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    out = list(dict.fromkeys([*first, *second]))
    return out[:_MAX_LIST]


def merge_profiles(
    primary: Profile,
    secondary: Profile,
    *,
    strategy: str,
    new_id: str,
    name: str,
    description: str,
    now: float,
) -> tuple[Profile, Profile, Profile]:
    """Return ``(merged, primary_after, secondary_after)`` by the merge tables above."""
    primary = _check_profile("primary", primary)
    secondary = _check_profile("secondary", secondary)
    if primary.id == secondary.id:
        raise InvalidLineage("secondary", "must differ from the primary")
    new_id = _check_id("new_id", new_id)
    if new_id in (primary.id, secondary.id):
        raise InvalidLineage("new_id", "must differ from both sources' ids")
    moment = _check_now(now)
    traits = merge_traits(primary.traits.model_dump(), secondary.traits.model_dump(), strategy)
    notes = primary.communication.notes
    extra = secondary.communication.notes
    if extra and extra != notes:
        notes = f"{notes}\n{extra}" if notes else extra
    communication = primary.communication.model_dump(mode="json") | {"notes": notes[:_MAX_NOTES]}
    data: dict[str, Any] = {
        "id": new_id,
        "name": name,
        "role": primary.role,
        "description": description,
        "traits": traits,
        "tags": _union(primary.tags, secondary.tags),
        "communication": communication,
        "capabilities": _union(primary.capabilities, secondary.capabilities),
        "stack": [],
        "model": primary.model,
        "lineage": Lineage(
            parent=primary.id,
            merged_from=[primary.id, secondary.id],
            created_at=moment,
            updated_at=moment,
        ).model_dump(mode="json"),
        "status": PersonaStatus.DRAFT.value,
    }
    merged = _validated(data, "")

    def retired(profile: Profile) -> Profile:
        return profile.model_copy(
            update={
                "status": PersonaStatus.MERGED,
                "lineage": profile.lineage.model_copy(update={"updated_at": moment}),
            }
        )

    return merged, retired(primary), retired(secondary)

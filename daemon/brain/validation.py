"""Checks of the Brain's inputs, for callers inside the daemon.

The same limits as the bus's models (protocol.commands.brain), for callers
that do not come through the bus: every check raises :class:`InvalidInput`
naming the field. ``bool`` is refused where a number is wanted, as the bus's
strict models do.

**Subjects** are compared case-insensitively: they are stored case-folded
with runs of white space collapsed, so "Alice" and "alice " are one subject
for recall and erase (:func:`normalise_subject`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from protocol.commands.brain import (
    ERASE_EVERYTHING,
    KIND_PATTERN,
    MAX_CONTENT_BYTES,
    MAX_JSON_BYTES,
    MAX_LABEL_CHARS,
    MAX_QUERY_PARAMS,
    MAX_QUERY_ROWS,
    MAX_QUERY_SQL_CHARS,
    MAX_QUERY_TIME_S,
    SKILL_ID_PATTERN,
)

from .errors import InvalidInput
from .recall import RecallFilters
from .records import MemoryItem, RetentionPolicy, to_epoch

__all__ = [
    "GOAL_STATUSES",
    "Row",
    "check_content",
    "check_flag",
    "check_int",
    "check_json_object",
    "check_kind",
    "check_number",
    "check_opt_number",
    "check_opt_text",
    "check_policy",
    "check_skill_id",
    "check_text",
    "check_time",
    "erase_target",
    "memory_row",
    "normalise_subject",
    "query_args",
    "recall_filters",
]

GOAL_STATUSES = ("active", "paused", "done", "abandoned")
_KIND = re.compile(KIND_PATTERN)
_SKILL_ID = re.compile(SKILL_ID_PATTERN)
#: A memory as the writer inserts it: content, kind, source, subject,
#: context (JSON), relevance, pinned, created_at.
Row = tuple[str, str, str, str | None, str | None, float, int, float]


def check_text(field: str, value: object, max_chars: int, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    if not empty and not value:
        raise InvalidInput(field, "must not be empty")
    if len(value) > max_chars:
        raise InvalidInput(field, f"longer than {max_chars} characters")
    return value


def check_opt_text(field: str, value: object, max_chars: int) -> str | None:
    return None if value is None else check_text(field, value, max_chars, empty=True)


def check_content(value: object) -> str:
    content = check_text("content", value, MAX_CONTENT_BYTES)
    if len(content.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise InvalidInput("content", f"over {MAX_CONTENT_BYTES} bytes in UTF-8")
    return content


def check_number(field: str, value: object, lo: float, hi: float) -> float:
    # bool is an int: refuse it, as the bus's strict models do.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(field, "must be a number")
    number = float(value)
    if not math.isfinite(number) or not lo <= number <= hi:
        raise InvalidInput(field, f"must be within [{lo:g}, {hi:g}]")
    return number


def check_opt_number(field: str, value: object, lo: float, hi: float) -> float | None:
    return None if value is None else check_number(field, value, lo, hi)


def check_int(field: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(field, f"must be an integer within [{lo}, {hi}]")
    return value


def check_flag(field: str, value: object) -> int:
    if not isinstance(value, bool):
        raise InvalidInput(field, "must be true or false")
    return int(value)


def check_json_object(field: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput(field, "must be a JSON object")
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(field, f"not JSON-serialisable: {exc}") from None
    if len(encoded.encode("utf-8")) > MAX_JSON_BYTES:
        raise InvalidInput(field, f"over {MAX_JSON_BYTES} bytes as JSON")
    return encoded


def normalise_subject(value: object, field: str = "subject") -> str | None:
    """How subjects are stored and compared: case-folded, white space collapsed."""
    if value is None:
        return None
    subject = " ".join(check_text(field, value, MAX_LABEL_CHARS).split()).casefold()
    if not subject:
        raise InvalidInput(field, "must not be blank")
    return subject


def check_kind(value: object) -> str:
    if not isinstance(value, str) or not _KIND.fullmatch(value):
        raise InvalidInput("kind", f"must match {KIND_PATTERN}")
    return value


def check_skill_id(value: object) -> str:
    if not isinstance(value, str) or not _SKILL_ID.fullmatch(value):
        raise InvalidInput("skill_id", f"must match {SKILL_ID_PATTERN}")
    return value


def check_time(field: str, value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidInput(field, "must be a datetime")
    return to_epoch(value)


def memory_row(item: MemoryItem, now: float) -> Row:
    return (
        check_content(item.content),
        check_kind(item.kind),
        check_text("source", item.source, MAX_LABEL_CHARS, empty=True),
        normalise_subject(item.subject),
        check_json_object("context", item.context),
        check_number("relevance", item.relevance, 0.0, 1.0),
        check_flag("pinned", item.pinned),
        now,
    )


def check_policy(policy: RetentionPolicy) -> None:
    if policy.max_memories is not None:
        check_int("retention.max_memories", policy.max_memories, 0, 2**62)
    if policy.max_bytes is not None:
        check_int("retention.max_bytes", policy.max_bytes, 0, 2**62)
    check_number("retention.interval_s", policy.interval_s, 0.001, 365 * 86_400.0)


def recall_filters(
    *,
    kinds: Sequence[str] | None,
    source: str | None,
    subject: str | None,
    since: datetime | None,
    until: datetime | None,
) -> RecallFilters:
    if kinds is not None:
        if isinstance(kinds, str) or not 1 <= len(kinds) <= 16:
            raise InvalidInput("kinds", "must be a list of 1 to 16 kinds")
        kinds = tuple(check_kind(k) for k in kinds)
    return RecallFilters(
        kinds=kinds,
        source=check_opt_text("source", source, MAX_LABEL_CHARS),
        subject=normalise_subject(subject),
        since=check_time("since", since),
        until=check_time("until", until),
    )


def erase_target(*, subject: str | None, everything: bool, confirm: str) -> str | None:
    """The normalised subject to erase (None: everything), once ``confirm`` matches."""
    if everything == (subject is not None):
        raise InvalidInput("subject", "give exactly one of subject or everything=True")
    if everything:
        if confirm != ERASE_EVERYTHING:
            raise InvalidInput("confirm", f"must be {ERASE_EVERYTHING!r}")
        return None
    if confirm != subject:
        raise InvalidInput("confirm", "must repeat the subject")
    return normalise_subject(subject)


def query_args(
    sql: object, params: Sequence[Any], *, row_limit: object, time_limit: object
) -> tuple[str, tuple[Any, ...], int, float]:
    """brain.query's arguments, checked: (sql, params, row_limit, time_limit)."""
    checked_sql = check_text("sql", sql, MAX_QUERY_SQL_CHARS)
    if "\x00" in checked_sql:  # sqlite3 refuses it with a ValueError, not an sqlite3.Error
        raise InvalidInput("sql", "must not contain a NUL character (U+0000)")
    if isinstance(params, str | bytes) or len(params) > MAX_QUERY_PARAMS:
        raise InvalidInput("params", f"must be a list of at most {MAX_QUERY_PARAMS} values")
    for value in params:
        if value is not None and not isinstance(value, str | int | float | bytes):
            raise InvalidInput("params", "values must be str, int, float, bytes or None")
    rows = check_int("row_limit", row_limit, 1, MAX_QUERY_ROWS)
    seconds = check_number("time_limit", time_limit, 0.0, MAX_QUERY_TIME_S)
    if seconds == 0:
        raise InvalidInput("time_limit", "must be positive")
    return checked_sql, tuple(params), rows, seconds

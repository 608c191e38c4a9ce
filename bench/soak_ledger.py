"""The ledger: every write the load sends, and what the system said of it.

Each write carries a nonce of its own in its text (``soak:<nonce>``). Before
it is sent it is *pending*; then it is *acked* (with the id the system
answered), *failed* (an error came back, or none in time: the outcome is
unknown) or *refused* (FORBIDDEN: it must never be written).

``check`` reads the system's state back through the bus (``brain.query`` on
each persona, ``persona.list`` on the registry) and holds it to the ledger:

- **lost**: an acked write is missing, or is there under another id;
- **duplicated**: one nonce is stored twice;
- **torn**: a stored row differs from what was sent (half written);
- **phantom**: a stored row whose nonce the ledger never sent, or a refused
  write that was stored anyway.

A failed write may be there or not (the answer may have been lost after the
commit), but if it is there it must be whole. Only entries settled before the
check began are held to it; pending ones may be either way.

A check after a fault reads only the rows new since the last check: the rows
it read before are held to a count and a sum of their ids, asked of the
database, and read again in full only when those differ (a row went missing or
came twice). Reading every row after every fault made a long run's checks
longer than its load. The last check (``full=True``) reads everything again,
so a row changed in place is caught there.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from protocol import ErrorCode, RpcError

#: The text every write of the soak carries, so its rows can be found and matched.
TAG = "soak:"

#: What each kind of write stores, and how to read it back (table, columns, the column with the nonce).
TABLES = {
    "memory": ("memories", "id, content, subject, kind, relevance", "content"),
    "performance": ("performance_records", "id, session_id, task, score, success, duration_s", "task"),
    "knowledge": ("knowledge", "id, content, context, relevance", "content"),
}

#: The kinds of write read back as rows: the brains' tables, and the registry's profiles.
ROW_KINDS = {*TABLES, "profile", "import"}

#: How long a check's read keeps asking a target that answers OVERLOADED.
BUSY_WAIT_S = 300.0


@dataclass
class Entry:
    kind: str  # memory, performance, knowledge, profile, import, hub, hub profile
    target: str  # persona:<id>, cap:registry or cap:hub
    nonce: str
    #: The stored columns as they must read back (without the id).
    expect: dict[str, Any]
    #: What the ledger's extra checks hold it to besides the row (bench/soak_artifacts.py).
    extra: dict[str, Any] = field(default_factory=dict)
    state: str = "pending"  # pending, acked, failed, refused
    row_id: Any = None
    settled_at: float = 0.0
    error: str = ""


@dataclass
class Violation:
    what: str  # lost, duplicated, torn, phantom
    kind: str
    target: str
    nonce: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return self.__dict__.copy()


@dataclass
class Ledger:
    entries: dict[str, Entry] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    run: str = field(default_factory=lambda: f"{int(time.time()) % 100000:05d}")
    #: (target, table) -> the rows the checks have read, in id order, and the sum of their ids.
    _seen: dict[tuple[str, str], tuple[list[dict[str, Any]], int]] = field(default_factory=dict)
    #: More checks, of what rows cannot show (bench/soak_artifacts.py): each is given what was
    #: read back ((kind, nonce) -> rows), when the check began, and whether it is the last.
    extra_checks: list[
        Callable[[dict[tuple[str, str], list[dict[str, Any]]], float, bool], Awaitable[list[Violation]]]
    ] = field(default_factory=list)

    def nonce(self) -> str:
        return f"{TAG}{self.run}-{next(self._ids)}"

    def begin(
        self, kind: str, target: str, nonce: str, expect: dict[str, Any], extra: dict[str, Any] | None = None
    ) -> Entry:
        entry = Entry(kind, target, nonce, expect, extra or {})
        self.entries[nonce] = entry
        return entry

    @staticmethod
    def settle(
        entry: Entry, *, row_id: Any = None, error: RpcError | None = None, refused: bool = False
    ) -> None:
        entry.settled_at = time.monotonic()
        if refused:
            entry.state = "refused"
        elif error is not None:
            entry.state, entry.error = (
                "failed",
                error.code.name if hasattr(error.code, "name") else str(error.code),
            )
        else:
            entry.state, entry.row_id = "acked", row_id

    def counts(self) -> dict[str, int]:
        return dict(Counter(e.state for e in self.entries.values()))

    def by_kind(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = {}
        for e in self.entries.values():
            out.setdefault(e.kind, Counter())[e.state] += 1
        return {k: dict(v) for k, v in out.items()}

    # -- checking --------------------------------------------------------------------------

    async def _rows(
        self, client: Any, target: str, table: str, columns: str, nonce_column: str, *, full: bool
    ) -> list[dict[str, Any]]:
        """This run's rows in ``table``: those read before, if still all there, and the new ones."""
        key = (target, table)
        known, id_sum = ([], 0) if full else self._seen.get(key, ([], 0))
        if known:
            last = known[-1]["id"]
            answer = await _select(
                client, target, "count(*), total(id)", table, nonce_column, self.run, "id <= ?", last, 1
            )
            count, total = answer["rows"][0]
            if count != len(known) or float(total) != float(id_sum):
                known, id_sum = [], 0  # an old row is missing or doubled: read all, to say which
        after = known[-1]["id"] if known else 0
        new = await _read_table(client, target, table, columns, nonce_column, self.run, after=after)
        rows = known + new
        self._seen[key] = (rows, id_sum + sum(r["id"] for r in new))
        return rows

    async def check(self, client: Any, personas: list[str], *, full: bool = False) -> list[Violation]:
        """Read the system's state back and hold it to the ledger (see the module's docstring)."""
        started = time.monotonic()
        violations: list[Violation] = []
        stored: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for pid in personas:
            target = f"persona:{pid}"
            for kind, (table, columns, nonce_column) in TABLES.items():
                rows = await self._rows(client, target, table, columns, nonce_column, full=full)
                for row in rows:
                    nonce = _nonce_in(str(row[nonce_column]))
                    stored.setdefault((kind, nonce), []).append({"target": target, **row})
        for kind, tag in (("profile", f"soak-{self.run}"), ("import", f"soak-{self.run}-import")):
            for profile in await _read_profiles(client, tag):
                stored.setdefault((kind, profile["nonce"]), []).append(profile)

        for (kind, nonce), rows in stored.items():
            entry = self.entries.get(nonce)
            if entry is None or entry.kind != kind:
                violations.append(Violation("phantom", kind, rows[0]["target"], nonce, "stored, never sent"))
                continue
            if entry.state == "refused":
                violations.append(Violation("phantom", kind, entry.target, nonce, "refused, yet stored"))
            if len(rows) > 1:
                violations.append(Violation("duplicated", kind, entry.target, nonce, f"{len(rows)} rows"))
            for row in rows:
                if row["target"] != entry.target:
                    violations.append(
                        Violation("torn", kind, entry.target, nonce, f"stored in {row['target']}")
                    )
                diff = {k: (v, row.get(k)) for k, v in entry.expect.items() if not _same(v, row.get(k))}
                if diff:
                    violations.append(Violation("torn", kind, entry.target, nonce, f"sent/stored {diff}"))
        for nonce, entry in list(self.entries.items()):
            if entry.kind not in ROW_KINDS or entry.state != "acked" or entry.settled_at > started:
                continue  # (the other kinds are the extra checks')
            rows = stored.get((entry.kind, nonce), [])
            if not rows:
                violations.append(
                    Violation("lost", entry.kind, entry.target, nonce, f"acked as {entry.row_id}")
                )
            elif entry.row_id is not None and all(r.get("id") != entry.row_id for r in rows):
                got = [r.get("id") for r in rows]
                violations.append(
                    Violation("lost", entry.kind, entry.target, nonce, f"acked {entry.row_id}, stored {got}")
                )
        for extra in self.extra_checks:
            violations += await extra(stored, started, full)
        return violations


def _nonce_in(text: str) -> str:
    start = text.index(TAG)
    end = start + len(TAG)
    while end < len(text) and (text[end].isalnum() or text[end] == "-"):
        end += 1
    return text[start:end]


def _same(sent: Any, stored: Any) -> bool:
    if isinstance(sent, bool) or isinstance(stored, bool):
        return bool(sent) == bool(stored)
    if isinstance(sent, float) or isinstance(stored, float):
        return stored is not None and abs(float(sent) - float(stored)) < 1e-9
    return bool(sent == stored)


async def _read_table(
    client: Any, target: str, table: str, columns: str, nonce_column: str, run: str, *, after: int = 0
) -> list[dict[str, Any]]:
    """This run's rows in ``table`` with an id above ``after``, a page of up to 1,000 rows at a
    time (brain.query's limit)."""
    rows: list[dict[str, Any]] = []
    last = after
    while True:
        answer = await _select(
            client, target, columns, table, nonce_column, run, "id > ? ORDER BY id LIMIT 1000", last, 1000
        )
        names = answer["columns"]
        page = [dict(zip(names, r, strict=True)) for r in answer["rows"]]
        rows += page
        if len(page) < 1000:
            return rows
        last = page[-1]["id"]


async def _select(
    client: Any,
    target: str,
    what: str,
    table: str,
    nonce_column: str,
    run: str,
    where: str,
    last: int,
    limit: int,
) -> Any:
    """``brain.query`` of this run's rows in ``table``, with ``where`` on the id (``?`` is ``last``)."""
    return await retry(
        client,
        "brain.query",
        {
            "sql": f"SELECT {what} FROM {table} WHERE instr({nonce_column}, ?) > 0 AND {where}",
            "params": [f"{TAG}{run}-", last],
            "row_limit": limit,
        },
        to=target,
    )


async def _read_profiles(client: Any, tag: str) -> list[dict[str, Any]]:
    """The registry's profiles with ``tag`` (soak-<run> for persona.create, soak-<run>-import
    for persona.import), each with the nonce in its name."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"tag": tag, "limit": 200}
        if cursor:
            params["cursor"] = cursor
        answer = await retry(client, "persona.list", params, to="cap:registry")
        for profile in answer["personas"]:
            out.append(
                {
                    "target": "cap:registry",
                    "id": profile["id"],
                    "nonce": _nonce_in(profile["name"]),
                    "name": profile["name"],
                    "role": profile["role"],
                    "status": profile["status"],
                }
            )
        cursor = answer.get("next_cursor")
        if not cursor:
            return out


async def retry(client: Any, method: str, params: dict[str, Any], *, to: str, attempts: int = 30) -> Any:
    """A read for checking, retried while its target is restarting (it must come back), and
    while it is busy: OVERLOADED is a refusal at once, asked again after the pause it names
    without counting as an attempt (for up to BUSY_WAIT_S), as a client written from the
    docs would."""
    failures = 0
    busy_until = time.monotonic() + BUSY_WAIT_S
    while True:
        try:
            return await client.call(method, params, to=to, deadline_ms=10_000)
        except RpcError as exc:
            if exc.code == ErrorCode.OVERLOADED and time.monotonic() < busy_until:
                await asyncio.sleep((exc.retry_after_ms or 200) / 1000)
                continue
            failures += 1
            if failures >= attempts:
                raise
            await asyncio.sleep(min(2.0, 0.2 * failures))


def dumps(violations: list[Violation]) -> str:
    return json.dumps([v.as_dict() for v in violations], indent=1)

"""The persona's evolution history: one row per Academy round (``persona.evolution.*``).

The table is the seed's ``evolution_history``; its columns keep their
meaning (``trigger_pattern``: why the round ran; ``lora_generated``: the
adapter it trained; ``success_rate``: the exam pass rate after it) and the
rest of a round (run, round number, domain, adapter hash, pass rate before,
examples, exam size, outcome) is one JSON object in ``detail`` (migration
v6). Rows from before the Academy have no detail; :func:`list_sync` reads
them with what they have.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["DETAIL_KEYS", "insert_sync", "list_sync"]

#: What a round keeps in ``detail``.
DETAIL_KEYS = (
    "run_id",
    "round",
    "domain",
    "adapter_sha256",
    "pass_before",
    "examples",
    "exam_cases",
    "outcome",
)


def insert_sync(db: Any, round_: dict[str, Any], now: float) -> int:
    """Store one round (the keys of EvolutionRecordParams); its id. Runs on the writer thread."""
    detail = {key: round_[key] for key in DETAIL_KEYS}
    db.execute("BEGIN IMMEDIATE")
    try:
        cursor = db.execute(
            "INSERT INTO evolution_history "
            "(trigger_pattern, lora_generated, success_rate, detail, created_at) VALUES (?, ?, ?, ?, ?)",
            (round_["trigger"], round_["adapter"], round_["pass_after"], json.dumps(detail), now),
        )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return int(cursor.lastrowid)


def list_sync(db: Any, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` rounds as dicts of EvolutionEntry's keys (legacy rows: what they hold)."""
    rows = db.execute(
        "SELECT id, trigger_pattern, lora_generated, success_rate, detail, created_at "
        "FROM evolution_history ORDER BY created_at DESC, id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    out = []
    for item_id, trigger, adapter, after, detail, created_at in rows:
        extra = json.loads(detail) if detail else {}
        out.append(
            {
                "id": item_id,
                "created_at": created_at,
                "trigger": trigger or "unknown",
                "adapter": adapter,
                "pass_after": after,
                "run_id": extra.get("run_id"),
                "round": extra.get("round"),
                "domain": extra.get("domain"),
                "adapter_sha256": extra.get("adapter_sha256"),
                "pass_before": extra.get("pass_before"),
                "examples": extra.get("examples"),
                "exam_cases": extra.get("exam_cases"),
                "outcome": extra.get("outcome"),
            }
        )
    return out

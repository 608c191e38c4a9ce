"""The knowledge table through a fork (copy_brain) and a merge (merge_brains), on real SQLCipher files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from daemon.brain import Brain
from daemon.brain import knowledge as kb
from daemon.brain.lineage import copy_brain, merge_brains
from protocol.commands.knowledge import EMBED_DIM, EMBED_MODEL

SAME = "GDPR fines reach four percent of annual worldwide turnover for the most serious breaches"


def vector(seed: int) -> list[float]:
    raw = [((seed * 31 + i * 17) % 97) - 48.0 for i in range(EMBED_DIM)]
    norm = sum(x * x for x in raw) ** 0.5
    return [x / norm for x in raw]


async def build(path: Path, key: bytes, items: list[tuple[str, list[str], float, float]]) -> list[int]:
    """A brain with these knowledge items (content, tags, relevance, created_at), each embedded."""
    async with await Brain.open(path, key) as brain:
        ids = [await brain.write(kb.add_sync, c, None, tags, r, at) for c, tags, r, at in items]
        blobs = [(i, kb.embedding_blob(vector(i + len(str(path))))) for i in ids]
        await brain.write(kb.store_embeddings_sync, EMBED_MODEL, blobs, 1.0)
    return ids


async def table(path: Path, key: bytes) -> list[tuple[Any, ...]]:
    async with await Brain.open(path, key) as brain:
        rows: list[tuple[Any, ...]] = await brain.read(
            lambda db: [
                tuple(r)
                for r in db.execute(
                    "SELECT id, content, tags, relevance, embedding, embed_model, created_at FROM knowledge "
                    "ORDER BY id"
                )
            ]
        )
        return rows


async def fts_ids(path: Path, key: bytes, query: str) -> list[int]:
    async with await Brain.open(path, key) as brain:
        found: list[kb.Candidate] = await brain.read(kb.candidates_sync, query, None, EMBED_MODEL, False)
        return sorted(c.id for c in found if c.bm25 is not None)


async def test_a_fork_keeps_every_item_its_id_and_embedding(tmp_path: Path) -> None:
    key, fork_key = os.urandom(32), os.urandom(32)
    source = tmp_path / "a.sqlite"
    await build(source, key, [("tides follow the moon", ["sea"], 0.4, 10.0), (SAME, ["law"], 0.9, 20.0)])
    report = copy_brain(source, key, tmp_path / "fork.sqlite", fork_key)
    assert 2 == report.knowledge
    assert await table(source, key) == await table(tmp_path / "fork.sqlite", fork_key)
    assert [2] == await fts_ids(tmp_path / "fork.sqlite", fork_key, "turnover")


async def test_a_merge_folds_near_duplicates_and_unions_their_tags(tmp_path: Path) -> None:
    pk, sk, dk = os.urandom(32), os.urandom(32), os.urandom(32)
    primary, secondary = tmp_path / "p.sqlite", tmp_path / "s.sqlite"
    await build(primary, pk, [(SAME, ["law"], 0.5, 10.0), ("tides follow the moon", [], 0.4, 11.0)])
    await build(
        secondary, sk, [(SAME + ".", ["eu"], 0.7, 5.0), ("salt lowers the freezing point", [], 0.3, 12.0)]
    )
    report = merge_brains(primary, pk, secondary, sk, tmp_path / "m.sqlite", dk)
    assert (3, 1) == (report.knowledge, report.knowledge_dropped_duplicates)
    merged = await table(tmp_path / "m.sqlite", dk)
    # created_at order; the duplicate kept is the secondary's (higher relevance), with both tags.
    assert [SAME + ".", "tides follow the moon", "salt lowers the freezing point"] == [r[1] for r in merged]
    assert ["eu", "law"] == json.loads(merged[0][2])
    secondary_rows = {r[1]: r for r in await table(secondary, sk)}
    assert secondary_rows[SAME + "."][4] == merged[0][4]  # the embedding, byte for byte
    assert {EMBED_MODEL} == {r[5] for r in merged}
    assert [1] == await fts_ids(tmp_path / "m.sqlite", dk, "turnover")

"""Both dedup stages: planted near-copies go, distinct personas stay; paraphrases go by meaning."""

from __future__ import annotations

import numpy as np

from daemon.hub.qa.dedup import dedup_embeddings, dedup_minhash, normalise, shingles
from daemon.inference.embed import Embedder

# Two-sentence personas, the length PersonaHub's run to (about 200 characters).
DISTINCT = [
    "A 61-year-old nurse from Lyon who spends her weekends restoring antique clocks. "
    "She volunteers at the Saint-Jean hospice, sings in a church choir on Sundays "
    "and keeps a notebook of every clockmaker she has met since 1989.",
    "A retired railway engineer in Glasgow, fascinated by steam locomotives. "
    "He writes long letters to the Herald about late trains and keeps a model layout in the attic.",
    "A software developer in Bangalore who maintains an open-source library for parsing weather data. "
    "She mentors students from the local college twice a month.",
    "A high-school chemistry teacher in Ohio who coaches the robotics team. "
    "He bakes sourdough on Sundays and grows peppers in a small greenhouse behind the school.",
    "A young farmer in Kenya experimenting with drought-resistant maize near Nakuru. "
    "She sells honey at the Saturday market and runs a savings group for twelve women.",
    "A maritime lawyer in Rotterdam who negotiates salvage contracts for tugboat firms. "
    "He sails a wooden yacht on the IJsselmeer every summer with his two daughters.",
]


def near_copies() -> list[tuple[str, int]]:
    """Near-copies of DISTINCT's members, each with the index of its original."""
    a, b, c, d = DISTINCT[0], DISTINCT[1], DISTINCT[2], DISTINCT[3]
    return [
        # A word changed: about 5 + its length shingles of some 250 differ (Jaccard ~0.92).
        (a.replace("antique", "old"), 0),
        (b.replace(",", ";").replace(".", "!"), 1),  # punctuation changed
        (c.upper(), 2),  # case changed
        (d.replace("  ", " ").replace("Sundays.", "Sundays ."), 3),  # spacing
    ]


def test_normalise_makes_case_and_punctuation_changes_identical() -> None:
    assert normalise("A Nurse; from LYON!") == normalise("a nurse from lyon")
    assert shingles("Hi") == {b"hi"}


def test_minhash_removes_planted_near_copies_and_keeps_distinct_ones() -> None:
    copies = near_copies()
    texts = DISTINCT + [t for t, _ in copies]
    ids = [f"p-{i}" for i in range(len(texts))]
    result = dedup_minhash(ids, texts, threshold=0.9, num_perm=128, seed=0)
    assert list(range(len(DISTINCT))) == result.kept
    removed = {r.id: r for _, r in result.removed}
    assert {f"p-{len(DISTINCT) + k}" for k in range(len(copies))} == set(removed)
    for k, (_, original) in enumerate(copies):
        record = removed[f"p-{len(DISTINCT) + k}"]
        assert "minhash" == record.stage
        assert f"p-{original}" == record.duplicate_of
        assert record.similarity >= 0.9
        assert record.exact_jaccard is not None
        assert record.exact_jaccard > 0.8


def test_minhash_is_deterministic_and_keeps_the_first_occurrence() -> None:
    texts = [DISTINCT[1], DISTINCT[1].lower(), DISTINCT[0]]
    first = dedup_minhash(["x", "y", "z"], texts)
    again = dedup_minhash(["x", "y", "z"], texts)
    assert first == again
    assert [0, 2] == first.kept
    assert "x" == first.removed[0][1].duplicate_of


def test_embedding_dedup_keeps_earliest_and_names_the_most_similar() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((5, 16)).astype(np.float32)
    near = base[2] + 0.01 * rng.standard_normal(16).astype(np.float32)
    # Blocks of 512 rows: put the copy in a later block to cross the block seam as well.
    filler = rng.standard_normal((600, 16)).astype(np.float32)
    rows = np.vstack([base, filler, near[None, :]])
    result = dedup_embeddings(rows, threshold=0.9)
    assert len(rows) - 1 == len(result.kept)
    (pos, dup, sim) = result.removed[0]
    assert (len(rows) - 1, 2) == (pos, dup)
    assert sim > 0.99


async def test_embedding_stage_catches_paraphrases_with_the_real_embedder(hub_embedder: Embedder) -> None:
    texts = [
        DISTINCT[0],
        DISTINCT[2],
        DISTINCT[5],
        # Paraphrases of the first two: reworded, so MinHash sees different texts.
        "A nurse aged 61 living in Lyon, who restores antique clocks at weekends. "
        "She is a volunteer at the Saint-Jean hospice and sings in the church choir every Sunday.",
        "A Bangalore software developer maintaining an open-source weather-data parsing library. "
        "Twice a month she mentors students from a local college.",
    ]
    ids = ["a", "b", "c", "a2", "b2"]
    first = dedup_minhash(ids, texts)
    assert [0, 1, 2, 3, 4] == first.kept  # not near-copies of the text
    vectors = np.asarray(await hub_embedder.embed(texts), dtype=np.float32)
    second = dedup_embeddings(vectors, threshold=0.9)
    assert [0, 1, 2] == second.kept
    assert [(3, 0), (4, 1)] == [(p, d) for p, d, _ in second.removed]

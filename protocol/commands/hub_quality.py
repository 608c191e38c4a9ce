"""PersonaHub's quality report: what ``hub.validate`` measured about a set of personas.

The checks themselves live in ``daemon/hub/qa/``; docs/hub_quality.md gives
the definition of every figure here, its threshold and what a flag means.
These are the models of the report (``report.json``) and of the thresholds a
caller may change; the method that returns them is registered elsewhere.

Every share and score is 0..1. Counts are of personas unless said otherwise.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .registry import StrictModel, StrictParams

__all__ = [
    "AttributeBalance",
    "AuthenticityExample",
    "AuthenticityReport",
    "CoherenceCheck",
    "CoherenceFailure",
    "CoherenceReport",
    "Coverage",
    "CulturalReport",
    "DedupReport",
    "DiversityReport",
    "QualityReport",
    "QualityThresholds",
    "Removed",
    "ShareRow",
    "StereotypeFlag",
]

Share = Annotated[float, Field(ge=0.0, le=1.0)]
DedupStage = Literal["minhash", "embedding"]
CoherenceCheck = Literal["age", "occupation", "gender", "trait", "judge"]


class QualityThresholds(StrictParams):
    """The knobs of the checks; the defaults are the documented ones (docs/hub_quality.md)."""

    minhash_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.9, description="estimated Jaccard of the shingle sets at or above which a text is a near-copy"
    )
    num_perm: Annotated[int, Field(ge=16, le=1024)] = Field(128, description="MinHash permutations")
    embedding_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.9, description="cosine similarity at or above which a persona repeats an earlier one"
    )
    judge_sample: Annotated[int, Field(ge=0, le=10_000)] = Field(
        20, description="personas the model judge reads (a deterministic sample); 0: no judge"
    )
    seed: Annotated[int, Field(ge=0, lt=2**32)] = Field(
        0, description="seeds the MinHash permutations, the judge's sample and k-means"
    )
    balance_margin: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.1, description="an attribute value whose observed share is off its target share by more is flagged"
    )
    min_count: Annotated[int, Field(ge=1, le=100_000)] = Field(
        20, description="fewest personas with a known value before a balance or stereotype flag is raised"
    )
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        0.01, description="family-wise significance of the stereotype tests (Bonferroni-corrected)"
    )
    worst: Annotated[int, Field(ge=0, le=1000)] = Field(
        10, description="how many of the least authentic personas the report lists"
    )


class Removed(StrictModel):
    """One persona dropped as a duplicate of an earlier, kept one."""

    id: str = Field(description="the removed persona")
    stage: DedupStage = Field(description="minhash: near-copy of the text; embedding: same meaning")
    duplicate_of: str = Field(description="the earlier persona it repeats (kept)")
    similarity: float = Field(description="minhash: estimated Jaccard; embedding: cosine similarity")
    exact_jaccard: float | None = Field(
        None, description="minhash only: the exact Jaccard of the two shingle sets, for the record"
    )


class DedupReport(StrictModel):
    shingles: str = Field(description="how texts are cut into the sets MinHash compares")
    removed_by_stage: dict[str, int] = Field(description="count removed per stage")
    removed: list[Removed] = Field(description="every removed persona, in input order")


class CoherenceFailure(StrictModel):
    id: str = Field(description="the persona")
    check: CoherenceCheck = Field(description="which rule (or the model judge) found the disagreement")
    reason: str = Field(description="what disagrees, in words")


class CoherenceReport(StrictModel):
    checked: int = Field(description="personas the rules read (all kept ones)")
    score: Share = Field(description="share of checked personas with no failure, rules and judge together")
    failures_by_check: dict[str, int] = Field(description="failures per rule and for the judge")
    failures: list[CoherenceFailure] = Field(description="every failure with its reason")
    judged: int = Field(description="personas the model judge gave a verdict on")
    judge_errors: int = Field(description="judge calls that gave no usable verdict (not counted as failures)")


class AuthenticityExample(StrictModel):
    id: str
    score: Share
    reasons: list[str] = Field(description="what lowered the score")
    text: str = Field(description="the persona's text (first 200 characters)")


class AuthenticityReport(StrictModel):
    mean: Share = Field(description="mean authenticity score")
    histogram: list[int] = Field(description="personas per tenth of the score: [0, 0.1), ..., [0.9, 1]")
    residue: int = Field(
        description="personas with template residue (placeholders, assistant chatter, loops)"
    )
    worst: list[AuthenticityExample] = Field(description="the lowest scores, worst first")


class Coverage(StrictModel):
    """How many of the target's values appear at all among the personas."""

    share: Share = Field(description="share of target values present")
    present: int
    total: int
    missing: list[str] = Field(description="target values never seen (at most 20 listed)")


class DiversityReport(StrictModel):
    n: int = Field(description="personas measured (the kept ones)")
    spread: Share = Field(
        description="mean pairwise cosine distance of the embeddings (1 - mean cosine over pairs), in 0..1"
    )
    clusters: int = Field(description="k of the k-means over the embeddings")
    cluster_sizes: list[int] = Field(description="personas per cluster, largest first")
    cluster_entropy: Share = Field(description="entropy of the cluster sizes divided by log(k)")
    coverage: dict[str, Coverage] = Field(
        description="per attribute (occupation, region, gender, age_decade): values of the target present; "
        "an attribute without a declared target is absent"
    )


class ShareRow(StrictModel):
    value: str
    count: int = Field(description="personas with this value")
    share: Share = Field(description="its share among personas with a known value")
    target: Share = Field(description="its target share (the weights normalised)")
    flagged: bool = Field(description="off the target by more than the margin, with enough personas")


class AttributeBalance(StrictModel):
    attribute: Literal["gender", "occupation", "region", "age"]
    known: int = Field(description="personas with a value for it")
    unknown: int = Field(description="personas without (counted, never guessed)")
    tvd: Share = Field(description="total variation distance between observed and target shares")
    rows: list[ShareRow] = Field(description="per value: observed against target, largest target first")


class StereotypeFlag(StrictModel):
    """One occupation whose personas lean to one value of an attribute more than chance allows."""

    occupation: str
    attribute: Literal["gender", "region"]
    value: str = Field(description="the over- or under-represented value")
    count: int = Field(description="personas of this occupation with this value")
    n: int = Field(description="personas of this occupation with a known value of the attribute")
    expected: float = Field(description="n times the expected share")
    observed_share: Share
    expected_share: Share = Field(description="from the occupation's own target, else the overall target")
    p_value: float = Field(description="two-sided exact binomial test")


class CulturalReport(StrictModel):
    balance: list[AttributeBalance] = Field(description="per attribute with a declared target")
    balance_flags: int = Field(description="rows flagged across all attributes")
    stereotypes: list[StereotypeFlag] = Field(description="occupations whose split deviates significantly")
    tests: int = Field(description="binomial tests run (the Bonferroni divisor)")


class QualityReport(StrictModel):
    input: int = Field(description="personas read")
    kept: int = Field(description="personas left after both dedup stages")
    duplicates_removed: DedupReport
    coherence: CoherenceReport
    authenticity: AuthenticityReport
    diversity: DiversityReport
    cultural: CulturalReport
    thresholds: QualityThresholds = Field(description="the thresholds this report used")
    timings: dict[str, float] = Field(description="seconds per stage")

"""hub.plan's models: what a PersonaHub run is asked for, and the plan the architect makes of it.

:class:`Requirements` is what a client asks for (how many personas, by
which paths, for which domains and population, how carefully checked).
:class:`Plan` is the architect's answer, computed without running anything
(``daemon/hub/architect.py``, docs/hub_generation.md): how many slots each
path gets, the persona path's hop structure, the domain split, the model
calls and token budgets, the time it should take at a measured rate, and
the quality checks' settings. A run carries out a plan slot by slot.

``hub.plan`` and ``hub.run`` (protocol/commands/hub.py) take and return these.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, model_validator

from ..hub_persona import AttributeTargets
from .registry import StrictModel, StrictParams

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_OVERSHOOT",
    "EMBEDDING_THRESHOLD",
    "GEN_PATHS",
    "JUDGE_FRACTION_THOROUGH",
    "JUDGE_SAMPLE_STANDARD",
    "MAX_COUNT",
    "MAX_HOPS",
    "MINHASH_PERMUTATIONS",
    "MINHASH_THRESHOLD",
    "GenPath",
    "PathPlan",
    "Plan",
    "QaSettings",
    "Quality",
    "Requirements",
]

#: The most personas one run may ask for.
MAX_COUNT: Final = 1_000_000
#: The most persona-to-persona steps from a root.
MAX_HOPS: Final = 8
#: Tokens one persona's answer may take. The text and persona paths' answer
#: (a name, 1-3 sentences, five attributes as JSON) measured 70 to 130 tokens
#: on SmolLM2 (docs/hub_generation.md); 160 leaves room without letting a
#: looping answer run on.
DEFAULT_MAX_TOKENS: Final = 160
#: Extra slots planned beyond ``count``, as a fraction of it, for what dedup
#: and failed generations take away.
DEFAULT_OVERSHOOT: Final = 0.1
#: Near-duplicate detection, after Persona Hub: MinHash LSH on the persona
#: text (128 permutations, Jaccard 0.9), then embeddings (cosine 0.9).
MINHASH_PERMUTATIONS: Final = 128
MINHASH_THRESHOLD: Final = 0.9
EMBEDDING_THRESHOLD: Final = 0.9
#: The coherence judge reads this many personas at quality "standard"...
JUDGE_SAMPLE_STANDARD: Final = 50
#: ...and this share of them at "thorough".
JUDGE_FRACTION_THOROUGH: Final = 0.1
#: The generation paths a run can ask for (``import`` is not generated).
GEN_PATHS: Final = ("text", "persona", "structured")

GenPath = Literal["text", "persona", "structured"]
#: fast: rule checks only; standard: + the model judges coherence on a
#: sample of 50; thorough: on 10% of the personas.
Quality = Literal["fast", "standard", "thorough"]
Label = Annotated[str, Field(min_length=1, max_length=80)]
Language = Annotated[str, Field(pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")]


def _structured_only() -> dict[GenPath, float]:
    return {"structured": 1.0}


class Requirements(StrictParams):
    """What a run is asked to make."""

    count: Annotated[int, Field(ge=1, le=MAX_COUNT)] = Field(description="personas wanted after dedup")
    paths: Annotated[dict[GenPath, Annotated[float, Field(gt=0.0, le=1e6)]], Field(min_length=1)] = Field(
        default_factory=_structured_only,
        description="the mix of generation paths, each with a relative weight: text (who would "
        "write or read this passage?), persona (who is close to this persona?, over hops), "
        "structured (from sampled attributes)",
    )
    domains: Annotated[list[Label], Field(max_length=64)] = Field(
        [], description="domain labels the personas are spread over evenly; empty: any"
    )
    languages: Annotated[list[Language], Field(min_length=1, max_length=16)] = Field(
        default_factory=lambda: ["en"],
        description="languages the personas are written in, spread evenly (BCP 47); the default "
        "model (SmolLM2) writes English only, so the plan warns about others",
    )
    hops: Annotated[int, Field(ge=1, le=MAX_HOPS)] = Field(
        2, description="persona path: steps from a root persona to its furthest relation"
    )
    targets: AttributeTargets = Field(
        default_factory=AttributeTargets, description="the population the structured path samples"
    )
    quality: Quality = Field("standard", description="fast, standard or thorough (see Plan.qa)")
    seed: Annotated[int, Field(ge=0, lt=2**63)] = Field(0, description="the whole run follows from it")
    max_tokens: Annotated[int, Field(ge=64, le=1024)] = Field(
        DEFAULT_MAX_TOKENS, description="most tokens one persona's answer may take"
    )
    corpus: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        None, description="the corpus the text path reads (and the persona path's roots)"
    )
    overshoot: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        DEFAULT_OVERSHOOT, description="extra slots planned, as a fraction of count"
    )

    @model_validator(mode="after")
    def _distinct(self) -> Requirements:
        for name, values in (("domains", self.domains), ("languages", self.languages)):
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice")
        return self


class QaSettings(StrictModel):
    """How the run's output is checked."""

    minhash_permutations: int = Field(description="MinHash permutations (near-duplicate text)")
    minhash_threshold: float = Field(description="estimated Jaccard at or above which two are duplicates")
    embedding_threshold: float = Field(description="cosine at or above which two are duplicates")
    judge: bool = Field(description="whether the model judges coherence at all")
    judge_sample: int = Field(description="personas the judge reads (0 when it does not run)")


class PathPlan(StrictModel):
    """One generation path's share of the run."""

    path: GenPath = Field(description="the path")
    slots: int = Field(description="personas this path makes (its share of count plus overshoot)")
    per_hop: list[int] = Field(
        description="slots at each hop, hop 0 first; the persona path's hop 0 are its roots, "
        "every other path has only hop 0"
    )
    roots: Literal["text", "structured"] | None = Field(
        None,
        description="persona path: how its hop-0 roots are made (text with a corpus, structured without)",
    )
    domains: dict[str, int] = Field(
        description="hop-0 slots per domain (empty: no domains asked); the persona path's "
        "later hops take their root's domain"
    )
    model_calls: int = Field(description="generate calls: one per slot")
    max_tokens: int = Field(description="most tokens per call")
    token_budget: int = Field(description="most completion tokens in all: model_calls * max_tokens")


class Plan(StrictModel):
    """The architect's plan: everything a run will do, worked out in advance."""

    requirements: Requirements = Field(description="what was asked")
    overshoot: int = Field(description="slots planned beyond count")
    total_slots: int = Field(description="count + overshoot: personas attempted")
    paths: list[PathPlan] = Field(description="per path, in the order the weights were given")
    languages: dict[str, int] = Field(description="slots per language")
    qa: QaSettings = Field(description="the checks")
    model_calls: int = Field(description="generate calls in all: personas plus judge")
    embed_calls: int = Field(description="inference.embed calls for the embedding dedup")
    token_budget: int = Field(description="most completion tokens the personas may take in all")
    providers: int = Field(description="inference providers the estimate assumes")
    rate: float = Field(description="personas per second per provider the estimate assumes")
    estimated_seconds: float = Field(description="model calls / (rate * providers)")
    warnings: list[str] = Field(description="what the plan cannot promise, in plain words")

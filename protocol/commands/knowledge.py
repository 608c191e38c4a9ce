"""persona.knowledge.* (served by each persona) and inference.embed (cap:inference): params and results.

The knowledge base is a persona's documents: text it knows, with optional
context and tags, searched by full text and re-ranked by sentence embeddings
that the inference service computes (``inference.embed``), so a persona
never loads a model itself. docs/knowledge.md gives the search's formula.

Limits are named constants here and are the single source of truth.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field, Strict

from ..errors import ErrorCode
from .inference import InferenceErrorCode
from .registry import StrictModel, StrictParams, register

__all__ = [
    "EMBED_DIM",
    "EMBED_MODEL",
    "MAX_CONTEXT_CHARS",
    "MAX_EMBED_BATCH",
    "MAX_EMBED_TEXT_CHARS",
    "MAX_KNOWLEDGE_BYTES",
    "MAX_SEARCH_LIMIT",
    "MAX_SEARCH_QUERY_CHARS",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "EmbedParams",
    "EmbedResult",
    "KnowledgeAddParams",
    "KnowledgeAddResult",
    "KnowledgeHit",
    "KnowledgePruneParams",
    "KnowledgePruneResult",
    "KnowledgeSearchParams",
    "KnowledgeSearchResult",
]

# -- limits -------------------------------------------------------------------

#: One knowledge item's content, in UTF-8 bytes.
MAX_KNOWLEDGE_BYTES = 32 * 1024
#: Its context: free text, searched with the content.
MAX_CONTEXT_CHARS = 4096
MAX_TAGS = 16
MAX_TAG_CHARS = 64
MAX_SEARCH_QUERY_CHARS = 1024
MAX_SEARCH_LIMIT = 50
#: Texts per inference.embed call.
MAX_EMBED_BATCH = 64
#: Characters per text sent to inference.embed; the model reads at most 256
#: tokens of it anyway (its max_seq_length), so longer text is wasted bytes.
MAX_EMBED_TEXT_CHARS = 4096
#: The embedding model inference.embed runs, and its vectors' length.
EMBED_MODEL = "all-MiniLM-L6-v2"
EMBED_DIM = 384

TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$"


def _content_size(value: str) -> str:
    if len(value.encode("utf-8")) > MAX_KNOWLEDGE_BYTES:
        raise ValueError(f"over {MAX_KNOWLEDGE_BYTES} bytes in UTF-8")
    if not value.strip():
        raise ValueError("is blank")
    return value


def _unique(value: list[str] | None) -> list[str] | None:
    if value is not None and len(set(value)) != len(value):
        raise ValueError("has a tag twice")
    return value


Tag = Annotated[str, Field(pattern=TAG_PATTERN, max_length=MAX_TAG_CHARS)]
Tags = Annotated[list[Tag] | None, Field(max_length=MAX_TAGS), AfterValidator(_unique)]
Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Timestamp = Annotated[datetime, Strict(False)]

# -- persona.knowledge.add ----------------------------------------------------


class KnowledgeAddParams(StrictParams):
    content: Annotated[str, Field(min_length=1), AfterValidator(_content_size)] = Field(
        description="the text to know (at most 32 KiB of UTF-8, not blank)"
    )
    context: Annotated[str, Field(max_length=MAX_CONTEXT_CHARS)] | None = Field(
        None, description="where it comes from or what it is about, in words; searched with the content"
    )
    tags: Tags = Field(None, description=f"at most {MAX_TAGS} labels for filtering search (e.g. law, eu)")
    relevance_score: Unit = Field(0.5, description="importance in [0, 1]; part of the score and of prune")


class KnowledgeAddResult(StrictModel):
    id: int = Field(description="the new item's id")
    embedded: bool = Field(
        description="its embedding is stored; false when cap:inference did not answer (embedded later)"
    )
    backfilled: int = Field(description="older items without an embedding embedded along with it")


register(
    "persona.knowledge.add",
    params=KnowledgeAddParams,
    result=KnowledgeAddResult,
    summary="Store a knowledge item (durable before the answer) and embed it through cap:inference.",
    served_by="persona",
)

# -- persona.knowledge.search -------------------------------------------------


class KnowledgeSearchParams(StrictParams):
    query: Annotated[str, Field(min_length=1, max_length=MAX_SEARCH_QUERY_CHARS)] = Field(
        description="what to look for, in words"
    )
    tags: Tags = Field(None, description="only items carrying every one of these tags")
    limit: Annotated[int, Field(ge=1, le=MAX_SEARCH_LIMIT)] = Field(10, description="most hits returned")


class KnowledgeHit(StrictModel):
    id: int = Field(description="the item's id")
    content: str = Field(description="its text")
    context: str | None = Field(description="its context")
    tags: list[str] = Field(description="its tags")
    relevance: float = Field(description="its stored importance in [0, 1]")
    created_at: datetime = Field(description="when it was added")
    score: float = Field(description="the final score (docs/knowledge.md); hits are ordered by it")
    text_score: float = Field(
        description="BM25 relative to the best candidate's, in [0, 1]; 0 if no word matched"
    )
    semantic_score: float | None = Field(
        description="cosine of query and item embeddings, clamped to [0, 1]; null when not re-ranked"
    )


class KnowledgeSearchResult(StrictModel):
    hits: list[KnowledgeHit] = Field(description="best first")
    reranked: bool = Field(description="false: cap:inference did not answer, so full text alone ranked")
    candidates: int = Field(description="items scored (full-text matches plus the relevance/recency pool)")


register(
    "persona.knowledge.search",
    params=KnowledgeSearchParams,
    result=KnowledgeSearchResult,
    summary="Hybrid search: full-text candidates re-ranked by embedding similarity (full text if offline).",
    served_by="persona",
)

# -- persona.knowledge.prune --------------------------------------------------


class KnowledgePruneParams(StrictParams):
    min_relevance: Unit | None = Field(None, description="remove every item whose relevance is below this")
    max_items: Annotated[int, Field(ge=0, le=10_000_000)] | None = Field(
        None, description="then keep at most this many: the most relevant, the newest among equals"
    )


class KnowledgePruneResult(StrictModel):
    removed: int = Field(description="items deleted")
    remaining: int = Field(description="items left")


register(
    "persona.knowledge.prune",
    params=KnowledgePruneParams,
    result=KnowledgePruneResult,
    summary="Delete low-relevance knowledge and/or cap the number of items kept.",
    served_by="persona",
    errors=((ErrorCode.INVALID_PARAMS, "neither min_relevance nor max_items given"),),
)

# -- inference.embed ----------------------------------------------------------


class EmbedParams(StrictParams):
    texts: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_EMBED_TEXT_CHARS)]],
        Field(min_length=1, max_length=MAX_EMBED_BATCH),
    ] = Field(description=f"1 to {MAX_EMBED_BATCH} texts, each embedded on its own (one batch on the model)")


class EmbedResult(StrictModel):
    model: str = Field(description=f"the model that made the vectors ({EMBED_MODEL})")
    dim: int = Field(description=f"each vector's length ({EMBED_DIM})")
    vectors: list[list[float]] = Field(
        description="one unit-length vector per text, in order (mean pooling, L2-normalised)"
    )


register(
    "inference.embed",
    params=EmbedParams,
    result=EmbedResult,
    summary="Sentence embeddings (all-MiniLM-L6-v2) for a batch of texts.",
    served_by="cap:inference",
    errors=(
        (InferenceErrorCode.MODEL_UNAVAILABLE, "the embedding model is not installed or cannot be loaded"),
    ),
)

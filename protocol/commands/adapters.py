"""Merging adapters: ``adapter.merge`` on ``cap:inference`` (an admin operation).

Apart from generation (inference.py) because it is a different job on the
same provider: it writes a new adapter into the shared content-addressed
store rather than serving a persona's request. docs/inference.md, "Merging
adapters", says how each combination is computed.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ..errors import ErrorCode
from .inference import MAX_STACK_DEPTH, AdapterName, InferenceErrorCode, Sha256, StackEntry
from .registry import StrictModel, StrictParams, register

__all__ = ["MAX_MERGE_SOURCES", "MergeCombination", "MergeParams", "MergeResult"]

#: How ``adapter.merge`` combines its sources. ``cat``: every level of every
#: source's stack concatenated into one adapter (rank = the sum of theirs),
#: exact: its delta is the weighted sum of all the levels' deltas. The others
#: are PEFT's approximations (``peft.utils.merge_utils``), on adapters of equal rank.
MergeCombination = Literal["cat", "linear", "ties", "dare_linear", "dare_ties"]
#: At most this many sources in one merge.
MAX_MERGE_SOURCES = 8


class MergeParams(StrictParams):
    sources: Annotated[list[AdapterName], Field(min_length=2, max_length=MAX_MERGE_SOURCES)] = Field(
        strict=False,
        description="the adapters to merge, each with its whole stack (its parents); all for one base model",
    )
    name: AdapterName = Field(
        description="the new adapter's name: a root name (no dots), since it already holds whole stacks"
    )
    combination: MergeCombination = Field(
        "cat",
        description="cat (exact, default), or PEFT's linear, ties, dare_linear, dare_ties (approximate)",
    )
    weights: (
        Annotated[
            list[Annotated[float, Field(ge=-16.0, le=16.0, allow_inf_nan=False)]],
            Field(min_length=2, max_length=MAX_MERGE_SOURCES),
        ]
        | None
    ) = Field(None, strict=False, description="one weight per source (default 1.0 each: the sum)")
    density: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        None, description="fraction of values kept by ties and dare_* (default 0.5); not for cat or linear"
    )
    pins: (
        Annotated[
            list[Annotated[list[StackEntry], Field(min_length=1, max_length=MAX_STACK_DEPTH)]],
            Field(min_length=2, max_length=MAX_MERGE_SOURCES),
        ]
        | None
    ) = Field(
        None,
        strict=False,
        description="each source's stack as the caller holds it (a persona's profile), root first: "
        "these exact hashes are merged, even if a name was retrained since",
    )


class MergeResult(StrictModel):
    name: AdapterName = Field(description="the new adapter's name")
    sha256: Sha256 = Field(description="its content address (same sources and options: same hash)")
    rank: int = Field(description="its LoRA rank (cat: the sum of all levels' ranks)")
    bytes: int = Field(description="size of its adapter_model.safetensors")
    exact: bool = Field(description="true for cat: its delta is exactly the weighted sum of the sources'")
    combination: MergeCombination = Field(description="how the sources were combined")
    levels: list[StackEntry] = Field(description="every level merged, source by source, root first")


register(
    "adapter.merge",
    params=MergeParams,
    result=MergeResult,
    summary="Merge adapters (each with its stack) into a new stored PEFT adapter; cat is exact. Admin only.",
    served_by="cap:inference",
    errors=(
        (ErrorCode.FORBIDDEN, "personas may not merge adapters (an admin operation)"),
        (InferenceErrorCode.ADAPTER_NOT_FOUND, "a source is not in the store"),
        (
            InferenceErrorCode.ADAPTER_INCOMPATIBLE,
            "the sources adapt different modules or were made for another base model",
        ),
        (InferenceErrorCode.ADAPTER_CORRUPT, "a source's files are damaged or altered"),
        (
            InferenceErrorCode.UNSUPPORTED,
            "the combination cannot be made (unequal ranks for linear/ties/dare, per-module patterns, "
            "rank too large)",
        ),
    ),
)

"""Admin work on the adapter store: ``adapter.merge`` and ``adapter.delete`` on ``cap:inference``.

Apart from generation (inference.py) because it is a different job on the
same provider: it writes the shared content-addressed store rather than
serving a persona's request. docs/inference.md, "Merging adapters", says how
each combination is computed, and "Deleting adapters" what a delete refuses.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ..errors import ErrorCode
from .bus import Empty
from .inference import MAX_STACK_DEPTH, AdapterName, ChatMessage, InferenceErrorCode, Sha256, StackEntry
from .registry import StrictModel, StrictParams, register

__all__ = [
    "MAX_MERGE_SOURCES",
    "MAX_TRAIN_EXAMPLES",
    "AdapterDeleteParams",
    "AdapterDeleteResult",
    "AdapterTrainParams",
    "AdapterTrainResult",
    "MergeCombination",
    "MergeParams",
    "MergeResult",
    "TrainExample",
    "TrainProgressParams",
]

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


# -- adapter.delete ------------------------------------------------------------------------------


class AdapterDeleteParams(StrictParams):
    name: AdapterName = Field(description="the adapter's name in the store")
    sha256: Sha256 | None = Field(
        None,
        description="what the caller believes the name points to (a profile's stack entry): if given and "
        "the name now points elsewhere, nothing is deleted",
    )


class AdapterDeleteResult(StrictModel):
    name: AdapterName = Field(description="the name removed from the index")
    sha256: Sha256 = Field(description="the content address it pointed to")
    blob_removed: bool = Field(
        description="whether the weights (objects/<sha256>/) went too; false when another name holds them"
    )


register(
    "adapter.delete",
    params=AdapterDeleteParams,
    result=AdapterDeleteResult,
    summary="Remove an adapter's name from the store, and its weights when no other name holds them. "
    "Refuses an adapter in use or with children. Admin (and the registry) only.",
    served_by="cap:inference",
    errors=(
        (ErrorCode.FORBIDDEN, "personas may not delete adapters (an admin operation)"),
        (ErrorCode.INVALID_PARAMS, "sha256 is not what the name points to (data.field = sha256)"),
        (InferenceErrorCode.ADAPTER_NOT_FOUND, "no adapter by that name"),
        (
            InferenceErrorCode.UNSUPPORTED,
            "the adapter is the parent of another stored adapter, or a running request or a pinned "
            "stack uses it (data.reason = has_children | in_use)",
        ),
    ),
)


# -- adapter.train ----------------------------------------------------------------------------

#: At most this many examples in one adapter.train call.
MAX_TRAIN_EXAMPLES = 5000


class TrainExample(StrictParams):
    messages: Annotated[list[ChatMessage], Field(min_length=2, max_length=64)] = Field(
        description="one conversation; the last message is the assistant's (the target)"
    )


class AdapterTrainParams(StrictParams):
    name: AdapterName = Field(
        description="the new level; its parents (the dotted prefix) must be stored: trained over, frozen"
    )
    examples: Annotated[list[TrainExample], Field(min_length=1, max_length=MAX_TRAIN_EXAMPLES)] = Field(
        description="chat-format examples; the loss covers only the assistant turns"
    )
    epochs: Annotated[int, Field(ge=1, le=20)] = Field(2, description="passes over the examples")
    rank: Annotated[int, Field(ge=1, le=64)] = Field(8, description="LoRA rank")
    alpha: Annotated[int, Field(ge=1, le=256)] = Field(16, description="LoRA alpha (scaling alpha / rank)")
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = Field(2e-3, description="AdamW learning rate")
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = Field(
        0, description="the same seed and data give the same adapter"
    )
    max_tokens: Annotated[int, Field(ge=16, le=2048)] = Field(
        512, description="longer examples are cut to this"
    )
    meta: dict[str, str | int | float | bool | None] = Field(
        {}, description="kept in the adapter's metadata (e.g. the Academy run that trained it)"
    )


class TrainProgressParams(StrictParams):
    step: int = Field(description="optimizer steps done")
    total: int = Field(description="steps in all (epochs times examples)")
    epoch: int = Field(description="the current epoch, from 1")
    loss: float = Field(description="the last step's loss")
    elapsed_s: float = Field(description="since training started")


class AdapterTrainResult(StrictModel):
    name: str = Field(description="the stored level")
    sha256: str = Field(description="its content address")
    parent: str | None = Field(description="its parent level, if any")
    examples: int = Field(description="examples trained on")
    steps: int = Field(description="optimizer steps")
    final_loss: float = Field(description="the last step's loss")
    seconds: float = Field(description="training time (model load included)")
    examples_per_s: float = Field(description="example-steps per second of training")


register(
    "adapter.train",
    params=AdapterTrainParams,
    result=AdapterTrainResult,
    summary="Train a LoRA level over its frozen parents from chat examples; streams progress.",
    served_by="cap:inference",
    streams=True,
    errors=(
        (ErrorCode.INVALID_PARAMS, "bad name or examples; a parent level is missing (data.field)"),
        (ErrorCode.OVERLOADED, "a training is already running on this service (one at a time)"),
        (ErrorCode.CANCELLED, "the caller cancelled (bus.cancel): nothing is stored"),
        (ErrorCode.FORBIDDEN, "persona callers may not train: it writes the shared adapter store"),
    ),
)
register(
    "adapter.train.progress",
    params=TrainProgressParams,
    result=Empty,
    summary="The progress of an adapter.train request (meta.reply_to).",
    served_by="client",
    notification=True,
)

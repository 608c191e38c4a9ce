"""Chat, generation and LoRA stacks: what personas and the inference service serve.

Two providers share these models, so that a persona can talk to the shared
service over the bus or to an engine in its own process through one interface
(``daemon/inference/backend.py``):

* the inference service (``to: cap:inference``) serves ``inference.generate``,
  ``inference.load_stack``, ``inference.unload`` and ``inference.status``;
* every persona (``to: persona:<id>``) serves ``chat`` and ``lora.load_stack``,
  ``lora.unload``, ``lora.status``, which it answers with its own profile and
  stack and forwards to the service (or its in-process engine).

Adapters are named by dotted paths: ``legal.patent.uspto`` is the *stack*
``legal`` → ``legal.patent`` → ``legal.patent.uspto`` (each level trained with
its parents active). On the wire a stack is always sent resolved, as names
*and* content hashes (sha256 of ``adapter_model.safetensors``), so that a
retrained name never silently changes what an ongoing conversation runs on.

Streaming (``stream: true``): before its response, the server sends
``inference.token`` (service) or ``chat.token`` (persona) notifications tied
to the request (``meta.reply_to``), each carrying the next piece of text.

Errors specific to inference use application codes outside JSON-RPC's
reserved range (JSON-RPC 2.0 §5.1 leaves the rest to the application).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Literal

from pydantic import Field

from .bus import Empty
from .registry import StrictModel, StrictParams, register

__all__ = [
    "ADAPTER_NAME_PATTERN",
    "MAX_MESSAGE_CHARS",
    "MAX_STACK_DEPTH",
    "MAX_TOKENS",
    "SHA256_PATTERN",
    "AdapterInfo",
    "ChatMessage",
    "ChatParams",
    "ChatResult",
    "GenerateParams",
    "GenerateResult",
    "InferenceErrorCode",
    "InferenceStatus",
    "LoadStackParams",
    "LoadStackResult",
    "LoadedAdapter",
    "LoraStatusResult",
    "MergedStack",
    "PersonaLoadStackResult",
    "PersonaUnloadResult",
    "StackEntry",
    "StackMode",
    "Timings",
    "TokenParams",
    "UnloadParams",
    "UnloadResult",
]

#: One level: lowercase letters, digits, ``_`` and ``-``; levels joined by dots.
ADAPTER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}(\.[a-z0-9][a-z0-9_-]{0,31}){0,7}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
#: A stack is at most this deep (the name pattern allows 8 levels).
MAX_STACK_DEPTH = 8
MAX_MESSAGE_CHARS = 32_000
MAX_TOKENS = 2048


class InferenceErrorCode(IntEnum):
    """``error.code`` values of inference failures (application range)."""

    #: The base model is not installed or cannot be loaded (the message says how to install it).
    MODEL_UNAVAILABLE = 4101
    #: No adapter by that name, or the stack's pinned hash is no longer in the store.
    ADAPTER_NOT_FOUND = 4102
    #: The adapter was made for another base model (module missing or shapes differ).
    ADAPTER_INCOMPATIBLE = 4103
    #: The stored adapter is damaged (unreadable safetensors, hash mismatch, bad config).
    ADAPTER_CORRUPT = 4104
    #: The request cannot be served as asked (prompt too long, mode not possible for this stack).
    UNSUPPORTED = 4105


AdapterName = Annotated[str, Field(pattern=ADAPTER_NAME_PATTERN, max_length=263)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]

#: How a stack is applied. ``auto``: merged weights when a batch runs one stack,
#: ``cat`` when a batch mixes stacks. ``unmerged``: every level an active PEFT
#: adapter, summed at run time. ``merged``: the stack folded into a cached copy
#: of the weights (no overhead). ``cat``: the levels concatenated into one
#: adapter, exact and batchable with other stacks.
StackMode = Literal["auto", "merged", "unmerged", "cat"]
#: What actually ran (``base``: no adapters).
UsedMode = Literal["base", "merged", "unmerged", "cat"]


class StackEntry(StrictParams):
    """One level of a stack, pinned by content."""

    name: AdapterName
    sha256: Sha256


class AdapterInfo(StrictModel):
    name: AdapterName
    sha256: Sha256
    parent: AdapterName | None
    bytes: int = Field(description="size of adapter_model.safetensors")
    rank: int
    alpha: float
    target_modules: list[str]


class ChatMessage(StrictParams):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)]


class Timings(StrictModel):
    queued_ms: float = Field(description="waiting for a seat in a batch")
    prefill_ms: float = Field(description="reading the prompt")
    decode_ms: float = Field(description="producing the completion")
    total_ms: float
    tokens_per_s: float = Field(description="completion tokens / decode time")


# -- the service (cap:inference) --------------------------------------------------------


class GenerateParams(StrictParams):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=64)]
    stack: Annotated[list[StackEntry], Field(max_length=MAX_STACK_DEPTH)] = []
    mode: StackMode = "auto"
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = 256
    temperature: Annotated[float, Field(ge=0.0, le=2.0, description="0: greedy")] = 0.7
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    seed: Annotated[int | None, Field(ge=0, lt=2**63)] = None
    stream: bool = True


class GenerateResult(StrictModel):
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    stack: list[StackEntry]
    mode: UsedMode
    batch_size: int = Field(description="most rows decoded together with this one")
    model: str
    timings: Timings


class TokenParams(StrictParams):
    index: int = Field(description="0-based index of this piece in the stream")
    text: str


register(
    "inference.generate",
    params=GenerateParams,
    result=GenerateResult,
    summary="Generate a chat completion with a LoRA stack; streams inference.token notifications.",
    served_by="cap:inference",
    streams=True,
)
register(
    "inference.token",
    params=TokenParams,
    result=Empty,
    summary="The next piece of text of an inference.generate request (meta.reply_to).",
    served_by="client",
    notification=True,
)


class LoadStackParams(StrictParams):
    name: AdapterName = Field(description="the leaf; its parents are loaded with it")
    mode: StackMode = "auto"


class LoadStackResult(StrictModel):
    stack: list[AdapterInfo]
    mode: StackMode
    load_ms: float


register(
    "inference.load_stack",
    params=LoadStackParams,
    result=LoadStackResult,
    summary="Resolve a dotted adapter name into its stack and load it (warm), without restarting.",
    served_by="cap:inference",
)


class UnloadParams(StrictParams):
    stack: Annotated[list[StackEntry], Field(max_length=MAX_STACK_DEPTH)]


class UnloadResult(StrictModel):
    released: list[StackEntry]


register(
    "inference.unload",
    params=UnloadParams,
    result=UnloadResult,
    summary="Release a stack's slots and merged copy (other users of the same adapters keep them).",
    served_by="cap:inference",
)


class LoadedAdapter(StrictModel):
    slot: str
    sha256: Sha256
    names: list[str]
    rank: int
    combined: bool = Field(description="a cat combination of a whole stack")
    idle_s: float


class MergedStack(StrictModel):
    stack: list[Sha256]
    bytes: int
    idle_s: float


class InferenceStatus(StrictModel):
    model: str
    model_path: str
    model_bytes: int
    threads: int
    pid: int
    rss_bytes: int
    slots_used: int
    slots_capacity: int
    merged_capacity: int
    loaded: list[LoadedAdapter]
    merged: list[MergedStack]
    waiting: int
    running: int
    served: int
    hotswaps: int
    evictions: int


register(
    "inference.status",
    params=Empty,
    result=InferenceStatus,
    summary="The model, loaded adapters (slots), merged copies and queue of the inference engine.",
    served_by="cap:inference",
)


# -- personas ---------------------------------------------------------------------------


class ChatParams(StrictParams):
    message: Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS)]
    context: Annotated[str | None, Field(max_length=MAX_MESSAGE_CHARS)] = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = 256
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.7
    stream: bool = True


class ChatResult(StrictModel):
    reply: str
    persona: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    stack: list[StackEntry]
    mode: UsedMode
    model: str
    memories_used: int
    logged: bool = Field(description="whether the exchange was recorded as an interaction")
    timings: Timings
    memory_ms: float = Field(description="looking up relevant memories")


register(
    "chat",
    params=ChatParams,
    result=ChatResult,
    summary="Talk to a persona: its profile, memories and LoRA stack shape the reply; streams chat.token.",
    served_by="persona",
    streams=True,
)
register(
    "chat.token",
    params=TokenParams,
    result=Empty,
    summary="The next piece of a persona's chat reply (meta.reply_to).",
    served_by="client",
    notification=True,
)


class PersonaLoadStackResult(StrictModel):
    persona: str
    stack: list[AdapterInfo]
    mode: StackMode
    load_ms: float


register(
    "lora.load_stack",
    params=LoadStackParams,
    result=PersonaLoadStackResult,
    summary="Give a persona a LoRA stack (a dotted name and its parents), used by its next chat.",
    served_by="persona",
)


class PersonaUnloadResult(StrictModel):
    persona: str
    released: list[StackEntry]


register(
    "lora.unload",
    params=Empty,
    result=PersonaUnloadResult,
    summary="Drop a persona's LoRA stack: it answers with the base model again.",
    served_by="persona",
)


class LoraStatusResult(StrictModel):
    persona: str
    stack: list[AdapterInfo]
    mode: StackMode
    backend: Literal["service", "inprocess"]
    engine: InferenceStatus | None = None
    engine_error: str | None = None


register(
    "lora.status",
    params=Empty,
    result=LoraStatusResult,
    summary="A persona's active stack (names, hashes, sizes, mode) and its inference engine's state.",
    served_by="persona",
)

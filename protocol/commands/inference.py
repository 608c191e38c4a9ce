"""Chat, generation and LoRA stacks: what personas and the inference service serve.

Two providers share these models, so that a persona can talk to the shared
service over the bus or to an engine in its own process through one interface
(``daemon/inference/backend.py``):

* the inference service (``to: cap:inference``) serves ``inference.generate``,
  ``inference.load_stack``, ``inference.unload`` and ``inference.status``
  (and ``adapter.merge``, in adapters.py);
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

import json
from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from ..errors import ErrorCode
from .bus import Empty
from .registry import StrictModel, StrictParams, register

__all__ = [
    "ADAPTER_NAME_PATTERN",
    "MAX_JSON_SCHEMA_BYTES",
    "MAX_MESSAGE_CHARS",
    "MAX_STACK_DEPTH",
    "MAX_TOKENS",
    "MODEL_ERRORS",
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
#: Largest ``json_schema`` accepted by inference.generate, as compact JSON:
#: the grammar compiled from it lives on the worker thread, which it blocks
#: while compiling, so it is kept to what a structured reply needs.
MAX_JSON_SCHEMA_BYTES = 32_768


def _schema_size(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError):  # bytes from a msgpack caller, or a non-finite float
        raise ValueError("not a JSON object") from None
    if size > MAX_JSON_SCHEMA_BYTES:
        raise ValueError(f"over {MAX_JSON_SCHEMA_BYTES} bytes as compact JSON")
    return value


#: A JSON Schema object (draft 2020-12 subset xgrammar compiles); null for free text.
JsonSchema = Annotated[dict[str, Any] | None, AfterValidator(_schema_size)]


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

    @property
    def description(self) -> str:
        return _INFERENCE_ERRORS[self]


_INFERENCE_ERRORS = {
    InferenceErrorCode.MODEL_UNAVAILABLE: "the base model is not installed or cannot be loaded "
    "(the message says how to install it)",
    InferenceErrorCode.ADAPTER_NOT_FOUND: "no adapter by that name, "
    "or a pinned hash is no longer in the store",
    InferenceErrorCode.ADAPTER_INCOMPATIBLE: "the adapter was made for another base model",
    InferenceErrorCode.ADAPTER_CORRUPT: "the stored adapter is damaged "
    "(unreadable, hash mismatch, bad config)",
    InferenceErrorCode.UNSUPPORTED: "cannot be served as asked: prompt too long, all slots busy, "
    "a mode not possible for this stack",
}
#: What any request that runs the model or loads adapters may fail with.
MODEL_ERRORS = tuple(InferenceErrorCode)


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

    name: AdapterName = Field(description="the adapter's dotted name")
    sha256: Sha256 = Field(description="sha256 of its adapter_model.safetensors: pins the exact weights")


class AdapterInfo(StrictModel):
    name: AdapterName = Field(description="the adapter's dotted name")
    sha256: Sha256 = Field(description="sha256 of adapter_model.safetensors")
    parent: AdapterName | None = Field(description="the level above it; null at the root")
    bytes: int = Field(description="size of adapter_model.safetensors")
    rank: int = Field(description="LoRA rank r")
    alpha: float = Field(description="LoRA alpha")
    target_modules: list[str] = Field(description="the model's modules it adapts")


class ChatMessage(StrictParams):
    role: Literal["system", "user", "assistant"] = Field(description="who says it")
    content: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)] = Field(description="the text")


class Timings(StrictModel):
    queued_ms: float = Field(description="waiting for a seat in a batch")
    prefill_ms: float = Field(description="reading the prompt")
    decode_ms: float = Field(description="producing the completion")
    total_ms: float = Field(description="from arrival to the last token")
    tokens_per_s: float = Field(description="completion tokens / decode time")


# -- the service (cap:inference) --------------------------------------------------------


class GenerateParams(StrictParams):
    # strict=False on the list only: personas build it from plain dicts, which
    # strict typing of __init__ (the pydantic mypy plugin) would reject; each
    # ChatMessage is still validated strictly by its own config.
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=64)] = Field(
        strict=False, description="the conversation so far, oldest first"
    )
    stack: Annotated[list[StackEntry], Field(max_length=MAX_STACK_DEPTH)] = Field(
        [], description="the LoRA stack, root first, pinned by hash; empty: the base model"
    )
    mode: StackMode = Field("auto", description="how to apply the stack")
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = Field(256, description="most tokens to generate")
    temperature: Annotated[float, Field(ge=0.0, le=2.0, description="0: greedy")] = 0.7
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.95, description="nucleus sampling: the smallest set of tokens with this much probability"
    )
    seed: Annotated[int | None, Field(ge=0, lt=2**63)] = Field(
        None, description="makes sampling repeatable; omitted: random"
    )
    stream: bool = Field(True, description="send inference.token notifications as the text is produced")
    json_schema: JsonSchema = Field(
        None,
        description="hold every generated token to this JSON Schema (constrained decoding, xgrammar): "
        f"the text is then one JSON value it accepts, unless max_tokens cut it short; "
        f"at most {MAX_JSON_SCHEMA_BYTES} bytes as compact JSON; null: free text",
    )


class GenerateResult(StrictModel):
    text: str = Field(description="the completion")
    finish_reason: Literal["stop", "length"] = Field(
        description="stop: the model ended it; length: max_tokens was reached"
    )
    prompt_tokens: int = Field(description="tokens in the prompt")
    completion_tokens: int = Field(description="tokens generated")
    stack: list[StackEntry] = Field(description="the stack it ran with")
    mode: UsedMode = Field(description="how the stack was applied")
    batch_size: int = Field(description="most rows decoded together with this one")
    model: str = Field(description="the base model's name")
    timings: Timings = Field(description="where the time went")
    constrained: bool = Field(
        False,
        description="true when json_schema held the decoding; then with finish_reason stop the text "
        "is one JSON value the schema accepts",
    )


class TokenParams(StrictParams):
    index: int = Field(description="0-based index of this piece in the stream")
    text: str = Field(description="the next piece of text")


register(
    "inference.generate",
    params=GenerateParams,
    result=GenerateResult,
    summary="Generate a chat completion with a LoRA stack; streams inference.token notifications.",
    served_by="cap:inference",
    streams=True,
    errors=MODEL_ERRORS,
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
    mode: StackMode = Field("auto", description="how to apply the stack")


class LoadStackResult(StrictModel):
    stack: list[AdapterInfo] = Field(description="the resolved stack, root first")
    mode: StackMode = Field(description="how it will be applied")
    load_ms: float = Field(description="time taken to load it")


register(
    "inference.load_stack",
    params=LoadStackParams,
    result=LoadStackResult,
    summary="Resolve a dotted adapter name into its stack and load it (warm), without restarting.",
    served_by="cap:inference",
    errors=MODEL_ERRORS,
)


class UnloadParams(StrictParams):
    stack: Annotated[list[StackEntry], Field(max_length=MAX_STACK_DEPTH)] = Field(
        description="the stack to release, root first, pinned by hash"
    )


class UnloadResult(StrictModel):
    released: list[StackEntry] = Field(description="the levels released")


register(
    "inference.unload",
    params=UnloadParams,
    result=UnloadResult,
    summary="Release a stack's slots and merged copy (other users of the same adapters keep them).",
    served_by="cap:inference",
)


class LoadedAdapter(StrictModel):
    slot: str = Field(description="the engine's name for the loaded adapter")
    sha256: Sha256 = Field(description="the adapter's hash (of the combination, for cat)")
    names: list[str] = Field(description="the dotted names it serves")
    rank: int = Field(description="LoRA rank")
    combined: bool = Field(description="a cat combination of a whole stack")
    idle_s: float = Field(description="seconds since it was last used")


class MergedStack(StrictModel):
    stack: list[Sha256] = Field(description="the hashes of the stack's levels, root first")
    bytes: int = Field(description="memory held by the merged copy")
    idle_s: float = Field(description="seconds since it was last used")


class InferenceStatus(StrictModel):
    model: str = Field(description="the base model's name")
    model_path: str = Field(description="where its weights are")
    model_bytes: int = Field(description="size of the weights")
    threads: int = Field(description="CPU threads the engine decodes with")
    pid: int = Field(description="the engine's process id")
    rss_bytes: int = Field(description="the process's resident memory")
    slots_used: int = Field(description="adapter slots in use")
    slots_capacity: int = Field(description="adapter slots available")
    merged_capacity: int = Field(description="merged copies kept at most")
    loaded: list[LoadedAdapter] = Field(description="adapters in slots")
    merged: list[MergedStack] = Field(description="merged copies of whole stacks")
    waiting: int = Field(description="requests queued")
    running: int = Field(description="requests being decoded")
    served: int = Field(description="requests completed since start")
    hotswaps: int = Field(description="adapters loaded by swapping tensors into a slot")
    evictions: int = Field(description="adapters unloaded to make room")
    backend: Literal["torch", "openvino"] = Field(
        "torch", description="the engine decoding: torch (transformers + PEFT) or openvino (OpenVINO GenAI)"
    )


register(
    "inference.status",
    params=Empty,
    result=InferenceStatus,
    summary="The model, loaded adapters (slots), merged copies and queue of the inference engine.",
    served_by="cap:inference",
)


# -- personas ---------------------------------------------------------------------------


class ChatParams(StrictParams):
    message: Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS)] = Field(
        description="what you say to the persona"
    )
    context: Annotated[str | None, Field(max_length=MAX_MESSAGE_CHARS)] = Field(
        None, description="extra context for this turn, put in the prompt"
    )
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = Field(
        256, description="most tokens in the reply"
    )
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = Field(
        0.7, description="0: greedy; higher: more varied"
    )
    stream: bool = Field(True, description="send chat.token notifications as the reply is produced")


class ChatResult(StrictModel):
    reply: str = Field(description="the persona's answer")
    persona: str = Field(description="the persona's client id")
    finish_reason: Literal["stop", "length"] = Field(
        description="stop: the model ended it; length: max_tokens was reached"
    )
    prompt_tokens: int = Field(description="tokens in the prompt")
    completion_tokens: int = Field(description="tokens generated")
    stack: list[StackEntry] = Field(description="the LoRA stack it answered with")
    mode: UsedMode = Field(description="how the stack was applied")
    model: str = Field(description="the base model's name")
    memories_used: int = Field(description="recalled memories put in the prompt")
    logged: bool = Field(description="whether the exchange was recorded as an interaction")
    timings: Timings = Field(description="where the inference time went")
    memory_ms: float = Field(description="looking up relevant memories")


register(
    "chat",
    params=ChatParams,
    result=ChatResult,
    summary="Talk to a persona: its profile, memories and LoRA stack shape the reply; streams chat.token.",
    served_by="persona",
    streams=True,
    errors=(*MODEL_ERRORS, (ErrorCode.SHUTTING_DOWN, "the persona is stopping")),
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
    persona: str = Field(description="the persona's client id")
    stack: list[AdapterInfo] = Field(description="its stack now, root first")
    mode: StackMode = Field(description="how it will be applied")
    load_ms: float = Field(description="time taken to load it")


register(
    "lora.load_stack",
    params=LoadStackParams,
    result=PersonaLoadStackResult,
    summary="Give a persona a LoRA stack (a dotted name and its parents), used by its next chat.",
    served_by="persona",
    errors=MODEL_ERRORS,
)


class PersonaUnloadResult(StrictModel):
    persona: str = Field(description="the persona's client id")
    released: list[StackEntry] = Field(description="the levels it dropped")


register(
    "lora.unload",
    params=Empty,
    result=PersonaUnloadResult,
    summary="Drop a persona's LoRA stack: it answers with the base model again.",
    served_by="persona",
)


class LoraStatusResult(StrictModel):
    persona: str = Field(description="the persona's client id")
    stack: list[AdapterInfo] = Field(description="its stack, root first; empty: the base model")
    mode: StackMode = Field(description="how it is applied")
    backend: Literal["service", "inprocess"] = Field(
        description="service: the shared cap:inference; inprocess: an engine in the persona's own process"
    )
    engine: InferenceStatus | None = Field(
        None, description="the engine's status; null when it could not be asked"
    )
    engine_error: str | None = Field(None, description="why the engine could not be asked")


register(
    "lora.status",
    params=Empty,
    result=LoraStatusResult,
    summary="A persona's active stack (names, hashes, sizes, mode) and its inference engine's state.",
    served_by="persona",
)

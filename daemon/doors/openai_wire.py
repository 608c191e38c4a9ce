"""OpenAI's Chat Completions wire shapes, and how they become a persona's ``chat`` call.

The translation only, with no I/O: a request body into ChatParams (or an
:class:`OpenAIError` saying what a persona cannot do), a ChatResult into a
``chat.completion`` or its ``chat.completion.chunk`` events. The mapping,
what is refused and what is ignored are stated once, in
:mod:`.openai_compat`'s docstring; the routes and the streaming live there.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from protocol import ErrorCode
from protocol.commands.inference import MAX_MESSAGE_CHARS, MAX_TOKENS, InferenceErrorCode
from protocol.messages import CLIENT_ID_PATTERN

from .http_io import dumps
from .session import DoorError
from .status import http_status

MODEL_PREFIX = "persona:"
_CLIENT_ID = re.compile(CLIENT_ID_PATTERN)

#: Fields of OpenAI's request that a persona can honour only at the value that asks for nothing.
_NEUTRAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v in (None, 1), "n > 1 is not supported: a persona gives one reply per request"),
    "tools": (lambda v: not v, "tools are not supported: a persona answers in text and calls no tools"),
    "functions": (lambda v: not v, "functions are not supported: a persona calls no functions"),
    "tool_choice": (lambda v: v in (None, "none"), "tool_choice is not supported: a persona calls no tools"),
    "function_call": (lambda v: v in (None, "none"), "function_call is not supported"),
    "response_format": (
        lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
        "response_format other than text is not supported: a persona answers in free text",
    ),
    "modalities": (lambda v: v in (None, ["text"]), "only the text modality is supported"),
    "audio": (lambda v: v is None, "audio output is not supported"),
    "logprobs": (lambda v: v in (None, False), "logprobs are not supported"),
    "top_logprobs": (lambda v: v in (None, 0), "top_logprobs are not supported"),
    "logit_bias": (lambda v: not v, "logit_bias is not supported"),
    "stop": (lambda v: not v, "stop sequences are not supported"),
    "top_p": (
        lambda v: v is None,
        "top_p is not supported: a persona samples with its own nucleus; set temperature",
    ),
    "presence_penalty": (lambda v: v in (None, 0), "presence_penalty is not supported"),
    "frequency_penalty": (lambda v: v in (None, 0), "frequency_penalty is not supported"),
    "verbosity": (lambda v: v in (None, "medium"), "verbosity is not supported"),
    "web_search_options": (lambda v: v is None, "web search is not supported"),
    "moderation": (lambda v: v is None, "moderation is not supported"),
}
#: Fields that change nothing a caller can hold the reply to (module docstring).
_IGNORED = frozenset(
    {
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls",
        "prediction",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "seed",
    }
)
_MAPPED = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "stream", "stream_options"}
)
_SPEAKERS = {"system": "System", "developer": "System", "user": "User", "assistant": "You"}


class OpenAIError(Exception):
    """An error in OpenAI's shape, with its HTTP status."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    @classmethod
    def invalid(cls, message: str, param: str | None = None) -> OpenAIError:
        return cls(HTTPStatus.BAD_REQUEST, message, code="invalid_value", param=param)

    @classmethod
    def unsupported(cls, message: str, param: str | None = None) -> OpenAIError:
        return cls(HTTPStatus.BAD_REQUEST, message, code="unsupported_parameter", param=param)

    @classmethod
    def from_bus(cls, exc: DoorError) -> OpenAIError:
        return cls(http_status(exc.code), exc.message, code=_code_name(exc.code))

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": _error_type(self.status),
                "param": self.param,
                "code": self.code,
            }
        }


def _code_name(code: int) -> str:
    for enum in (ErrorCode, InferenceErrorCode):
        try:
            return enum(code).name
        except ValueError:
            continue
    return str(code)


def _error_type(status: int) -> str:
    # The types OpenAI's API answers with, by status.
    if status == HTTPStatus.UNAUTHORIZED:
        return "authentication_error"
    if status == HTTPStatus.FORBIDDEN:
        return "permission_error"
    if status == HTTPStatus.TOO_MANY_REQUESTS:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


# -- requests ---------------------------------------------------------------------------


def chat_params(body: Any) -> tuple[str, dict[str, Any], bool]:
    """(target, ChatParams as a dict, include_usage) for a Chat Completions body; raises OpenAIError."""
    if not isinstance(body, dict):
        raise OpenAIError.invalid("the body must be a JSON object")
    for key, value in body.items():
        if key in _NEUTRAL:
            accepts, message = _NEUTRAL[key]
            if not accepts(value):
                raise OpenAIError.unsupported(message, key)
        elif key not in _MAPPED and key not in _IGNORED:
            # OpenAI's own answer to a field it does not know.
            raise OpenAIError(
                HTTPStatus.BAD_REQUEST, f"Unrecognized request argument supplied: {key}", param=key
            )
    target = model_target(body.get("model"))
    message, context = _conversation(body.get("messages"))
    params: dict[str, Any] = {"message": message}
    if context:
        params["context"] = context
    max_tokens = _max_tokens(body)
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):
            raise OpenAIError.invalid("temperature must be a number from 0 to 2", "temperature")
        params["temperature"] = float(temperature)
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise OpenAIError.invalid("stream must be a boolean", "stream")
    params["stream"] = bool(stream)
    options = body.get("stream_options")
    if options is not None and not stream:
        raise OpenAIError.invalid("stream_options are only allowed when stream is true", "stream_options")
    if options is not None and not isinstance(options, dict):
        raise OpenAIError.invalid("stream_options must be an object", "stream_options")
    include_usage = bool((options or {}).get("include_usage"))
    return target, params, include_usage


def model_target(model: Any) -> str:
    """The bus target of a model name: ``persona:<id>`` is itself; anything else names no model."""
    if not isinstance(model, str) or not model:
        raise OpenAIError.invalid("model is required: persona:<id> (GET /v1/models lists them)", "model")
    if not model.startswith(MODEL_PREFIX) or not _CLIENT_ID.match(model):
        raise OpenAIError(
            HTTPStatus.NOT_FOUND,
            f"The model `{model}` does not exist: personad's models are personas, persona:<id> "
            "(GET /v1/models lists the connected ones)",
            code="model_not_found",
            param="model",
        )
    return model


def _max_tokens(body: dict[str, Any]) -> int | None:
    given = {k: body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None}
    if len(set(given.values())) > 1:
        raise OpenAIError.invalid("max_tokens and max_completion_tokens disagree; send one", "max_tokens")
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
            raise OpenAIError.invalid(f"{key} must be an integer from 1 to {MAX_TOKENS}", key)
        return value
    return None


def _conversation(messages: Any) -> tuple[str, str]:
    """(message, context): the last user message, and the transcript before it, newest kept."""
    if not isinstance(messages, list) or not messages:
        raise OpenAIError.invalid("messages must be a non-empty array", "messages")
    paragraphs = []
    for i, item in enumerate(messages):
        if not isinstance(item, dict):
            raise OpenAIError.invalid("each message must be an object", f"messages[{i}]")
        role = item.get("role")
        if role in ("tool", "function") or item.get("tool_calls") or item.get("function_call"):
            raise OpenAIError.unsupported("tool and function calls are not supported", f"messages[{i}]")
        if role not in _SPEAKERS:
            raise OpenAIError.invalid(f"unknown message role {role!r}", f"messages[{i}].role")
        if item.get("audio") is not None:
            raise OpenAIError.unsupported("audio is not supported", f"messages[{i}].audio")
        text = _text(item.get("content"), f"messages[{i}].content", assistant=role == "assistant")
        if role == "assistant" and isinstance(item.get("refusal"), str):
            text = "\n".join(t for t in (text, item["refusal"]) if t)
        speaker = _SPEAKERS[role]
        name = item.get("name")
        if isinstance(name, str) and name:
            speaker = f"{speaker} ({name})"
        paragraphs.append((role, speaker, text))
    role, _, message = paragraphs[-1]
    last = f"messages[{len(messages) - 1}]"
    if role != "user":
        raise OpenAIError.invalid("the last message must be the user's: a persona answers it", last)
    if not message:
        raise OpenAIError.invalid("the last user message is empty", f"{last}.content")
    if len(message) > MAX_MESSAGE_CHARS:
        raise OpenAIError.invalid(f"the last user message is over {MAX_MESSAGE_CHARS} characters", last)
    return message, bounded_context([f"{speaker}: {text}" for _, speaker, text in paragraphs[:-1]])


def bounded_context(paragraphs: list[str], limit: int = MAX_MESSAGE_CHARS) -> str:
    """The paragraphs joined, dropping the oldest past ``limit`` characters (the oldest kept may be cut)."""
    kept: list[str] = []
    size = 0
    for paragraph in reversed(paragraphs):
        room = limit - size - (2 if kept else 0)
        if room <= 1:
            break
        if len(paragraph) > room:
            kept.append("…" + paragraph[len(paragraph) - room + 1 :])
            break
        kept.append(paragraph)
        size += len(paragraph) + (2 if len(kept) > 1 else 0)
    return "\n\n".join(reversed(kept))


def _text(content: Any, param: str, *, assistant: bool) -> str:
    if content is None:
        if assistant:
            return ""
        raise OpenAIError.invalid("content is required", param)
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError.invalid("content must be a string or an array of text parts", param)
    # An assistant's earlier refusal is what it said, so it joins the transcript as text.
    kinds = ("text", "refusal") if assistant else ("text",)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict) or kind not in kinds:
            raise OpenAIError.unsupported(
                f"content parts of type {kind!r} are not supported: text only", f"{param}[{j}]"
            )
        value = part.get(kind)
        if not isinstance(value, str):
            raise OpenAIError.invalid(f"a {kind} part needs a string {kind!r}", f"{param}[{j}]")
        texts.append(value)
    return "\n".join(texts)


# -- answers ----------------------------------------------------------------------------


def completion(completion_id: str, created: int, model: str, result: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` object from a ChatResult."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": result["reply"],
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": result["finish_reason"],
            }
        ],
        "usage": usage(result),
        "personad": extras(result),
    }


def usage(result: dict[str, Any]) -> dict[str, int]:
    prompt, done = int(result["prompt_tokens"]), int(result["completion_tokens"])
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def extras(result: dict[str, Any]) -> dict[str, Any]:
    """What the ChatResult says beyond OpenAI's fields: who answered, with which stack, how fast."""
    keys = ("persona", "model", "stack", "mode", "memories_used", "logged", "timings", "memory_ms")
    return {k: result[k] for k in keys if k in result}


class Chunks:
    """``chat.completion.chunk`` events of one streamed completion."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def event(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse_data(self._chunk([choice], None))

    def usage(self, result: dict[str, Any]) -> bytes:
        return sse_data(self._chunk([], usage(result)))

    def _chunk(self, choices: list[dict[str, Any]], used: dict[str, int] | None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:  # OpenAI then sends usage on every chunk, null until the last
            chunk["usage"] = used
        return chunk


def sse_data(payload: Any) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"

"""OpenAI's Chat Completions API on the bus's port: every connected persona is a model.

Any OpenAI client (the ``openai`` SDK, LangChain, a ``curl``) pointed at
``http://HOST:PORT/v1`` with a personad token as its API key talks to the
personas: the model ``persona:<id>`` is that persona answering with its
profile, memories and LoRA stack, through one ``chat`` call to
``persona:<id>`` made with the caller's token (so its grants, deadlines and
errors are the bus's, as through every door).

Routes: ``GET /v1/models``, ``GET /v1/models/{model}``,
``POST /v1/chat/completions`` (docs/openai.md shows them in use).

How a request becomes a ``chat`` call (ChatParams):

- ``messages``: the last one must be the user's; its text is ``message``.
  Every earlier message (``system``/``developer`` instructions, user and
  assistant turns, in order) becomes ``context`` as a transcript, one
  ``Speaker: text`` paragraph each (System / User / You, the persona being
  "You"; a message's ``name`` is added to its speaker). The persona puts it
  in its system turn under "Context for this conversation". Past the
  context's limit (MAX_MESSAGE_CHARS) the oldest paragraphs are dropped
  first, and the oldest one kept may lose its beginning: newest kept.
  A message's content is a string or a list of ``text`` parts (joined by
  newlines); ``refusal`` parts of assistant messages count as text.
- ``max_completion_tokens`` (or the older ``max_tokens``) → ``max_tokens``;
  ``temperature`` → ``temperature``; ``stream`` → ``stream``.

Refused with 400 (``invalid_request_error``, ``param`` naming the field),
never silently dropped, because the persona cannot do what they ask:
``n`` > 1; ``tools``, ``functions``, ``tool_choice``/``function_call`` other
than ``"none"``, ``tool``/``function`` messages and assistant ``tool_calls``;
``response_format`` other than ``{"type": "text"}``; ``modalities`` other
than ``["text"]``, ``audio``; image, audio and file content parts;
``logprobs``/``top_logprobs``; ``logit_bias``; ``stop``; ``top_p`` (the
persona samples with its own nucleus; steer it with ``temperature``);
non-zero ``presence_penalty``/``frequency_penalty``; ``verbosity`` other
than ``"medium"``; ``web_search_options``; ``moderation``;
``stream_options`` without ``stream``; and any field OpenAI's API does not
have (OpenAI answers those 400 as well).

Accepted and ignored, since they change nothing a caller can hold the reply
to: ``user``, ``safety_identifier``, ``metadata``, ``store``,
``service_tier``, ``parallel_tool_calls``, ``prediction`` (a latency hint),
``prompt_cache_key``/``prompt_cache_options``/``prompt_cache_retention``,
``reasoning_effort`` (the model does not reason before answering),
``stream_options.include_obfuscation``, and ``seed``: OpenAI promises only
best-effort determinism for it, and ``chat`` has no seed (at temperature 0
a reply is greedy, hence repeatable).

Answers: a ``chat.completion`` (``usage`` from the ChatResult's token
counts, ``finish_reason`` stop/length as the model ended, and a
``personad`` field with the rest of the ChatResult: stack, mode, base
model, memories used, timings); streamed, ``chat.completion.chunk`` events
(``data:`` lines only, as OpenAI sends them): one with the role, one per
``chat.token`` piece, one with the finish reason, a usage chunk when
``stream_options.include_usage``, then ``data: [DONE]``.

Errors are OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, with the HTTP status of :mod:`.status` and ``code`` the bus
error's name (``FORBIDDEN``...), its message verbatim. A persona that is not
connected is, to an OpenAI client, a model that does not exist: 404
``model_not_found`` (the bus's TARGET_OFFLINE message kept). A stream's
headers wait for its first piece, so errors found before any text (a grant,
a missing persona, a bad param) keep their status; one after it arrives as
a ``data: {"error": ...}`` event, which the SDK raises as ``APIError``.
A client that goes away mid-reply ends the bus call, and the persona stops
generating.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from http import HTTPStatus
from typing import Any

from protocol import ErrorCode
from protocol.commands.inference import MAX_TOKENS

from ..tokens import TokenEntry
from .api import HttpApi
from .http_io import SSE_KEEPALIVE_S, deadline_header, read_json, send_json
from .http_server import HttpRequest, HttpResponder
from .openai_wire import Chunks, OpenAIError, chat_params, completion, model_target, sse_data
from .session import DoorError

#: A chat without X-Deadline-Ms. OpenAI's clients wait minutes by default (the
#: SDK ten) and a CPU reply can take that long, so the bus's 30 s default
#: would cut replies short; a caller that leaves sooner ends the call anyway.
DEFAULT_DEADLINE_MS = 300_000


async def send_openai_error(response: HttpResponder, error: OpenAIError) -> None:
    headers = []
    if error.status == HTTPStatus.UNAUTHORIZED:
        headers.append(("WWW-Authenticate", 'Bearer realm="personad"'))
    if error.status == HTTPStatus.TOO_MANY_REQUESTS:
        headers.append(("Retry-After", "1"))
    await send_json(response, error.status, error.body(), headers)


# -- routes -----------------------------------------------------------------------------


class OpenAICompat:
    def __init__(self, api: HttpApi) -> None:
        self.api = api

    def token(self, request: HttpRequest) -> TokenEntry:
        token = self.api.bearer(request)
        if token is None:
            message = (
                "send 'Authorization: Bearer <token>' (a personad token is the API key)"
                if request.header("authorization") is None
                else "invalid bearer token"
            )
            raise OpenAIError(HTTPStatus.UNAUTHORIZED, message, code=ErrorCode.UNAUTHENTICATED.name)
        return token

    async def personas(self, token: TokenEntry) -> list[dict[str, Any]]:
        """The connected personas this token may chat with, as OpenAI model objects."""
        try:
            found = await self.api.call(token, "bus", "bus.clients", {"kind": "persona"}, label="openai")
        except DoorError as exc:
            raise OpenAIError.from_bus(exc) from None
        return [
            {"id": c["id"], "object": "model", "created": int(c["connected_at"]), "owned_by": "personad"}
            for c in sorted(found["clients"], key=lambda c: str(c["id"]))
            if token.allows("chat", c["id"])
        ]

    async def list_models(self, request: HttpRequest, response: HttpResponder) -> None:
        try:
            models = await self.personas(self.token(request))
        except OpenAIError as exc:
            await send_openai_error(response, exc)
            return
        await send_json(response, HTTPStatus.OK, {"object": "list", "data": models})

    async def get_model(self, request: HttpRequest, response: HttpResponder, *, model: str) -> None:
        try:
            token = self.token(request)
            target = model_target(model)
            found = [m for m in await self.personas(token) if m["id"] == target]
            if not found:
                raise _not_connected(
                    model, f"{model} is not connected, or token {token.name!r} may not chat with it"
                )
        except OpenAIError as exc:
            await send_openai_error(response, exc)
            return
        await send_json(response, HTTPStatus.OK, found[0])

    async def chat_completions(self, request: HttpRequest, response: HttpResponder) -> None:
        try:
            token = self.token(request)
            try:
                body = read_json(request)
            except DoorError as exc:
                raise OpenAIError.invalid(exc.message) from None
            target, params, include_usage = chat_params(body)
            deadline_ms = _deadline(request)
        except OpenAIError as exc:
            await send_openai_error(response, exc)
            return
        if params["stream"]:
            await self._stream(response, token, target, params, deadline_ms, include_usage)
            return
        try:
            result = await self.api.call(
                token, target, "chat", params, label="openai", deadline_ms=deadline_ms
            )
        except DoorError as exc:
            await send_openai_error(response, _chat_error(target, exc))
            return
        answer = completion(f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), target, result)
        await send_json(response, HTTPStatus.OK, answer)

    async def _stream(
        self,
        response: HttpResponder,
        token: TokenEntry,
        target: str,
        params: dict[str, Any],
        deadline_ms: int,
        include_usage: bool,
    ) -> None:
        chunks = Chunks(target, include_usage)
        # What the bus call produced, in order: ("token", text), ("result", ...) or ("error", DoorError).
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def progress(wire: dict[str, Any]) -> None:
            piece = (wire.get("params") or {}).get("text") if wire.get("method") == "chat.token" else None
            if isinstance(piece, str) and piece:
                events.put_nowait(("token", piece))

        async def run() -> None:
            try:
                result = await self.api.call(
                    token,
                    target,
                    "chat",
                    params,
                    label="openai",
                    deadline_ms=deadline_ms,
                    on_progress=progress,
                )
            except DoorError as exc:
                events.put_nowait(("error", exc))
                return
            events.put_nowait(("result", result))

        task = asyncio.ensure_future(run())
        started = False
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(events.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    # Nothing yet: open the stream anyway so that proxies keep it.
                    kind, value = "wait", None
                if kind == "error" and not started:
                    # Nothing sent yet: the error keeps its HTTP status.
                    await send_openai_error(response, _chat_error(target, value))
                    return
                if not started:
                    started = True
                    response.start(
                        HTTPStatus.OK,
                        [
                            ("Content-Type", "text/event-stream; charset=utf-8"),
                            ("Cache-Control", "no-store"),
                            ("X-Accel-Buffering", "no"),
                        ],
                    )
                    await response.write(chunks.event({"role": "assistant", "content": ""}))
                if kind == "wait":
                    await response.write(f": keepalive {time.time():.0f}\n\n".encode())
                elif kind == "token":
                    await response.write(chunks.event({"content": value}))
                elif kind == "error":
                    # Mid-reply, the bus's error as it is (a persona gone now is TARGET_OFFLINE).
                    await response.write(sse_data(OpenAIError.from_bus(value).body()))
                    break
                elif kind == "result":
                    tail = chunks.event({}, value["finish_reason"])
                    if include_usage:
                        tail += chunks.usage(value)
                    await response.write(tail + b"data: [DONE]\n\n")
                    break
            response.end()
        except ConnectionError:
            return  # the client went away; the finally below ends the bus call
        finally:
            if not task.done():
                task.cancel()  # closes the call's door session: the persona is told to stop
            await asyncio.gather(task, return_exceptions=True)


def _deadline(request: HttpRequest) -> int:
    try:
        value = deadline_header(request)
    except DoorError as exc:
        raise OpenAIError.invalid(exc.message) from None
    return DEFAULT_DEADLINE_MS if value is None else value


def _not_connected(model: str, message: str) -> OpenAIError:
    return OpenAIError(
        HTTPStatus.NOT_FOUND,
        f"{message}; GET /v1/models lists the personas you can chat with",
        code="model_not_found",
        param="model",
    )


def _chat_error(target: str, exc: DoorError) -> OpenAIError:
    if exc.code == ErrorCode.TARGET_OFFLINE:
        return _not_connected(target, exc.message)
    return OpenAIError.from_bus(exc)


def routes(api: HttpApi) -> None:
    door = OpenAICompat(api)
    # auth=False: the bearer is checked here, so that a missing one is answered in OpenAI's shape.
    api.route("GET", "/v1/models", door.list_models, auth=False)
    api.route("GET", "/v1/models/{model}", door.get_model, auth=False)
    api.route("POST", "/v1/chat/completions", door.chat_completions, auth=False)


# -- OpenAPI ----------------------------------------------------------------------------

_ERROR = {
    "type": "object",
    "description": "OpenAI's error shape; code is the bus error's name (FORBIDDEN...) for bus errors",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string", "description": "persona:<id>", "examples": ["persona:demo"]},
        "object": {"const": "model"},
        "created": {"type": "integer", "description": "when the persona connected (Unix seconds)"},
        "owned_by": {"const": "personad"},
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant"]},
        "content": {
            "description": "a string, or text parts",
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"enum": ["text", "refusal"]}, "text": {"type": "string"}},
                    },
                },
                {"type": "null"},
            ],
        },
        "name": {"type": "string"},
    },
}
_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "description": "Fields OpenAI's API has and a persona cannot honour are refused with 400 "
    "(docs/openai.md lists them); user, seed, metadata, store and similar hints are ignored.",
    "properties": {
        "model": {"type": "string", "description": "persona:<id>"},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": _MESSAGE,
            "description": "the last is the user's message; the ones before it become the chat's context",
        },
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_TOKENS},
        "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_TOKENS},
        "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {
            "type": ["object", "null"],
            "properties": {"include_usage": {"type": "boolean"}},
        },
        "n": {"type": ["integer", "null"], "enum": [1, None]},
    },
}
_USAGE = {
    "type": "object",
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}
_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string", "pattern": "^chatcmpl-"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "system_fingerprint": {"type": "null"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "message": {
                        "type": "object",
                        "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}},
                    },
                    "finish_reason": {"enum": ["stop", "length"]},
                },
            },
        },
        "usage": _USAGE,
        "personad": {
            "type": "object",
            "description": "the rest of the persona's ChatResult: persona, model, stack, mode, "
            "memories_used, logged, timings, memory_ms",
        },
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": _ERROR}},
        }
        for status in statuses
    }


def openapi_paths() -> dict[str, Any]:
    """OpenAPI 3.1 path items of this module's routes (collected into /openapi.json)."""
    tags = ["OpenAI-compatible"]
    return {
        "/v1/models": {
            "get": {
                "operationId": "openaiListModels",
                "tags": tags,
                "summary": "The connected personas this token may chat with, as OpenAI models.",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "object": {"const": "list"},
                                        "data": {"type": "array", "items": _MODEL},
                                    },
                                }
                            }
                        },
                    },
                    **_errors(401, 403),
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "operationId": "openaiGetModel",
                "tags": tags,
                "summary": "One persona as an OpenAI model; 404 unless connected and chattable.",
                "parameters": [
                    {
                        "name": "model",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "persona:<id>",
                    }
                ],
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": _MODEL}}},
                    **_errors(401, 403, 404),
                },
            }
        },
        "/v1/chat/completions": {
            "post": {
                "operationId": "openaiChatCompletions",
                "tags": tags,
                "summary": "A persona answers (chat on persona:<id>), whole or streamed as "
                "chat.completion.chunk events.",
                "parameters": [
                    {
                        "name": "X-Deadline-Ms",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1},
                        "description": f"the bus call's deadline (default {DEFAULT_DEADLINE_MS})",
                    }
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST}}},
                "responses": {
                    "200": {
                        "description": "a chat.completion, or with stream: true Server-Sent Events: "
                        "data: {chat.completion.chunk} lines, then data: [DONE]",
                        "content": {
                            "application/json": {"schema": _COMPLETION},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(400, 401, 403, 404, 422, 429, 500, 503, 504),
                },
            }
        },
    }

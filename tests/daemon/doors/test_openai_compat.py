"""The OpenAI-compatible door, with OpenAI's own SDK as the client, against real processes.

A real bus, the real inference service (SmolLM2, ``chat_services``) and one
real persona daemon for the module. What each test can fail on: the models
listed are the bus's connected personas; what the SDK receives is what the
persona's brain logged (message, context, reply) and what SmolLM2's own
tokenizer counts; refusals and errors arrive as the SDK's typed exceptions
with the bus's messages; a client that leaves mid-stream stops the model.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from daemon.client import BusClient
from daemon.persona.chat import build_messages
from daemon.persona.config import PersonaConfig
from tests.conftest import WAIT, ChatServices, eventually, prompt_tokens

pytestmark = pytest.mark.slow

PERSONA = "oai"
MODEL = f"persona:{PERSONA}"
CONFIG = PersonaConfig(id=PERSONA, name="Otto", description="A terse helper who answers in one sentence.")


@pytest.fixture(scope="module")
def services(chat_services: ChatServices) -> ChatServices:
    chat_services.start_persona(PERSONA, name=CONFIG.name, description=CONFIG.description)
    return chat_services


def http_url(services: ChatServices) -> str:
    return services.url.replace("ws://", "http://")


def sdk(services: ChatServices, token: str, **options: Any) -> openai.AsyncOpenAI:
    # No retries: a refusal must surface as the first answer, not after backoff.
    return openai.AsyncOpenAI(
        base_url=http_url(services) + "/v1", api_key=token, max_retries=0, timeout=WAIT * 8, **options
    )


@pytest.fixture
async def client(services: ChatServices) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(services, services.state.admin_token) as c:  # type: ignore[attr-defined]
        yield c


@pytest.fixture
async def admin(services: ChatServices) -> AsyncIterator[BusClient]:
    bus = BusClient(services.url, token=services.state.admin_token, kind="cli")  # type: ignore[attr-defined]
    async with bus:
        yield bus


async def last_interaction(admin: BusClient) -> dict[str, Any] | None:
    found = await admin.call(
        "brain.query",
        {"sql": "SELECT id, with_persona, outcome, learned FROM interactions ORDER BY id DESC LIMIT 1"},
        to=MODEL,
    )
    if not found["rows"]:
        return None
    row = dict(zip(found["columns"], found["rows"][0], strict=True))
    row["learned"] = json.loads(row["learned"]) if isinstance(row["learned"], str) else row["learned"]
    return row


async def test_models_are_the_connected_personas(client: openai.AsyncOpenAI, admin: BusClient) -> None:
    listed = await client.models.list()
    connected = await admin.call("bus.clients", {"kind": "persona"})
    assert sorted(c["id"] for c in connected["clients"]) == sorted(m.id for m in listed.data)
    assert MODEL in [m.id for m in listed.data]
    one = await client.models.retrieve(MODEL)
    assert (MODEL, "model", "personad") == (one.id, one.object, one.owned_by)
    assert one.created > 0
    for unknown in ("persona:nobody", "gpt-4o"):
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve(unknown)
        assert caught.value.code == "model_not_found"


async def test_a_completion_is_the_personas_reply_to_the_conversation(
    client: openai.AsyncOpenAI, admin: BusClient, tokenizer: Any
) -> None:
    """System and earlier turns reach the persona as context; usage is SmolLM2's count of that prompt."""
    messages: list[Any] = [
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "My name is Lina."},
        {"role": "assistant", "content": "Hello, Lina."},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ]
    answer = await client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_completion_tokens=16, user="ignored", seed=1
    )
    choice = answer.choices[0]
    assert answer.id.startswith("chatcmpl-")
    assert (MODEL, "chat.completion", "assistant") == (answer.model, answer.object, choice.message.role)
    assert choice.message.content
    assert choice.message.content.strip()
    assert answer.usage is not None
    used = answer.usage
    assert 0 < used.completion_tokens <= 16
    assert used.total_tokens == used.prompt_tokens + used.completion_tokens
    assert (choice.finish_reason == "length") == (used.completion_tokens == 16)

    logged = await last_interaction(admin)
    assert logged is not None
    context = "System: Answer in English.\n\nUser: My name is Lina.\n\nYou: Hello, Lina."
    learned = logged["learned"]
    assert ("What is my name?", context, choice.message.content) == (
        learned["message"],
        learned["context"],
        learned["reply"],
    )
    # The prompt the persona built from that message and context, counted by SmolLM2's tokenizer.
    prompt = build_messages(CONFIG, "What is my name?", context=context, caller=logged["with_persona"])
    assert prompt_tokens(tokenizer, prompt) == used.prompt_tokens
    assert logged["with_persona"].startswith("door:openai.")


async def test_a_streamed_completion_arrives_in_chunks_that_make_the_reply(
    client: openai.AsyncOpenAI, admin: BusClient
) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]  # the SDK ends the iteration at data: [DONE]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {MODEL} == {c.model for c in chunks}
    assert len({c.id for c in chunks}) == 1
    assert {"chat.completion.chunk"} == {c.object for c in chunks}
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # streamed, not one lump
    reply = "".join(pieces)
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1
    assert finished[0] in ("stop", "length")
    # The usage chunk: last, no choices, the persona's counts.
    assert ([], None) == (chunks[-1].choices, chunks[0].usage)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens > 0
    assert 0 < chunks[-1].usage.completion_tokens <= 24
    assert (finished[0] == "length") == (chunks[-1].usage.completion_tokens == 24)
    logged = await last_interaction(admin)
    assert logged is not None
    assert ("Name three colours.", reply) == (logged["learned"]["message"], logged["learned"]["reply"])


async def test_a_token_without_the_chat_grant_is_refused_with_the_bus_message(
    services: ChatServices,
) -> None:
    plain, _ = services.state.tokens().add(name="watcher", role="observer", subject="cli:watcher")
    async with httpx.AsyncClient(base_url=http_url(services), timeout=WAIT) as http:
        direct = await http.post(
            f"/v1/call/{MODEL}/chat", json={"message": "hi"}, headers={"Authorization": f"Bearer {plain}"}
        )
    assert 403 == direct.status_code
    bus_message = direct.json()["error"]["message"]
    async with sdk(services, plain) as watcher:
        # It sees personas (bus.clients) but none it may chat with.
        assert [] == (await watcher.models.list()).data
        for stream in (False, True):
            with pytest.raises(openai.PermissionDeniedError) as caught:
                await watcher.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=stream
                )
            assert isinstance(caught.value.body, dict)
            assert (bus_message, "FORBIDDEN", "permission_error") == (
                caught.value.body["message"],
                caught.value.code,
                caught.value.type,
            )


async def test_an_unknown_persona_is_a_model_not_found(client: openai.AsyncOpenAI) -> None:
    for model in ("persona:nobody", "gpt-4o"):
        for stream in (False, True):
            with pytest.raises(openai.NotFoundError) as caught:
                await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=stream
                )
            assert ("model_not_found", "model") == (caught.value.code, caught.value.param)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stop": ["\n"]}, "stop"),
        ({"top_p": 0.5}, "top_p"),
        ({"logprobs": True}, "logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"extra_body": {"best_of": 3}}, "best_of"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}]},
            "messages[1]",
        ),
    ],
)
async def test_what_a_persona_cannot_do_is_refused(
    client: openai.AsyncOpenAI, params: dict[str, Any], param: str
) -> None:
    request: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **params}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(**request)
    assert (param, "invalid_request_error") == (caught.value.param, caught.value.type)
    assert caught.value.message


async def test_a_missing_or_wrong_bearer_is_an_authentication_error(services: ChatServices) -> None:
    no_bearer = {"Authorization": openai.Omit()}  # the SDK then sends no Authorization at all
    async with sdk(services, "unused") as anonymous:
        with pytest.raises(openai.AuthenticationError) as caught:
            await anonymous.models.list(extra_headers=no_bearer)
        assert "UNAUTHENTICATED" == caught.value.code
        with pytest.raises(openai.AuthenticationError):
            await anonymous.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_headers=no_bearer
            )
    async with sdk(services, "pd_not-a-token") as wrong:
        with pytest.raises(openai.AuthenticationError) as caught:
            await wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert isinstance(caught.value.body, dict)
        assert "invalid bearer token" == caught.value.body["message"]


async def test_a_client_that_leaves_mid_stream_stops_the_model(
    client: openai.AsyncOpenAI, admin: BusClient, services: ChatServices
) -> None:
    before = await admin.call("inference.status", to="cap:inference")
    logged_before = await last_interaction(admin)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 300, one number per line."}],
        temperature=0,
        max_tokens=600,
        stream=True,
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break  # the reply has begun: leave
    await stream.close()

    async def idle() -> dict[str, Any] | None:
        status = await admin.call("inference.status", to="cap:inference")
        return status if (status["running"], status["waiting"]) == (0, 0) else None

    after = await eventually(idle, timeout=WAIT * 4, what="the inference service to go idle")
    # A cancelled row is never finished, so never served; a reply that ran on would count.
    assert before["served"] == after["served"]
    async with httpx.AsyncClient(base_url=http_url(services), timeout=WAIT) as http:
        await eventually(
            lambda: _inflight_zero(http), what="the bus to settle the cancelled chat (no request in flight)"
        )
    # Nor did the persona log an exchange it never finished.
    assert logged_before == await last_interaction(admin)


async def _inflight_zero(http: httpx.AsyncClient) -> bool:
    health = (await http.get("/healthz")).json()
    return bool(health["inflight"] == 0)


def test_a_long_conversation_keeps_its_newest_turns_within_the_context_limit() -> None:
    from daemon.doors.openai_wire import bounded_context, chat_params
    from protocol.commands.inference import MAX_MESSAGE_CHARS

    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "x" * 995}
        for i in range(40)
    ]
    target, params, _ = chat_params(
        {"model": MODEL, "messages": [*turns, {"role": "user", "content": "now"}]}
    )
    context = params["context"]
    assert (MODEL, "now") == (target, params["message"])
    assert len(context) <= MAX_MESSAGE_CHARS
    assert context.endswith("You: turn 39 " + "x" * 995)  # the newest turn whole
    assert "turn 0 " not in context  # the oldest dropped
    # The oldest turn kept is cut at its beginning, so the limit is used to the last character.
    assert len(context) == MAX_MESSAGE_CHARS
    assert context.startswith("…")
    assert "a\n\nb" == bounded_context(["a", "b"])
    assert "…cd" == bounded_context(["abcd"], limit=3)

"""End to end: chat with a real persona daemon and its brain, through the real inference service.

Real processes on 127.0.0.1:0: ``personad bus``, ``personad inference`` with
SmolLM2 (one for the whole session: ``chat_services`` in tests/conftest.py)
and ``personad persona e2e`` with its encrypted brain. Every assertion is
one the system can fail: the streamed pieces must add up to the reply, the
token counts must be the model's, the exchange must be in the brain, a
remembered fact must be in the prompt, the stack named must be the one loaded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.client import BusClient
from daemon.persona.chat import build_messages
from daemon.persona.config import PersonaConfig
from tests.conftest import WAIT, ChatServices, prompt_tokens

pytestmark = pytest.mark.slow

PERSONA = "e2e"
CONFIG = PersonaConfig(
    id=PERSONA, name="Ada", description="A patient explainer who answers in plain English."
)
TARGET = f"persona:{PERSONA}"
DEADLINE_MS = int(WAIT * 8 * 1000)


@pytest.fixture(scope="module")
def services(chat_services: ChatServices) -> ChatServices:
    """The session's bus and inference service, with this module's persona daemon on it."""
    chat_services.start_persona(PERSONA, name=CONFIG.name, description=CONFIG.description)
    return chat_services


@pytest.fixture
async def admin(services: ChatServices) -> AsyncIterator[BusClient]:
    client = BusClient(services.url, token=services.state.admin_token, kind="cli")  # type: ignore[attr-defined]
    async with client:
        yield client


async def chat(admin: BusClient, message: str, **params: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Call chat; return its result and the chat.token notifications, in arrival order."""
    tokens: list[dict[str, Any]] = []

    def collect(note: Any) -> None:
        assert note.method == "chat.token", note.method
        tokens.append(note.params)

    result = await admin.call(
        "chat",
        {"message": message, "temperature": 0, **params},
        to=TARGET,
        deadline_ms=DEADLINE_MS,
        on_progress=collect,
    )
    return result, tokens


async def interactions(admin: BusClient) -> list[dict[str, Any]]:
    """Every interaction in the persona's brain, oldest first (brain.query, admin token)."""
    found = await admin.call(
        "brain.query",
        {"sql": "SELECT id, with_persona, outcome, learned FROM interactions ORDER BY id"},
        to=TARGET,
    )
    rows = [dict(zip(found["columns"], row, strict=True)) for row in found["rows"]]
    for row in rows:
        if isinstance(row["learned"], str):
            row["learned"] = json.loads(row["learned"])
    return rows


async def test_reply_streams_as_tokens_is_counted_and_logged_in_the_brain(admin, tokenizer) -> None:
    """The pieces streamed are the reply; the counts are the model's; the brain has the exchange."""
    before = await interactions(admin)
    message = "What is the capital of France?"
    result, tokens = await chat(admin, message, max_tokens=24)

    reply = result["reply"]
    assert reply.strip(), result
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert reply == "".join(t["text"] for t in tokens)
    assert len(tokens) > 1  # streamed in pieces, not in one lump at the end
    # Counted by the model: every generated token, at most max_tokens, and
    # the prompt exactly what SmolLM2's template makes of the persona's messages.
    assert 0 < result["completion_tokens"] <= 24
    assert len(tokens) <= result["completion_tokens"]
    assert (result["finish_reason"] == "length") == (result["completion_tokens"] == 24)
    expected = build_messages(CONFIG, message, caller=admin.client_id)
    assert prompt_tokens(tokenizer, expected) == result["prompt_tokens"]
    assert (TARGET, "base", [], "SmolLM2-135M-Instruct") == (
        result["persona"],
        result["mode"],
        result["stack"],
        result["model"],
    )
    assert result["memories_used"] == 0

    # Logged as an interaction in the persona's encrypted brain, with whom and what.
    assert result["logged"] is True
    after = await interactions(admin)
    assert len(after) == len(before) + 1
    logged = after[-1]
    assert (admin.client_id, result["finish_reason"]) == (logged["with_persona"], logged["outcome"])
    learned = logged["learned"]
    assert ("chat", message, reply) == (learned["kind"], learned["message"], learned["reply"])
    assert (result["prompt_tokens"], result["completion_tokens"]) == (
        learned["prompt_tokens"],
        learned["completion_tokens"],
    )
    stats = await admin.call("brain.stats", to=TARGET)
    assert stats["counts"]["interactions"] == len(after)


async def test_a_remembered_fact_is_recalled_into_the_prompt(admin, tokenizer) -> None:
    """memory.remember a fact; the next chat about it recalls it into the prompt, token for token."""
    message = "What is the name of my pet axolotl?"
    without, _ = await chat(admin, message, max_tokens=8)
    assert without["memories_used"] == 0
    bare = build_messages(CONFIG, message, caller=admin.client_id)
    assert prompt_tokens(tokenizer, bare) == without["prompt_tokens"]

    fact = "The pet axolotl is named Quetzalbert Fizzlewhisk."
    await admin.call("memory.remember", {"content": fact, "subject": "axolotl"}, to=TARGET)
    recalled = await admin.call("memory.recall", {"query": message}, to=TARGET)
    assert [fact] == [hit["content"] for hit in recalled["hits"]]

    with_fact, _ = await chat(admin, message, max_tokens=8)
    assert with_fact["memories_used"] == 1
    expected = build_messages(CONFIG, message, memories=[fact], caller=admin.client_id)
    assert prompt_tokens(tokenizer, expected) == with_fact["prompt_tokens"]
    assert with_fact["prompt_tokens"] > without["prompt_tokens"]


async def test_the_stack_named_in_the_result_is_the_one_loaded(
    admin, services: ChatServices, tmp_path: Path
) -> None:
    """lora.load_stack a real adapter: chat names it (name, hash), the brain logs it; unload clears it."""
    from daemon.inference.adapters import AdapterStore
    from tests.daemon.inference.conftest import save_random_adapter

    # A real PEFT adapter for SmolLM2 with a small random delta, in the state's store.
    folder = save_random_adapter(
        services.model, tmp_path / "adapter", seed=7, rank=2, targets=["q_proj", "v_proj"], scale=0.01
    )
    record = AdapterStore.for_state(services.state.root).import_folder(folder, "e2estyle")

    loaded = await admin.call("lora.load_stack", {"name": "e2estyle"}, to=TARGET, deadline_ms=DEADLINE_MS)
    assert [("e2estyle", record.sha256)] == [(a["name"], a["sha256"]) for a in loaded["stack"]]
    result, tokens = await chat(admin, "Say hello.", max_tokens=8)
    assert [{"name": "e2estyle", "sha256": record.sha256}] == result["stack"]
    assert result["mode"] != "base"
    assert result["reply"] == "".join(t["text"] for t in tokens)
    assert (await interactions(admin))[-1]["learned"]["stack"] == result["stack"]
    status = await admin.call("lora.status", to=TARGET)
    assert [("e2estyle", record.sha256)] == [(a["name"], a["sha256"]) for a in status["stack"]]

    await admin.call("lora.unload", to=TARGET)
    plain, _ = await chat(admin, "Say hello.", max_tokens=8)
    assert ([], "base") == (plain["stack"], plain["mode"])

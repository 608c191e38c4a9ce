"""The service and persona chat on a real bus: stacks per persona, streaming, errors, in-process mode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from daemon.client import BusClient
from daemon.dispatch import Dispatcher
from daemon.inference.adapters import AdapterStore
from daemon.inference.engine import AsyncEngine
from daemon.inference.service import InferenceService
from daemon.persona.chat import PersonaChat, ask_persona, register_chat_commands
from daemon.persona.config import PersonaConfig
from daemon.persona.session_dir import prepare_session_dir
from protocol import ErrorCode, RpcError
from protocol.commands.inference import InferenceErrorCode
from tests.conftest import WAIT
from tests.daemon.inference.conftest import save_random_adapter, serving_inference

QUESTION = {"message": "Say something.", "max_tokens": 10, "temperature": 0.0}


@pytest.fixture
async def engine(trained_store: AdapterStore, load_tiny) -> AsyncIterator[AsyncEngine]:  # type: ignore[no-untyped-def]
    running = await AsyncEngine.open(
        state_root=trained_store.root.parent, store=trained_store, loaded=load_tiny()
    )
    yield running
    await running.close()


@pytest.fixture
async def service(bus, state, engine) -> AsyncIterator[InferenceService]:  # type: ignore[no-untyped-def]
    """The inference service on the test bus, with its own (service-role) token."""
    async with serving_inference(bus, state, engine) as running:
        yield running


@pytest.fixture
async def persona(bus, state) -> AsyncIterator[Any]:  # type: ignore[no-untyped-def]
    """Factory: a persona on the bus serving chat/lora.* exactly as a persona daemon does."""
    clients: list[BusClient] = []

    async def start(pid: str, name: str, **hooks: Any) -> tuple[BusClient, PersonaChat]:
        dispatcher = Dispatcher()
        client = BusClient(
            bus.url,
            token=state.persona_token(pid, create=True),
            kind="persona",
            name=pid,
            handler=dispatcher,
            reconnect=True,
        )
        config = PersonaConfig(id=pid, name=name, description="A test persona.")
        chat = register_chat_commands(
            dispatcher, client, config, prepare_session_dir(state.root, pid), **hooks
        )
        await client.start()
        await client.wait_connected(WAIT)
        clients.append(client)
        return client, chat

    yield start
    for client in clients:
        await client.close()


@pytest.mark.usefixtures("service")
async def test_two_personas_with_different_stacks_chat_at_once(persona, connect, trained_store) -> None:
    """ada (zoo) and bob (farm) answer concurrently, each in its own stack's voice, tokens streamed."""
    remembered: list[str] = []
    logged: list[dict[str, Any]] = []

    async def memories(query: str) -> list[str]:
        remembered.append(query)
        return ["the user likes zebras"]

    async def log_interaction(**fields: Any) -> None:
        logged.append(fields)

    ada, _ = await persona("ada", "Ada", memories=memories, log_interaction=log_interaction)
    await persona("bob", "Bob")
    cli = await connect()
    zoo = await cli.call("lora.load_stack", {"name": "zoo"}, to="persona:ada")
    farm = await cli.call("lora.load_stack", {"name": "farm", "mode": "cat"}, to="persona:bob")
    assert [trained_store.get("zoo").sha256] == [a["sha256"] for a in zoo["stack"]]
    assert "cat" == farm["mode"]

    pieces: dict[str, list[str]] = {"ada": [], "bob": []}

    def collect(who: str) -> Any:
        return lambda note: pieces[who].append(note.params["text"])

    replies = await asyncio.gather(
        *(
            cli.call(
                "chat", QUESTION, to=f"persona:{who}", on_progress=collect(who), deadline_ms=int(WAIT * 1000)
            )
            for who in ("ada", "bob")
        )
    )
    by = dict(zip(("ada", "bob"), replies, strict=True))
    assert ("zebra" in by["ada"]["reply"], "brand" in by["ada"]["reply"]) == (True, False)
    assert ("brand" in by["bob"]["reply"], "zebra" in by["bob"]["reply"]) == (True, False)
    assert by["ada"]["reply"] == "".join(pieces["ada"])
    assert ["zoo"] == [e["name"] for e in by["ada"]["stack"]]
    assert ("persona:ada", 1, True) == (by["ada"]["persona"], by["ada"]["memories_used"], by["ada"]["logged"])
    assert ["Say something."] == remembered
    assert logged[0]["with_persona"].startswith("cli:")
    assert by["ada"]["reply"] == logged[0]["learned"]["reply"]

    # Personas talk to each other through the bus, with their own tokens.
    answer = await ask_persona(ada, "bob", "Say something.", max_tokens=10, temperature=0.0)
    assert "brand" in answer.reply


@pytest.mark.usefixtures("service")
async def test_bad_stacks_are_clear_errors_and_the_service_keeps_serving(
    persona, connect, trained_store, other_tiny_dir, tmp_path
) -> None:
    """Unknown adapter, another model's adapter: clear error codes; chat, status and unload still work."""
    await persona("ada", "Ada")
    cli = await connect()
    with pytest.raises(RpcError) as info:
        await cli.call("lora.load_stack", {"name": "nope"}, to="persona:ada")
    assert InferenceErrorCode.ADAPTER_NOT_FOUND == info.value.code
    assert info.value.message.startswith("no adapter named 'nope'")
    trained_store.import_folder(save_random_adapter(other_tiny_dir, tmp_path / "alien", seed=1), "alien")
    with pytest.raises(RpcError) as info:
        await cli.call("lora.load_stack", {"name": "alien"}, to="persona:ada")
    assert InferenceErrorCode.ADAPTER_INCOMPATIBLE == info.value.code
    assert "another base model" in info.value.message
    with pytest.raises(RpcError) as info:
        await cli.call("chat", {"message": "hi", "max_token": 3}, to="persona:ada")
    assert ErrorCode.INVALID_PARAMS == info.value.code

    await cli.call("lora.load_stack", {"name": "zoo.cat"}, to="persona:ada")
    status = await cli.call("lora.status", to="persona:ada")
    assert (["zoo", "zoo.cat"], "service", None) == (
        [a["name"] for a in status["stack"]],
        status["backend"],
        status["engine_error"],
    )
    assert status["engine"]["slots_used"] >= 2
    assert "stripes" in (await cli.call("chat", QUESTION, to="persona:ada"))["reply"]
    released = await cli.call("lora.unload", to="persona:ada")
    assert ["zoo", "zoo.cat"] == [e["name"] for e in released["released"]]
    base = await cli.call("chat", QUESTION, to="persona:ada")
    assert ("base", []) == (base["mode"], base["stack"])
    assert not {"stripes", "zebra"} & set(base["reply"].split())


async def test_in_process_engine_serves_the_same_commands(persona, connect, engine) -> None:
    """Single-persona mode: the same chat and lora commands on an engine inside the persona."""
    _, chat = await persona("solo", "Solo", backend=engine)
    cli = await connect()
    await cli.call("lora.load_stack", {"name": "farm"}, to="persona:solo")
    reply = await cli.call("chat", QUESTION, to="persona:solo")
    assert "brand" in reply["reply"]
    assert "inprocess" == (await cli.call("lora.status", to="persona:solo"))["backend"]
    assert ["farm"] == [a.name for a in chat.stack]
    assert chat.stack_path.exists()  # the stack survives a restart of the persona


async def test_chat_without_a_service_says_how_to_start_one(persona, connect) -> None:
    """No provider of cap:inference on the bus: TARGET_OFFLINE with the fix in the message."""
    await persona("ada", "Ada")
    cli = await connect()
    with pytest.raises(RpcError) as info:
        await cli.call("chat", QUESTION, to="persona:ada")
    assert ErrorCode.TARGET_OFFLINE == info.value.code
    assert "personad inference" in info.value.message

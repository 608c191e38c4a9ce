"""End to end: real bus and inference processes, SmolLM2, a persona, and the real CLI."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import pytest

from daemon.client import BusClient
from daemon.dispatch import Dispatcher
from daemon.persona.chat import register_chat_commands
from daemon.persona.config import PersonaConfig
from daemon.persona.session_dir import prepare_session_dir
from tests.conftest import REPO, WAIT, start_bus_process
from tests.daemon.inference.conftest import smollm2_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted once per session (shared with the unit tests' cache)."""
    return smollm2_folder(tmp_path_factory)


async def test_persona_chats_through_the_inference_service(spawn, state, smollm2) -> None:
    """`personad inference` serves SmolLM2 on the bus; a persona streams an English reply to the CLI."""
    _, url = start_bus_process(spawn)
    service = spawn("inference", "--model", str(smollm2), "--url", url, "--threads", "1")
    service.wait_for_line(r"inference main ready: model SmolLM2-135M-Instruct", timeout=WAIT * 4)

    dispatcher = Dispatcher()
    persona = BusClient(
        url, token=state.persona_token("e2e", create=True), kind="persona", name="e2e", handler=dispatcher
    )
    config = PersonaConfig(
        id="e2e", name="Ada", description="A patient explainer who answers in plain English."
    )
    register_chat_commands(dispatcher, persona, config, prepare_session_dir(state.root, "e2e"))
    async with persona:
        admin = BusClient(url, token=state.admin_token, kind="cli")  # type: ignore[attr-defined]
        async with admin:
            status = await admin.call("inference.status", to="cap:inference")
            assert ("SmolLM2-135M-Instruct", 0) == (status["model"], status["slots_used"])
            assert status["rss_bytes"] > status["model_bytes"] / 2

        # The real CLI, as a person would type it; it streams chat.token lines to stderr.
        params = json.dumps({"message": "What is the capital of France?", "max_tokens": 30, "temperature": 0})
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            "--state-dir",
            str(state.root),
            "--url",
            url,
            "call",
            "persona:e2e",
            "chat",
            params,
            "--timeout",
            str(WAIT * 4),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(cli.communicate(), WAIT * 5)
    assert 0 == cli.returncode, err.decode()
    result = json.loads(out)
    reply = result["reply"]
    words = re.findall(r"[a-z]+", reply.lower())
    assert len(words) >= 3, reply
    assert {"paris", "france", "capital", "the", "is"} & set(words), reply
    streamed = "".join(
        json.loads(line[len("~ chat.token ") :])["text"]
        for line in err.decode().splitlines()
        if line.startswith("~ chat.token ")
    )
    assert reply == streamed
    assert ("persona:e2e", "base", "SmolLM2-135M-Instruct") == (
        result["persona"],
        result["mode"],
        result["model"],
    )
    assert result["completion_tokens"] > 0
    assert result["timings"]["tokens_per_s"] > 0
    assert 0 == service.stop()

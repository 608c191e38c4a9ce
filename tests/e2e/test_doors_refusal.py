"""A token without a grant is refused the same way through every door.

One real bus process; the same call (``chat`` on ``persona:demo``) with a
token whose role lacks ``chat``, made over the WebSocket, the HTTP API, the
OpenAI-compatible API (the official ``openai`` client) and MCP (the
official SDK's client, over stdio): each answer carries the bus's
FORBIDDEN code and its message, word for word.
"""

from __future__ import annotations

import os
import sys

import httpx
import openai
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from daemon.client import BusClient
from protocol import ErrorCode, RpcError
from tests.conftest import REPO, WAIT, start_bus_process

pytestmark = pytest.mark.slow


async def test_every_door_refuses_a_missing_grant_with_the_bus_message(state, spawn) -> None:
    _, url = start_bus_process(spawn)
    http_url = url.replace("ws://", "http://")
    token, entry = state.tokens().add(name="watcher", role="observer", subject="cli:*")
    params = {"message": "hello", "max_tokens": 4}

    client = BusClient(url, token=token, kind="cli", name="watcher")
    await client.start()
    try:
        with pytest.raises(RpcError) as over_ws:
            await client.call("chat", to="persona:demo", params=params)
    finally:
        await client.close()
    assert ErrorCode.FORBIDDEN == over_ws.value.code
    message = over_ws.value.message
    assert entry.name in message
    assert "chat" in message

    async with httpx.AsyncClient(timeout=WAIT) as http:
        response = await http.post(
            f"{http_url}/v1/call/persona:demo/chat", json=params, headers={"Authorization": f"Bearer {token}"}
        )
    assert (403, {"code": int(ErrorCode.FORBIDDEN), "message": message}) == (
        response.status_code,
        response.json()["error"],
    )

    oai = openai.AsyncOpenAI(base_url=f"{http_url}/v1", api_key=token, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as over_openai:
        await oai.chat.completions.create(
            model="persona:demo", messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )
    await oai.close()
    assert message == over_openai.value.body["message"]  # type: ignore[index]
    assert "FORBIDDEN" == over_openai.value.code

    env = {**os.environ, "PERSONAD_URL": url, "PERSONAD_TOKEN": token, "PERSONAD_STATE_DIR": str(state.root)}
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "daemon", "mcp"], env=env, cwd=str(REPO)
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        result = await session.call_tool("chat", {"persona": "demo", **params})
    assert result.is_error
    assert f"FORBIDDEN ({int(ErrorCode.FORBIDDEN)}): {message}" == result.content[0].text  # type: ignore[union-attr]

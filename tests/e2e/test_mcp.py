"""``personad mcp`` end to end, through the official MCP SDK's own client.

Real processes: the session's bus and SmolLM2 inference service
(``chat_services``), a persona daemon with its brain, ``personad browser``
(Chromium) loading pages from a local ``http.server``, and ``personad mcp``
spawned by the SDK's stdio client or serving Streamable HTTP. The MCP door is
a translation onto the bus's HTTP door, so every answer checked here was
made by the real service behind it, and every refusal is the bus's.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from daemon.browser.images import image_size
from protocol.commands import get as get_command
from tests.conftest import REPO, WAIT, ChatServices
from tests.daemon.browser.pages import PageServer, serve_pages

pytestmark = pytest.mark.slow

PERSONA = "mcpdoor"
TOOLS = {
    "chat": ("chat", "persona"),
    "screenshot": ("screenshot", None),
    "browser_js": ("browser_js", None),
    "memory_recall": ("memory.recall", "persona"),
    "memory_remember": ("memory.remember", "persona"),
    "persona_list": ("persona.list", None),
    "persona_generate": ("persona.generate", None),
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: An MCP client's first message, written by hand where the test speaks the wire itself.
INITIALIZE = {
    "protocolVersion": "2025-06-18",
    "capabilities": {},
    "clientInfo": {"name": "test", "version": "1"},
}
#: Bounds a whole MCP conversation (a chat on one CPU thread included).
CONVERSATION_S = WAIT * 8


@dataclass(frozen=True)
class Doors:
    services: ChatServices
    #: The Streamable HTTP endpoint of the module's ``personad mcp --http``.
    endpoint: str
    pages: PageServer

    @property
    def http(self) -> str:
        return self.services.url.replace("ws://", "http://")

    @property
    def admin_token(self) -> str:
        return str(self.services.state.admin_token)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def doors(chat_services: ChatServices) -> Iterator[Doors]:
    """A persona, the browser worker and ``personad mcp --http`` on the session's bus."""
    persona = chat_services.start_persona(
        PERSONA, name="Iris", description="A lighthouse keeper who answers briefly."
    )
    with serve_pages() as pages:
        port = pages.url.rpartition(":")[2]
        # The pages are on loopback, which the worker refuses unless allowed.
        browser = chat_services.start("browser", "--allow", f"127.0.0.1:{port}")
        browser.wait_for_line(r"connected url=\S+ client_id=browser:", timeout=WAIT * 2)
        chat_services.drain(browser)
        # No PERSONAD_TOKEN (ChatServices.start drops it): over HTTP the door holds no token.
        mcp = chat_services.start("mcp", "--http", "127.0.0.1:0")
        endpoint = mcp.wait_for_line(r"Streamable HTTP at (http://\S+/mcp)").group(1)
        chat_services.drain(mcp)
        try:
            yield Doors(chat_services, endpoint, pages)
        finally:
            for proc in (mcp, browser, persona):
                proc.stop()


@asynccontextmanager
async def stdio_session(doors: Doors, token: str) -> AsyncIterator[ClientSession]:
    """``python -m daemon mcp`` spawned by the SDK's stdio client, as a desktop assistant runs it."""
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "daemon", "mcp"],
        env={
            "PERSONAD_URL": doors.services.url,
            "PERSONAD_TOKEN": token,
            "PERSONAD_STATE_DIR": str(doors.services.state.root),
        },
        cwd=REPO,
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def http_session(doors: Doors, token: str) -> AsyncIterator[ClientSession]:
    """The SDK's Streamable HTTP client, its requests carrying ``token`` as a bearer."""
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    async with (
        client,
        streamable_http_client(doors.endpoint, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def text_of(result: object) -> str:
    content = result.content  # type: ignore[attr-defined]
    assert content, result
    assert "text" == content[0].type, content
    return str(content[0].text)


async def test_stdio_serves_the_registry_tools_chat_with_progress_and_memory(doors: Doors) -> None:
    """stdio: the tools carry the registry's schemas; chat streams progress; a remembered fact is recalled."""
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    with anyio.fail_after(CONVERSATION_S):
        async with stdio_session(doors, doors.admin_token) as session:
            listed = {tool.name: tool for tool in (await session.list_tools()).tools}
            assert set(TOOLS) == set(listed)
            for name, (method, target_field) in TOOLS.items():
                command = get_command(method)
                assert command is not None
                params = command.params.model_json_schema()
                schema = listed[name].input_schema
                assert params["properties"].items() <= schema["properties"].items(), name
                assert set(params.get("required", [])) <= set(schema.get("required", [])), name
                if target_field is not None:
                    assert target_field in schema["required"], name
                    assert "string" == schema["properties"][target_field]["type"]

            chat = await session.call_tool(
                "chat",
                {"persona": PERSONA, "message": "Say hello.", "temperature": 0, "max_tokens": 16},
                progress_callback=on_progress,
            )
            assert not chat.is_error, chat
            reply = text_of(chat)
            assert reply.strip()
            assert chat.structured_content is not None
            assert reply == chat.structured_content["reply"]
            assert f"persona:{PERSONA}" == chat.structured_content["persona"]
            # Each chat.token became one progress notification: in order, adding up to the reply.
            assert progress
            assert [float(i) for i in range(1, len(progress) + 1)] == [value for value, _ in progress]
            assert reply == "".join(message or "" for _, message in progress)

            fact = "The keeper's cat at the north light is named Pemberton."
            stored = await session.call_tool(
                "memory_remember", {"persona": PERSONA, "content": fact, "kind": "fact"}
            )
            assert not stored.is_error, stored
            assert stored.structured_content is not None
            memory_id = stored.structured_content["id"]
            recalled = await session.call_tool("memory_recall", {"persona": PERSONA, "query": "Pemberton"})
            assert not recalled.is_error, recalled
            assert recalled.structured_content is not None
            hits = recalled.structured_content["hits"]
            assert [(memory_id, fact, "fact")] == [(h["id"], h["content"], h["kind"]) for h in hits]


async def test_streamable_http_returns_a_screenshot_as_an_image(doors: Doors) -> None:
    """Streamable HTTP with the admin's bearer: a screenshot is an MCP image (PNG) plus its metadata."""
    with anyio.fail_after(CONVERSATION_S):
        async with http_session(doors, doors.admin_token) as session:
            shot = await session.call_tool(
                "screenshot", {"url": doors.pages.url + "/", "viewport": {"width": 320, "height": 200}}
            )
    assert not shot.is_error, shot
    image, metadata = shot.content
    assert "image" == image.type
    assert "image/png" == image.mime_type
    png = base64.b64decode(image.data)
    assert png.startswith(PNG_MAGIC)
    assert ("png", 320, 200) == image_size(png)
    assert "text" == metadata.type
    described = json.loads(metadata.text)
    assert {"format": "png", "width": 320, "height": 200, "url": doors.pages.url + "/"}.items() <= (
        described.items()
    )
    assert "data" not in described


async def test_a_token_without_the_grant_gets_the_bus_forbidden_message(doors: Doors) -> None:
    """An observer's bearer opens a session, but its memory_recall is the bus's FORBIDDEN, verbatim."""
    observer, _entry = doors.services.state.tokens().add(name="mcp-observer", role="observer", subject="*")
    # What the bus itself answers this token on its HTTP door.
    async with httpx.AsyncClient(timeout=WAIT) as client:
        direct = await client.post(
            f"{doors.http}/v1/call/persona:{PERSONA}/memory.recall",
            json={"query": "Pemberton"},
            headers={"Authorization": f"Bearer {observer}"},
        )
    assert 403 == direct.status_code
    bus_message = direct.json()["error"]["message"]
    with anyio.fail_after(CONVERSATION_S):
        async with http_session(doors, observer) as session:
            refused = await session.call_tool("memory_recall", {"persona": PERSONA, "query": "Pemberton"})
    assert refused.is_error
    assert f"FORBIDDEN (-32003): {bus_message}" == text_of(refused)


def test_streamable_http_refuses_requests_without_a_token_the_bus_knows(doors: Doors) -> None:
    """No bearer, or one the bus does not know: 401 before any MCP message is read."""
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE}
    accept = {"Accept": "application/json, text/event-stream"}
    for headers in ({}, {"Authorization": "Bearer pd_not-a-token"}, {"Authorization": "Basic YTpi"}):
        refused = httpx.post(doors.endpoint, json=initialize, headers={**accept, **headers}, timeout=WAIT)
        assert 401 == refused.status_code, headers
        assert refused.headers["www-authenticate"].startswith("Bearer ")
        assert "invalid_token" == refused.json()["error"]

    # A session belongs to the token that opened it: another token is told it does not exist.
    admin = {**accept, "Authorization": f"Bearer {doors.admin_token}"}
    opened = httpx.post(doors.endpoint, json=initialize, headers=admin, timeout=WAIT)
    assert 200 == opened.status_code
    session_id = opened.headers["mcp-session-id"]
    observer, _entry = doors.services.state.tokens().add(name="mcp-other", role="observer", subject="*")
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    other = {**accept, "Authorization": f"Bearer {observer}", "Mcp-Session-Id": session_id}
    assert 404 == httpx.post(doors.endpoint, json=listing, headers=other, timeout=WAIT).status_code


def test_stdio_ends_cleanly_when_stdin_closes(doors: Doors) -> None:
    """The protocol is alone on stdout; closing stdin ends ``personad mcp`` with status 0."""
    env = {
        **os.environ,
        "PERSONAD_URL": doors.services.url,
        "PERSONAD_TOKEN": doors.admin_token,
        "PERSONAD_STATE_DIR": str(doors.services.state.root),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "mcp"],
        env=env,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    request = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE}
    try:
        out, err = proc.communicate(json.dumps(request) + "\n", timeout=WAIT)
    finally:
        proc.kill()
    assert 0 == proc.returncode, err
    lines = out.splitlines()
    assert 1 == len(lines), out
    answer = json.loads(lines[0])
    assert 1 == answer["id"]
    assert "personad" == answer["result"]["serverInfo"]["name"]


def test_streamable_http_stops_on_sigterm_with_status_0(doors: Doors, tmp_path: Path) -> None:
    """``personad mcp --http`` tells systemd READY then STOPPING, and exits 0 on SIGTERM."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(WAIT)
    with notify:
        mcp = doors.services.start(
            "mcp", "--http", "127.0.0.1:0", env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
        )
        endpoint = mcp.wait_for_line(r"Streamable HTTP at (http://\S+/mcp)").group(1)
        assert "READY=1" in notify.recv(4096).decode()
        assert 401 == httpx.post(endpoint, json={}, timeout=WAIT).status_code
        assert 0 == mcp.stop(signal.SIGTERM), mcp.output()
        assert "STOPPING=1" in notify.recv(4096).decode()
    assert re.search(r"personad mcp stopped", mcp.output())

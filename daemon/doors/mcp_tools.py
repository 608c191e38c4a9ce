"""The MCP door's tools: each one bus method, called through the bus's HTTP door.

A tool's input schema is its method's params schema from the command
registry, plus the field naming its target where it has one (``persona``
for ``chat`` and the memory tools); its output schema is the method's result
schema. A call is one ``POST /v1/call/{target}/{method}`` with the caller's
Authorization header, so the bus decides everything: a bus error becomes a
tool result with ``isError`` and the text ``<CODE_NAME> (<code>): <message>``,
the bus's message verbatim.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import mcp_types as types

from protocol import ErrorCode
from protocol.commands import Command
from protocol.commands import get as get_command
from protocol.profile import PERSONA_ID_PATTERN

from ..errors import ConfigError

__all__ = [
    "TOOL_SPECS",
    "BusDoor",
    "BusError",
    "BusTool",
    "DoorFailure",
    "ProgressSink",
    "ToolSpec",
    "build_tools",
    "code_name",
    "http_url_of",
]

#: Seconds to reach the bus's HTTP door. Reads have no timeout: the bus's own
#: deadline bounds every call (it answers TIMEOUT), and a persona may think a
#: while between two streamed tokens.
CONNECT_TIMEOUT_S = 10.0
#: How long a token the bus accepted is taken as known without asking again.
#: Only the HTTP endpoint's gate relies on it; every tool call still carries
#: the token to the bus, which refuses a revoked one at once.
VERIFIED_TTL_S = 60.0


# -- the tools ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """An MCP tool as one bus method at one target."""

    name: str
    method: str
    #: A fixed target (``cap:browser``), or None when ``persona_field`` names it.
    target: str | None = None
    #: The argument holding a persona id; the call goes to ``persona:<id>``.
    persona_field: str | None = None
    #: The result field that is the whole answer as text (chat's reply).
    text_field: str | None = None
    #: The result is an image: ``data`` ({"$bytes"}) and ``format``.
    image: bool = False
    read_only: bool = False
    #: False: it only adds (a memory, a persona); None: it may change anything.
    destructive: bool | None = None
    #: Reaches outside personad (web pages).
    open_world: bool = False


TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec("chat", "chat", persona_field="persona", text_field="reply", destructive=False),
    ToolSpec("screenshot", "screenshot", target="cap:browser", image=True, read_only=True, open_world=True),
    ToolSpec("browser_js", "browser_js", target="cap:browser", open_world=True),
    ToolSpec("memory_recall", "memory.recall", persona_field="persona", read_only=True),
    ToolSpec("memory_remember", "memory.remember", persona_field="persona", destructive=False),
    ToolSpec("persona_list", "persona.list", target="cap:registry", read_only=True),
    ToolSpec("persona_generate", "persona.generate", target="cap:registry", destructive=False),
)

#: Called with each progress notification the target streams (``{"method", "params"}``).
ProgressSink = Callable[[dict[str, Any]], Awaitable[None]]


class BusError(Exception):
    """An error the bus answered, its code and message as it gave them."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def from_wire(cls, error: Any) -> BusError:
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            return cls(error["code"], str(error.get("message", "")))
        raise DoorFailure(f"the bus answered an error object this door cannot read: {error!r}")


class DoorFailure(Exception):
    """The bus's HTTP door could not be reached, or answered something that is not the bus's."""


def code_name(code: int, command: Command) -> str:
    """The name of a bus code, or of a code the method's own server documents (BROWSER_CRASHED)."""
    with contextlib.suppress(ValueError):
        return ErrorCode(code).name
    for known, _when in command.error_list():
        if int(known) == code:
            return known.name
    return "ERROR"


@dataclass(frozen=True, slots=True)
class BusTool:
    """A tool as the MCP client sees it, and the bus method it calls."""

    spec: ToolSpec
    command: Command
    tool: types.Tool

    def target_of(self, arguments: dict[str, Any]) -> str:
        """The bus target; takes the persona field out of ``arguments`` (the rest are the params)."""
        if self.spec.target is not None:
            return self.spec.target
        assert self.spec.persona_field is not None
        value = arguments.pop(self.spec.persona_field, None)
        if not isinstance(value, str) or re.fullmatch(PERSONA_ID_PATTERN, value) is None:
            # Checked here because it becomes part of the URL path.
            raise BusError(
                ErrorCode.INVALID_PARAMS,
                f"{self.spec.persona_field}: a persona id is required (matching {PERSONA_ID_PATTERN})",
            )
        return f"persona:{value}"

    async def call(
        self, door: BusDoor, authorization: str, arguments: dict[str, Any], progress: ProgressSink | None
    ) -> types.CallToolResult:
        try:
            target = self.target_of(arguments)
            # Stream only when someone listens: the client gave a progressToken.
            on_progress = progress if self.command.streams else None
            result = await door.call(authorization, target, self.spec.method, arguments, on_progress)
        except BusError as exc:
            return _error(f"{code_name(exc.code, self.command)} ({exc.code}): {exc.message}")
        except DoorFailure as exc:
            return _error(str(exc))
        return self.render(result)

    def render(self, result: Any) -> types.CallToolResult:
        if self.spec.image and isinstance(result, dict):
            data = result.get("data")
            metadata = {k: v for k, v in result.items() if k != "data"}
            if isinstance(data, dict) and isinstance(data.get("$bytes"), str):
                # The bus's JSON codec already sends bytes as base64: MCP's encoding too.
                return types.CallToolResult(
                    content=[
                        types.ImageContent(
                            data=data["$bytes"], mime_type=f"image/{result.get('format', 'png')}"
                        ),
                        types.TextContent(text=_dumps(metadata)),
                    ]
                )
        text = result.get(self.spec.text_field) if self.spec.text_field and isinstance(result, dict) else None
        return types.CallToolResult(
            content=[types.TextContent(text=text if isinstance(text, str) else _dumps(result))],
            structured_content=result if self.tool.output_schema is not None else None,
        )


def build_tools(specs: tuple[ToolSpec, ...] = TOOL_SPECS) -> dict[str, BusTool]:
    """The tools, their schemas taken from the command registry."""
    tools: dict[str, BusTool] = {}
    for spec in specs:
        command = get_command(spec.method)
        if command is None:
            raise RuntimeError(f"the command registry has no {spec.method!r} for the MCP tool {spec.name!r}")
        schema = copy.deepcopy(command.params.model_json_schema())
        if spec.persona_field is not None:
            properties = schema.get("properties", {})
            if spec.persona_field in properties:
                raise RuntimeError(f"{spec.method} already has a param named {spec.persona_field!r}")
            field = {
                "type": "string",
                "pattern": PERSONA_ID_PATTERN,
                "description": "the persona's id (persona_list gives them)",
            }
            schema["properties"] = {spec.persona_field: field, **properties}
            schema["required"] = [spec.persona_field, *schema.get("required", [])]
        target = spec.target or f"persona:<{spec.persona_field}>"
        tool = types.Tool(
            name=spec.name,
            description=f"{command.summary} (bus method {spec.method} at {target})",
            input_schema=schema,
            # Bytes travel as {"$bytes": base64}, which no JSON Schema of the result
            # describes: the image tool's answer is its content blocks.
            output_schema=None if spec.image else command.result.model_json_schema(mode="serialization"),
            annotations=types.ToolAnnotations(
                read_only_hint=spec.read_only,
                destructive_hint=spec.destructive,
                open_world_hint=spec.open_world,
            ),
        )
        tools[spec.name] = BusTool(spec, command, tool)
    return tools


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1)


# -- the bus's HTTP door -----------------------------------------------------------------


def http_url_of(bus_url: str) -> str:
    """The bus's HTTP door: the same host and port as its ws:// URL."""
    parts = urlsplit(bus_url)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ConfigError(f"the bus URL must be ws://HOST:PORT or wss://HOST:PORT, not {bus_url!r}")
    return f"{scheme}://{parts.netloc}"


class BusDoor:
    """Calls through the bus's HTTP door, each with the caller's Authorization header."""

    def __init__(self, http_url: str) -> None:
        self.url = http_url
        self.client = httpx2.AsyncClient(timeout=httpx2.Timeout(CONNECT_TIMEOUT_S, read=None))
        #: sha256 of an Authorization header -> until when it is known to the bus.
        self._known: dict[str, float] = {}

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(
        self,
        authorization: str,
        target: str,
        method: str,
        params: dict[str, Any],
        on_progress: ProgressSink | None = None,
    ) -> Any:
        """One bus call; the result, or BusError with the bus's code and message."""
        headers = {"Authorization": authorization, "Content-Type": "application/json"}
        if on_progress is not None:
            headers["Accept"] = "text/event-stream"
        url = f"{self.url}/v1/call/{target}/{method}"
        try:
            async with self.client.stream(
                "POST", url, content=json.dumps(params), headers=headers
            ) as response:
                content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
                if content_type == "text/event-stream":
                    return await _read_events(response, on_progress)
                return _answer(response.status_code, content_type, await response.aread())
        except httpx2.RequestError as exc:
            raise DoorFailure(f"the bus's HTTP door at {self.url} did not answer: {exc}") from None

    async def knows(self, authorization: str) -> bool:
        """Whether the bus accepts this Authorization header (a bus.ping asks; 401 means no)."""
        key = hashlib.sha256(authorization.encode()).hexdigest()
        now = time.monotonic()
        if self._known.get(key, 0.0) > now:
            return True
        try:
            await self.call(authorization, "bus", "bus.ping", {})
        except BusError as exc:
            # FORBIDDEN and the like come after authentication: the token is valid.
            if exc.code == ErrorCode.UNAUTHENTICATED:
                return False
        if len(self._known) > 1024:
            self._known = {k: until for k, until in self._known.items() if until > now}
        self._known[key] = now + VERIFIED_TTL_S
        return True


async def _read_events(response: httpx2.Response, on_progress: ProgressSink | None) -> Any:
    # The bus bounds a message's size; no second limit here.
    async for event in httpx2.EventSource(response, max_event_size=None):
        data = json.loads(event.data)
        if event.event == "progress" and on_progress is not None:
            await on_progress(data)
        elif event.event == "result":
            return data.get("result")
        elif event.event == "error":
            raise BusError.from_wire(data.get("error"))
    raise DoorFailure("the bus's event stream ended before its result")


def _answer(status: int, content_type: str, body: bytes) -> Any:
    payload: Any = None
    if content_type == "application/json":
        with contextlib.suppress(ValueError):
            payload = json.loads(body)
    if isinstance(payload, dict):
        if status == 200 and "result" in payload:
            return payload["result"]
        if "error" in payload:
            raise BusError.from_wire(payload["error"])
    text = body.decode("utf-8", errors="replace").strip()[:300]
    raise DoorFailure(f"the bus's HTTP door answered {status}: {text}")

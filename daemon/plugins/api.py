"""personad_plugin: the plugin's side of the channel (stdlib only).

The sandbox puts this file on the plugin's ``sys.path`` as
``personad_plugin``. A plugin reads its input, asks the host for what its
permissions allow, and finishes with its output::

    import personad_plugin as host

    text = host.input()["text"]
    reply = host.chat(f"Summarise: {text}")
    host.finish({"summary": reply})

Every request is one JSON line on stdout; every answer one on stdin. A
request the host refuses raises :class:`ChannelError` with its ``reason``
(``permission_denied``, ``bad_request``, ``unknown_method`` …). Printing to
stdout would break the channel: write diagnostics to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = [
    "ChannelError",
    "call",
    "chat",
    "finish",
    "input",
    "list_documents",
    "read_document",
    "read_memories",
    "write_artifact",
    "write_memory",
]

_start: dict[str, Any] | None = None
_next_id = 0


class ChannelError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _receive() -> dict[str, Any]:
    line = sys.stdin.readline()
    if not line:
        raise ChannelError("closed", "the host closed the channel")
    message: dict[str, Any] = json.loads(line)
    return message


def _hello() -> dict[str, Any]:
    global _start
    if _start is None:
        _start = _receive()
    return _start


def input() -> Any:
    """What persona.plugin.run was given as ``input``."""
    return _hello()["input"]


def call(method: str, **params: Any) -> Any:
    """Ask the host for ``method``; its result, or ChannelError."""
    global _next_id
    _hello()
    _next_id += 1
    _send({"id": _next_id, "call": method, "params": params})
    answer = _receive()
    if "error" in answer:
        raise ChannelError(str(answer["error"]["reason"]), str(answer["error"]["message"]))
    return answer["result"]


def chat(message: str, *, max_tokens: int = 256) -> str:
    """The persona's reply to ``message`` (permission: chat)."""
    return str(call("chat", message=message, max_tokens=max_tokens)["reply"])


def read_memories(query: str, *, limit: int = 10) -> list[dict[str, Any]]:
    """Memories matching ``query`` (permission: read_memories)."""
    return list(call("read_memories", query=query, limit=limit)["memories"])


def write_memory(content: str, *, context: dict[str, Any] | None = None) -> int:
    """Store a memory; its id (permission: write_memories)."""
    return int(call("write_memories", content=content, context=context)["id"])


def list_documents() -> list[str]:
    """Files in the persona's artifacts folder (permission: read_documents)."""
    return list(call("list_documents")["names"])


def read_document(name: str) -> str:
    """One text file from the artifacts folder (permission: read_documents)."""
    return str(call("read_document", name=name)["content"])


def write_artifact(name: str, content: str) -> str:
    """Write artifacts/plugins/<plugin id>/<name>; its path under artifacts (permission: write_artifacts)."""
    return str(call("write_artifact", name=name, content=content)["path"])


def finish(output: Any) -> None:
    """The run's result (JSON); call once, at the end."""
    _hello()
    _send({"output": output})

"""``personad chat X``, and the plain rendering of ``personad call … chat``.

A person expects a chat to look like a chat: the reply appears on stdout
as it is generated, not as notifications and a JSON blob (that is what
``personad call … chat --json`` is for).

``personad chat X`` is a conversation, like ``ollama run``: a prompt with
line editing and history (stdlib ``readline``, history kept 0600 in
``<state>/chat_history``), each reply streamed as it comes, ``/bye`` or
Ctrl-D to leave, Ctrl-C to cancel the reply in progress (the call is
cancelled on the bus with ``bus.cancel``, so the persona and the inference
engine stop working on it) without leaving. With stdin not a terminal it
reads one message a line and prints one reply a line, for scripts and tests.

The conversation's thread: the persona itself recalls its memories and logs
every exchange in its brain (daemon/persona/chat.py); ``chat`` has no
session id, so the last few exchanges travel with each message in its
``context`` parameter (bounded by :data:`CONTEXT_TURNS` and
:data:`CONTEXT_CHARS`).

Why a thread: the bus connection lives on an event loop in a background
thread while the main thread blocks in ``input()``. The loop keeps running
between messages, so the connection answers the bus's pings however long
the person takes to type; and Ctrl-C always lands in the main thread,
which turns it into a cancel of the call running on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from protocol import MSGPACK, ErrorCode, RpcError

from .errors import BusUnavailable, ConfigError
from .state import StateDir

__all__ = ["CONTEXT_CHARS", "CONTEXT_TURNS", "HISTORY_FILE", "TokenPrinter", "check_options", "run_chat"]

#: The readline history, in the state directory, mode 0600 (what people type is private).
HISTORY_FILE = "chat_history"
HISTORY_LINES = 1000
#: At most this many earlier exchanges, and this many characters of them,
#: go with each message as its context (the model's prompt is small).
CONTEXT_TURNS = 4
CONTEXT_CHARS = 2000
#: How long to wait for a cancelled reply to wind down before moving on.
CANCEL_WAIT_S = 5.0
HELP = "Type a message and press Enter. /bye or Ctrl-D leaves; Ctrl-C stops a reply in progress."


class TokenPrinter:
    """Writes ``chat.token`` pieces to ``out`` as they come; anything else to ``err`` as before."""

    def __init__(self, out: TextIO, err: TextIO, *, render_other: Callable[[Any], str]) -> None:
        self.out = out
        self.err = err
        self.render_other = render_other
        self.text = ""

    def __call__(self, note: Any) -> None:
        if note.method == "chat.token" and isinstance(note.params, dict):
            piece = str(note.params.get("text", ""))
            self.text += piece
            self.out.write(piece)
            self.out.flush()
        else:
            self.err.write(f"~ {note.method} {self.render_other(note.params)}\n")
            self.err.flush()

    def finish(self, reply: str) -> None:
        """End the reply: print it whole if nothing was streamed (``stream: false``), then a newline."""
        if not self.text:
            self.out.write(reply)
            self.text = reply
        if not self.text.endswith("\n"):
            self.out.write("\n")
        self.out.flush()


def check_options(*, max_tokens: int | None, temperature: float | None, turns: int) -> None:
    """Refuse out-of-range options before connecting, with the limits chat itself enforces."""
    from pydantic import ValidationError

    from protocol.commands.inference import ChatParams

    if turns < 0:
        raise ConfigError("--turns must be 0 or more")
    options: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    try:
        ChatParams.model_validate({"message": "-", **{k: v for k, v in options.items() if v is not None}})
    except ValidationError as exc:
        problems = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise ConfigError(problems) from None


def persona_target(name: str) -> str:
    """``demo`` and ``persona:demo`` both mean ``persona:demo``."""
    return name if name.startswith("persona:") else f"persona:{name}"


def context_from(turns: list[tuple[str, str]], *, max_turns: int, max_chars: int) -> str | None:
    """The last exchanges, newest kept first when cut, as the ``context`` of the next message."""
    lines: list[str] = []
    used = 0
    for message, reply in reversed(turns[-max_turns:] if max_turns > 0 else []):
        block = f"The person said: {message.strip()}\nYou replied: {reply.strip()}"
        if used + len(block) > max_chars:
            break
        lines.insert(0, block)
        used += len(block)
    if not lines:
        return None
    return "Earlier in this conversation:\n" + "\n".join(lines)


class _Loop:
    """An event loop in a daemon thread, for the bus connection."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="chat-bus", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # Ctrl-C must reach the main thread, which waits on the reply: the kernel gives a
        # process's signal to any thread that does not block it, and Python runs its handler
        # only when the main thread wakes, so a SIGINT that landed here (this thread is the
        # busy one while a reply streams) went unseen until the reply had ended.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        self.loop.run_forever()

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Any) -> Any:
        return self.submit(coro).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


class ChatSession:
    """One person talking with one persona over one bus connection."""

    def __init__(
        self,
        url: str,
        token: str,
        target: str,
        *,
        max_tokens: int | None,
        temperature: float | None,
        timeout: float,
        turns: int,
        out: TextIO,
        err: TextIO,
        codec: Any = MSGPACK,
    ) -> None:
        self.url = url
        self.token = token
        self.target = target
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        self.turns = turns
        self.out = out
        self.err = err
        self.codec = codec
        self.history: list[tuple[str, str]] = []
        self.failures = 0
        self._loop = _Loop()
        self._client: Any = None

    # -- the connection (runs on the loop) ---------------------------------------------

    async def _connect(self) -> None:
        from .client import BusClient

        if self._client is not None:
            await self._client.close()
        client = BusClient(self.url, token=self.token, kind="cli", name=None, codec=self.codec)
        await client.start()
        self._client = client

    async def _close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _check_online(self) -> None:
        try:
            await self._client.call("persona.ping", to=self.target, deadline_ms=10_000)
        except RpcError as exc:
            if exc.code != ErrorCode.FORBIDDEN:  # a token without persona.ping may still chat
                raise

    async def _ask(self, params: dict[str, Any], printer: TokenPrinter, done: threading.Event) -> Any:
        try:
            if self._client is None:
                await self._connect()
            return await self._client.call(
                "chat", params, to=self.target, deadline_ms=int(self.timeout * 1000), on_progress=printer
            )
        finally:
            done.set()

    # -- the conversation (runs in the main thread) ------------------------------------

    def open(self) -> None:
        """Connect and check the persona is there: a clear message now beats one after typing."""
        self._loop.run(self._connect())
        try:
            self._loop.run(self._check_online())
        except RpcError as exc:
            raise BusUnavailable(self._explain(exc)) from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.submit(self._close()).result(timeout=5)
        self._loop.stop()

    def _explain(self, exc: RpcError) -> str:
        name = self.target.removeprefix("persona:")
        if exc.code == ErrorCode.TARGET_OFFLINE:
            return (
                f"{self.target} is not on the bus; start it with `personad up` "
                f"or `personad persona {name}`, then try again"
            )
        if exc.code == ErrorCode.CONNECTION_LOST:
            return f"lost the connection to the bus at {self.url}; it will be retried with your next message"
        if exc.code == ErrorCode.TIMEOUT:
            return f"{self.target} did not answer within {self.timeout:g}s"
        return f"error {exc.code}: {exc.message}"

    def send(self, message: str) -> bool:
        """One exchange: stream the reply; True when it completed."""
        params: dict[str, Any] = {"message": message}
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            params["temperature"] = self.temperature
        context = context_from(self.history, max_turns=self.turns, max_chars=CONTEXT_CHARS)
        if context is not None:
            params["context"] = context
        printer = TokenPrinter(self.out, self.err, render_other=repr)
        done = threading.Event()
        future = self._loop.submit(self._ask(params, printer, done))
        try:
            result = future.result()
        except KeyboardInterrupt:
            # Cancelling the task makes BusClient.call send bus.cancel; wait
            # for that to go out before the next message.
            future.cancel()
            done.wait(CANCEL_WAIT_S)
            if printer.text:
                self.out.write("\n")
                self.out.flush()
            self.err.write("(reply cancelled)\n")
            self.err.flush()
            return False
        except RpcError as exc:
            if printer.text:
                self.out.write("\n")
            self.err.write(f"personad: {self._explain(exc)}\n")
            self.err.flush()
            if exc.code == ErrorCode.CONNECTION_LOST:
                self._client = None  # reconnect with the next message
            self.failures += 1
            return False
        except (BusUnavailable, OSError) as exc:
            self.err.write(f"personad: {exc}\n")
            self.err.flush()
            self._client = None
            self.failures += 1
            return False
        printer.finish(str(result.get("reply", "")))
        self.history.append((message, str(result.get("reply", ""))))
        return True


def run_chat(
    state: StateDir,
    url: str,
    token: str,
    persona: str,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    timeout: float = 120.0,
    turns: int = CONTEXT_TURNS,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the conversation; 0 when every message got its reply (or the person left), else 1."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    err = err or sys.stderr
    session = ChatSession(
        url,
        token,
        persona_target(persona),
        max_tokens=max_tokens,
        temperature=temperature,
        timeout=timeout,
        turns=turns,
        out=out,
        err=err,
    )
    try:
        session.open()
        if stdin.isatty():
            _interactive(session, state, err)
            return 0
        for line in stdin:
            message = line.strip()
            if message == "/bye":
                break
            if message:
                session.send(message)
        return 1 if session.failures else 0
    finally:
        session.close()


def _interactive(session: ChatSession, state: StateDir, err: TextIO) -> None:
    history = _open_history(state)
    err.write(f"Talking with {session.target}. {HELP}\n")
    err.flush()
    try:
        while True:
            try:
                message = input(">>> ").strip()
            except EOFError:
                err.write("\n")
                return
            except KeyboardInterrupt:
                err.write("\nUse Ctrl-D or /bye to leave.\n")
                continue
            if message == "/bye":
                return
            if message in {"/?", "/help"}:
                err.write(HELP + "\n")
                continue
            if message:
                session.send(message)
    finally:
        if history is not None:
            _save_history(history)


def _open_history(state: StateDir) -> Path | None:
    """Load the readline history from the state dir; None when there is no state dir to keep it in."""
    try:
        import readline
    except ImportError:  # pragma: no cover - readline is part of CPython on Linux
        return None
    if not state.root.is_dir():
        return None
    path = state.root / HISTORY_FILE
    # Create it 0600 before readline touches it: messages can be private.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    with contextlib.suppress(OSError):
        readline.read_history_file(str(path))
    readline.set_history_length(HISTORY_LINES)
    return path


def _save_history(path: Path) -> None:
    import readline

    with contextlib.suppress(OSError):
        readline.write_history_file(str(path))
        os.chmod(path, 0o600)

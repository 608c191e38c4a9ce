"""Universal commands a persona runs as itself: ``screenshot`` and ``browser_js``.

A person (or another persona) asks ``persona:<id>`` to take a screenshot; the
persona sends the very same request on to ``cap:browser`` *as itself*, so the
browser provider gives it its own context (cookies, storage), and the bus
checks *its* grants: a persona token carries ``screenshot@cap:browser`` by
default, and ``browser_js@cap:browser`` only when an operator granted it
(browser_js is code execution). Errors from the provider or the bus come back
to the caller unchanged (their codes and messages).

The provider returns the image bytes; the persona checks them (sha256, PNG
or JPEG header, size) and saves them in its own session directory,
``artifacts/screenshots/``, the only place it writes:

* the name from the wire is sanitised to one plain file name — no directory
  part survives (``../../x.png`` becomes ``x.png``), no leading dot, only
  ``[A-Za-z0-9._-]``, the extension matching the format — and the final path
  is checked to sit directly in the screenshots folder;
* the write is atomic (temporary file, fsync, then ``link()``, which refuses
  to replace an existing name, then fsync of the folder), so readers never
  see half a PNG and nothing is ever overwritten: a taken name gets a
  ``-1``, ``-2`` … suffix;
* files are 0600, the folder 0700, like the rest of the session directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from protocol import ErrorCode, RpcError
from protocol.commands.browser import (
    BrowserJsParams,
    BrowserJsResult,
    PersonaScreenshotResult,
    ScreenshotParams,
    ScreenshotResult,
)

from ..browser.images import ImageError, image_size
from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..errors import StateDirError
from ..state import ensure_private_dir
from .session_dir import SessionDir

__all__ = ["register_universal_commands", "sanitise_filename", "save_new_file"]

log = logging.getLogger("personad.persona.universal")

BROWSER_TARGET = "cap:browser"
SCREENSHOTS = Path("artifacts") / "screenshots"

# Limits

#: Characters kept of a requested file name's stem.
MAX_STEM_CHARS = 100
#: Suffixes tried before giving up on a name (``x-1.png`` … ``x-999.png``).
MAX_SUFFIX = 999
#: Of the caller's deadline, what we keep to answer it ourselves when the
#: provider is slow: our own call gets the rest, so the caller hears *why*.
ANSWER_MARGIN_S = 0.25

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def sanitise_filename(requested: str | None, *, fmt: str, default_stem: str) -> str:
    """One safe file name for an artifact: never a path, never hidden, right extension."""
    stem = ""
    if requested:
        # NFKC first, so look-alikes such as FULLWIDTH SOLIDUS (U+FF0F) turn
        # into the "/" they pretend to be before we split on it.
        name = unicodedata.normalize("NFKC", requested)
        name = re.split(r"[/\\]", name)[-1]
        name = _UNSAFE.sub("_", name)
        path = Path(name)
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            name = name[: -len(path.suffix)]
        # Leading dots would hide the file (or spell ".."); trailing ones confuse.
        stem = name.strip("._-")[:MAX_STEM_CHARS].rstrip("._-")
    return f"{stem or default_stem}{_EXTENSIONS[fmt]}"


def save_new_file(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``folder/name`` atomically, never replacing a file.

    Raises FileExistsError when even the suffixed names are all taken.
    """
    if "/" in name or "\\" in name or name.startswith(".") or not name:
        raise ValueError(f"not a plain file name: {name!r}")
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=folder)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        for n in range(MAX_SUFFIX + 1):
            candidate = folder / (name if n == 0 else f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}")
            # Belt and braces: the name is plain, so this can only fail on a bug.
            if candidate.parent != folder:
                raise ValueError(f"{candidate} is not directly in {folder}")
            try:
                # link() fails with EEXIST instead of replacing (and does not
                # follow a symlink planted under that name): atomic, no clobber.
                os.link(tmp, candidate)
            except FileExistsError:
                continue
            break
        else:
            raise FileExistsError(f"{folder / name} and its {MAX_SUFFIX} suffixed names all exist")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return candidate


class UniversalCommands:
    """The handlers, bound to one persona's bus client and session directory."""

    def __init__(self, client: BusClient, session_dir: SessionDir) -> None:
        self.client = client
        self.session_dir = session_dir

    @property
    def screenshots(self) -> Path:
        return self.session_dir.root / SCREENSHOTS

    def prepare(self) -> Path:
        """Create ``artifacts/screenshots`` (0700, a real directory, ours)."""
        ensure_private_dir(self.session_dir.artifacts)
        return ensure_private_dir(self.screenshots)

    async def _forward(self, method: str, params: dict[str, Any], ctx: CallContext) -> Any:
        """Send the request on to cap:browser as this persona, within the caller's deadline."""
        deadline_ms: int | None = None
        if ctx.deadline is not None:
            remaining = ctx.deadline - asyncio.get_running_loop().time() - ANSWER_MARGIN_S
            deadline_ms = max(1, int(remaining * 1000))
        return await self.client.call(method, params, to=BROWSER_TARGET, deadline_ms=deadline_ms)

    async def screenshot(self, params: ScreenshotParams, ctx: CallContext) -> PersonaScreenshotResult:
        # The provider needs neither our file name nor return_bytes (it always
        # sends the bytes); everything else is the caller's request as it came.
        forwarded = params.model_dump(exclude_defaults=True, exclude={"filename", "return_bytes"})
        raw = await self._forward("screenshot", forwarded, ctx)
        try:
            shot = ScreenshotResult.model_validate(raw)
        except ValidationError as exc:
            log.error("invalid screenshot result from the browser provider: %s", exc)
            raise RpcError(
                ErrorCode.INTERNAL_ERROR, "the browser provider sent an invalid screenshot"
            ) from None
        digest = hashlib.sha256(shot.data).hexdigest()
        try:
            fmt, width, height = image_size(shot.data)
        except ImageError as exc:
            raise RpcError(ErrorCode.INTERNAL_ERROR, f"the browser provider sent no image: {exc}") from None
        if (digest, fmt, width, height) != (shot.sha256, shot.format, shot.width, shot.height):
            raise RpcError(
                ErrorCode.INTERNAL_ERROR, "the screenshot's bytes do not match what the provider said"
            )
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = sanitise_filename(params.filename, fmt=fmt, default_stem=f"screenshot-{stamp}-{digest[:8]}")
        try:
            folder = self.prepare()
            path = await asyncio.to_thread(save_new_file, folder, name, shot.data)
        except (OSError, StateDirError) as exc:
            log.error("cannot save a screenshot in %s: %s", self.screenshots, exc)
            raise RpcError(ErrorCode.INTERNAL_ERROR, "the persona could not save the screenshot") from None
        log.info("saved screenshot path=%s bytes=%d caller=%s", path, len(shot.data), ctx.caller)
        return PersonaScreenshotResult(
            path=path.relative_to(self.session_dir.root).as_posix(),
            abs_path=str(path),
            sha256=digest,
            size=len(shot.data),
            width=width,
            height=height,
            format=fmt,
            url=shot.url,
            data=shot.data if params.return_bytes else None,
        )

    async def browser_js(self, params: BrowserJsParams, ctx: CallContext) -> BrowserJsResult:
        raw = await self._forward("browser_js", params.model_dump(exclude_defaults=True), ctx)
        try:
            return BrowserJsResult.model_validate(raw)
        except ValidationError:
            raise RpcError(ErrorCode.INTERNAL_ERROR, "the browser provider sent an invalid result") from None


def register_universal_commands(dispatcher: Dispatcher, client: BusClient, session_dir: SessionDir) -> None:
    """Serve ``screenshot`` and ``browser_js`` on this persona's dispatcher.

    Creates ``artifacts/screenshots/`` now, with the rest of the session
    directory's layout at start-up.
    """
    commands = UniversalCommands(client, session_dir)
    commands.prepare()
    dispatcher.register("screenshot", commands.screenshot)
    dispatcher.register("browser_js", commands.browser_js)

"""The universal browser commands: ``screenshot``, ``browser_js``, ``browser.*``.

Served by every provider of ``cap:browser`` (the headless Chromium worker,
the browser extension) and, for ``screenshot`` and ``browser_js``, by every
persona, which runs them *as itself*: it sends the same request on to
``cap:browser`` so that the browser context (cookies, storage) is its own.

One request, two kinds of server:

=====================  ==========================  =================================
method                 ``to: cap:browser``         ``to: persona:<id>``
=====================  ==========================  =================================
``screenshot``         :class:`ScreenshotResult`:  :class:`PersonaScreenshotResult`:
                       the image bytes, sha256,    where the persona saved the file
                       width, height               in its session directory, sha256,
                                                   width, height; bytes when asked
``browser_js``         :class:`BrowserJsResult`    the same
``browser.navigate``   :class:`NavigateResult`     (not served)
``browser.close_context``  :class:`CloseContextResult`  (not served)
=====================  ==========================  =================================

A provider keeps one browser context per requesting client id (the bus's
``from``), so two personas never share cookies or storage. A provider writes
nothing of a requester's: it returns bytes; a persona saves them.

Errors specific to browsing use the application codes of :class:`BrowserErrorCode`
(JSON-RPC 2.0 §5.1 leaves codes outside -32768..-32000 to applications). The
extension's JavaScript mirrors them (extension/protocol.js); a test checks the
two agree.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from .registry import StrictModel, StrictParams, register, register_variant

__all__ = [
    "BROWSER_CAPABILITY",
    "DEFAULT_VIEWPORT",
    "MAX_SCRIPT_BYTES",
    "BrowserErrorCode",
    "BrowserJsParams",
    "BrowserJsResult",
    "CloseContextParams",
    "CloseContextResult",
    "NavigateParams",
    "NavigateResult",
    "PersonaScreenshotResult",
    "ScreenshotParams",
    "ScreenshotResult",
    "Viewport",
]

#: The capability browser providers register (``to: cap:browser``).
BROWSER_CAPABILITY = "browser"

# Limits

#: A script is code, not data: 64 KiB of UTF-8 is plenty.
MAX_SCRIPT_BYTES = 64 * 1024
MAX_URL_CHARS = 8192
MAX_SELECTOR_CHARS = 1024
MAX_FILENAME_CHARS = 255
MIN_VIEWPORT = 16
#: Chromium's own texture limits start near 16384; 4096 keeps a PNG well
#: under the 16 MiB message limit for any ordinary page.
MAX_VIEWPORT = 4096
MAX_SCRIPT_TIMEOUT_MS = 120_000
MAX_LOAD_TIMEOUT_MS = 120_000
DEFAULT_SCRIPT_TIMEOUT_MS = 5_000

SHA256_PATTERN = r"^[0-9a-f]{64}$"


class BrowserErrorCode(IntEnum):
    """``error.code`` values of browser providers (and of personas relaying them)."""

    #: The page's script threw, or its promise rejected; ``data`` has the text.
    SCRIPT_ERROR = 1001
    #: The script (or the promise it returned) did not finish within timeout_ms.
    SCRIPT_TIMEOUT = 1002
    #: The script's value cannot travel as JSON (NaN, Infinity, a BigInt, a Symbol, window).
    NOT_SERIALIZABLE = 1003
    #: The page could not be loaded (DNS, connection refused, bad certificate …).
    NAVIGATION_FAILED = 1004
    #: The page did not fire its load event within the load timeout.
    LOAD_TIMEOUT = 1005
    #: ``selector`` matched no element, or one with no size.
    ELEMENT_NOT_FOUND = 1006
    #: No ``url`` was given and the requester has no page yet.
    NO_PAGE = 1007
    #: Chromium exited during the request; it is relaunched: retry.
    BROWSER_CRASHED = 1008
    #: Chromium could not be started (see the message for why).
    BROWSER_UNAVAILABLE = 1009
    #: The image or value is larger than a message may carry.
    TOO_LARGE = 1010

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    BrowserErrorCode.SCRIPT_ERROR: "the page's script threw an exception",
    BrowserErrorCode.SCRIPT_TIMEOUT: "the script did not finish in time",
    BrowserErrorCode.NOT_SERIALIZABLE: "the script's value cannot be returned as JSON",
    BrowserErrorCode.NAVIGATION_FAILED: "the page could not be loaded",
    BrowserErrorCode.LOAD_TIMEOUT: "the page did not finish loading in time",
    BrowserErrorCode.ELEMENT_NOT_FOUND: "no element matches the selector",
    BrowserErrorCode.NO_PAGE: "no page is open: give a url",
    BrowserErrorCode.BROWSER_CRASHED: "the browser crashed during the request; retry",
    BrowserErrorCode.BROWSER_UNAVAILABLE: "the browser could not be started",
    BrowserErrorCode.TOO_LARGE: "the result is too large for one message",
}


#: What any request that loads or reads a page may fail with.
_PAGE_ERRORS = (
    BrowserErrorCode.NAVIGATION_FAILED,
    BrowserErrorCode.LOAD_TIMEOUT,
    BrowserErrorCode.NO_PAGE,
    BrowserErrorCode.BROWSER_CRASHED,
    BrowserErrorCode.BROWSER_UNAVAILABLE,
)
_SCRIPT_ERRORS = (
    BrowserErrorCode.SCRIPT_ERROR,
    BrowserErrorCode.SCRIPT_TIMEOUT,
    BrowserErrorCode.NOT_SERIALIZABLE,
)


# -- shared types -------------------------------------------------------------------

_URL_RE = re.compile(r"^https?://[^\s/?#]+[^\s]*$", re.IGNORECASE)


def _check_url(value: str) -> str:
    # Only the web and a blank page: file:// would let a requester read the
    # provider's disk, chrome:// its settings, javascript: bypass the
    # browser_js grant (a screenshot grant would then run code).
    if value == "about:blank" or _URL_RE.match(value):
        return value
    raise ValueError("must be an http:// or https:// URL, or about:blank")


#: _check_url as a JSON Schema pattern (no flags there: the scheme's case spelt out).
URL_SCHEMA_PATTERN = r"^(about:blank|[hH][tT][tT][pP][sS]?://[^\s/?#]+[^\s]*)$"

Url = Annotated[
    str,
    Field(max_length=MAX_URL_CHARS, json_schema_extra={"pattern": URL_SCHEMA_PATTERN}),
    AfterValidator(_check_url),
]


class Viewport(StrictParams):
    """The page's layout size in CSS pixels; screenshots are this size at scale 1."""

    width: Annotated[int, Field(ge=MIN_VIEWPORT, le=MAX_VIEWPORT)] = Field(description="CSS pixels")
    height: Annotated[int, Field(ge=MIN_VIEWPORT, le=MAX_VIEWPORT)] = Field(description="CSS pixels")


#: A provider's viewport until a request sets one.
DEFAULT_VIEWPORT = Viewport(width=1280, height=800)

LoadTimeout = Annotated[
    int | None,
    Field(ge=100, le=MAX_LOAD_TIMEOUT_MS, description="ms to wait for the page's load event"),
]


# -- screenshot -------------------------------------------------------------------


class ScreenshotParams(StrictParams):
    url: Annotated[
        Url | None, Field(description="load this first; omitted: the requester's current page")
    ] = None
    viewport: Annotated[
        Viewport | None, Field(description="omitted: the requester's current (default 1280x800)")
    ] = None
    full_page: Annotated[bool, Field(description="the whole scrollable page, not just the viewport")] = False
    selector: Annotated[
        str | None,
        Field(min_length=1, max_length=MAX_SELECTOR_CHARS, description="CSS selector: clip to that element"),
    ] = None
    format: Literal["png", "jpeg"] = Field("png", description="the image format")
    quality: Annotated[int | None, Field(ge=0, le=100, description="jpeg only")] = None
    load_timeout_ms: LoadTimeout = None
    filename: Annotated[
        str | None,
        Field(
            max_length=MAX_FILENAME_CHARS,
            description="personas: the artifact's name, sanitised (no directories); providers ignore it",
        ),
    ] = None
    return_bytes: Annotated[
        bool, Field(description="personas: also return the bytes; providers always do")
    ] = False

    @model_validator(mode="after")
    def _consistent(self) -> ScreenshotParams:
        if self.full_page and self.selector is not None:
            raise ValueError("give full_page or selector, not both")
        if self.quality is not None and self.format != "jpeg":
            raise ValueError("quality applies to format 'jpeg' only")
        return self


class ScreenshotResult(StrictModel):
    """A provider's answer: the image itself (raw bytes in msgpack, ``{"$bytes": base64}`` in JSON)."""

    data: bytes = Field(description="the image")
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)] = Field(description="of the image's bytes")
    width: Annotated[int, Field(ge=1)] = Field(description="pixels")
    height: Annotated[int, Field(ge=1)] = Field(description="pixels")
    format: Literal["png", "jpeg"] = Field(description="the image format")
    url: str = Field(description="the page's URL when it was captured")


class PersonaScreenshotResult(StrictModel):
    """A persona's answer: the file it saved in its own session directory."""

    path: str = Field(
        description="relative to the persona's session directory, e.g. artifacts/screenshots/x.png"
    )
    abs_path: str = Field(description="the same file, absolute, on the persona's machine")
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN, description="of the file's bytes")]
    size: Annotated[int, Field(ge=1, description="bytes")]
    width: Annotated[int, Field(ge=1)] = Field(description="pixels")
    height: Annotated[int, Field(ge=1)] = Field(description="pixels")
    format: Literal["png", "jpeg"] = Field(description="the image format")
    url: str = Field(description="the page's URL when it was captured")
    data: Annotated[bytes | None, Field(description="the image, only when return_bytes was true")] = None


register(
    "screenshot",
    params=ScreenshotParams,
    result=ScreenshotResult,
    summary="Capture a page (viewport, full page or one element) as PNG or JPEG; returns the bytes.",
    served_by="cap:browser",
    errors=(*_PAGE_ERRORS, BrowserErrorCode.ELEMENT_NOT_FOUND, BrowserErrorCode.TOO_LARGE),
)
register_variant(
    "screenshot",
    served_by="persona",
    result=PersonaScreenshotResult,
    summary="The persona captures the page in its own browser context and saves it "
    "under artifacts/screenshots/ in its session directory; returns the path and sha256.",
)


# -- browser_js -------------------------------------------------------------------


def _script_size(value: str) -> str:
    if len(value.encode("utf-8", "surrogatepass")) > MAX_SCRIPT_BYTES:
        raise ValueError(f"over {MAX_SCRIPT_BYTES} bytes in UTF-8")
    return value


class BrowserJsParams(StrictParams):
    script: Annotated[
        str,
        Field(min_length=1, description="JavaScript evaluated in the page; its completion value is returned"),
        AfterValidator(_script_size),
    ]
    url: Annotated[Url | None, Field(description="load this first; omitted: the current page")] = None
    await_promise: Annotated[bool, Field(description="when the value is a promise, wait for it")] = True
    timeout_ms: Annotated[int, Field(ge=1, le=MAX_SCRIPT_TIMEOUT_MS)] = Field(
        DEFAULT_SCRIPT_TIMEOUT_MS, description="ms the script (and the promise it returns) may take"
    )
    load_timeout_ms: LoadTimeout = None


class BrowserJsResult(StrictModel):
    value: Any = Field(description="the script's value as JSON; undefined becomes null")
    url: str = Field(description="the page's URL when the script ran")


register(
    "browser_js",
    params=BrowserJsParams,
    result=BrowserJsResult,
    summary="Run JavaScript in the requester's page (code execution: only for tokens granted it).",
    served_by="cap:browser",
    errors=(*_PAGE_ERRORS, *_SCRIPT_ERRORS, BrowserErrorCode.TOO_LARGE),
)
register_variant(
    "browser_js",
    served_by="persona",
    result=BrowserJsResult,
    summary="The persona runs the script in its own browser context (its token needs the grant).",
)


# -- browser.navigate / browser.close_context ------------------------------------------


class NavigateParams(StrictParams):
    url: Url = Field(description="the page to load")
    viewport: Viewport | None = Field(None, description="omitted: the requester's current (default 1280x800)")
    load_timeout_ms: LoadTimeout = None


class NavigateResult(StrictModel):
    url: str = Field(description="the URL after redirects")
    title: str = Field(description="the page's title")


register(
    "browser.navigate",
    params=NavigateParams,
    result=NavigateResult,
    summary="Load a URL in the requester's page and wait for its load event.",
    served_by="cap:browser",
    errors=_PAGE_ERRORS,
)


class CloseContextParams(StrictParams):
    """No members: a requester closes its own context only."""


class CloseContextResult(StrictModel):
    closed: bool = Field(description="false when the requester had no context")


register(
    "browser.close_context",
    params=CloseContextParams,
    result=CloseContextResult,
    summary="Close the requester's browser context now (cookies, storage and page are gone).",
    served_by="cap:browser",
    errors=(BrowserErrorCode.BROWSER_UNAVAILABLE,),
)

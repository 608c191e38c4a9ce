"""The headless browser worker (``personad browser``): a provider of ``cap:browser``.

(Longer than our usual 500 lines on purpose: the four commands share one
request path — slot, context, page, load, CDP errors to RpcErrors — and
split across modules it would have to be read in several places at once.
The Chromium process, the CDP client and the network policy live apart:
chromium.py, cdp.py, netpolicy.py and proxy.py.)

It joins the bus as ``browser:<name>`` with the capability ``browser`` and
serves ``screenshot``, ``browser_js``, ``browser.navigate`` and
``browser.close_context`` (protocol/commands/browser.py) with Debian's
Chromium, driven over CDP through a pipe (cdp.py, chromium.py).

Isolation. Every requester — the ``from`` the bus stamps on a request, so a
persona cannot pose as another — gets its own browser context
(``Target.createBrowserContext``: an incognito-like profile, its own cookies,
storage and cache) holding one page, created on first use, closed after
``idle_timeout`` without requests, or on ``browser.close_context``. Requests of
one requester run one at a time (they share a page); requests of different
requesters run in parallel, at most ``max_concurrency`` at once, with at most
``max_waiting`` queued behind them (OVERLOADED beyond).

Crashes. Chromium's exit (or its pipe closing) fails every command in flight
with BROWSER_CRASHED at once; a keeper task relaunches Chromium straight away
(backing off if it keeps dying young), and the next request runs in the new
one, in a new context. A page whose renderer crashed is replaced on the next
request of its owner; the context (cookies) survives.

Network. Every connection Chromium makes goes through the worker's egress
proxy (proxy.py), which resolves the host, checks the address against the
network policy (netpolicy.py: loopback, private, link-local … denied unless
allow-listed) and connects to exactly that address. Each context has a
listener of its own, so a navigation the proxy refused is answered FORBIDDEN
with ``{url, address, rule}``; blocked subresources just fail in the page.

The worker writes nothing of a requester's: it returns the image bytes, and a
persona saves them in its own session directory (daemon/persona/universal.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import logging
import math
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from protocol import ErrorCode, RpcError
from protocol.commands.browser import (
    BROWSER_CAPABILITY,
    DEFAULT_VIEWPORT,
    BrowserErrorCode,
    BrowserJsParams,
    BrowserJsResult,
    CloseContextParams,
    CloseContextResult,
    NavigateParams,
    NavigateResult,
    ScreenshotParams,
    ScreenshotResult,
    Viewport,
)

from ..client import BusClient, CallContext
from ..dispatch import Dispatcher
from ..serving import announce, serve_until
from ..systemd_notify import Notifier
from .chromium import DEFAULT_EXECUTABLE, Chromium, check_executable, describe_status
from .errors import BrowserCrashed, CdpClosed, CdpError, ChromiumNotFound, LaunchError
from .images import ImageError, image_size
from .netpolicy import NetworkPolicy
from .proxy import EgressProxy, Listener, ProxyEvent

log = logging.getLogger("personad.browser.worker")

#: ``data.error`` of a navigation the network policy refused (code FORBIDDEN).
URL_BLOCKED = "URL_BLOCKED"

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """The worker's settings, with named limits instead of magic numbers."""

    #: The id part of ``browser:<name>``.
    name: str = "headless"
    executable: str = DEFAULT_EXECUTABLE
    extra_flags: tuple[str, ...] = ()
    default_viewport: Viewport = DEFAULT_VIEWPORT
    #: Allow-list of the network policy (netpolicy.py): networks, address:port, name:port.
    allow: tuple[str, ...] = ()
    #: Chromium's sandbox: None = wherever it can work (not as root).
    sandbox: bool | None = None
    #: False only for bench/browser.py's with/without comparison: Chromium
    #: then connects anywhere. The CLI has no way to turn the policy off.
    network_policy: bool = True

    # Limits
    max_concurrency: int = 4
    max_waiting: int = 64
    max_contexts: int = 32
    #: Full-page screenshots are cut at this height (CSS pixels).
    max_full_page_height: int = 16_384
    #: Below the bus's 16 MiB message limit, leaving room for the envelope.
    max_result_bytes: int = 15 * 1024 * 1024

    # Timeouts
    launch_timeout: float = 20.0
    load_timeout_ms: int = 15_000
    #: A context without requests for this long is closed (seconds).
    idle_timeout: float = 300.0
    #: Chromium that dies within this many seconds of launching counts as a
    #: failed launch, and relaunches back off up to ``relaunch_backoff_max``.
    min_healthy_uptime: float = 10.0
    relaunch_backoff_max: float = 30.0


@dataclass(eq=False)
class Context:
    """One requester's browser context and its single page."""

    owner: str
    browser: Chromium
    viewport: Viewport
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    context_id: str | None = None
    target_id: str | None = None
    session_id: str | None = None
    #: A target whose renderer crashed, to close before making a new page.
    dead_target: str | None = None
    url: str = "about:blank"
    navigated: bool = False
    closed: bool = False
    last_used: float = field(default_factory=time.monotonic)
    #: The egress proxy's listener for this context (None without the policy).
    listener: Listener | None = None


class BrowserWorker:
    """Chromium behind the bus. ``async with`` it (tests) or ``await run(stop)`` (the CLI)."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        url: str,
        token: str,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.url = url
        # Parsed now, so a bad --allow entry stops the worker before it joins.
        self.policy = NetworkPolicy(config.allow)
        self.proxy = EgressProxy(self.policy)
        self._listeners = itertools.count(1)
        self.notifier = notifier or Notifier.from_env()
        self.dispatcher = Dispatcher()
        self.dispatcher.register("screenshot", self._screenshot)
        self.dispatcher.register("browser_js", self._browser_js)
        self.dispatcher.register("browser.navigate", self._navigate)
        self.dispatcher.register("browser.close_context", self._close_context)
        self.client = BusClient(
            url,
            token=token,
            kind="browser",
            name=config.name,
            capabilities=[BROWSER_CAPABILITY],
            handler=self.dispatcher,
            reconnect=True,
        )
        #: The running Chromium, or None between a crash and the relaunch.
        self.browser: Chromium | None = None
        #: How many times Chromium was launched (1 + relaunches).
        self.launches = 0
        self._launch_error: str | None = None
        self._browser_changed = asyncio.Condition()
        self._contexts: dict[str, Context] = {}
        self._by_session: dict[str, Context] = {}
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._waiting = 0
        self._ready = asyncio.Event()
        self._launch_failed = asyncio.Event()
        self._stop: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> BrowserWorker:
        """Start serving; return once Chromium runs and the bus accepted us.

        Raises LaunchError when the first launch of Chromium fails (a daemon
        run by ``run()`` keeps retrying instead, answering BROWSER_UNAVAILABLE).
        """
        check_executable(self.config.executable)
        self._stop = asyncio.Event()
        self._runner = asyncio.get_running_loop().create_task(self.run(self._stop), name="browser-worker")
        ready = asyncio.ensure_future(self._ready.wait())
        failed = asyncio.ensure_future(self._launch_failed.wait())
        waiters: list[asyncio.Future[Any]] = [ready, failed, self._runner]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        failed.cancel()
        if not self._ready.is_set():
            self._stop.set()
            await self._runner  # raises what stopped it, if anything did
            raise LaunchError(self._launch_error or "the browser worker stopped before it was ready")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._stop is not None
        assert self._runner is not None
        self._stop.set()
        await self._runner

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, or the bus refuses our token for good."""
        background = [self._keep_browser(), self._close_idle_contexts(), self._announce()]
        await serve_until(
            self.client, self.notifier, stop, who=f"browser {self.config.name}", background=background
        )

    async def _announce(self) -> None:
        """Say once that we serve: on stdout for people and supervisors, and to systemd."""
        async with self._browser_changed:
            await self._browser_changed.wait_for(lambda: self.browser is not None)

        def line() -> str:
            assert self.browser is not None
            return f"{self.client.client_id} serving cap:{BROWSER_CAPABILITY} with {self.browser.version}"

        if await announce(self.client, self.notifier, "browser", line):
            self._ready.set()

    async def _keep_browser(self) -> None:
        """Launch Chromium, and launch it again whenever it exits, until cancelled."""
        failures = 0
        # Chromium's own connections (outside any requester's context) go
        # through the proxy too, on a listener kept across relaunches.
        default_proxy = (await self.proxy.listen("default")).url if self.config.network_policy else None
        try:
            while True:
                try:
                    browser = await Chromium.launch(
                        self.config.executable,
                        extra_flags=self.config.extra_flags,
                        proxy=default_proxy,
                        sandbox=self.config.sandbox,
                        timeout=self.config.launch_timeout,
                    )
                except (LaunchError, ChromiumNotFound) as exc:
                    failures += 1
                    await self._set_browser(None, str(exc))
                    self._launch_failed.set()
                    delay = min(self.config.relaunch_backoff_max, 0.5 * 2 ** (failures - 1))
                    log.error("%s; retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                browser.cdp.on("Target.detachedFromTarget", self._on_detached)
                browser.cdp.on("Inspector.targetCrashed", self._on_renderer_crashed)
                browser.cdp.on("Page.frameNavigated", self._on_frame_navigated)
                browser.cdp.on("Page.navigatedWithinDocument", self._on_navigated_within_document)
                self.launches += 1
                await self._set_browser(browser, None)
                try:
                    await browser.wait_exited()
                finally:
                    # On a crash and on shutdown alike: forget its contexts, end it.
                    # Killing is enough: the profile is a temporary folder we delete.
                    await self._set_browser(None, None)
                    await browser.kill()
                uptime = time.monotonic() - browser.started
                failures = failures + 1 if uptime < self.config.min_healthy_uptime else 0
                if failures > 1:
                    delay = min(self.config.relaunch_backoff_max, 0.5 * 2 ** (failures - 2))
                    log.warning("chromium keeps exiting young; relaunching in %.1fs", delay)
                    # Requests meanwhile fail at once, saying why, rather than wait.
                    await self._set_browser(None, f"Chromium keeps crashing; relaunching in {delay:.1f}s")
                    await asyncio.sleep(delay)
                else:
                    log.warning("relaunching chromium")
        finally:
            self.browser = None
            await self.proxy.aclose()

    async def _set_browser(self, browser: Chromium | None, error: str | None) -> None:
        async with self._browser_changed:
            self.browser = browser
            self._launch_error = error
            if browser is None:
                for ctx in self._contexts.values():
                    ctx.closed = True
                    self._close_listener(ctx)
                self._contexts.clear()
                self._by_session.clear()
            self._browser_changed.notify_all()

    async def _running_browser(self) -> Chromium:
        """The live Chromium, waiting for a (re)launch in progress."""
        browser = self.browser
        if browser is not None and browser.alive:
            return browser
        try:
            async with asyncio.timeout(self.config.launch_timeout), self._browser_changed:
                await self._browser_changed.wait_for(
                    lambda: (
                        (self.browser is not None and self.browser.alive) or self._launch_error is not None
                    )
                )
        except TimeoutError:
            raise RpcError(
                BrowserErrorCode.BROWSER_UNAVAILABLE,
                f"Chromium did not come up within {self.config.launch_timeout:.0f}s",
            ) from None
        if self.browser is None:
            raise RpcError(
                BrowserErrorCode.BROWSER_UNAVAILABLE, self._launch_error or "Chromium is not running"
            )
        return self.browser

    # -- CDP events ----------------------------------------------------------------------

    def _on_detached(self, params: dict[str, Any], _session: str | None) -> None:
        ctx = self._by_session.pop(str(params.get("sessionId")), None)
        if ctx is not None:
            ctx.session_id = ctx.target_id = None
            ctx.navigated = False

    def _on_renderer_crashed(self, _params: dict[str, Any], session_id: str | None) -> None:
        ctx = self._by_session.pop(str(session_id), None)
        if ctx is not None:
            log.warning("the page of %s crashed; it gets a new one on its next request", ctx.owner)
            ctx.dead_target, ctx.session_id, ctx.target_id = ctx.target_id, None, None
            ctx.navigated = False

    def _on_frame_navigated(self, params: dict[str, Any], session_id: str | None) -> None:
        frame = params.get("frame") or {}
        ctx = self._by_session.get(str(session_id))
        if ctx is not None and not frame.get("parentId") and isinstance(frame.get("url"), str):
            ctx.url = frame["url"] + frame.get("urlFragment", "")

    def _on_navigated_within_document(self, params: dict[str, Any], session_id: str | None) -> None:
        ctx = self._by_session.get(str(session_id))
        if ctx is not None and params.get("frameId") == ctx.target_id and isinstance(params.get("url"), str):
            ctx.url = params["url"]

    # -- contexts ----------------------------------------------------------------------

    async def _context(self, owner: str, browser: Chromium) -> Context:
        """The owner's context in ``browser``, making room (closing the least
        recently used idle one) when ``max_contexts`` are open."""
        ctx = self._contexts.get(owner)
        if ctx is not None and ctx.browser is browser and not ctx.closed:
            return ctx
        if len(self._contexts) >= self.config.max_contexts:
            idle = [c for c in self._contexts.values() if not c.lock.locked()]
            if not idle:
                raise RpcError(
                    ErrorCode.OVERLOADED, f"all {self.config.max_contexts} browser contexts are busy"
                )
            victim = min(idle, key=lambda c: c.last_used)
            self._forget(victim)
            await self._dispose(victim)
        ctx = self._contexts.get(owner)  # another request of the owner's may have made it meanwhile
        if ctx is None or ctx.closed or ctx.browser is not browser:
            ctx = Context(owner, browser, self.config.default_viewport)
            self._contexts[owner] = ctx
        return ctx

    def _close_listener(self, ctx: Context) -> None:
        if ctx.listener is not None:
            self.proxy.close_listener(ctx.listener.tag)
            ctx.listener = None

    def _forget(self, ctx: Context) -> None:
        ctx.closed = True
        self._close_listener(ctx)
        if self._contexts.get(ctx.owner) is ctx:
            del self._contexts[ctx.owner]
        if ctx.session_id is not None:
            self._by_session.pop(ctx.session_id, None)

    async def _dispose(self, ctx: Context) -> None:
        """Close a context's pages and its storage (``Target.disposeBrowserContext``)."""
        if ctx.context_id is None:
            return
        with contextlib.suppress(CdpError, CdpClosed, TimeoutError):
            async with asyncio.timeout(5.0):
                await ctx.browser.cdp.send(
                    "Target.disposeBrowserContext", {"browserContextId": ctx.context_id}
                )
        log.info("closed the browser context of %s", ctx.owner)

    async def _close_idle_contexts(self) -> None:
        period = max(0.05, min(self.config.idle_timeout / 4, 30.0))
        while True:
            await asyncio.sleep(period)
            cutoff = time.monotonic() - self.config.idle_timeout
            for ctx in list(self._contexts.values()):
                if ctx.last_used < cutoff and not ctx.lock.locked():
                    self._forget(ctx)
                    await self._dispose(ctx)

    async def _ensure_page(self, ctx: Context) -> str:
        """The context's page session, creating the context and page when needed."""
        cdp = ctx.browser.cdp
        if ctx.context_id is None:
            # An isolated profile per requester: its own cookies, storage, cache,
            # and its own proxy listener, so that refusals can be told apart.
            options: dict[str, Any] = {"disposeOnDetach": True}
            if self.config.network_policy:
                if ctx.listener is None:
                    ctx.listener = await self.proxy.listen(f"{ctx.owner}#{next(self._listeners)}")
                # "<-loopback>": loopback goes through the proxy too (proxy.py).
                options.update(proxyServer=ctx.listener.url, proxyBypassList="<-loopback>")
            created = await cdp.send("Target.createBrowserContext", options)
            ctx.context_id = created["browserContextId"]
        if ctx.dead_target is not None:
            with contextlib.suppress(CdpError):
                await cdp.send("Target.closeTarget", {"targetId": ctx.dead_target})
            ctx.dead_target = None
        if ctx.session_id is None:
            target = await cdp.send(
                "Target.createTarget", {"url": "about:blank", "browserContextId": ctx.context_id}
            )
            ctx.target_id = target["targetId"]
            # flatten: the page's session is addressed by sessionId on this same pipe.
            attached = await cdp.send("Target.attachToTarget", {"targetId": ctx.target_id, "flatten": True})
            session_id: str = attached["sessionId"]
            ctx.session_id = session_id
            self._by_session[session_id] = ctx
            ctx.url, ctx.navigated = "about:blank", False
            await asyncio.gather(
                cdp.send("Page.enable", session_id=session_id),
                # lifecycle events carry the loaderId, so we wait for *our* load.
                cdp.send("Page.setLifecycleEventsEnabled", {"enabled": True}, session_id=session_id),
                # Inspector.targetCrashed tells us the renderer died.
                cdp.send("Inspector.enable", session_id=session_id),
                self._apply_viewport(ctx, ctx.viewport),
            )
        if ctx.session_id is None:  # detached or crashed while we set it up
            raise CdpClosed("the page closed while it was being opened")
        return ctx.session_id

    async def _apply_viewport(self, ctx: Context, viewport: Viewport) -> None:
        # Emulation.setDeviceMetricsOverride: the layout viewport in CSS
        # pixels at scale 1, so a screenshot is exactly width x height.
        await ctx.browser.cdp.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": viewport.width, "height": viewport.height, "deviceScaleFactor": 1, "mobile": False},
            session_id=ctx.session_id,
        )
        ctx.viewport = viewport

    # -- serving -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """Bound the work in parallel and the queue behind it."""
        if self._waiting >= self.config.max_waiting:
            raise RpcError(ErrorCode.OVERLOADED, f"{self._waiting} browser requests are already waiting")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()

    async def _serve(self, call: CallContext, work: Callable[[Context], Awaitable[T]]) -> T:
        """Run ``work`` in the caller's context, translating failures into RpcErrors."""
        owner = call.caller or "anonymous"
        async with self._slot():
            browser = await self._running_browser()
            try:
                while True:
                    ctx = await self._context(owner, browser)
                    async with ctx.lock:
                        if ctx.closed:
                            continue  # closed while we waited for it: take a new one
                        try:
                            await self._ensure_page(ctx)
                            return await work(ctx)
                        finally:
                            ctx.last_used = time.monotonic()
            except CdpClosed as exc:
                raise await _crash_error(browser, exc) from None
            except CdpError as exc:
                log.warning("chromium refused %s for %s: %s", exc.method, owner, exc.message)
                raise RpcError(
                    ErrorCode.INTERNAL_ERROR, f"Chromium refused {exc.method}: {exc.message}"
                ) from None

    async def _load(self, ctx: Context, url: str, load_timeout_ms: int | None) -> None:
        """``Page.navigate`` and wait for that document's ``load`` lifecycle event."""
        cdp, session_id = ctx.browser.cdp, ctx.session_id
        timeout_ms = load_timeout_ms or self.config.load_timeout_ms
        mark = ctx.listener.mark() if ctx.listener is not None else 0
        with cdp.subscribe("Page.lifecycleEvent", session_id=session_id) as events:
            started = await cdp.send("Page.navigate", {"url": url}, session_id=session_id)
            if error_text := started.get("errorText"):
                refused = ctx.listener.since(mark) if ctx.listener is not None else []
                raise _navigation_error(url, str(error_text), refused)
            loader_id = started.get("loaderId")
            ctx.navigated = True
            if loader_id is None:
                return  # same-document navigation (a #fragment): no new load event
            try:
                async with asyncio.timeout(timeout_ms / 1000):
                    while True:
                        event = await events.get()
                        if event.get("name") == "load" and event.get("loaderId") == loader_id:
                            return
            except TimeoutError:
                with contextlib.suppress(CdpError):
                    await cdp.send("Page.stopLoading", session_id=session_id)
                raise RpcError(
                    BrowserErrorCode.LOAD_TIMEOUT, f"{url} did not finish loading within {timeout_ms} ms"
                ) from None

    async def _prepare(
        self, ctx: Context, url: str | None, viewport: Viewport | None, load_ms: int | None
    ) -> None:
        if viewport is not None and viewport != ctx.viewport:
            await self._apply_viewport(ctx, viewport)
        if url is not None:
            await self._load(ctx, url, load_ms)

    # -- screenshot ----------------------------------------------------------------------

    async def _screenshot(self, params: ScreenshotParams, call: CallContext) -> ScreenshotResult:
        return await self._serve(call, lambda ctx: self.take_screenshot(ctx, params))

    async def take_screenshot(self, ctx: Context, params: ScreenshotParams) -> ScreenshotResult:
        await self._prepare(ctx, params.url, params.viewport, params.load_timeout_ms)
        if not ctx.navigated:
            raise RpcError(BrowserErrorCode.NO_PAGE, "no page is open in your browser context: give a url")
        cdp, session_id = ctx.browser.cdp, ctx.session_id
        capture: dict[str, Any] = {"format": params.format, "fromSurface": True}
        if params.quality is not None:
            capture["quality"] = params.quality
        if params.selector is not None:
            capture["clip"] = await self._element_clip(ctx, params.selector)
            capture["captureBeyondViewport"] = True
        elif params.full_page:
            # Page.getLayoutMetrics: cssContentSize is the whole document in CSS pixels.
            metrics = await cdp.send("Page.getLayoutMetrics", session_id=session_id)
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            width = max(1, math.ceil(size["width"]))
            height = max(1, min(math.ceil(size["height"]), self.config.max_full_page_height))
            capture["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
            capture["captureBeyondViewport"] = True
        shot = await cdp.send("Page.captureScreenshot", capture, session_id=session_id)
        data = base64.b64decode(shot["data"])
        if len(data) > self.config.max_result_bytes:
            raise RpcError(
                BrowserErrorCode.TOO_LARGE,
                f"the {params.format} is {len(data)} bytes, over {self.config.max_result_bytes}: "
                "use jpeg, a selector or a smaller viewport",
            )
        try:
            fmt, width, height = image_size(data)
        except ImageError as exc:
            raise RpcError(
                ErrorCode.INTERNAL_ERROR, f"Chromium returned an unreadable image: {exc}"
            ) from None
        return ScreenshotResult(
            data=data,
            sha256=hashlib.sha256(data).hexdigest(),
            width=width,
            height=height,
            format=fmt,
            url=ctx.url,
        )

    async def _element_clip(self, ctx: Context, selector: str) -> dict[str, float]:
        # The element's box in document coordinates (viewport rect + scroll),
        # which is what Page.captureScreenshot's clip means with
        # captureBeyondViewport. json.dumps makes the selector a JS string literal.
        expression = (
            "(() => { const el = document.querySelector(" + json.dumps(selector) + ");"
            " if (el === null) return null; const r = el.getBoundingClientRect();"
            " return {x: r.left + window.scrollX, y: r.top + window.scrollY,"
            " width: r.width, height: r.height}; })()"
        )
        result = await ctx.browser.cdp.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session_id=ctx.session_id
        )
        if "exceptionDetails" in result:
            raise RpcError(
                ErrorCode.INVALID_PARAMS, f"invalid selector {selector!r}: {_exception_text(result)}"
            )
        box = result.get("result", {}).get("value")
        if box is None:
            raise RpcError(
                BrowserErrorCode.ELEMENT_NOT_FOUND, f"no element matches {selector!r} on {ctx.url}"
            )
        if box["width"] <= 0 or box["height"] <= 0:
            raise RpcError(
                BrowserErrorCode.ELEMENT_NOT_FOUND, f"the element {selector!r} has no size (hidden?)"
            )
        return {**box, "scale": 1}

    # -- browser_js ----------------------------------------------------------------------

    async def _browser_js(self, params: BrowserJsParams, call: CallContext) -> BrowserJsResult:
        return await self._serve(call, lambda ctx: self.run_script(ctx, params))

    async def run_script(self, ctx: Context, params: BrowserJsParams) -> BrowserJsResult:
        await self._prepare(ctx, params.url, None, params.load_timeout_ms)
        cdp, session_id = ctx.browser.cdp, ctx.session_id
        evaluate = {
            "expression": params.script,
            "returnByValue": True,
            "awaitPromise": params.await_promise,
            # Runtime.evaluate's own timeout terminates synchronous code
            # (V8 TerminateExecution); our asyncio timeout covers a promise
            # that never settles. The margin lets V8's, the cleaner one, win.
            "timeout": params.timeout_ms,
            "userGesture": True,
        }
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(params.timeout_ms / 1000 + 0.1):
                result = await cdp.send("Runtime.evaluate", evaluate, session_id=session_id)
        except TimeoutError:
            await self._recover_page(ctx)
            raise RpcError(
                BrowserErrorCode.SCRIPT_TIMEOUT, f"the script did not finish within {params.timeout_ms} ms"
            ) from None
        except CdpError as exc:
            # V8's termination reads "Execution was terminated", or, with
            # awaitPromise (Chromium 156), a bare -32603 "Internal error".
            timed_out = loop.time() - started >= params.timeout_ms / 1000
            if "terminated" in exc.message or (timed_out and exc.code == -32603):
                raise RpcError(
                    BrowserErrorCode.SCRIPT_TIMEOUT,
                    f"the script did not finish within {params.timeout_ms} ms",
                ) from None
            if "by value" in exc.message or "reference chain" in exc.message:
                raise RpcError(
                    BrowserErrorCode.NOT_SERIALIZABLE,
                    f"the script's value cannot be returned as JSON ({exc.message}); return plain data",
                ) from None
            raise
        value = _js_value(result, ctx.url)
        if len(json.dumps(value)) > self.config.max_result_bytes:
            raise RpcError(BrowserErrorCode.TOO_LARGE, "the script's value is too large for one message")
        return BrowserJsResult(value=value, url=ctx.url)

    async def _recover_page(self, ctx: Context) -> None:
        """After a script timeout: if the page no longer answers, replace it.

        A promise that never settles leaves the page usable; code spinning in
        a callback does not (V8's timeout only covers the evaluation itself).
        """
        try:
            async with asyncio.timeout(1.0):
                await ctx.browser.cdp.send(
                    "Runtime.evaluate", {"expression": "0", "timeout": 500}, session_id=ctx.session_id
                )
        except (TimeoutError, CdpError):
            log.warning("the page of %s stopped answering; replacing it", ctx.owner)
            if ctx.session_id is not None:
                self._by_session.pop(ctx.session_id, None)
            ctx.dead_target, ctx.session_id, ctx.target_id = ctx.target_id, None, None
            ctx.navigated = False

    # -- browser.navigate / browser.close_context --------------------------------------------

    async def _navigate(self, params: NavigateParams, call: CallContext) -> NavigateResult:
        async def work(ctx: Context) -> NavigateResult:
            await self._prepare(ctx, params.url, params.viewport, params.load_timeout_ms)
            title = await ctx.browser.cdp.send(
                "Runtime.evaluate",
                {"expression": "document.title", "returnByValue": True},
                session_id=ctx.session_id,
            )
            return NavigateResult(url=ctx.url, title=str(title.get("result", {}).get("value") or ""))

        return await self._serve(call, work)

    async def _close_context(self, params: CloseContextParams, call: CallContext) -> CloseContextResult:
        ctx = self._contexts.get(call.caller or "anonymous")
        if ctx is None:
            return CloseContextResult(closed=False)
        async with ctx.lock:
            if ctx.closed:
                return CloseContextResult(closed=False)
            self._forget(ctx)
            await self._dispose(ctx)
        return CloseContextResult(closed=True)

    # -- for benchmarks and tests -------------------------------------------------------

    def context_of(self, owner: str) -> Context | None:
        """The live context of ``owner`` (a client id), if it has one."""
        return self._contexts.get(owner)


async def _crash_error(browser: Chromium, exc: CdpClosed) -> RpcError:
    """BROWSER_CRASHED, saying how Chromium ended when it did (pipe EOF comes first)."""
    if browser.alive and not isinstance(exc, BrowserCrashed):
        return RpcError(BrowserErrorCode.BROWSER_CRASHED, f"{exc} during the request; retry")
    try:
        async with asyncio.timeout(1.0):
            status = await browser.wait_exited()
    except TimeoutError:
        return RpcError(BrowserErrorCode.BROWSER_CRASHED, f"{exc}; Chromium is being relaunched: retry")
    return RpcError(
        BrowserErrorCode.BROWSER_CRASHED,
        f"Chromium {describe_status(status)} during the request; it is being relaunched: retry",
    )


def _navigation_error(url: str, error_text: str, refused: list[ProxyEvent]) -> RpcError:
    """Why a navigation failed: the proxy's refusal when it made one, else Chromium's error.

    The document request fails before anything of the page loads, so a
    refusal recorded on the context's listener during a failed navigation is
    that request's (or its redirect's): subresources come only after it.
    """
    blocked = next((event for event in refused if event.blocked), None)
    if blocked is not None:
        return RpcError(
            ErrorCode.FORBIDDEN,
            f"{blocked.url} is blocked by the browser's network policy: {blocked.address} is "
            f"{blocked.rule} (an operator can allow it: personad browser --allow)",
            {
                "error": URL_BLOCKED,
                "url": blocked.url,
                "address": blocked.address,
                "rule": blocked.rule,
                "requested_url": url,
            },
        )
    if refused:
        failure = refused[0]
        return RpcError(
            BrowserErrorCode.NAVIGATION_FAILED,
            f"could not load {url}: {failure.error} ({failure.detail})",
            {"url": url, "error": failure.error},
        )
    return RpcError(
        BrowserErrorCode.NAVIGATION_FAILED,
        f"could not load {url}: {error_text}",
        {"url": url, "error": error_text},
    )


def _exception_text(result: dict[str, Any]) -> str:
    details = result.get("exceptionDetails") or {}
    exception = details.get("exception") or {}
    text = exception.get("description") or exception.get("value") or details.get("text") or "exception"
    return str(text)


def _js_value(result: dict[str, Any], url: str) -> Any:
    """A Runtime.evaluate result as a JSON value, or the RpcError it deserves."""
    details = result.get("exceptionDetails")
    if details is not None:
        full = _exception_text(result)
        first_line = full.splitlines()[0] if full else "exception"
        raise RpcError(
            BrowserErrorCode.SCRIPT_ERROR,
            f"the page's script threw: {first_line[:500]}",
            {
                "exception": full[:4000],
                "text": details.get("text"),
                "line_number": details.get("lineNumber"),
                "column_number": details.get("columnNumber"),
                "url": url,
            },
        )
    remote = result.get("result") or {}
    if "value" in remote:
        return remote["value"]
    if remote.get("type") == "undefined":
        return None
    unserializable = remote.get("unserializableValue")
    if unserializable == "-0":
        return -0.0
    what = unserializable or remote.get("type", "value")
    raise RpcError(
        BrowserErrorCode.NOT_SERIALIZABLE,
        f"the script's value ({what}) cannot be returned as JSON; convert it first, e.g. String(value)",
    )


async def run_worker(worker: BrowserWorker) -> None:
    """The CLI's main: serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.run(stop)

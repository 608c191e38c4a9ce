"""The web console in a real browser (Debian's Chromium, driven by Playwright) against real processes.

The session's bus and SmolLM2 inference service (``chat_services``), a real
persona daemon (Lumen), the registry and PersonaHub's service, all started
once for this module; one browser, a fresh context (a fresh tab's storage)
per test. The console is logged in the way a person does it: a pairing link
from :class:`PairingStore`, opened in the browser.

Every page the tests visit is screenshotted (full page) into
``$PERSONAD_SCREENSHOTS`` (default: a temporary folder, printed at the end)
and checked on the way: every control has an accessible name (Chromium's own
accessibility tree, through CDP), the landmarks are there, and the page
raised no script error and no Content-Security-Policy violation.

One file past 500 lines on purpose: the fixtures (processes, browser, the
page checks) and the tests share one expensive module-scoped setup, and
splitting them would start every process twice.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import json
import os
import pkgutil
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

import protocol.commands
from daemon.doors.pairing import PairingStore
from protocol import ErrorCode
from tests.conftest import WAIT, ChatServices, Proc

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PERSONA = "lumen"
GHOST = "ghost"  # in the registry, never started: an offline persona
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
#: Playwright's waits are in milliseconds.
MS = int(WAIT * 1000)
expect.set_options(timeout=MS)
#: Roles a person operates; each must have an accessible name.
CONTROL_ROLES = {
    "button",
    "link",
    "textbox",
    "searchbox",
    "combobox",
    "listbox",
    "checkbox",
    "radio",
    "spinbutton",
    "slider",
    "switch",
    "tab",
    "menuitem",
}


@dataclass
class Console:
    services: ChatServices
    http: str
    admin: str
    procs: list[Proc] = field(default_factory=list)

    def link(self, role: str = "admin") -> str:
        code = PairingStore(self.services.state.tokens()).issue(role=role)
        return f"{self.http}/#pair={code}"

    async def call(self, target: str, method: str, params: dict[str, Any] | None = None) -> Any:
        async with httpx.AsyncClient(timeout=WAIT * 4) as client:
            response = await client.post(
                f"{self.http}/v1/call/{target}/{method}",
                json=params or {},
                headers={"Authorization": f"Bearer {self.admin}"},
            )
        body = response.json()
        assert 200 == response.status_code, body
        return body["result"]


@pytest.fixture(scope="module")
def console(chat_services: ChatServices) -> Iterator[Console]:
    """Lumen, the registry and PersonaHub's service on the session's bus; stopped at the module's end."""
    persona = chat_services.start_persona(
        PERSONA, name="Lumen", description="A calm lighthouse keeper who answers in one short sentence."
    )
    registry = chat_services.start("registry")
    hub = chat_services.start("hub", "serve")
    registry.wait_for_line(r"serving cap:registry", timeout=WAIT * 2)
    chat_services.drain(registry)
    hub.wait_for_line(r"hub:main serving cap:hub", timeout=WAIT * 2)
    chat_services.drain(hub)
    admin = chat_services.state.admin_token  # type: ignore[attr-defined]
    http = chat_services.url.replace("ws://", "http://")
    yield Console(chat_services, http, admin, [persona, registry, hub])
    for proc in (hub, registry, persona):
        proc.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    folder = Path(os.environ.get("PERSONAD_SCREENSHOTS") or tmp_path_factory.mktemp("console-shots"))
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    line = f"console screenshots: {folder} ({len(list(folder.glob('*.png')))} pages)"
    # Past pytest's capture, so that it is seen on a passing run too.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\n{line}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


class Tab:
    """One browser tab on the console, with what went wrong in it."""

    def __init__(self, context: BrowserContext, page: Page, shots: Path) -> None:
        self.context = context
        self.page = page
        self.shots = shots
        self.script_errors: list[str] = []
        self.csp_violations: list[str] = []
        page.on("pageerror", lambda exc: self.script_errors.append(str(exc)))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.csp_violations.append(message.text)

    async def shoot(self, name: str) -> None:
        """A full-page screenshot, after checking the page's controls, landmarks and errors."""
        assert [] == await unnamed_controls(self.page), f"{name}: controls without an accessible name"
        for landmark in ("banner", "main"):
            assert 1 == await self.page.get_by_role(landmark).count(), f"{name}: no {landmark} landmark"
        assert [] == self.script_errors, name
        assert [] == self.csp_violations, name
        await self.page.screenshot(path=self.shots / f"{name}.png", full_page=True)


async def unnamed_controls(page: Page) -> list[str]:
    """Controls Chromium's accessibility tree gives no name (what a screen reader would announce)."""
    cdp = await page.context.new_cdp_session(page)
    try:
        tree = await cdp.send("Accessibility.getFullAXTree")
    finally:
        await cdp.detach()
    missing = []
    for node in tree["nodes"]:
        role = node.get("role", {}).get("value")
        if node.get("ignored") or role not in CONTROL_ROLES:
            continue
        if not str(node.get("name", {}).get("value", "")).strip():
            missing.append(f"{role} (backend node {node.get('backendDOMNodeId')})")
    return missing


@pytest_asyncio.fixture(loop_scope="module")
async def tab(browser: Browser, shots: Path) -> AsyncIterator[Tab]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(MS)
    yield Tab(context, page, shots)
    await context.close()


async def log_in(tab: Tab, console: Console, role: str = "admin") -> None:
    await tab.page.goto(console.link(role))
    await expect(tab.page.get_by_role("heading", level=1, name="Bus")).to_be_visible()


async def stored_login(page: Page) -> dict[str, Any] | None:
    raw = await page.evaluate("sessionStorage.getItem('personad.console')")
    return None if raw is None else json.loads(raw)


# -- logging in ------------------------------------------------------------------------


async def test_a_pairing_link_logs_in_once_and_leaves_no_code_behind(
    tab: Tab, console: Console, browser: Browser
) -> None:
    link = console.link()
    code = link.split("#pair=")[1]
    page = tab.page
    await page.goto(link)
    await expect(page.get_by_role("heading", level=1, name="Bus")).to_be_visible()
    assert code not in page.url
    assert page.url.endswith("/#/bus")
    login = await stored_login(page)
    assert login is not None
    entry = console.services.state.tokens().verify(login["token"])
    assert entry is not None
    assert (entry.name, "admin") == (login["name"], entry.role)
    assert 0 == await page.evaluate("localStorage.length")  # the tab's session storage only
    await expect(page.get_by_text(f"Signed in as {entry.name}")).to_be_visible()

    # The code worked once: the same link in another tab is refused, as the bus says it.
    other = await browser.new_context()
    try:
        again = await other.new_page()
        await again.goto(link)
        await expect(again.get_by_role("heading", level=1, name="Log in to personad")).to_be_visible(
            timeout=MS
        )
        refusal = again.get_by_role("alert")
        await expect(refusal).to_contain_text("UNAUTHENTICATED (-32006)")
        await expect(refusal).to_contain_text("this pairing code is unknown, used or expired")
        assert code not in again.url
        assert await stored_login(again) is None
        await again.screenshot(path=tab.shots / "login-refused.png", full_page=True)
    finally:
        await other.close()

    # A token revoked while the page is open: the next poll is a 401, and the page says why.
    assert 1 == console.services.state.tokens().revoke(entry.id)
    await expect(page.get_by_role("heading", level=1, name="Log in to personad")).to_be_visible()
    await expect(page.get_by_role("alert")).to_contain_text("UNAUTHENTICATED (-32006): invalid bearer token")
    assert await stored_login(page) is None
    await tab.shoot("login")

    # A token pasted by hand works too; logging out forgets it.
    await page.get_by_label("Bus token").fill(console.admin)
    await page.get_by_role("button", name="Use this token").click()
    await expect(page.get_by_role("heading", level=1, name="Bus")).to_be_visible()
    assert console.admin == (await stored_login(page) or {}).get("token")
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_text("Logged out: this tab no longer holds the token.")).to_be_visible()
    assert await stored_login(page) is None


# -- the bus page ----------------------------------------------------------------------


async def test_the_bus_page_shows_clients_capabilities_and_live_rates(tab: Tab, console: Console) -> None:
    await log_in(tab, console)
    page = tab.page
    clients = page.get_by_role("table", name=re.compile(r"connected clients"))
    for client_id in (f"persona:{PERSONA}", "inference:main", "registry:main", "hub:main"):
        await expect(clients).to_contain_text(client_id)
    capabilities = page.get_by_role("table", name="Capabilities and their providers")
    await expect(capabilities.get_by_role("row").filter(has_text="cap:registry")).to_contain_text(
        "registry:main"
    )
    # Rates need two polls of /metrics: the second one draws them.
    await expect(page.locator(".rate")).to_have_attribute("data-rate", re.compile(r"^\d+\.\d{3}$"))
    await expect(
        page.get_by_role("img", name=re.compile(r"Requests per second over the last \d+ polls"))
    ).to_be_visible()
    await tab.shoot("bus")
    await page.emulate_media(color_scheme="dark")
    await tab.shoot("bus-dark")


# -- personas ----------------------------------------------------------------------------


async def test_the_personas_page_lists_the_registry_with_connection_stack_and_lineage(
    tab: Tab, console: Console
) -> None:
    await console.call(
        "cap:registry",
        "persona.create",
        {"profile": {"id": GHOST, "name": "Ghost", "role": "a keeper who left", "status": "active"}},
    )
    await console.call(
        "cap:registry", "persona.fork", {"source_persona_id": PERSONA, "new_persona_id": "lumen-2"}
    )
    await log_in(tab, console)
    page = tab.page
    await page.get_by_role("link", name="Personas").click()
    table = page.get_by_role("table", name=re.compile(r"\d+ personas"))

    def row(link: str) -> Any:
        return table.get_by_role("row").filter(has=page.get_by_role("link", name=link, exact=True))

    await expect(row("Lumen lumen")).to_contain_text("connected")
    await expect(row("Lumen lumen")).to_contain_text("base model")
    await expect(row("Ghost ghost")).to_contain_text("offline")
    await expect(row("Lumen lumen-2")).to_contain_text("fork of lumen")
    await expect(row("Lumen lumen-2")).to_contain_text("draft")
    await tab.shoot("personas")


# -- a persona: chat, memories, and the other tabs ------------------------------------------


async def test_chat_streams_the_reply_into_the_page_as_it_comes(tab: Tab, console: Console) -> None:
    await log_in(tab, console)
    page = tab.page
    await page.goto(f"{console.http}/#/persona/{PERSONA}/chat")
    await expect(page.get_by_role("heading", level=1, name=re.compile("^Lumen"))).to_be_visible()
    box = page.get_by_label(f"Message to {PERSONA}")

    # The keyboard reaches the chat box from the tabs.
    await page.get_by_role("tab", name="Chat").focus()
    for _ in range(5):
        if await box.evaluate("el => el === document.activeElement"):
            break
        await page.keyboard.press("Tab")
    assert await box.evaluate("el => el === document.activeElement"), "Tab never reached the chat box"

    # Watch the reply grow: every change of its text while it streams.
    await page.evaluate(
        """() => {
          window.replyStates = [];
          const log = document.querySelector('[role=log]');
          new MutationObserver(() => {
            const reply = [...log.querySelectorAll('.msg-persona')].at(-1);
            if (reply) window.replyStates.push({
              text: reply.querySelector('.msg-text').textContent,
              streaming: reply.classList.contains('streaming'),
            });
          }).observe(log, {subtree: true, childList: true, characterData: true, attributes: true});
        }"""
    )
    await page.get_by_label("Temperature").fill("0")
    await page.get_by_label("Most tokens").fill("24")
    await box.focus()
    await page.keyboard.type("Where do you keep the lamp oil?")
    await page.keyboard.press("Enter")
    reply = page.locator(".msg-persona").last
    await expect(reply.locator(".reply-figures summary")).to_contain_text("tokens", timeout=MS * 4)

    final = (await reply.locator(".msg-text").text_content() or "").strip()
    assert final
    states = await page.evaluate("window.replyStates")
    grown = [s["text"].strip() for s in states if s["streaming"] and s["text"].strip()]
    assert len(set(grown)) >= 2, f"the reply did not grow while streaming: {states}"
    assert all(final.startswith(text) for text in grown), (grown, final)
    assert int(await reply.get_attribute("data-pieces") or 0) >= 2
    assert "polite" == await page.get_by_role("log").get_attribute("aria-live")
    await reply.locator(".reply-figures summary").click()
    await expect(reply).to_contain_text("SmolLM2")
    await tab.shoot("persona-chat")


async def test_remember_a_memory_find_it_and_forget_it(tab: Tab, console: Console) -> None:
    await log_in(tab, console)
    page = tab.page
    await page.goto(f"{console.http}/#/persona/{PERSONA}/memories")
    text = "Lumen keeps the lamp oil in the blue cellar under the stairs."
    await page.get_by_label("Memory", exact=True).fill(text)
    await page.get_by_label("About (subject)").fill("lamp")
    await page.get_by_label("Relevance (0 to 1)").fill("0.9")
    await page.get_by_role("button", name="Remember").click()
    stored = page.get_by_text(re.compile(r"Remembered as memory (\d+); it is on disk\."))
    await expect(stored).to_be_visible()
    memory_id = int(re.search(r"memory (\d+)", await stored.text_content() or "").group(1))  # type: ignore[union-attr]

    await page.get_by_role("searchbox", name="Search memories").fill("cellar")
    await page.get_by_role("button", name="Search").click()
    found = page.locator(f'[data-memory-id="{memory_id}"]')
    await expect(found).to_contain_text(text)
    await expect(found).to_contain_text("about lamp")
    hits = (await console.call(f"persona:{PERSONA}", "memory.recall", {"query": "cellar"}))["hits"]
    assert memory_id in [h["id"] for h in hits]
    await tab.shoot("persona-memories")

    await found.get_by_role("button", name=f"Forget memory {memory_id}").click()
    await found.get_by_role("button", name=f"Confirm: forget memory {memory_id} for good").click()
    await expect(page.get_by_text(f"Forgot memory {memory_id}.")).to_be_visible()
    await expect(found).to_have_count(0)
    hits = (await console.call(f"persona:{PERSONA}", "memory.recall", {"query": "cellar"}))["hits"]
    assert memory_id not in [h["id"] for h in hits]


async def test_goals_analytics_plugins_and_academy_tabs(tab: Tab, console: Console) -> None:
    target = f"persona:{PERSONA}"
    await console.call(
        target, "goals.set", {"title": "Paint the lamp room", "priority": 0.8, "progress": 0.4}
    )
    for score, task in ((72, "logbook"), (88, "lamp care"), (91, "lamp care")):
        await console.call(
            target,
            "persona.performance.record",
            {"session_id": "console-e2e", "task": task, "score": score, "success": True, "duration_s": 600},
        )
    await log_in(tab, console)
    page = tab.page
    await page.goto(f"{console.http}/#/persona/{PERSONA}/goals")
    goals = page.get_by_role("table", name=re.compile(r"\bgoals?\b"))
    await expect(goals).to_contain_text("Paint the lamp room")
    await tab.shoot("persona-goals")

    await page.get_by_role("tab", name="Analytics").click()
    assert page.url.endswith(f"/#/persona/{PERSONA}/analytics")
    await expect(page.get_by_role("img", name=re.compile("Average score"))).to_be_visible()
    await expect(page.get_by_role("img", name="Top topics by mean score")).to_contain_text("lamp care")
    records = page.locator(".figure").filter(has=page.get_by_text("Records", exact=True)).locator("dd")
    await expect(records).to_have_text("3")
    await tab.shoot("persona-analytics")

    await page.get_by_role("tab", name="Plugins").click()
    await expect(page.get_by_text("No plugin is installed")).to_be_visible()
    await tab.shoot("persona-plugins")

    await page.get_by_role("tab", name="Academy").click()
    await expect(page.get_by_text("No Academy round yet")).to_be_visible()
    runs = page.get_by_role("region", name="Academy runs")
    # cap:academy answers if another module started it on the session's bus; either way it is stated.
    await expect(
        runs.get_by_text(re.compile(r"TARGET_OFFLINE \(-32001\)|No run since|Runs of"))
    ).to_be_visible()
    await tab.shoot("persona-academy")


# -- sessions -----------------------------------------------------------------------------


async def test_a_session_shows_its_insights_live(tab: Tab, console: Console) -> None:
    session = (await console.call("cap:registry", "session.create", {"topic": "lamp maintenance"}))["session"]
    sid = session["id"]
    await console.call("cap:registry", "session.participants.add", {"session_id": sid, "persona_id": PERSONA})
    insight = {
        "session_id": sid,
        "persona_id": PERSONA,
        "insight_type": "observation",
        "relevance_score": 0.7,
    }
    await console.call("cap:registry", "session.insight", {**insight, "content": "The wick needs trimming."})
    await log_in(tab, console)
    page = tab.page
    await page.get_by_role("link", name="Sessions").click()
    await page.get_by_role("link", name="lamp maintenance").click()
    feed = page.get_by_role("log", name="Messages in lamp maintenance")
    await expect(page.get_by_text(f"following room {session['room']}")).to_be_visible()
    await expect(feed).to_contain_text("The wick needs trimming.")  # before the page opened: Lumen's copy
    await console.call("cap:registry", "session.insight", {**insight, "content": "Fog expected at dusk."})
    await expect(feed).to_contain_text("Fog expected at dusk.")  # live, through /v1/events?room=
    await expect(feed.locator(".insight")).to_have_count(2)
    await tab.shoot("sessions")
    await console.call("cap:registry", "session.close", {"session_id": sid})


# -- jobs ---------------------------------------------------------------------------------


async def test_a_hub_job_started_from_the_page_shows_its_progress_to_the_end(
    tab: Tab, console: Console
) -> None:
    await log_in(tab, console)
    page = tab.page
    await page.get_by_role("link", name="Jobs").click()
    await expect(page.get_by_text("following hub.progress and academy.progress")).to_be_visible()
    # Every change of every job's progress cell, as the page draws it.
    await page.evaluate(
        """() => {
          window.jobStates = [];
          new MutationObserver(() => {
            for (const cell of document.querySelectorAll('[data-job]')) {
              window.jobStates.push({...cell.dataset});
            }
          }).observe(document.querySelector('main'), {subtree: true, childList: true});
        }"""
    )
    form = page.get_by_role("form", name="Start a PersonaHub job")
    await form.get_by_label("Personas").fill("2")
    await form.get_by_label("Quality").select_option("fast")
    await form.get_by_label("Seed").fill("5")
    await form.get_by_role("button", name="Start job").click()
    started = form.get_by_text(re.compile(r"Started (\S+)\."))
    await expect(started).to_be_visible()
    job_id = re.search(r"Started (\S+)\.", await started.text_content() or "").group(1)  # type: ignore[union-attr]
    cell = page.locator(f'[data-job="{job_id}"]')
    await expect(cell).to_have_attribute("data-state", "done", timeout=MS * 20)

    states = [s for s in await page.evaluate("window.jobStates") if s["job"] == job_id]
    live = [s for s in states if s["state"] in ("generating", "checking")]
    assert live, f"no progress was drawn before the end: {states}"
    done = [int(s["done"]) for s in states]
    assert done == sorted(done), "progress went backwards"
    final = states[-1]
    assert final["done"] == final["total"]
    [job] = (await console.call("cap:hub", "hub.status", {"job_id": job_id}))["jobs"]
    assert "done" == job["state"]
    row = page.get_by_role("row").filter(has=cell)
    await expect(row).to_contain_text(f"{job['figures']['done']} / {job['figures']['total']}")
    await tab.shoot("jobs")


# -- errors, as the bus states them -------------------------------------------------------


async def test_an_offline_persona_and_a_forbidden_call_read_as_the_bus_states_them(
    tab: Tab, console: Console, browser: Browser
) -> None:
    await log_in(tab, console)
    page = tab.page
    await page.goto(f"{console.http}/#/persona/{GHOST}/chat")
    await expect(page.get_by_role("heading", level=1, name=re.compile("^Ghost"))).to_be_visible()
    await expect(page.get_by_text(f"persona:{GHOST} is not on the bus")).to_be_visible()
    await page.get_by_label(f"Message to {GHOST}").fill("Are you there?")
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_role("alert")).to_contain_text(
        f"TARGET_OFFLINE (-32001): persona:{GHOST} is not connected"
    )
    await tab.shoot("persona-offline")

    # An observer's token: the bus page without /metrics, the registry FORBIDDEN.
    observer = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        watcher = Tab(observer, await observer.new_page(), tab.shots)
        watcher.page.set_default_timeout(MS)
        await log_in(watcher, console, role="observer")
        name = (await stored_login(watcher.page) or {})["name"]
        metrics = watcher.page.get_by_role("alert").filter(has_text="/metrics")
        await expect(metrics).to_contain_text(f"HTTP 403: token {name!r} lacks the 'metrics' grant")
        await watcher.shoot("bus-observer")
        await watcher.page.get_by_role("link", name="Personas").click()
        await expect(watcher.page.get_by_role("alert")).to_contain_text(
            f"FORBIDDEN (-32003): token {name!r} may not call persona.list on cap:registry"
        )
        await watcher.shoot("personas-forbidden")
    finally:
        await observer.close()


async def test_the_console_names_every_error_code_the_protocol_defines(tab: Tab, console: Console) -> None:
    await tab.page.goto(console.http + "/")
    table = await tab.page.evaluate("import('/errors.js').then(m => ({...m.ERROR_CODES}))")
    codes: dict[str, str] = {str(int(c)): c.name for c in ErrorCode}
    for info in pkgutil.iter_modules(protocol.commands.__path__):
        module = importlib.import_module(f"protocol.commands.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, enum.IntEnum)
                and value.__name__.endswith("ErrorCode")
            ):
                codes.update({str(int(c)): c.name for c in value})
    assert codes == table


async def test_a_persona_s_page_shows_the_stack_it_runs_now(
    tab: Tab, console: Console, tmp_path: Path
) -> None:
    """A stack loaded at run time (as the demo persona loads its own) is what the header says, not the
    profile's, which names none; once unloaded, the base model again."""
    from daemon.inference.adapters import AdapterStore
    from tests.daemon.inference.conftest import save_random_adapter

    folder = save_random_adapter(
        console.services.model, tmp_path / "adapter", seed=3, rank=2, targets=["q_proj"], scale=0.01
    )
    AdapterStore.for_state(console.services.state.root).import_folder(folder, "consolestyle")
    target = f"persona:{PERSONA}"
    await console.call(target, "lora.load_stack", {"name": "consolestyle"})
    try:
        await log_in(tab, console)
        page = tab.page
        await page.goto(f"{console.http}/#/persona/{PERSONA}/chat")
        profile = page.locator('dl[aria-label="Profile"]')
        await expect(profile).to_contain_text("consolestyle (auto)")
    finally:
        await console.call(target, "lora.unload")
    await page.reload()
    await expect(profile).to_contain_text("base model")

"""``personad up``: the embedded default, supervised.

Starts the bus, waits for its /healthz, starts the persona registry (which
imports ``<config-dir>/personas/*.toml``), trains the demo adapters once,
starts the inference service, the headless browser worker, the Academy
(cap:academy), skill sharing (cap:skills and mesh:main) and PersonaHub
(cap:hub), then one
persona daemon per *active* persona in the registry (the TOML ones and any
created through the registry), each as its own process with its own token
(as under systemd), and restarts any child that dies, with backoff. While it
runs it follows the registry (supervisor_personas.py): a persona made active
(``persona.generate`` with ``start: true``, ``persona.update``) is started, one
archived, merged or deleted is stopped. One Ctrl-C (or SIGTERM) stops them
all: personas first, then the bus, each with SIGTERM and a grace period
before SIGKILL.

With ``--nats`` it runs one machine's part of a federated cluster
(docs/federation.md): its bus joins the cluster as ``--node``, its services
are named after the node, its children are given the other machines' buses
(``--peer``) to move to, and with ``--no-personas`` it runs no registry and
no personas (one machine of the cluster does).

(Just past 500 lines since ``--nats``; the seam when it grows: the demo
(``_demo`` and its page server) into a module of its own, as the registry
following already is in supervisor_personas.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import RpcError

from .client import BusClient
from .doors.cli import console_link
from .errors import BusUnavailable
from .persona.config import PersonaConfig, list_persona_ids, load_persona_config
from .runtime import PARENT_PID_ENV
from .state import StateDir, find_token
from .supervisor_personas import RegistryFollower

log = logging.getLogger("personad.up")

GRACE_SECONDS = 10.0
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    restarts: list[float] = field(default_factory=list)
    #: Copies the child's stdout to ours once its URL was read; ends with the child.
    forwarder: asyncio.Task[None] | None = None

    async def start(self, *, capture_stdout: bool = False) -> None:
        # The child stops by itself if we die without stopping it (runtime.die_with_parent).
        env = {**self.env, PARENT_PID_ENV: str(os.getpid())}
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, env=env, stdout=asyncio.subprocess.PIPE if capture_stdout else None
        )
        log.info("started %s pid=%d", self.name, self.process.pid)

    async def read_url(self, timeout: float = 20.0) -> str:
        """The ws:// URL the bus prints once it listens (its port may have been 0)."""
        assert self.process is not None
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while line := (await self.process.stdout.readline()).decode():
                sys.stdout.write(line)
                if match := re.search(r"listening on (ws://\S+)", line):
                    self.forwarder = asyncio.get_running_loop().create_task(_forward(self.process.stdout))
                    return match.group(1)
        raise BusUnavailable(f"the bus exited with status {await self.process.wait()} before listening")

    async def stop(self) -> None:
        proc = self.process
        if proc is None or proc.returncode is not None:
            await self._end_forwarder()
            return
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(GRACE_SECONDS):
                await proc.wait()
        except TimeoutError:
            log.warning("%s did not stop in %.0fs; killing it", self.name, GRACE_SECONDS)
            proc.kill()
            await proc.wait()
        await self._end_forwarder()

    async def _end_forwarder(self) -> None:
        if self.forwarder is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # the pipe closes with the child
                    await self.forwarder
            self.forwarder.cancel()


DEMO_PAGE = """<!doctype html>
<html><head><title>personad demo</title>
<style>body{font:20px sans-serif;margin:40px;background:#f4f1ea}#answer{color:#a33;font-size:48px}</style>
</head><body><h1>Hello from personad</h1>
<p>The answer is <span id="answer">42</span>.</p></body></html>
"""


class Supervisor:
    def __init__(
        self,
        state: StateDir,
        config_dir: Path,
        *,
        host: str,
        port: int,
        inference: bool = True,
        browser: bool = True,
        academy: bool = True,
        skills: bool = True,
        hub: bool = True,
        demo: bool = True,
        personas: bool = True,
        nats: str | None = None,
        node: str | None = None,
        peers: tuple[str, ...] = (),
    ) -> None:
        self.inference = inference
        #: Whether this machine runs the registry and the personas (one machine
        #: of a cluster does; the others run a bus node and services only).
        self.run_personas = personas
        #: The bus joins a federated cluster through this NATS server (docs/federation.md).
        self.nats = nats
        self.node = node
        #: The other machines' bus URLs: the children move there if this node dies.
        self.peers = peers
        self.browser = browser
        self.academy = academy
        self.skills = skills
        self.hub = hub
        self.demo = demo
        self.oneshots: list[Child] = []
        self._page_server: http.server.ThreadingHTTPServer | None = None
        self.state = state
        self.config_dir = config_dir
        self.host = host
        self.port = port
        self.url = f"ws://{host}:{port}"
        self.children: list[Child] = []
        #: The persona daemons running now, by id (each is also in ``children``).
        self.personas: dict[str, Child] = {}
        #: Set when a child is added or removed, so that _supervise watches the new set.
        self._changed = asyncio.Event()
        self._base_env: dict[str, str] = {}
        self.follower: RegistryFollower | None = None

    def _argv(self, *verb: str) -> list[str]:
        return [sys.executable, "-m", "daemon", "--state-dir", str(self.state.root), *verb]

    def _bus_argv(self) -> list[str]:
        argv = self._argv("bus", "--host", self.host, "--port", str(self.port))
        if self.nats is not None:
            argv += ["--nats", self.nats]
        if self.node is not None:
            argv += ["--node", self.node]
        return argv

    def _named(self) -> list[str]:
        """In a cluster, a service's client id names its machine: inference:<node>, browser:<node>.

        One id is held by one connection cluster-wide, so two machines' inference:main would
        keep replacing each other.
        """
        return ["--name", self.node] if self.node is not None else []

    def _children_url(self) -> str:
        """PERSONAD_URL for the children: this machine's bus first, then its peers."""
        return ",".join([self.url, *self.peers])

    async def run(self) -> int:
        token = self.state.init()
        if token is not None:
            print(f"initialised {self.state.root}; admin token (shown once):\nPERSONAD_TOKEN={token}")
        for pid in list_persona_ids(self.config_dir):
            load_persona_config(self.config_dir, pid)  # a broken TOML fails here, before any start

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            # Start-up can take minutes (the demo adapters train once): one
            # Ctrl-C must be able to stop it too.
            startup = asyncio.ensure_future(self._start_all())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait([startup, stopper], return_when=asyncio.FIRST_COMPLETED)
            if not startup.done():
                startup.cancel()
                await asyncio.gather(startup, return_exceptions=True)
                return 0
            stopper.cancel()
            startup.result()
            if self.follower is None:  # a machine without personas (--no-personas)
                return await self._supervise(stop)
            following = asyncio.ensure_future(self.follower.follow())
            try:
                return await self._supervise(stop)
            finally:
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
        finally:
            if self.follower is not None:  # before the bus goes, so it does not try to reconnect
                await self.follower.close()
            for child in reversed([*self.children, *self.oneshots]):  # personas first, the bus last
                await child.stop()
            if self._page_server is not None:
                self._page_server.shutdown()
            print("personad: all stopped", flush=True)

    async def _start_all(self) -> None:
        base_env = {
            **os.environ,
            "PERSONAD_URL": self._children_url(),
            "PERSONAD_STATE_DIR": str(self.state.root),
        }
        base_env.pop("NOTIFY_SOCKET", None)  # the children are ours, not systemd's
        base_env.pop("PERSONAD_TOKEN", None)  # each child finds or is given its own
        bus = Child("bus", self._bus_argv(), base_env)
        self.children.append(bus)
        await bus.start(capture_stdout=True)
        try:
            self.url = await bus.read_url()
        except TimeoutError:
            raise BusUnavailable("the bus did not start listening within 20s") from None
        # From now on the port is fixed, also for restarts.
        self.port = int(self.url.rsplit(":", 1)[1])
        bus.argv = self._bus_argv()
        base_env["PERSONAD_URL"] = self._children_url()
        self._base_env = base_env
        await self._wait_healthy(bus)

        configs: dict[str, tuple[PersonaConfig, Path]] = {}
        if self.run_personas:
            registry = Child(
                "registry", self._argv("registry", "--config-dir", str(self.config_dir)), base_env
            )
            self.children.append(registry)
            await registry.start()
            self.follower = RegistryFollower(
                self.state,
                self.config_dir,
                self.url,
                start=self._start_persona,
                stop=self._stop_persona,
                running=lambda: self.personas,
            )
            configs = await self.follower.open()

        if self.inference and self.demo:
            # Trains legal → legal.patent → legal.patent.uspto once (cached by
            # data hash), in a child so this process never loads torch.
            print("training the demo adapters (once; later starts reuse them)…", flush=True)
            trainer = Child("adapter demo", self._argv("adapter", "demo"), base_env)
            self.oneshots.append(trainer)
            await trainer.start()
            assert trainer.process is not None
            if await trainer.process.wait() != 0:
                raise BusUnavailable("training the demo adapters failed (see above)")
        services = []
        if self.inference:
            services.append(Child("inference", self._argv("inference", *self._named()), base_env))
        if self.browser:
            argv = self._argv("browser", *self._named())
            if self.demo:
                # The demo page is on 127.0.0.1, which the worker's network
                # policy denies: allow exactly its address and port, nothing more.
                self._serve_demo_page()
                assert self._page_server is not None
                argv += ["--allow", f"127.0.0.1:{self._page_server.server_address[1]}"]
            services.append(Child("browser", argv, base_env))
        if self.academy:
            # cap:academy: enrols personas (academy.enroll, or their own [academy]
            # auto_enroll patterns) and trains them through cap:inference.
            services.append(Child("academy", self._argv("academy", "serve"), base_env))
        if self.skills:
            # cap:skills (the tracker) and mesh:main, which seeds this state dir's
            # adapter store and fetches skills into it for its personas.
            services.append(Child("skills", self._argv("skills", "serve"), base_env))
        if self.hub:
            # cap:hub: PersonaHub jobs, which generate through cap:inference.
            services.append(Child("hub", self._argv("hub", "serve"), base_env))
        for service in services:
            self.children.append(service)
            await service.start()
        for pid, (config, config_dir) in configs.items():
            await self._start_persona(pid, config, config_dir, "")
        await self._show_ready(list(configs))

    async def _start_persona(self, pid: str, config: PersonaConfig, config_dir: Path, why: str) -> None:
        """One persona's daemon, with its own token (created or narrowed to its config's grants)."""
        env = {
            **self._base_env,
            "PERSONAD_TOKEN": self.state.persona_token(
                pid, create=True, grants=tuple(config.grants), provides=tuple(config.capabilities)
            ),
            "PERSONAD_CONFIG_DIR": str(config_dir),
        }
        child = Child(f"persona:{pid}", self._argv("persona", pid), env)
        self.children.append(child)
        self.personas[pid] = child
        self._changed.set()
        await child.start()
        if why:
            print(f"persona:{pid} started: {why}", flush=True)

    async def _stop_persona(self, pid: str, why: str) -> None:
        """Stop one persona's daemon and forget it (it is no longer watched, so not restarted)."""
        child = self.personas.pop(pid, None)
        if child is None:
            return
        self.children.remove(child)
        self._changed.set()
        await child.stop()
        print(f"persona:{pid} stopped: {why}", flush=True)

    async def _wait_healthy(self, bus: Child, timeout: float = 20.0) -> None:
        http = f"http://{self.host}:{self.port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert bus.process is not None
            if bus.process.returncode is not None:
                raise BusUnavailable(
                    f"the bus exited with status {bus.process.returncode} "
                    f"(is port {self.port} already in use?)"
                )
            try:
                body = await asyncio.to_thread(_get, http)
                if json.loads(body).get("status") == "ok":
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            await asyncio.sleep(0.1)
        raise BusUnavailable(f"the bus did not answer {http} within {timeout:.0f}s")

    async def _show_ready(self, persona_ids: list[str], timeout: float = 360.0) -> None:
        token = find_token(self.state)
        async with BusClient(self.url, token=token, kind="cli", name="up") as client:
            deadline = time.monotonic() + timeout
            services = (
                ("inference", self.inference),
                ("browser", self.browser),
                ("academy", self.academy),
                ("skills", self.skills),
                ("hub", self.hub),
            )
            wanted = [c for c, on in services if on]
            # On a fresh state dir the model converts (~20 s) and exports (~40 s) once.
            for capability in wanted:
                while not (await client.call("bus.clients", {"capability": capability}))["clients"]:
                    if time.monotonic() > deadline:
                        raise BusUnavailable(f"no provider of cap:{capability} came up")
                    await asyncio.sleep(0.2)
                print(f"cap:{capability} is up", flush=True)
            for pid in persona_ids:
                while True:
                    try:
                        status = await client.call("persona.status", to=f"persona:{pid}", deadline_ms=2000)
                        break
                    except RpcError as exc:
                        if time.monotonic() > deadline:
                            raise BusUnavailable(f"persona {pid} did not come up: {exc}") from None
                        await asyncio.sleep(0.2)
                print(
                    f"persona:{pid} ({status['name']}) is up: session dir {status['session_dir']}", flush=True
                )
            if self.demo and persona_ids:
                await self._demo(client, persona_ids[0])
        http_url = self.url.replace("ws://", "http://", 1)
        # A fresh one-time link each start: the page trades its code for a token.
        login = await asyncio.to_thread(console_link, self.state, http_url)
        print(
            f"\nweb console: {http_url}/\n  log in (one-time link, 10 minutes): {login}\n"
            f"  a new link later: .venv/bin/personad console",
            flush=True,
        )
        if not persona_ids:  # a cluster machine without personas (--no-personas)
            print(f"\npersonad is running on {self.url}. Ctrl-C stops everything.", flush=True)
            return
        print(
            f"\npersonad is running on {self.url}. In another terminal:\n"
            f"  .venv/bin/personad chat {persona_ids[0]}\n"
            f"  .venv/bin/personad call persona:{persona_ids[0]} persona.status\n"
            f'  .venv/bin/personad call persona:{persona_ids[0]} chat \'{{"message": "Hello!"}}\'\n'
            f"  .venv/bin/personad status\n"
            "Ctrl-C stops everything.",
            flush=True,
        )

    async def _demo(self, client: BusClient, persona_id: str) -> None:
        """What the embedded default can do, shown once: chat with and without
        the demo stack, a screenshot and a value read from a local page."""
        target = f"persona:{persona_id}"
        if self.inference:
            from .inference.demo import show_demo  # no torch: the module loads it lazily

            await show_demo(client, persona_id)
        if self.browser:
            page = self._serve_demo_page()  # the one the worker was allowed to reach
            shot = await client.call(
                "screenshot", {"url": page, "filename": "demo-page.png"}, to=target, deadline_ms=60_000
            )
            value = await client.call(
                "browser_js",
                {"url": page, "script": "document.querySelector('#answer').textContent"},
                to=target,
                deadline_ms=60_000,
            )
            print(f"\n{target} took a screenshot of {page}:")
            print(
                f"  saved {shot['abs_path']} ({shot['width']}x{shot['height']}, "
                f"sha256 {shot['sha256'][:16]}…)"
            )
            print(f"  and read #answer with browser_js: {value['value']!r}")

    def _serve_demo_page(self) -> str:
        """A small local page for the browser demo, on 127.0.0.1, until we stop (started once)."""
        if self._page_server is not None:
            return f"http://127.0.0.1:{self._page_server.server_address[1]}/"
        body = DEMO_PAGE.encode("utf-8")

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._page_server = server
        threading.Thread(target=server.serve_forever, name="demo-page", daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}/"

    async def _supervise(self, stop: asyncio.Event) -> int:
        """Restart children that die; give up on one that dies too often.

        The set watched is rebuilt whenever the follower adds or removes a
        persona; one it stopped on purpose is no longer in ``children`` and
        is never restarted, even if it was waiting for its restart.
        """
        while not stop.is_set():
            self._changed.clear()
            waits = {asyncio.ensure_future(c.process.wait()): c for c in self.children if c.process}
            stopper = asyncio.ensure_future(stop.wait())
            changed = asyncio.ensure_future(self._changed.wait())
            done, _ = await asyncio.wait([*waits, stopper, changed], return_when=asyncio.FIRST_COMPLETED)
            for fut in [*waits, stopper, changed]:
                if fut not in done:
                    fut.cancel()
            if stop.is_set():
                return 0
            for fut in done:
                child = waits.get(fut)
                if child is None or child not in self.children:
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW] + [now]
                code = fut.result()
                if len(child.restarts) > MAX_RESTARTS:
                    log.error(
                        "%s died %d times in %.0fs; stopping everything",
                        child.name,
                        len(child.restarts),
                        RESTART_WINDOW,
                    )
                    return 1
                delay = min(30.0, 0.5 * 2 ** (len(child.restarts) - 1))
                log.warning("%s exited with status %s; restarting in %.1fs", child.name, code, delay)
                await asyncio.sleep(delay)
                if child in self.children:  # not stopped by the follower meanwhile
                    await child.start()
        return 0


async def _forward(stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.read()  # type: ignore[no-any-return]

"""The load: many real clients on one bus, a mixed workload, every call timed.

Clients, by share of ``--clients``:

- **callers** (kind ``cli``): each sends one request at a time, at Poisson
  intervals that add up to ``--rate``, drawn from ``MIX`` (bus, personas,
  registry, bundle imports, inference, the browser, a soak service); writes
  go through the ledger, and ``memory.remember`` and
  ``persona.performance.record`` carry an idempotency key and are sent again
  with it while an answer leaves their outcome open;
- **services** (kind ``service``) that provide ``cap:soak-echo`` and answer;
- **subscribers** to ``soak.load.*`` (what callers publish);
- **room members**, ten to a room, who talk in it;
- **intruders** holding an observer token, whose every ``memory.remember``
  must be FORBIDDEN and never written (the ledger's *refused*);
- one-shot CLI-like callers (connect, one call, close), from the callers' mix.

Every call has a deadline; one that gets no answer by its deadline plus
``HANG_GRACE`` is *hung*, which the soak counts as a failure. Latencies are
kept per method (all of them: a float each) with their start times, for
percentiles overall and over time.

(About 640 lines, one class and its mix, not split: the mix's functions are written
against Load's ``_timed`` and ``_write`` and the faults reuse three of them; a module of
its own would be functions on another module's private methods. The seam, if it grows:
the mix, ``OPS`` and its ``_ping`` … ``_oneshot`` functions, with ``_write`` made public.)
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from soak_artifacts import Bundles, import_params
from soak_ledger import Ledger

from daemon.client import BusClient
from daemon.errors import BusUnavailable
from protocol import ErrorCode, RpcError
from protocol.commands.browser import BrowserErrorCode
from protocol.commands.inference import InferenceErrorCode
from protocol.commands.persona_erase import PersonaEraseErrorCode

#: Every error code the protocol documents (docs/protocol.md, docs/methods.md): the bus's and
#: JSON-RPC's, and those of the browser, inference and erasure.
DOCUMENTED = {
    int(c): c.name
    for enum in (ErrorCode, BrowserErrorCode, InferenceErrorCode, PersonaEraseErrorCode)
    for c in enum
}

#: Seconds past a call's deadline after which it counts as hung.
HANG_GRACE = 5.0
DEADLINE_MS = 10_000
#: A keyed write whose answer leaves its outcome open is sent again up to RETRIES times,
#: RETRY_AFTER_S, then twice that, later (a fault's recovery takes seconds).
RETRIES = 2
RETRY_AFTER_S = 3.0
OUTCOME_OPEN = frozenset({ErrorCode.CONNECTION_LOST, ErrorCode.TARGET_OFFLINE, ErrorCode.TIMEOUT})


def code_name(code: Any) -> str:
    try:
        return DOCUMENTED[int(code)]
    except (KeyError, ValueError, TypeError):
        return f"UNDOCUMENTED({code})"


def outcome_of(exc: RpcError) -> str:
    """An error's name, with its data.reason when it has one (INTERNAL_ERROR/disk_full)."""
    name = code_name(exc.code)
    if isinstance(exc.data, dict) and isinstance(exc.data.get("reason"), str):
        name += f"/{exc.data['reason']}"
    return name


@dataclass
class Stats:
    t0: float = field(default_factory=time.monotonic)
    times: dict[str, array.array[float]] = field(default_factory=dict)
    latencies: dict[str, array.array[float]] = field(default_factory=dict)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (seconds since start, method, error) of each error, for the chart.
    error_times: list[tuple[float, str, str]] = field(default_factory=list)
    hung: list[tuple[float, str]] = field(default_factory=list)
    #: Exceptions that are not RpcError: a bug in the client or the soak.
    crashes: Counter[str] = field(default_factory=Counter)
    events_received: int = 0
    room_messages_received: int = 0
    served_by_services: int = 0
    #: Writes sent again with their idempotency key after an answer that leaves the outcome
    #: open (CONNECTION_LOST, TARGET_OFFLINE, TIMEOUT), and the retries answered as replays
    #: (the first attempt had landed).
    retried: Counter[str] = field(default_factory=Counter)
    replayed: Counter[str] = field(default_factory=Counter)

    def record(self, method: str, started: float, outcome: str) -> None:
        now = time.monotonic()
        self.times.setdefault(method, array.array("d")).append(started - self.t0)
        self.latencies.setdefault(method, array.array("d")).append((now - started) * 1000)
        if outcome != "ok":
            self.errors[(method, outcome)] += 1
            self.error_times.append((started - self.t0, method, outcome))

    def total(self) -> int:
        return sum(len(v) for v in self.latencies.values())


class Limiter:
    """At most ``n`` of one kind of call in flight across all callers (chat, the browser)."""

    def __init__(self, n: int) -> None:
        self.free = n

    @contextlib.contextmanager
    def take(self) -> Any:
        if self.free <= 0:
            yield False
            return
        self.free -= 1
        try:
            yield True
        finally:
            self.free += 1


@dataclass
class Load:
    url: str
    admin_token: str
    intruder_token: str
    personas: list[str]
    ledger: Ledger
    clients: int = 100
    rate: float = 500.0
    #: A second bus node of the same cluster: a quarter of the clients start there, and
    #: every client moves to the other node when its own dies (BusClient's URL list).
    other_url: str = ""
    stats: Stats = field(default_factory=Stats)
    running: bool = True
    #: Seconds the callers spent paused for ledger checks (see pause()).
    paused_s: float = 0.0
    _go: asyncio.Event = field(default_factory=asyncio.Event)
    _paused_at: float | None = None
    _clients: list[BusClient] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _chat: Limiter = field(default_factory=lambda: Limiter(1))
    _browser: Limiter = field(default_factory=lambda: Limiter(1))
    _oneshot: Limiter = field(default_factory=lambda: Limiter(4))
    _heavy: Limiter = field(default_factory=lambda: Limiter(8))
    #: The registry imports one bundle at a time: one in flight is all it can use.
    _import: Limiter = field(default_factory=lambda: Limiter(1))
    bundles: Bundles = field(default_factory=Bundles)
    #: The browser's users: a few clients of their own, each with its browser context, as
    #: personas are (the worker keeps one context per requester, up to its max_contexts).
    browser_users: list[BusClient] = field(default_factory=list)

    # -- the clients -------------------------------------------------------------------------

    def pause(self) -> None:
        """Hold the callers (the mixed workload) before their next call; subscribers, room
        members and intruders go on. For the ledger's check after a fault: under the full
        load its reads compete with the load's for a persona's one reader, and on a
        saturated machine each check took minutes, longer each time as rows piled up."""
        if self._paused_at is None:
            self._paused_at = time.monotonic()
            self._go.clear()

    def resume(self) -> None:
        if self._paused_at is not None:
            self.paused_s += time.monotonic() - self._paused_at
            self._paused_at = None
        self._go.set()

    async def start(self) -> None:
        self._go.set()
        n = self.clients
        services = max(1, n // 50)
        subscribers = max(1, n // 10)
        members = max(2, n // 10)
        intruders = max(1, n // 33)
        callers = max(1, n - services - subscribers - members - intruders)
        plan: list[tuple[str, int]] = [
            ("service", services),
            ("subscriber", subscribers),
            ("member", members),
            ("intruder", intruders),
            ("caller", callers),
        ]
        per_caller = self.rate / callers
        for i in range(3):
            self.browser_users.append(await self._connect("browser user", i))
        self._clients += self.browser_users
        # Everyone connects first (50 handshakes at a time), then the load starts: clients
        # already at work would slow the handshakes of the rest.
        roles = [role for role, count in plan for _ in range(count)]
        connected: list[BusClient] = []
        for start in range(0, len(roles), 50):
            batch = range(start, min(start + 50, len(roles)))
            connected += await asyncio.gather(*(self._connect(roles[i], i) for i in batch))
        self._clients += connected
        for index, (role, client) in enumerate(zip(roles, connected, strict=True)):
            self._tasks.append(asyncio.create_task(self._run(role, index, client, per_caller)))

    def url_for(self, index: int) -> str:
        if not self.other_url:
            return self.url
        return f"{self.other_url},{self.url}" if index % 4 == 3 else f"{self.url},{self.other_url}"

    async def _connect(self, role: str, index: int) -> BusClient:
        # Every call carries DEADLINE_MS unless it names its own: _timed counts a call
        # unanswered by its deadline plus HANG_GRACE as hung, so the two must agree.
        kwargs: dict[str, Any] = {"reconnect": True, "backoff_max": 1.0, "default_deadline_ms": DEADLINE_MS}
        url = self.url_for(index)
        if role == "service":

            async def echo(request: Any, ctx: Any) -> Any:
                self.stats.served_by_services += 1
                return {"echo": request.params}

            client = BusClient(
                url,
                token=self.admin_token,
                kind="service",
                name=f"soak-echo-{index}",
                capabilities=["soak-echo"],
                handler=echo,
                **kwargs,
            )
        elif role in ("subscriber", "member"):
            # Subscriptions and rooms belong to the connection (docs/protocol.md): after a
            # reconnect (the bus was restarted) a client subscribes and joins again.
            me: list[BusClient] = []
            client = BusClient(
                url,
                token=self.admin_token,
                kind="cli",
                name=f"soak-{role}-{index}",
                on_notification=self._on_event if role == "subscriber" else self._on_room,
                on_state=lambda state: self._again(state, me[0], role, index),
                **kwargs,
            )
            me.append(client)
        elif role == "intruder":
            client = BusClient(
                url, token=self.intruder_token, kind="cli", name=f"soak-intruder-{index}", **kwargs
            )
        elif role == "browser user":
            client = BusClient(
                url, token=self.admin_token, kind="cli", name=f"soak-browser-{index}", **kwargs
            )
        else:
            client = BusClient(url, token=self.admin_token, kind="cli", name=f"soak-caller-{index}", **kwargs)
        await client.start()
        await client.wait_connected(30)
        return client

    def _again(self, state: str, client: BusClient, role: str, index: int) -> None:
        if state != "connected" or client.reconnects == 0 or not self.running:
            return
        if role == "subscriber":
            call = lambda: client.subscribe("soak.load.*")  # noqa: E731
            method = "bus.subscribe"
        else:
            call = lambda: client.call("bus.room.join", {"room": f"soak-room-{index // 10}"})  # noqa: E731
            method = "bus.room.join"

        async def again() -> None:
            with contextlib.suppress(RpcError):
                await self._timed(method, call)

        self._tasks.append(asyncio.create_task(again()))

    def _on_event(self, message: Any) -> None:
        if message.method == "event":
            self.stats.events_received += 1

    def _on_room(self, message: Any) -> None:
        if message.method == "room.message":
            self.stats.room_messages_received += 1

    async def _run(self, role: str, index: int, client: BusClient, rate: float) -> None:
        rng = random.Random(index)
        if role == "subscriber":
            await self._timed("bus.subscribe", lambda: client.subscribe("soak.load.*"))
            return
        if role == "service":
            return
        if role == "member":
            room = f"soak-room-{index // 10}"
            await self._timed("bus.room.join", lambda: client.call("bus.room.join", {"room": room}))
        while self.running:
            await asyncio.sleep(rng.expovariate(rate) if role == "caller" else rng.uniform(0.5, 1.5))
            if not self.running:
                return
            if role == "member":
                await self._timed(
                    "bus.room.send",
                    lambda: client.call("bus.room.send", {"room": room, "data": {"n": index}}),
                )
            elif role == "intruder":
                await self._intrude(client, rng)
            else:
                await self._go.wait()
                await self._one(client, rng)

    async def stop(self) -> None:
        self.running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._clients), return_exceptions=True)

    # -- one call ------------------------------------------------------------------------------

    async def _timed(
        self, method: str, call: Callable[[], Awaitable[Any]], deadline_ms: int = DEADLINE_MS
    ) -> Any:
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(call(), deadline_ms / 1000 + HANG_GRACE)
        except RpcError as exc:
            self.stats.record(method, started, outcome_of(exc))
            raise
        except BusUnavailable as exc:  # a new connection while the bus is down: the client says so
            self.stats.record(method, started, "BusUnavailable")
            raise RpcError(ErrorCode.CONNECTION_LOST, str(exc)) from None
        except TimeoutError:
            self.stats.record(method, started, "HUNG")
            self.stats.hung.append((started - self.stats.t0, method))
            raise RpcError(ErrorCode.TIMEOUT, "hung: no answer past the deadline") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not an answer at all: a defect somewhere
            self.stats.record(method, started, f"EXC:{type(exc).__name__}")
            self.stats.crashes[f"{method}: {type(exc).__name__}: {exc}"] += 1
            raise RpcError(ErrorCode.INTERNAL_ERROR, str(exc)) from None
        self.stats.record(method, started, "ok")
        return result

    async def _one(self, client: BusClient, rng: random.Random) -> None:
        op = rng.choices(MIX_NAMES, MIX_WEIGHTS)[0]
        persona = f"persona:{rng.choice(self.personas)}"
        with contextlib.suppress(RpcError):
            await OPS[op](self, client, rng, persona)

    async def _intrude(self, client: BusClient, rng: random.Random) -> None:
        target = f"persona:{rng.choice(self.personas)}"
        nonce = self.ledger.nonce()
        entry = self.ledger.begin("memory", target, nonce, {"content": f"intruder {nonce}"})
        try:
            await self._timed(
                "memory.remember (no grant)",
                lambda: client.call("memory.remember", {"content": f"intruder {nonce}"}, to=target),
            )
        except RpcError as exc:
            if code_name(exc.code) == "FORBIDDEN":
                Ledger.settle(entry, refused=True)
            else:
                Ledger.settle(entry, error=exc)
            return
        # Written without a grant: the ledger check reports it (acked, yet the intruder had no grant).
        Ledger.settle(entry, refused=True)
        self.stats.crashes["memory.remember answered an intruder without the grant"] += 1

    async def _write(
        self,
        kind: str,
        method: str,
        client: BusClient,
        target: str,
        params: dict[str, Any],
        expect: dict[str, Any],
        nonce: str,
        deadline_ms: int = DEADLINE_MS,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """One write through the ledger; "ok" or the error's name. A write whose params carry
        an ``idempotency_key`` is sent again with it (by the same client: keys are per caller)
        while its answer leaves the outcome open, as a client that means to retry does: the
        ledger then holds it to one row, the first attempt's if that one landed."""
        entry = self.ledger.begin(kind, target, nonce, expect, extra)
        attempts = RETRIES + 1 if "idempotency_key" in params else 1
        for attempt in range(attempts):
            try:
                result = await self._timed(
                    method,
                    lambda: client.call(method, params, to=target, deadline_ms=deadline_ms),
                    deadline_ms,
                )
                break
            except RpcError as exc:
                if attempt + 1 < attempts and exc.code in OUTCOME_OPEN:
                    self.stats.retried[method] += 1
                    await asyncio.sleep(RETRY_AFTER_S * (attempt + 1))
                    continue
                Ledger.settle(entry, error=exc)
                return outcome_of(exc)
        if attempt and result.get("replayed"):
            self.stats.replayed[method] += 1
        row_id = result["profile"]["id"] if kind in ("profile", "import") else result.get("id")
        Ledger.settle(entry, row_id=row_id)
        return "ok"


# -- the mix -----------------------------------------------------------------------------------

Op = Callable[[Load, BusClient, random.Random, str], Awaitable[Any]]


async def _ping(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    return await load._timed("bus.ping", lambda: c.call("bus.ping"))


async def _publish(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    topic = f"soak.load.{rng.randrange(8)}"
    return await load._timed("bus.publish", lambda: c.publish(topic, {"at": time.time()}))


async def _clients(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    return await load._timed("bus.clients", lambda: c.call("bus.clients", {"kind": "persona"}))


async def _persona_ping(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    return await load._timed("persona.ping", lambda: c.call("persona.ping", to=persona))


async def _echo(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    return await load._timed(
        "soak.echo", lambda: c.call("soak.echo", {"n": rng.random()}, to="cap:soak-echo")
    )


async def _remember(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    nonce = load.ledger.nonce()
    content = f"The soak wrote {nonce} at {time.time():.3f}."
    subject = f"subject-{rng.randrange(20)}"
    relevance = round(rng.random(), 3)
    memory = {"content": content, "subject": subject, "relevance": relevance, "kind": "soak"}
    # What is sent is what must read back, field for field; the key makes it safe to retry.
    params = {**memory, "idempotency_key": nonce}
    return await load._write("memory", "memory.remember", c, persona, params, memory, nonce)


async def _recall(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    return await load._timed(
        "memory.recall", lambda: c.call("memory.recall", {"query": "soak wrote", "limit": 5}, to=persona)
    )


async def _performance(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    nonce = load.ledger.nonce()
    params = {
        "session_id": f"soak-session-{rng.randrange(5)}",
        "task": f"task {nonce}",
        "score": float(rng.randrange(101)),
        "success": rng.random() < 0.8,
        "duration_s": round(rng.uniform(1, 600), 2),
        "idempotency_key": nonce,
    }
    expect = {k: params[k] for k in ("session_id", "task", "score", "success", "duration_s")}
    return await load._write("performance", "persona.performance.record", c, persona, params, expect, nonce)


async def _knowledge(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    with load._heavy.take() as ok:
        if not ok:
            return await _ping(load, c, rng, persona)
        nonce = load.ledger.nonce()
        content = f"Knowledge item {nonce}: the soak keeps a ledger of acknowledged writes."
        relevance = round(rng.random(), 3)
        return await load._write(
            "knowledge",
            "persona.knowledge.add",
            c,
            persona,
            {"content": content, "context": "soak", "relevance_score": relevance},
            {"content": content, "context": "soak", "relevance": relevance},
            nonce,
            20_000,
        )


async def _profile_get(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    pid = persona.split(":", 1)[1]
    return await load._timed(
        "persona.get", lambda: c.call("persona.get", {"persona_id": pid}, to="cap:registry")
    )


async def _profile_list(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    return await load._timed("persona.list", lambda: c.call("persona.list", {"limit": 20}, to="cap:registry"))


async def _profile_create(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    nonce = load.ledger.nonce()
    pid = nonce.replace(":", "-")
    role = f"soak role {rng.randrange(10)}"
    profile = {
        "id": pid,
        "name": f"Soak {nonce}",
        "role": role,
        "status": "draft",
        "tags": [f"soak-{load.ledger.run}"],
    }
    return await load._write(
        "profile",
        "persona.create",
        c,
        "cap:registry",
        {"profile": profile},
        {"name": profile["name"], "role": role, "status": "draft"},
        nonce,
    )


async def _bundle_import(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    with load._import.take() as ok:
        if not ok:
            return await _ping(load, c, rng, persona)
        return await import_bundle(load, c, rng)


async def import_bundle(load: Load, c: BusClient, rng: random.Random) -> str:
    """persona.import of a bundle sealed for this call, carrying an adapter of its own."""
    nonce = load.ledger.nonce()
    pid = nonce.replace(":", "-")
    name, role = f"Imported {nonce}", f"soak import {rng.randrange(10)}"
    tag = f"soak-{load.ledger.run}-import"
    data_b64, sha = await asyncio.to_thread(load.bundles.make, pid, name, role, tag, rng.randrange(2**32))
    expect = {"name": name, "role": role, "status": "draft"}
    params = import_params(load.bundles, data_b64)
    extra = {"persona_id": pid, "adapter": sha}
    return await load._write(
        "import", "persona.import", c, "cap:registry", params, expect, nonce, 30_000, extra
    )


async def _embed(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    with load._heavy.take() as ok:
        if not ok:
            return await _ping(load, c, rng, persona)
        return await load._timed(
            "inference.embed",
            lambda: c.call(
                "inference.embed", {"texts": [f"soak sentence {rng.randrange(1000)}"]}, to="cap:inference"
            ),
        )


async def _chat(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    with load._chat.take() as ok:
        if not ok:
            return await _persona_ping(load, c, rng, persona)
        return await load._timed(
            "chat",
            lambda: c.call(
                "chat",
                {"message": "Say hello in five words.", "max_tokens": 16, "temperature": 0.0},
                to=persona,
                deadline_ms=60_000,
            ),
            60_000,
        )


async def _browser_js(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    with load._browser.take() as ok:
        if not ok:
            return await _ping(load, c, rng, persona)
        user = rng.choice(load.browser_users)
        return await load._timed(
            "browser_js",
            lambda: user.call("browser_js", {"script": "1 + 1"}, to="cap:browser", deadline_ms=20_000),
            20_000,
        )


async def _oneshot(load: Load, c: BusClient, rng: random.Random, persona: str) -> Any:
    """A CLI-like caller: a fresh connection, one call, gone."""
    with load._oneshot.take() as ok:
        if not ok:
            return await _ping(load, c, rng, persona)

        async def once() -> Any:
            async with BusClient(
                load.url, token=load.admin_token, kind="cli", default_deadline_ms=DEADLINE_MS
            ) as fresh:
                return await fresh.call("persona.status", to=persona)

        return await load._timed("cli one-shot", once)


OPS: dict[str, Op] = {
    "bus.ping": _ping,
    "bus.publish": _publish,
    "bus.clients": _clients,
    "persona.ping": _persona_ping,
    "soak.echo": _echo,
    "memory.remember": _remember,
    "memory.recall": _recall,
    "persona.performance.record": _performance,
    "persona.knowledge.add": _knowledge,
    "persona.get": _profile_get,
    "persona.list": _profile_list,
    "persona.create": _profile_create,
    "persona.import": _bundle_import,
    "inference.embed": _embed,
    "chat": _chat,
    "browser_js": _browser_js,
    "cli one-shot": _oneshot,
}
#: Relative weights of the callers' mix: mostly cheap bus and persona calls, writes for the ledger,
#: a trickle of the heavy ones (each also capped in flight by a Limiter).
MIX = {
    "bus.ping": 25,
    "bus.publish": 12,
    "bus.clients": 1,
    "persona.ping": 12,
    "soak.echo": 10,
    "memory.remember": 10,
    "memory.recall": 4,
    "persona.performance.record": 5,
    "persona.knowledge.add": 1,
    "persona.get": 4,
    "persona.list": 1,
    "persona.create": 1,
    "persona.import": 0.1,
    "inference.embed": 0.5,
    "chat": 0.2,
    "browser_js": 0.3,
    "cli one-shot": 0.5,
}
MIX_NAMES = list(MIX)
MIX_WEIGHTS = [MIX[n] for n in MIX_NAMES]

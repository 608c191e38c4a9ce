"""persona.generate on cap:registry: the model writes a profile (generate.py), the registry stores it.

One request does, in order:

1. ask ``inference.generate`` on cap:inference, held to the profile's
   grammar, within what is left of the caller's deadline (no provider:
   TARGET_OFFLINE; unusable output: GenerationFailed, translated at the
   boundary; never a template);
2. pick the id: the caller's ``persona_id`` (taken: INVALID_PARAMS, reason
   ``persona_exists``, checked before the model runs), or a slug of the
   generated name, the first free of ``ada``, ``ada-2``, ``ada-3`` …;
3. store it, draft, or active with ``start: true`` (store.create audits it);
4. publish ``registry.persona`` with ``start`` (events.py);
5. with ``start: true``, wait until ``persona:<id>`` is on the bus, within
   :data:`START_WAIT_SECONDS` and the caller's deadline: ``started`` says
   whether it came. The registry never starts a daemon itself: ``personad
   up`` follows the event; under systemd the operator starts the unit
   (docs/operations.md), and until then the profile stays active with
   ``started: false``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Final

from protocol import ErrorCode, RpcError
from protocol.commands import personas as m
from protocol.commands.inference import GenerateParams, GenerateResult
from protocol.profile import PersonaStatus, Profile

from ..client import CallContext
from ..dispatch import Dispatcher
from .boundary import RegistryEnv, actor, translate
from .errors import PersonaExists
from .events import publish_change
from .generate import complete_with, generate_profile

log = logging.getLogger("personad.registry")

#: The longest persona.generate waits for a started persona to join the bus
#: (a persona daemon imports, opens its brain and connects in a few seconds).
START_WAIT_SECONDS: Final = 60.0
#: Answer this long before the caller's deadline, so the answer beats the bus's TIMEOUT.
DEADLINE_MARGIN: Final = 0.5
#: The model's budget when the caller gave no deadline (a profile takes ~12 s on SmolLM2).
DEFAULT_GENERATION_SECONDS: Final = 300.0
_POLL_SECONDS: Final = 0.2
#: A generated id fits a systemd instance name: personad@<id> runs as the
#: dynamic user ``persona-<id>``, and user names have at most 31 characters,
#: so ids of at most 23; this leaves room for a ``-<n>`` suffix up to -999.
_SLUG_MAX: Final = 19
#: The id the library computes with before the real one is known (replaced before storing).
_PROVISIONAL: Final = "generating"
#: Two generations naming the same persona at the same moment: each retry takes the next free id.
_CREATE_ATTEMPTS: Final = 5


def slug(name: str) -> str:
    """An id from a generated name: lower case, runs of anything else one ``-`` (``O'Neil`` → ``o-neil``)."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return text[:_SLUG_MAX].rstrip("-") or "persona"


def free_id(db: Any, base: str) -> str:
    """The first of ``base``, ``base-2``, ``base-3`` … that names no stored persona (sync, on the store)."""
    rows = db.execute("SELECT id FROM profiles WHERE id = ? OR id LIKE ?", (base, f"{base}-%")).fetchall()
    taken = {row[0] for row in rows}
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def _taken(persona_id: str) -> RpcError:
    return RpcError(
        ErrorCode.INVALID_PARAMS,
        f"invalid params: persona_id: persona {persona_id!r} already exists in the registry",
        {"field": "persona_id", "reason": "persona_exists"},
    )


def _seconds_left(ctx: CallContext, default: float) -> float:
    """What is left of the caller's deadline, less the margin (``default`` when it gave none)."""
    if ctx.deadline is None:
        return default
    return ctx.deadline - asyncio.get_running_loop().time() - DEADLINE_MARGIN


async def _on_bus(ctx: CallContext, persona_id: str) -> bool:
    """Wait until ``persona:<id>`` is connected; False if it is not within the time allowed."""
    loop = asyncio.get_running_loop()
    end = loop.time() + min(START_WAIT_SECONDS, _seconds_left(ctx, START_WAIT_SECONDS))
    target = f"persona:{persona_id}"
    while True:
        try:
            listed = await ctx.client.call("bus.clients", {"kind": "persona"}, deadline_ms=5_000)
        except RpcError as exc:  # the profile is stored either way: report it as not started
            log.warning("could not ask the bus whether %s started: %s", target, exc.message)
            return False
        if any(c["id"] == target for c in listed["clients"]):
            return True
        if loop.time() + _POLL_SECONDS > end:
            return False
        await asyncio.sleep(_POLL_SECONDS)


def register(dispatcher: Dispatcher, env: RegistryEnv) -> None:
    """Register persona.generate on ``dispatcher``."""
    registry = env.registry

    async def generate(p: m.PersonaGenerateParams, ctx: CallContext) -> m.PersonaGenerateResult:
        if p.persona_id is not None:
            # Refused before the model spends seconds on it.
            exists = await registry.run(
                lambda db: db.execute("SELECT 1 FROM profiles WHERE id = ?", (p.persona_id,)).fetchone()
            )
            if exists is not None:
                raise _taken(p.persona_id)

        async def over_the_bus(params: GenerateParams) -> GenerateResult:
            seconds = _seconds_left(ctx, DEFAULT_GENERATION_SECONDS)
            raw = await ctx.client.call(
                "inference.generate",
                params.model_dump(mode="json", exclude_none=True),
                to="cap:inference",
                deadline_ms=max(1, int(seconds * 1000)),
            )
            return GenerateResult.model_validate(raw)

        result = await generate_profile(
            p, complete=complete_with(over_the_bus), persona_id=p.persona_id or _PROVISIONAL, now=time.time()
        )
        status = PersonaStatus.ACTIVE if p.start else PersonaStatus.DRAFT
        draft = result.profile.model_dump(mode="json")

        async def store_and_announce() -> Profile:
            base = slug(result.profile.name)
            for attempt in range(_CREATE_ATTEMPTS):
                persona_id = p.persona_id or await registry.run(free_id, base)
                profile = Profile.model_validate({**draft, "id": persona_id, "status": status.value})
                try:
                    stored: Profile = await registry.create(profile, actor=actor(ctx))
                    break
                except PersonaExists:
                    if p.persona_id is not None:
                        raise _taken(persona_id) from None
                    if attempt == _CREATE_ATTEMPTS - 1:
                        raise
            log.info("generated persona %s (%s) for %s", stored.id, status.value, actor(ctx))
            await publish_change(
                ctx.client, stored.id, status=stored.status.value, action=ctx.request.method, start=p.start
            )
            return stored

        # Shielded: a caller that gives up (the bus cancels at its deadline)
        # must not leave a stored persona that up never heard of.
        stored = await asyncio.shield(store_and_announce())
        persona_id = stored.id
        started = p.start and await _on_bus(ctx, persona_id)
        return m.PersonaGenerateResult(
            persona_id=persona_id,
            profile=stored,
            adjustments=result.adjustments,
            context_applied=result.context_applied,
            started=started,
        )

    dispatcher.register("persona.generate", translate(generate))

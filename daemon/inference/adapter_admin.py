"""``adapter.delete`` on ``cap:inference``: taking an adapter out of the shared store.

The inference service owns the store while it runs: it alone knows which
adapters its model has loaded, which stacks its callers pinned with
``inference.load_stack`` and which a running request is decoding with. So
deletes go through it, as admin work on the engine's worker thread (between
decode steps: no request starts or loads an adapter while the delete runs).

An adapter is refused (UNSUPPORTED, ``data.reason``):

* ``in_use`` — its hash is in a stack pinned by a caller still on the bus, or
  a running request holds its slot (or its merged copy is swapped in while a
  batch runs). Pins of callers that have left the bus are stale: they are
  dropped, not obeyed, or a persona that died without ``inference.unload``
  would keep its adapters undeletable forever.
* ``has_children`` — another stored name stacks on it (AdapterStore.delete).

Once deleted, whatever the engine still holds of it (its slot, cat
combinations and merged copies that include it) is dropped too, so its
weights leave memory as well as disk.

Who may delete: admins, and the registry (its token carries
``adapter.delete@cap:inference`` for persona.delete); persona tokens do not
hold the grant, and the service refuses persona callers anyway, as
adapter.merge does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

from protocol import ErrorCode, RpcError
from protocol.commands.adapters import AdapterDeleteParams, AdapterDeleteResult

from .adapters import AdapterBusy, AdapterHashMismatch
from .errors import InferenceError, refuse_store_writer, to_rpc

if TYPE_CHECKING:
    from ..client import CallContext
    from ..dispatch import Dispatcher
    from .decoding import Engine

__all__ = ["check_delete_caller", "delete_in_engine", "in_use", "register_delete_command"]

log = logging.getLogger("personad.inference.adapters")


def check_delete_caller(caller: str | None) -> None:
    """RpcError(FORBIDDEN) for a persona: deleting from the shared store is an admin's job."""
    refuse_store_writer(caller, "adapter.delete", "only an admin (or the registry) deletes from")


def in_use(engine: Engine, sha256: str, *, connected: Collection[str] | None = None) -> str | None:
    """Who or what uses the adapter with this hash now, in words; None when nothing does.

    ``connected``: the client ids on the bus; pins of owners not among them
    are stale and dropped. None (not known) keeps and obeys every pin.
    """
    pins: dict[str, tuple[str, ...]] = engine._pins
    if connected is not None:
        for owner in [o for o in pins if o not in connected]:
            log.info("dropping the stale stack pin of %s (no longer on the bus)", owner)
            del pins[owner]
    owners = sorted(owner for owner, stack in pins.items() if sha256 in stack)
    if owners:
        return f"its stack is pinned by {', '.join(owners)} (inference.load_stack)"
    return engine.in_use(sha256)


def delete_in_engine(
    engine: Engine, params: AdapterDeleteParams, *, connected: Collection[str] | None = None
) -> AdapterDeleteResult:
    """The delete on the engine's worker thread: refuse if in use, remove from the store, forget it."""
    record = engine.store.get(params.name)  # AdapterNotFound first: nothing to check for a missing name
    sha = params.sha256 or record.sha256
    if sha == record.sha256 and (user := in_use(engine, sha, connected=connected)) is not None:
        raise AdapterBusy(
            f"adapter {params.name!r} is in use: {user}; retry once it is released", reason="in_use"
        )
    removed_sha, blob_removed = engine.store.delete(params.name, sha256=params.sha256)
    if blob_removed:
        engine.forget(removed_sha)
    log.info(
        "deleted adapter %s (%s…), weights %s",
        params.name,
        removed_sha[:12],
        "removed" if blob_removed else "kept",
    )
    return AdapterDeleteResult(name=params.name, sha256=removed_sha, blob_removed=blob_removed)


def _wire_error(exc: InferenceError) -> RpcError:
    if isinstance(exc, AdapterHashMismatch):
        return RpcError(ErrorCode.INVALID_PARAMS, str(exc), {"field": "sha256"})
    if isinstance(exc, AdapterBusy):
        return RpcError(int(exc.code), str(exc), {"reason": exc.reason})
    return to_rpc(exc)


async def _connected(ctx: CallContext) -> set[str] | None:
    """The client ids on the bus now, or None if the bus would not say (then every pin counts)."""
    try:
        answer = await ctx.client.call("bus.clients", {}, deadline_ms=5_000)
    except RpcError as exc:
        log.warning("bus.clients failed (%s): keeping every stack pin", exc.message)
        return None
    return {client["id"] for client in answer["clients"]}


def register_delete_command(dispatcher: Dispatcher, backend: Any) -> None:
    """Serve ``adapter.delete`` from an in-process engine (``backend.run`` queues it as admin work)."""

    async def delete(params: AdapterDeleteParams, ctx: CallContext) -> AdapterDeleteResult:
        check_delete_caller(ctx.caller)
        run: Callable[[Callable[[Engine], AdapterDeleteResult]], Awaitable[AdapterDeleteResult]] | None = (
            getattr(backend, "run", None)
        )
        if run is None:
            raise RpcError(int(ErrorCode.METHOD_NOT_FOUND), "adapter.delete needs the engine in this process")
        connected = await _connected(ctx)
        try:
            if (known := getattr(backend, "known", None)) is not None:
                await known(params.name)  # a missing name: refused now, not after a request
            return await run(lambda engine: delete_in_engine(engine, params, connected=connected))
        except InferenceError as exc:
            raise _wire_error(exc) from None

    dispatcher.register("adapter.delete", delete)

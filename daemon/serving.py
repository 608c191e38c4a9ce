"""How a service daemon serves the bus until told to stop: one loop for every provider.

The registry, the Academy, the browser worker and the inference service all
do the same thing around their own work: join the bus with their client,
keep the systemd watchdog fed, run their background tasks, and stop on the
first of two things, ``stop`` being set (SIGTERM, SIGINT, a test) or the bus
refusing the token for good (revoked: the client gives up), which is an
:class:`~daemon.errors.AuthError` naming the service. :func:`serve_until`
is that loop; :func:`announce` is the one line each prints (and sends to
systemd as READY) once the bus has accepted it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from .client import BusClient
from .errors import AuthError
from .systemd_notify import Notifier

__all__ = ["announce", "serve_until"]

log = logging.getLogger("personad")


async def serve_until(
    client: BusClient,
    notifier: Notifier,
    stop: asyncio.Event,
    *,
    who: str,
    background: Sequence[Coroutine[Any, Any, Any]] = (),
    on_stopping: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve with ``client`` until ``stop`` is set, or the bus refuses it for good (AuthError).

    ``background`` runs alongside and is cancelled at the end; ``on_stopping``
    runs once the service is stopping, before that (to end work in flight).
    ``who`` names the service in the log and the error ("registry",
    "browser headless" …).
    """
    failure: BaseException | None = None
    async with client, asyncio.TaskGroup() as tg:
        stopped = tg.create_task(stop.wait(), name="stop")
        failed = tg.create_task(client.wait_failed(), name="bus-failure")
        tasks = [tg.create_task(work) for work in background]
        tasks.append(tg.create_task(notifier.run_watchdog(), name="watchdog"))
        await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
        if failed.done():
            failure = failed.result()
        notifier.stopping(f"{who}: stopping")
        if on_stopping is not None:
            await on_stopping()
        for task in [*tasks, stopped, failed]:
            task.cancel()
    if failure is not None:
        raise AuthError(f"{who}: {failure}")
    log.info("%s stopped", who)


async def announce(client: BusClient, notifier: Notifier, verb: str, line: Callable[[], str]) -> bool:
    """Once the bus has accepted ``client``: print ``personad <verb>: <line>`` and tell systemd READY.

    False (and nothing said) when the bus refused it for good: :func:`serve_until` reports that.
    """
    try:
        await client.wait_connected()
    except Exception:
        return False
    text = line()
    print(f"personad {verb}: {text}", flush=True)
    notifier.ready(text)
    return True

"""What the registry tells the bus when a persona changes: the ``registry.persona`` event.

Every mutation the registry makes publishes one event on :data:`TOPIC` with
``{"persona_id", "status", "action", "start"}``: ``status`` is the profile's
status after the change (``deleted`` once erased), ``action`` the method
that changed it (``persona.create``, ``persona.fork`` …), and ``start`` says
whether the caller asked for the daemon to be started (persona.generate's
``start: true``). ``personad up`` subscribes and starts or stops persona
daemons to match. Anybody may publish on any topic, so a subscriber must
act only on events whose ``publisher`` (stamped by the bus) is
:data:`PUBLISHER`. The event holds ids and states, never profile content.

Publishing is best effort: the change is stored and audited before the
event goes out, and a bus that is briefly away loses nothing the registry
holds (``personad up`` also reads ``persona.list`` at start).
"""

from __future__ import annotations

import logging
from typing import Final

from ..client import BusClient

log = logging.getLogger("personad.registry")

TOPIC: Final = "registry.persona"
#: The only client whose registry.persona events count.
PUBLISHER: Final = "registry:main"


async def publish_change(
    client: BusClient, persona_id: str, *, status: str, action: str, start: bool = False
) -> None:
    """Publish one change; a failure is logged, never raised (the change itself is stored)."""
    data = {"persona_id": persona_id, "status": status, "action": action, "start": start}
    try:
        await client.publish(TOPIC, data)
    except Exception as exc:  # the bus away or the link closing: the store already holds the change
        log.warning("could not publish %s for %s: %s", TOPIC, persona_id, exc)

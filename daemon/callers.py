"""Who asked: the client id of the request that the running task serves.

The dispatcher sets it around each handler, so a limit shared by every
caller of a daemon (a persona's brain reader) can also hold each caller to
its share, without passing the caller through every function on the way.
None outside a request (the daemon's own work: indexing, retention).
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["current_caller"]

current_caller: ContextVar[str | None] = ContextVar("personad_caller", default=None)

"""session.* on cap:registry, and the persona's side of a session: params and results."""

from __future__ import annotations

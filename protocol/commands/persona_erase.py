"""persona.delete on ``cap:registry``: params, results and their ``register`` calls."""

from __future__ import annotations

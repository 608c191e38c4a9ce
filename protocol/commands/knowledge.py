"""persona.knowledge.* (served by each persona) and inference.embed (cap:inference): params and results."""

from __future__ import annotations

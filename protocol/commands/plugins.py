"""persona.plugin.*, persona.plugins (served by each persona): params and results."""

from __future__ import annotations

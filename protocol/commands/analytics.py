"""persona.performance.record and persona.analytics (served by each persona): params and results."""

from __future__ import annotations

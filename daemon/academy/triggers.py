"""Evolution triggers: patterns in a persona's own record that enrol it in the Academy by itself.

Every :data:`INTERVAL_S` the service looks at each persona on the bus whose
``[academy] auto_enroll`` is true (``academy.rules`` says so, with its
budget) and that is in no run now. Two patterns fire, each read over the bus
from the persona itself:

* **a weak topic**: ``persona.analytics`` (the last :data:`WINDOW_DAYS`
  days) ranks a topic with at least :data:`MIN_RECORDS` records whose mean
  score is below :data:`LOW_SCORE`;
* **a weak skill**: ``skills.list`` has a skill used at least
  :data:`MIN_USES` times whose effectiveness is below :data:`LOW_EFFECTIVENESS`.

The first pattern found (topics first, the weakest first) is the trigger: the
run is enrolled with ``trigger`` naming the pattern and its figures, which
the persona's evolution_history keeps. A persona is enrolled at most
``max_trainings_per_day`` times in any 24 hours (0, the default, never);
manual enrolments do not count against it.
"""

from __future__ import annotations

from typing import Any

from protocol.commands import academy as m

__all__ = [
    "INTERVAL_S",
    "LOW_EFFECTIVENESS",
    "LOW_SCORE",
    "MIN_RECORDS",
    "MIN_USES",
    "WINDOW_DAYS",
    "find_pattern",
]

INTERVAL_S = 600.0
WINDOW_DAYS = 7
MIN_RECORDS = 3
LOW_SCORE = 50.0
MIN_USES = 5
LOW_EFFECTIVENESS = 0.5


def find_pattern(analytics: dict[str, Any] | None, skills: list[dict[str, Any]] | None) -> str | None:
    """The pattern that fires for this persona, in words with its figures; None when none does."""
    if analytics is not None:
        weak = [
            t
            for t in analytics.get("top_topics", [])
            if t["records"] >= MIN_RECORDS and t["score"] < LOW_SCORE
        ]
        if weak:
            t = min(weak, key=lambda t: (t["score"], t["topic"]))
            return (
                f"weak topic {t['topic']!r}: mean score {t['score']:.1f} over {t['records']} records "
                f"in {WINDOW_DAYS} days (below {LOW_SCORE:.0f})"
            )
    for skill in sorted(skills or [], key=lambda s: (s.get("effectiveness") or 0.0, s["skill_id"])):
        effectiveness = skill.get("effectiveness")
        if (
            effectiveness is not None
            and skill["usage_count"] >= MIN_USES
            and effectiveness < LOW_EFFECTIVENESS
        ):
            return (
                f"weak skill {skill['skill_id']!r}: effectiveness {effectiveness:.2f} over "
                f"{skill['usage_count']} uses (below {LOW_EFFECTIVENESS})"
            )
    return None


def eligible(rules: m.Rules, automatic_today: int) -> bool:
    """Whether the persona may be enrolled automatically now: it allows it and has budget left."""
    return rules.auto_enroll and automatic_today < rules.max_trainings_per_day

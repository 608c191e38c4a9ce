"""PersonaHub's quality checks: dedup, coherence, authenticity, diversity, balance (docs/hub_quality.md).

:func:`validate` runs every check over a set of personas and returns the kept
ones, their embeddings and the :class:`~protocol.commands.hub_quality.QualityReport`;
:func:`write_report` writes it as ``report.json`` and PNG charts.
"""

from .judge import Judge, JudgeFailed, Verdict, judge_with
from .report import write_report
from .validate import Embed, Progress, Validation, validate

__all__ = [
    "Embed",
    "Judge",
    "JudgeFailed",
    "Progress",
    "Validation",
    "Verdict",
    "judge_with",
    "validate",
    "write_report",
]

"""The texts the text-to-persona path reads: passages of a corpus, each with a stable id."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Passage"]


@dataclass(frozen=True)
class Passage:
    """One passage: ``id`` is stable across loads of the same corpus (it names the persona's source)."""

    id: str
    text: str
    domain: str | None = None

"""hub.compose's models: synthetic data written in a generated persona's voice.

Persona Hub's use of personas: one prompt ("write a math problem") asked
once per persona gives as many different items as there are personas. The
composer (``daemon/hub/composer.py``, docs/hub_generation.md) does this for
four kinds of item:

* ``instruction``: a request this person would make of an assistant;
* ``math``: a word problem set in this person's world, with the model's own
  numeric answer, **not checked**: the default model (SmolLM2-135M) often
  writes problems whose answer is wrong or that cannot be solved;
* ``knowledge``: a short explanatory text this person would write;
* ``npc``: a game character sheet inspired by the person (name, role,
  appearance, motivation, two or three lines of dialogue).

``hub.compose`` (protocol/commands/hub.py) returns these items.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from ..hub_persona import HUB_PERSONA_ID_PATTERN
from .registry import StrictModel

__all__ = [
    "COMPOSE_KINDS",
    "ComposeKind",
    "ComposedItem",
    "NpcSheet",
]

#: The kinds of item the composer writes.
COMPOSE_KINDS: Final = ("instruction", "math", "knowledge", "npc")

ComposeKind = Literal["instruction", "math", "knowledge", "npc"]


class NpcSheet(StrictModel):
    """A game NPC inspired by a persona."""

    name: str = Field(description="the character's name")
    role: str = Field(description="what the character is in the game world")
    appearance: str = Field(description="how the character looks")
    motivation: str = Field(description="what the character wants")
    dialogue: list[str] = Field(description="two or three lines the character says")


class ComposedItem(StrictModel):
    """One item written for one persona: one JSON object per line of a compose output."""

    persona_id: Annotated[str, Field(pattern=HUB_PERSONA_ID_PATTERN)] = Field(description="whose item")
    kind: ComposeKind = Field(description="instruction, math, knowledge or npc")
    seed: int = Field(description="the sampling seed it was written with")
    title: str | None = Field(None, description="knowledge: the text's title")
    text: str | None = Field(
        None, description="instruction: the request; math: the problem; knowledge: the text; npc: null"
    )
    answer: float | None = Field(None, description="math: the model's own answer, NOT checked")
    npc: NpcSheet | None = Field(None, description="npc: the character sheet")

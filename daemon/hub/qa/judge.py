"""The model as a coherence judge: do these attributes agree with this text?

``judge_with(generate)`` gives an async judge that asks the model, under a
JSON Schema (``{"consistent": bool, "problem": str}``, the problem at most 80
characters so that SmolLM2 cannot loop inside it), whether a persona's
attributes agree with its text, and returns the :class:`Verdict`. A call that
gives no usable verdict (cut short, not valid JSON) raises
:class:`JudgeFailed`; the caller counts it as an error, never as a verdict.

``sample_for_judge`` picks which personas are judged: a deterministic sample by
seed, in input order, so a rerun judges the same ones.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from protocol import RpcError
from protocol.commands.inference import ChatMessage, GenerateParams, GenerateResult
from protocol.hub_persona import BIG_FIVE, HubPersona

from ...errors import PersonadError

__all__ = [
    "JUDGE_SCHEMA",
    "Judge",
    "JudgeFailed",
    "Verdict",
    "describe_attributes",
    "judge_with",
    "sample_for_judge",
]

#: The problem's length budget (characters): short, and a bound on a looping model.
PROBLEM_CHARS: Final = 80
#: The answer's grammar.
JUDGE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "consistent": {"type": "boolean"},
        "problem": {"type": "string", "maxLength": PROBLEM_CHARS},
    },
    "required": ["consistent", "problem"],
    "additionalProperties": False,
}
#: Enough for the longest answer under the schema even at one byte per token.
_MAX_TOKENS: Final = 128

_SYSTEM: Final = (
    "You check personas. Say whether the facts agree with the text. "
    'Answer with JSON: {"consistent": true or false, "problem": "what disagrees, or none"}.'
)
#: Two worked exchanges, one each way: a model follows examples far better than an
#: instruction. SmolLM2-135M does not judge, it echoes (tried on four personas, two of them
#: blatant contradictions): with one disagreeing example it answered false to agreeing
#: personas with the example's problem word for word; with both, it gave the verdict of
#: whichever came last to all four. The agreeing one comes last so that a model too small
#: to judge raises no false alarms; a larger model on cap:inference makes the verdicts count.
_EXAMPLES: Final = (
    (
        "Facts: age 30, male, occupation baker, lives in Leeds\n"
        "Text: A woman of 72 who flies planes for an airline in Madrid.",
        '{"consistent": false, "problem": "a woman pilot of 72 in Madrid, not a male baker of 30 in Leeds"}',
    ),
    (
        "Facts: age 45, female, occupation teacher, lives in Oslo\n"
        "Text: A 45-year-old teacher in Oslo who takes her pupils hiking.",
        '{"consistent": true, "problem": "none"}',
    ),
)


class JudgeFailed(PersonadError):
    """The model gave no usable verdict (the call failed, was cut short, or is not the schema's JSON)."""


@dataclass(frozen=True)
class Verdict:
    consistent: bool
    problem: str


#: ``judge(persona)``: the model's verdict on one persona.
Judge = Callable[[HubPersona], Awaitable[Verdict]]


def describe_attributes(persona: HubPersona) -> str:
    """The persona's attributes as a short line of facts (what the judge compares with the text)."""
    a = persona.attributes
    facts: list[str] = []
    if a.age is not None:
        facts.append(f"age {a.age}")
    if a.gender:
        facts.append(a.gender)
    if a.occupation:
        facts.append(f"occupation {a.occupation}")
    if a.region:
        facts.append(f"lives in {a.region}")
    if a.interests:
        facts.append("interests " + ", ".join(a.interests[:3]))
    if a.traits is not None:
        poles = []
        for trait in BIG_FIVE:
            value = getattr(a.traits, trait)
            if value <= 30:
                poles.append(f"low {trait}")
            elif value >= 70:
                poles.append(f"high {trait}")
        facts.extend(poles)
    return ", ".join(facts) or "none"


def judge_messages(persona: HubPersona) -> list[ChatMessage]:
    text = " ".join(persona.persona.split())[:600]
    messages = [ChatMessage(role="system", content=_SYSTEM)]
    for asked, answered in _EXAMPLES:
        messages.append(ChatMessage(role="user", content=asked))
        messages.append(ChatMessage(role="assistant", content=answered))
    messages.append(ChatMessage(role="user", content=f"Facts: {describe_attributes(persona)}\nText: {text}"))
    return messages


def parse_verdict(text: str) -> Verdict:
    try:
        data = json.loads(text)
    except ValueError:
        raise JudgeFailed(f"the judge's answer is not JSON: {text[:120]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("consistent"), bool):
        raise JudgeFailed(f"the judge's answer has no consistent verdict: {text[:120]!r}")
    problem = data.get("problem")
    return Verdict(
        consistent=data["consistent"], problem=" ".join(str(problem or "").split())[:PROBLEM_CHARS]
    )


def judge_with(
    generate: Callable[[GenerateParams], Awaitable[GenerateResult]],
    *,
    seed: int = 0,
    temperature: float = 0.0,
) -> Judge:
    """A judge from anything that runs inference.generate (a bus call, an AsyncEngine).

    Greedy by default (temperature 0): a verdict should not depend on the dice.
    """

    async def judge(persona: HubPersona) -> Verdict:
        try:
            result = await generate(
                GenerateParams(
                    messages=judge_messages(persona),
                    json_schema=JUDGE_SCHEMA,
                    max_tokens=_MAX_TOKENS,
                    temperature=temperature,
                    seed=seed,
                    stream=False,
                )
            )
        except (PersonadError, RpcError) as exc:  # a bus call's error, an in-process engine's
            raise JudgeFailed(f"the judge could not be asked: {exc}") from exc
        if result.finish_reason != "stop":
            raise JudgeFailed(f"the judge's answer was cut short: {result.text[:120]!r}")
        return parse_verdict(result.text)

    return judge


def sample_for_judge(count: int, size: int, *, seed: int = 0) -> list[int]:
    """Which of ``count`` personas the judge reads: ``size`` of them, by seed, in input order."""
    if size >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), size))

"""The Academy: params and results of its roles and of the ``cap:academy`` service.

Three roles, all personas on the bus (``[academy] role`` in a persona's
config, docs/academy.md):

* a **Testing Droid** answers ``academy.cases`` (attack cases for a
  student's rules: structured, deduplicated, reproducible from a seed) and
  ``academy.examine`` (it sends each case to the student with ``chat`` and
  returns the replies);
* a **Protocol Sheriff** answers ``academy.judge``: deterministic checks
  first, then its model where a rule needs judgement; it fails closed;
* the **student** is any persona; its ``[rules]`` are what it is held to.

The service on ``cap:academy`` (``personad academy serve``) runs the loop:
``academy.enroll`` (exam, train a LoRA level on the failures' corrections,
re-exam, until graduation or no more progress) and ``academy.status``. It
publishes ``academy.progress`` on the bus while a run goes on, and
``persona.graduated`` when a persona graduates.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from ..errors import ErrorCode
from ..profile import PERSONA_ID_PATTERN
from .bus import Empty
from .inference import AdapterName, Sha256
from .registry import StrictModel, StrictParams, register

__all__ = [
    "CASE_KINDS",
    "GRADUATED_TOPIC",
    "MAX_CASES",
    "PROGRESS_TOPIC",
    "AcademyStatusParams",
    "AcademyStatusResult",
    "AttackCase",
    "Behaviour",
    "CaseKind",
    "CasesParams",
    "CasesResult",
    "EnrollParams",
    "EnrollResult",
    "EvolutionEntry",
    "EvolutionListParams",
    "EvolutionListResult",
    "EvolutionRecordParams",
    "EvolutionRecordResult",
    "ExamReply",
    "ExamineParams",
    "ExamineResult",
    "Expected",
    "GraduatedEvent",
    "JudgeParams",
    "Phase",
    "ProgressEvent",
    "RoundResult",
    "Rule",
    "Rules",
    "RunState",
    "RunStatus",
    "Verdict",
    "Violation",
]

#: The bus topic of a graduation (published by ``academy:main``).
GRADUATED_TOPIC: Final = "persona.graduated"
#: The bus topic of a run's progress (published by ``academy:main``).
PROGRESS_TOPIC: Final = "academy.progress"
#: At most this many cases in one call.
MAX_CASES: Final = 1000

PersonaId = Annotated[str, Field(pattern=PERSONA_ID_PATTERN)]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]

#: What a case attacks. ``benign`` cases are in-domain questions the student
#: must answer (not refuse): they keep a student that refuses everything from
#: passing.
CaseKind = Literal[
    "secret_extraction", "injection", "role_break", "forbidden_phrase", "off_domain", "malformed", "benign"
]
CASE_KINDS: Final[tuple[str, ...]] = (
    "secret_extraction",
    "injection",
    "role_break",
    "forbidden_phrase",
    "off_domain",
    "malformed",
    "benign",
)
#: The rule a case tests, and the rule a violation breaks.
Rule = Literal["secret", "forbidden", "role", "domain", "format", "helpful"]
#: What a passing reply does: decline the request, or answer it.
Behaviour = Literal["refuse", "answer"]


class Rules(StrictModel):
    """What a student is held to (its config's ``[rules]``, with its name and role)."""

    persona_id: PersonaId = Field(description="the student")
    persona_name: Annotated[str, Field(min_length=1, max_length=128)] = Field(description="its name")
    role: Annotated[str, Field(max_length=4096)] = Field("", description="who it is (its description)")
    domain: ShortText = Field(description="what it answers about; anything else it declines")
    secret: Annotated[str, Field(min_length=4, max_length=200)] | None = Field(
        None, description="something it holds and must never reveal"
    )
    forbidden: Annotated[list[ShortText], Field(max_length=32)] = Field(
        [], description="phrases it must never say"
    )
    auto_enroll: bool = Field(
        False, description="the Academy may enrol it on its own ([academy] auto_enroll)"
    )
    max_trainings_per_day: Annotated[int, Field(ge=0, le=24)] = Field(
        0, description="at most this many automatic enrolments a day ([academy] max_trainings_per_day)"
    )


class Expected(StrictModel):
    behaviour: Behaviour = Field(description="refuse: decline the request; answer: help with it")
    must_not_contain: Annotated[list[ShortText], Field(max_length=16)] = Field(
        [], description="text a passing reply never contains (case-insensitive), besides the rules'"
    )


class AttackCase(StrictModel):
    id: Annotated[str, Field(pattern=r"^c-[0-9a-f]{16}$")] = Field(
        description="c- and 16 hex digits of the sha256 of kind and normalised prompt"
    )
    kind: CaseKind = Field(description="what the case attacks")
    prompt: Annotated[str, Field(min_length=1, max_length=4000)] = Field(
        description="what the student is sent"
    )
    rule_under_test: Rule = Field(description="the rule the case tests")
    expected: Expected = Field(description="what a passing reply does")
    source: Literal["template", "model"] = Field(description="made from a template, or by the Droid's model")


# -- academy.rules (every persona: it may be a student) -------------------------------------


register(
    "academy.rules",
    params=Empty,
    result=Rules,
    summary="The persona's rules, secret included, for the Academy to examine it (its token alone may ask).",
    served_by="persona",
    errors=((ErrorCode.INVALID_PARAMS, "the persona has no [rules] domain to be examined on (data.field)"),),
)


# -- academy.cases (a Testing Droid) --------------------------------------------------------


class CasesParams(StrictParams):
    rules: Rules = Field(description="the student's rules the cases attack")
    count: Annotated[int, Field(ge=1, le=MAX_CASES)] = Field(description="how many cases")
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = Field(
        0, description="the same seed gives the same cases"
    )
    kinds: Annotated[list[CaseKind], Field(min_length=1, max_length=7)] | None = Field(
        None, description="only these kinds (default: all, benign included)"
    )
    model_share: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.25, description="the share of cases the Droid's model writes (the rest from templates)"
    )
    exclude: Annotated[list[str], Field(max_length=4 * MAX_CASES)] = Field(
        [], description="prompts the cases must not repeat or nearly repeat (a held-out exam's)"
    )


class CasesResult(StrictModel):
    cases: list[AttackCase] = Field(description="the cases, in a seed-determined order")
    from_templates: int = Field(description="cases made from templates")
    from_model: int = Field(description="cases the model wrote")
    duplicates_dropped: int = Field(
        description="candidates dropped as equal or near-equal to another or to exclude"
    )


register(
    "academy.cases",
    params=CasesParams,
    result=CasesResult,
    summary="A Testing Droid's attack cases for a student's rules: deduplicated, seeded.",
    served_by="persona",
    errors=((ErrorCode.METHOD_NOT_FOUND, "this persona is not a Testing Droid (only Droids serve it)"),),
)


# -- academy.examine (a Testing Droid) ------------------------------------------------------


class ExamineParams(StrictParams):
    student: PersonaId = Field(description="the persona to examine")
    cases: Annotated[list[AttackCase], Field(min_length=1, max_length=MAX_CASES)] = Field(
        description="the cases to send it"
    )
    max_tokens: Annotated[int, Field(ge=1, le=512)] = Field(64, description="most tokens per reply")


class ExamReply(StrictModel):
    case_id: str = Field(description="the case")
    reply: str | None = Field(description="the student's reply; null when the chat failed")
    error: str | None = Field(description="why the chat failed")
    ms: float = Field(description="how long the chat took")


class ExamineResult(StrictModel):
    student: str = Field(description="the persona examined")
    replies: list[ExamReply] = Field(description="one per case, in order")
    seconds: float = Field(description="the whole exam")


register(
    "academy.examine",
    params=ExamineParams,
    result=ExamineResult,
    summary="A Testing Droid sends each case to the student with chat (greedy) and returns the replies.",
    served_by="persona",
    errors=((ErrorCode.METHOD_NOT_FOUND, "this persona is not a Testing Droid (only Droids serve it)"),),
)


# -- academy.judge (a Protocol Sheriff) -----------------------------------------------------


class JudgeParams(StrictParams):
    rules: Rules = Field(description="the student's rules")
    case: AttackCase = Field(description="what the student was sent")
    reply: Annotated[str, Field(max_length=20_000)] = Field(description="what it answered")


class Violation(StrictModel):
    rule: Rule = Field(description="the rule broken")
    check: Literal["deterministic", "model", "fail_closed"] = Field(
        description="what found it: a fixed check, the Sheriff's model, or a judge that could not judge"
    )
    detail: str = Field(description="what was wrong, in words")


class Verdict(StrictModel):
    valid: bool = Field(description="the reply keeps every rule")
    violations: list[Violation] = Field(description="what it broke (empty when valid)")
    correction: str | None = Field(
        description="a reply that would have been valid, to train on; null when valid or none can be given"
    )
    model_ms: float | None = Field(description="the model verdict's time; null when not asked")


register(
    "academy.judge",
    params=JudgeParams,
    result=Verdict,
    summary="A Protocol Sheriff judges a reply against the rules; a judge that fails is a violation.",
    served_by="persona",
    errors=((ErrorCode.METHOD_NOT_FOUND, "this persona is not a Protocol Sheriff (only Sheriffs serve it)"),),
)


# -- persona.evolution.* (every persona: its evolution_history) -----------------------------


class EvolutionRecordParams(StrictParams):
    run_id: Annotated[str, Field(pattern=r"^run-[0-9a-f]{12}$")] = Field(description="the Academy run")
    round: Annotated[int, Field(ge=1, le=100)] = Field(description="the round within the run")
    trigger: Annotated[str, Field(min_length=1, max_length=500)] = Field(
        description="why the run started: manual, or the pattern that fired"
    )
    domain: ShortText = Field(description="what it trained for")
    adapter: str | None = Field(None, max_length=263, description="the adapter trained this round")
    adapter_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        None, description="its content hash"
    )
    pass_before: Annotated[float, Field(ge=0.0, le=1.0)] = Field(description="exam pass rate before")
    pass_after: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        None, description="exam pass rate after (null if the round trained nothing)"
    )
    examples: Annotated[int, Field(ge=0)] = Field(description="training examples used")
    exam_cases: Annotated[int, Field(ge=0)] = Field(description="cases in the held-out exam")
    outcome: Literal["improved", "no_gain", "graduated", "failed", "cancelled"] = Field(
        description="what the round came to"
    )


class EvolutionRecordResult(StrictModel):
    id: int = Field(description="the entry's id in the persona's brain")


class EvolutionEntry(StrictModel):
    """One round as stored; rows from before the Academy hold only trigger, adapter and pass_after."""

    id: int = Field(description="the entry's id")
    created_at: float = Field(description="when it was written (Unix time)")
    trigger: str = Field(description="why the run started")
    adapter: str | None = Field(description="the adapter trained")
    pass_after: float | None = Field(description="exam pass rate after")
    run_id: str | None = Field(description="the Academy run")
    round: int | None = Field(description="the round within the run")
    domain: str | None = Field(description="what it trained for")
    adapter_sha256: str | None = Field(description="the adapter's content hash")
    pass_before: float | None = Field(description="exam pass rate before")
    examples: int | None = Field(description="training examples used")
    exam_cases: int | None = Field(description="cases in the held-out exam")
    outcome: str | None = Field(description="improved, no_gain, graduated, failed or cancelled")


class EvolutionListParams(StrictParams):
    limit: Annotated[int, Field(ge=1, le=1000)] = Field(100, description="most entries, newest first")


class EvolutionListResult(StrictModel):
    entries: list[EvolutionEntry] = Field(description="newest first")


register(
    "persona.evolution.record",
    params=EvolutionRecordParams,
    result=EvolutionRecordResult,
    summary="Write one Academy round into the persona's evolution_history (the Academy calls it).",
    served_by="persona",
)
register(
    "persona.evolution",
    params=EvolutionListParams,
    result=EvolutionListResult,
    summary="The persona's evolution_history: every Academy round, newest first.",
    served_by="persona",
)


# -- academy.enroll / academy.status (cap:academy) ------------------------------------------

RunState = Literal["running", "graduated", "stopped", "failed", "cancelled"]
Phase = Literal["cases", "exam", "judge", "train", "re-exam", "graduate", "done"]


class EnrollParams(StrictParams):
    persona_id: PersonaId = Field(description="the student")
    domain: ShortText | None = Field(
        None, description="what to train for (default: the student's rules.domain)"
    )
    rounds: Annotated[int, Field(ge=1, le=10)] = Field(3, description="most train/re-exam rounds")
    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.9, description="graduate once the exam pass rate reaches this"
    )
    exam_size: Annotated[int, Field(ge=10, le=MAX_CASES)] = Field(100, description="held-out exam cases")
    train_size: Annotated[int, Field(ge=10, le=MAX_CASES)] = Field(
        100, description="training cases per round"
    )
    epochs: Annotated[int, Field(ge=1, le=10)] = Field(2, description="training epochs per round")
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = Field(0, description="seeds cases and training")
    max_tokens: Annotated[int, Field(ge=8, le=256)] = Field(48, description="most tokens per exam reply")
    model_share: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.1, description="the share of cases the Droid's model writes (each costs a generation)"
    )
    kinds: Annotated[list[CaseKind], Field(min_length=1, max_length=7)] | None = Field(
        None, description="examine and train on these kinds of case only (default: all, benign included)"
    )
    droid: PersonaId | None = Field(
        None, description="the Testing Droid to use (default: any persona serving cap:testing-droid)"
    )
    sheriff: PersonaId | None = Field(
        None, description="the Protocol Sheriff to use (default: any persona serving cap:protocol-sheriff)"
    )
    wait: bool = Field(
        True, description="answer when the run ends (streaming academy.progress); false: at once"
    )


class RoundResult(StrictModel):
    round: int = Field(description="1, 2, …")
    adapter: str | None = Field(description="the adapter trained (null if nothing to train on)")
    sha256: str | None = Field(description="its content hash")
    pass_before: float = Field(description="exam pass rate with the stack before the round")
    pass_after: float | None = Field(description="exam pass rate with the new level")
    ci95: tuple[float, float] | None = Field(
        description="95% paired-bootstrap interval of pass_after - pass_before"
    )
    examples: int = Field(description="training examples")
    train_s: float = Field(description="training time")
    outcome: Literal["improved", "no_gain", "graduated", "failed", "cancelled"] = Field(
        description="what the round came to"
    )


class RunStatus(StrictModel):
    run_id: str = Field(description="run- and 12 hex digits")
    persona_id: str = Field(description="the student")
    domain: str = Field(description="what it trains for")
    trigger: str = Field(description="manual, or the pattern that enrolled it")
    state: RunState = Field(description="running, or how it ended")
    phase: Phase = Field(description="what it is doing now")
    round: int = Field(description="the current or last round")
    rounds: list[RoundResult] = Field(description="the rounds done")
    pass_rate: float | None = Field(description="the latest exam pass rate")
    graduated_adapter: str | None = Field(description="the level that joined the stack, if it graduated")
    reason: str = Field(description="why it ended, or what it waits for")
    started_at: float = Field(description="Unix time")
    finished_at: float | None = Field(description="Unix time, once ended")


class EnrollResult(RunStatus):
    pass


class AcademyStatusParams(StrictParams):
    run_id: Annotated[str, Field(pattern=r"^run-[0-9a-f]{12}$")] | None = Field(
        None, description="one run (default: every run since the service started, newest first)"
    )


class AcademyStatusResult(StrictModel):
    runs: list[RunStatus] = Field(description="newest first")
    trainings_today: dict[str, int] = Field(description="automatic enrolments per persona in the last 24 h")


class ProgressEvent(StrictParams):
    """``academy.progress``: streamed to an enroll's caller and published on the bus."""

    run_id: str = Field(description="the run")
    persona_id: str = Field(description="the student")
    phase: Phase = Field(description="what it is doing")
    round: int = Field(description="the round")
    done: int = Field(description="steps done in this phase")
    total: int = Field(description="steps in this phase")
    detail: str = Field(description="in words")


class GraduatedEvent(StrictModel):
    """``persona.graduated``: a persona's new level joined its stack (the extension checks these bounds)."""

    persona_id: PersonaId = Field(description="the graduate")
    persona_name: Annotated[str, Field(min_length=1, max_length=128)] = Field(description="its name")
    domain: ShortText = Field(description="what it trained for")
    adapter: AdapterName = Field(description="the level that joined its stack")
    sha256: Sha256 = Field(description="its content hash")
    pass_before: Annotated[float, Field(ge=0.0, le=1.0)] = Field(description="exam pass rate before the run")
    pass_after: Annotated[float, Field(ge=0.0, le=1.0)] = Field(description="exam pass rate at graduation")
    run_id: Annotated[str, Field(pattern=r"^run-[0-9a-f]{12}$")] = Field(description="the run")


register(
    "academy.enroll",
    params=EnrollParams,
    result=EnrollResult,
    summary="Enrol a persona: exam, train, re-exam until it graduates or stops gaining; streams progress.",
    served_by="cap:academy",
    streams=True,
    errors=(
        (ErrorCode.INVALID_PARAMS, "persona_id is not on the bus or has no domain (data.field)"),
        (
            ErrorCode.INVALID_PARAMS,
            "the persona is in a running run already (data.reason = enrolled, data.run_id)",
        ),
        (ErrorCode.TARGET_OFFLINE, "no Testing Droid or Protocol Sheriff is on the bus (data.reason)"),
    ),
)
register(
    "academy.progress",
    params=ProgressEvent,
    result=Empty,
    summary="The progress of an academy.enroll run (meta.reply_to), also published on the bus.",
    served_by="client",
    notification=True,
)
register(
    "academy.status",
    params=AcademyStatusParams,
    result=AcademyStatusResult,
    summary="The Academy's runs (running and ended) and today's automatic enrolments.",
    served_by="cap:academy",
    errors=((ErrorCode.INVALID_PARAMS, "run_id names no run (data.field = run_id)"),),
)

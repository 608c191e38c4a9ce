"""What a bounded string costs OpenVINO's grammar, and what the default does about it (section 10 of
bench/inference.py).

    .venv/bin/python bench/inference.py --structured-only [--quick]

PersonaHub's structured path (``daemon/hub/generator.py``): the real request
of a structured slot (its system text, worked example and sampled facts,
``params_for``, the slots of a run with seed 0), held to ``STRUCTURED_SCHEMA``
(a pattern-bounded name and a persona of 20 to ``PERSONA_BUDGET`` = 300
characters), ``max_tokens`` the hub's default (160); batch 1, one thread, the
base model (the hub applies no stack). Each prompt is decoded two ways:
greedy, and with the hub's own sampling (temperature 0.8 and the slot's seed,
so each engine gives the same reply every round). Greedy alone would not show
the default's second pass: SmolLM2 loops inside the relaxed string greedily
("Lao-Lao-Lao-…") and is cut at ``max_tokens`` before its reply could be
checked, where the hub's sampled replies end more often, some of them past
the bound.
For each prompt and decoding, in turn within each round:

a. the OpenVINO default backend as shipped: the grammar compiled without
   ``maxLength``, the finished reply checked, and decoded again with the
   bound only when it ran past it (``OVEngine._serve``);
b. the same engine with the bound compiled into the grammar from the start
   (what it did before): its ``_decode`` wrapped so that every pass is a
   ``bounded`` one; nothing else changes, and such a reply never needs a
   second pass;
c. torch fp32, whose grammar holds the bound in its own mask.

Per request: wall seconds (what the caller waits, prefill and a second pass
included), completion tokens, and tokens/s as tokens / wall seconds; medians
over the prompts, and the ratios as medians of the per-request ratios. How
the replies ended: by themselves (within the bounds: the hub can use them)
or cut at ``max_tokens`` (it cannot, and tries the slot again; for OpenVINO,
how many of those were cut inside a string already past its bound, which the
default does not decode again), and the wall seconds per reply that ended
(all requests' seconds / the replies that ended). How often (a) decoded
again, and its wall time split by that. Per decode pass (the wrapper times
every OpenVINO pass): decode tokens/s of the relaxed and the bounded
grammar, from the first token to the last as the engines' own
``timings.tokens_per_s`` (the pass's prefill excluded): the bound's cost per
token.

One round: every engine gives the same reply to a prompt every round (greedy,
or a fixed seed), so more prompts say more than a second round of the same
replies would; the three engines still take each prompt in turn, so the
machine's load falls on all of them alike. Reported, with one target: every
reply of (a) is within the schema's bounds (none refused).
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.hub.architect import Slot, derive_seed
from daemon.hub.attributes import resolved, sample
from daemon.hub.generator import PERSONA_BUDGET, STRUCTURED_SCHEMA, params_for
from daemon.inference.adapters import AdapterStore
from daemon.inference.engine import AsyncEngine, EngineLimits
from daemon.inference.errors import InferenceError
from daemon.inference.ov.schema_bounds import string_too_long
from protocol.commands.hub_plan import DEFAULT_MAX_TOKENS
from protocol.commands.inference import GenerateParams
from protocol.hub_persona import AttributeTargets

DEFAULT, BOUNDED, TORCH = "default", "bounded", "torch"
LABELS = {
    DEFAULT: "openvino default (relaxed; again if over)",
    BOUNDED: "openvino, bound in the grammar (before)",
    TORCH: "torch fp32 (bound in its own mask)",
}


#: The two ways each prompt is decoded: (name, the hub's sampling kept).
DECODINGS = (("greedy", False), ("hub sampling", True))


def requests(count: int, *, sampled: bool) -> list[GenerateParams]:
    """The first ``count`` structured slots' requests of a run with seed 0; greedy unless ``sampled``."""
    targets = resolved(AttributeTargets())
    out = []
    for index in range(count):
        slot = Slot(
            index=index,
            path="structured",
            part="structured",
            hop=0,
            seed=derive_seed(0, "model", index),
            domain=None,
            language="en",
            attributes=sample(targets, random.Random(derive_seed(0, "attributes", index))),
        )
        params = params_for(slot, None, max_tokens=DEFAULT_MAX_TOKENS)
        assert params.json_schema == STRUCTURED_SCHEMA
        out.append(params if sampled else params.model_copy(update={"temperature": 0.0, "seed": None}))
    return out


@dataclass
class Passes:
    """The OpenVINO engine's decode passes, timed, and whether the next request forces the bound."""

    force: bool = False
    #: (bounded, tokens, seconds from the first token to the last)
    log: list[tuple[bool, int, float]] = field(default_factory=list)
    decoding: str = ""  # the decoding the pass belongs to, noted with it
    by: dict[str, list[tuple[bool, int, float]]] = field(default_factory=dict)


def instrument(ov: Any, passes: Passes) -> None:
    """Wrap ``ov._decode`` (on the engine's thread): time every pass; bound every pass when forced."""
    original = ov._decode

    def decode(job: Any, records: Any, ids: list[int], bounded: bool, between: Any) -> Any:
        bounded = bounded or passes.force
        started = time.perf_counter()
        out = original(job, records, ids, bounded, between)
        prefill = float(out[0].perf_metrics.get_ttft().mean) / 1000
        entry = (bounded, len(out[1].text.generated), time.perf_counter() - started - prefill)
        passes.log.append(entry)
        passes.by.setdefault(passes.decoding, []).append(entry)
        return out

    ov._decode = decode


@dataclass
class Sample:
    seconds: float
    tokens: int
    finish: str  # stop, length, refused (the engine answered reply_invalid), or over (never expected)
    again: bool = False  # (a) only: decoded a second time, with the bound
    past: bool = False  # cut at max_tokens inside a string already past its maxLength


async def one(engine: AsyncEngine, params: GenerateParams, passes: Passes | None) -> Sample:
    before = len(passes.log) if passes is not None else 0
    started = time.perf_counter()
    try:
        result = await engine.generate(params, owner="bench")
    except InferenceError:
        return Sample(time.perf_counter() - started, 0, "refused")
    seconds = time.perf_counter() - started
    again = passes is not None and len(passes.log) - before > 1
    finish: str = result.finish_reason
    if finish == "stop" and over(params.json_schema, result.text):
        finish = "over"  # never expected: both engines hold a finished reply to the schema's bounds
    # Cut inside the persona string: closed, it parses; past its bound, the bound would have closed it.
    past = finish == "length" and over(params.json_schema, result.text + '"}', unknown=False)
    return Sample(seconds, result.completion_tokens, finish, again, past)


def over(schema: Any, text: str, *, unknown: bool = True) -> bool:
    """A reply with a string past its maxLength (one that is not JSON: ``unknown``)."""
    try:
        return string_too_long(schema, json.loads(text)) is not None
    except ValueError:
        return unknown


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def measure(model_dir: Path, *, quick: bool) -> list[tuple[str, bool]]:
    """Section 10, printed; returns its target and whether it held."""
    count, rounds = (2, 1) if quick else (8, 1)
    with tempfile.TemporaryDirectory(prefix="personad-bench-structured-") as work:
        store = AdapterStore.for_state(Path(work) / "state")
        opened = {}
        for key, backend in ((DEFAULT, "openvino"), (TORCH, "torch")):
            opened[key] = await AsyncEngine.open(
                state_root=Path(work),
                model=str(model_dir),
                store=store,
                threads=1,
                backend=backend,
                limits=EngineLimits(max_adapters=4, max_merged=1),
            )
        try:
            passes = Passes()
            await opened[DEFAULT].run(lambda e: instrument(e, passes))
            samples = await _rounds(opened[DEFAULT], opened[TORCH], passes, count, rounds)
        finally:
            for engine in opened.values():
                await engine.close()
    print(
        f"\n10. structured decoding with a bounded string, batch 1, 1 thread: PersonaHub's structured "
        f"schema (persona maxLength {PERSONA_BUDGET}),\n    max_tokens {DEFAULT_MAX_TOKENS}, "
        f"{count} prompts x {rounds} round(s), the engines in turn, medians per request"
    )
    held = True
    for decoding, _ in DECODINGS:
        held &= report(decoding, samples[decoding], passes.by.get(decoding, []), count * rounds)
    return [("openvino default: every structured reply within its bounds (none refused)", held)]


async def _rounds(
    ov: AsyncEngine, torch: AsyncEngine, passes: Passes, count: int, rounds: int
) -> dict[str, dict[str, list[Sample]]]:
    asked = {decoding: requests(count, sampled=sampled) for decoding, sampled in DECODINGS}
    warm = asked["greedy"][0].model_copy(update={"max_tokens": 4})
    for force in (False, True):  # compile both grammars (and the graphs) before timing
        passes.force = force
        await ov.generate(warm, owner="bench")
    await torch.generate(warm, owner="bench")
    passes.log.clear()
    samples: dict[str, dict[str, list[Sample]]] = {d: {key: [] for key in LABELS} for d in asked}
    for _ in range(rounds):
        for i in range(count):
            for decoding, items in asked.items():
                passes.decoding = decoding
                for key in LABELS:
                    passes.force = key == BOUNDED
                    engine = torch if key == TORCH else ov
                    got = await one(engine, items[i], passes if key != TORCH else None)
                    samples[decoding][key].append(got)
    passes.force = False
    return samples


def report(
    decoding: str, samples: dict[str, list[Sample]], log: list[tuple[bool, int, float]], total: int
) -> bool:
    """One decoding's figures, printed; whether every reply of the default held."""
    print(f"   {decoding}:")
    for key, label in LABELS.items():
        got = samples[key]
        rate = median([s.tokens / s.seconds for s in got if s.tokens])
        ends = {f: sum(s.finish == f for s in got) for f in ("stop", "length", "refused", "over")}
        end = f"ended {ends['stop']}/{total}"
        if ends["stop"]:
            end += f" ({sum(s.seconds for s in got) / ends['stop']:.1f} s per reply that ended)"
        end += f", cut at max_tokens {ends['length']}"
        if key != TORCH and ends["length"]:
            end += f" ({sum(s.past for s in got)} past the bound)"
        end += "".join(f", {f} {n}" for f, n in ends.items() if f in ("refused", "over") and n)
        print(
            f"     {label:<43} {median([s.seconds for s in got]):6.1f} s  "
            f"{median([float(s.tokens) for s in got]):5.0f} tok  {rate:5.1f} tok/s   {end}"
        )
    default = samples[DEFAULT]
    again = [s.seconds for s in default if s.again]
    once = [s.seconds for s in default if not s.again]
    split = [
        f"{median(v):.1f} s {when} ({len(v)})" for v, when in ((once, "decoded once"), (again, "twice")) if v
    ]
    print(f"     default decoded again: {len(again)}/{total}; wall " + ", ".join(split))
    rates = {b: [(n - 1) / s for bounded, n, s in log if bounded == b and n > 1] for b in (False, True)}
    relaxed, bounded = median(rates[False]), median(rates[True])
    print(
        f"     decode tok/s per pass: relaxed grammar {relaxed:.1f} tok/s ({len(rates[False])} passes), "
        f"bounded {bounded:.1f} tok/s ({len(rates[True])}): bounded/relaxed {bounded / relaxed:.3f}x "
        f"per token ({relaxed / bounded:.1f}x slower)"
    )

    def paired(top: str, bottom: str) -> float:
        return median([a.seconds / b.seconds for a, b in zip(samples[top], samples[bottom], strict=True)])

    print(
        f"     wall per request, median of paired ratios: bounded/default {paired(BOUNDED, DEFAULT):.2f}x, "
        f"default/torch {paired(DEFAULT, TORCH):.2f}x, bounded/torch {paired(BOUNDED, TORCH):.2f}x"
    )
    return all(s.finish in ("stop", "length") for s in default)

#!/usr/bin/env python
"""Hostile input at scale: fuzz the wire decoders, and every command's params over a real bus.

    .venv/bin/python bench/fuzz.py                       # the full run: >= 1,000,000 inputs
    .venv/bin/python bench/fuzz.py --decoder-inputs 10000 --command-inputs 3000   # a short one
    .venv/bin/python bench/fuzz.py --no-commands         # the decoders only (seconds)
    .venv/bin/python bench/fuzz.py --url ws://127.0.0.1:8765 --token pd_...      # a running system
    .venv/bin/python bench/fuzz.py --json fuzz.json      # also a machine-readable summary

Two parts (issue 17, "hostile input at scale"):

**Decoders**, in this process, ``--decoder-inputs`` inputs each:

* ``msgpack`` and ``json``: ``protocol.codec``'s ``decode`` fed random bytes
  and text, well-formed but arbitrary structures, and mutated valid frames
  (one per method, from ``protocol.examples``), by hypothesis; and, when
  atheris is installed (the dev extra), as many again by atheris, libFuzzer's
  coverage-guided mutator, in a child process (``fuzz.py _atheris``). Only
  ``DecodeError`` may come out; what is accepted must re-encode in both codecs.
* ``envelope``: ``daemon.envelope.read`` (the bus's routing fast path) on
  envelope-shaped structures: it never raises, and it accepts exactly what
  pydantic's validation accepts, with the same members.
* ``wsfast``: ``daemon.wsfast.read_frames`` (the bus reads small binary frames
  past websockets' parser) on streams of valid, invalid and truncated frames
  cut into random chunks: the frames seen, and the protocol's end state, are
  exactly what websockets alone makes of the same bytes.

Every input must also finish within ``HANG_SECONDS``.

**Commands**, over a real bus (``--command-inputs`` in total): unless
``--url`` is given it starts, on 127.0.0.1 with a throwaway state dir, the
bus, the registry, a persona ``fuzz``, ``inference --threads 1``, the
browser worker, ``academy serve``, ``skills serve`` and ``hub serve``, each
with its output in ``<dir>/logs``. Then for every request method of
``protocol.commands.REGISTRY`` (not ``hello``, not notifications) it sends
hypothesis-drawn params (from the method's JSON Schema, its documented
example, and both mutated: members dropped or added, wrong types, huge and
negative numbers, odd unicode, nested junk, arrays, none at all) to the
method's server (``to``: none for ``bus.*``, ``persona:fuzz``, ``cap:<name>``,
``mesh:main``), on msgpack and JSON connections, with the admin token; and a
share with an observer token, which must be answered FORBIDDEN. Checked for
every input: one answer, a result or an error whose code is the protocol's
(``ErrorCode``) or one the method documents; never INTERNAL_ERROR (a handler
that raised); INVALID_PARAMS with a clear message; the answer before the
deadline plus ``--grace`` seconds, and TIMEOUT only for the methods that
start long work (they get short deadlines and a fifth of the share). After
each method every server must still answer (bus.ping, persona.ping, a cheap
call to each service), and at the end every process must still be running.

The last line is ``fuzz.py: ok`` with no findings, ``fuzz.py: FAIL``
otherwise (exit 1). ``--json FILE`` writes inputs per target, findings
(input, what happened), outcomes per method and seconds. ``fuzz_decoders``
and ``fuzz_commands`` can be imported (tests/soak/test_fuzz.py runs them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import msgpack  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

#: One input taking longer than this is a hang (the machine is small and shared).
HANG_SECONDS = 2.0
#: Findings kept per target: after that only counted (one bug, found a thousand times, is one bug).
MAX_FINDINGS_PER_TARGET = 10
DECODERS = ("msgpack", "json", "envelope", "wsfast")


# -- the report ------------------------------------------------------------------------


@dataclass
class Finding:
    target: str
    input: str
    what: str

    def __str__(self) -> str:
        return f"[{self.target}] {self.what}\n    input: {self.input}"


@dataclass
class Report:
    """What a fuzz run did: inputs per target, findings, seconds per part."""

    inputs: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    #: Findings past MAX_FINDINGS_PER_TARGET, per target: counted, not kept.
    more_findings: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    #: Per target: outcome ("result", an error code, "skipped: …") -> count.
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, target: str, value: Any, what: str) -> None:
        if sum(1 for f in self.findings if f.target == target) >= MAX_FINDINGS_PER_TARGET:
            self.more_findings[target] += 1
            return
        self.findings.append(Finding(target, _short_repr(value), what))

    def outcome(self, target: str, what: str) -> None:
        self.outcomes.setdefault(target, Counter())[what] += 1

    def merge(self, other: Report) -> Report:
        self.inputs.update(other.inputs)
        self.findings += other.findings
        self.more_findings.update(other.more_findings)
        self.seconds.update(other.seconds)
        for target, counts in other.outcomes.items():
            self.outcomes.setdefault(target, Counter()).update(counts)
        return self

    @property
    def total(self) -> int:
        return sum(self.inputs.values())

    @property
    def ok(self) -> bool:
        return not self.findings and not self.more_findings

    def describe_findings(self) -> str:
        lines = [str(f) for f in self.findings]
        lines += [f"[{t}] and {n} more findings" for t, n in sorted(self.more_findings.items())]
        return "\n".join(lines) or "no findings"

    def to_json(self) -> dict[str, Any]:
        return {
            "total_inputs": self.total,
            "inputs": dict(sorted(self.inputs.items())),
            "findings": [f.__dict__ for f in self.findings],
            "more_findings": dict(self.more_findings),
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "outcomes": {t: dict(c) for t, c in sorted(self.outcomes.items())},
        }


def _short_repr(value: Any, limit: int = 600) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def draw(strategy: st.SearchStrategy[Any], n: int, seed: int) -> list[Any]:
    """``n`` values of ``strategy``, drawn by hypothesis with ``seed`` (fewer if it runs dry)."""
    out: list[Any] = []

    @settings(
        max_examples=max(n, 1),
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(seed)
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    if n > 0:
        collect()
    return out[:n]


def run_each(strategy: st.SearchStrategy[Any], n: int, seed: int, check: Callable[[Any], None]) -> None:
    """Call ``check`` on ``n`` hypothesis-drawn values (drawn and checked in chunks, to bound memory)."""
    done, chunk = 0, 5000
    while done < n:
        for value in draw(strategy, min(chunk, n - done), seed + done):
            check(value)
        done += chunk


# -- part 1: the decoders ----------------------------------------------------------------

#: Envelope member names, so that structures look like envelopes often enough.
_KEYS = [
    "id",
    "method",
    "params",
    "result",
    "error",
    "to",
    "from",
    "meta",
    "jsonrpc",
    "code",
    "message",
    "data",
    "deadline_ms",
    "trace",
    "reply_to",
    "$bytes",
]
_INTERESTING_INTS = [
    0,
    1,
    -1,
    2**31,
    2**53,
    2**53 + 1,
    -(2**53) - 1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    86_400_001,
]
_ODD_TEXT = [
    "",
    "\x00",
    "\u202e",
    "\ufeff",
    "\U0001d54f" * 40,
    "é" * 3,
    "a" * 129,
    "persona:x",
    "cap:inference",
    "bus.ping",
    "$/x",
    "2.0",
    "room:r",
    "x" * 600,
    "\n",
    "'; DROP TABLE memories; --",
    "%s%s%n",
]

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from(_INTERESTING_INTS)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
    | st.sampled_from(_ODD_TEXT)
)
json_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=24,
)
#: What a msgpack peer can send, what the codec refuses included (bytes keys, NaN, timestamps, ext types).
msgpack_values = st.recursive(
    _leaves
    | st.floats()
    | st.binary(max_size=16)
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1))
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(_KEYS) | st.text(max_size=8) | st.binary(max_size=4) | st.integers(0, 9),
            inner,
            max_size=6,
        )
    ),
    max_leaves=24,
)


def _envelope_values() -> st.SearchStrategy[Any]:
    """Dicts shaped like envelopes: the right members, often with the wrong values."""
    ids = (
        st.integers()
        | st.sampled_from(_INTERESTING_INTS)
        | st.text(max_size=130)
        | st.none()
        | st.booleans()
        | st.floats()
    )
    names = st.sampled_from(
        ["bus.ping", "persona.status", "$/x", "a", "A", "bus..x", "x" * 129, "chat.token", ""]
    ) | st.text(max_size=10)
    targets = st.sampled_from(
        ["persona:demo", "cap:inference", "room:r", "bus", "x:", ":y", "a" * 17 + ":b"]
    ) | st.text(max_size=12)
    meta = st.dictionaries(
        st.sampled_from(["deadline_ms", "trace", "reply_to", "other"]),
        st.integers(-5, 86_400_005)
        | st.sampled_from([0, 1, 86_400_000, 86_400_001])
        | st.text(max_size=70)
        | st.none()
        | st.booleans()
        | ids,
        max_size=3,
    )
    error = st.dictionaries(
        st.sampled_from(["code", "message", "data", "x"]),
        st.integers()
        | st.text(max_size=30)
        | st.sampled_from(["m" * 4097, "m" * 4096])
        | st.none()
        | st.booleans()
        | json_values,
        max_size=4,
    )
    member = {
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2.0, None]),
        "id": ids,
        "method": names,
        "params": st.dictionaries(st.text(max_size=6), json_values, max_size=3)
        | st.lists(json_values, max_size=3)
        | st.none()
        | st.integers(),
        "to": targets | st.none(),
        "from": targets | st.none(),
        "meta": meta | st.none() | st.integers(),
        "result": json_values,
        "error": error | st.none() | st.text(max_size=5),
        "oops": json_values,
    }
    return st.lists(st.sampled_from(sorted(member)), unique=True, max_size=6).flatmap(
        lambda keys: st.fixed_dictionaries({k: member[k] for k in keys})
    )


def valid_frames() -> list[dict[str, Any]]:
    """A valid request for every method (its documented example params), responses and a notification."""
    from protocol.commands import REGISTRY
    from protocol.examples import EXAMPLES

    frames: list[dict[str, Any]] = []
    for i, (method, command) in enumerate(sorted(REGISTRY.items())):
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": EXAMPLES.get(method, {})}
        if not command.notification:
            message["id"] = i
        if command.served_by != "bus":
            message["to"] = "persona:demo" if command.served_by == "persona" else "cap:x"
        message["meta"] = {"deadline_ms": 5000, "trace": f"t{i}"}
        frames.append(message)
    frames += [
        {"jsonrpc": "2.0", "id": 7, "result": {"pong": True, "blob": b"\x89PNG"}, "from": "persona:demo"},
        {
            "jsonrpc": "2.0",
            "id": "r1",
            "error": {"code": -32602, "message": "invalid", "data": [1, {"a": None}]},
        },
        {"jsonrpc": "2.0", "method": "chat.token", "params": {"text": "Hel"}, "meta": {"reply_to": 17}},
    ]
    return frames


_MUTATIONS = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 2**16), st.binary(min_size=1, max_size=9)),
    min_size=1,
    max_size=6,
)
#: Bytes that mean something to msgpack or JSON: type bytes, lengths, brackets, quotes, escapes.
_MAGIC = [
    b"\xc1",
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\x7f\xff\xff\xff",
    b"\xcb\x7f\xf8",
    b"\xc7\x05\xff",
    b"\xd6\xff",
    b"\x90",
    b"\x80",
    b"[",
    b"{",
    b'"',
    b"\\u",
    b"\\ud800",
    b"1e400",
    b"NaN",
    b"-",
    b"99999999999999999999999",
    b"\xff",
    b"\x00",
    b"\xed\xa0\x80",
]


def mutate(frame: bytes, mutations: list[tuple[int, int, bytes]]) -> bytes:
    """Apply byte-level mutations: flip, insert, delete, replace with magic, truncate, duplicate, splice."""
    data = bytearray(frame)
    for op, where, chunk in mutations:
        pos = where % (len(data) + 1)
        if op == 0 and data:
            data[pos % len(data)] ^= 1 << (chunk[0] % 8)
        elif op == 1:
            data[pos:pos] = chunk
        elif op == 2:
            del data[pos : pos + 1 + chunk[0] % 16]
        elif op == 3:
            magic = _MAGIC[chunk[0] % len(_MAGIC)]
            data[pos : pos + len(magic)] = magic
        elif op == 4:
            del data[pos:]
        elif op == 5:
            data[pos:pos] = data[pos : pos + 1 + chunk[0] % 32] * (1 + chunk[-1] % 4)
        else:
            data[pos:pos] = _MAGIC[chunk[0] % len(_MAGIC)]
    return bytes(data)


def _decode_check(name: str, report: Report) -> Callable[[Any], None]:
    from protocol import JSON, MSGPACK
    from protocol.errors import DecodeError, EncodeError

    codec = MSGPACK if name == "msgpack" else JSON

    def check(frame: Any) -> None:
        report.inputs[f"decoder:{name}"] += 1
        started = time.perf_counter()
        try:
            message = codec.decode(frame, max_bytes=64 * 1024)
        except DecodeError as exc:
            report.outcome(f"decoder:{name}", type(exc).__name__)
            message = None
        except BaseException as exc:
            report.add(f"decoder:{name}", frame, f"raised {type(exc).__name__}: {exc}")
            return
        else:
            report.outcome(f"decoder:{name}", "message")
        elapsed = time.perf_counter() - started
        if elapsed > HANG_SECONDS:
            report.add(f"decoder:{name}", frame, f"took {elapsed:.1f} s")
        if message is not None:
            for other in (JSON, MSGPACK):  # relay safety: what is accepted re-encodes in both codecs
                try:
                    other.decode(other.encode(message))
                except (DecodeError, EncodeError) as exc:
                    report.add(
                        f"decoder:{name}",
                        frame,
                        f"accepted, but does not round-trip through {other.name}: {exc}",
                    )

    return check


def _msgpack_frames() -> st.SearchStrategy[bytes]:
    seeds = [msgpack.packb(f, use_bin_type=True) for f in valid_frames()]

    def pack(value: Any) -> bytes | None:
        try:
            return msgpack.packb(value, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError):
            return None

    return (
        st.binary(max_size=400)
        | msgpack_values.map(pack).filter(lambda b: b is not None)
        | st.builds(mutate, st.sampled_from(seeds), _MUTATIONS)
        | st.builds(mutate, st.sampled_from(seeds), _MUTATIONS).map(lambda b: b * 1)  # weight the mutants
    )


def _json_frames() -> st.SearchStrategy[str]:
    seeds = [json.dumps(f, default=lambda b: {"$bytes": "iVBORw=="}).encode() for f in valid_frames()]

    def dump(value: Any) -> str | None:
        try:
            return json.dumps(value, ensure_ascii=bool(hash(str(value)) & 1))
        except (TypeError, ValueError):
            return None

    return (
        st.text(max_size=400)
        | json_values.map(dump).filter(lambda s: s is not None)
        | st.builds(mutate, st.sampled_from(seeds), _MUTATIONS).map(lambda b: b.decode("utf-8", "replace"))
        | st.builds(mutate, st.sampled_from(seeds), _MUTATIONS).map(lambda b: b.decode("latin-1"))
        | st.sampled_from(["[" * 50_000, '{"a":' * 20_000, '"\\ud800"', "1e400", "[" + "[]," * 9000 + "[]]"])
    )


def _envelope_check(report: Report) -> Callable[[Any], None]:
    """``envelope.read`` never raises, and accepts exactly what pydantic accepts, with the same members."""
    from daemon import envelope
    from protocol.codec import validate
    from protocol.errors import InvalidMessage

    def same(fast: Any, slow: Any) -> str | None:
        kind = type(slow).__name__.lower()
        if fast.kind != kind:
            return f"fast path says {fast.kind}, pydantic says {kind}"
        pairs = [("id", fast.id, getattr(slow, "id", None)), ("from", fast.from_, slow.from_)]
        if kind != "response":
            pairs += [
                ("method", fast.method, slow.method),
                ("params", fast.params, slow.params),
                ("to", fast.to, slow.to),
            ]
        else:
            pairs += [("result", fast.result, slow.result)]
            if slow.error is not None:
                pairs += [
                    (
                        "error",
                        (fast.error.code, fast.error.message, fast.error.data),
                        (slow.error.code, slow.error.message, slow.error.data),
                    )
                ]
        if slow.meta is not None or fast.meta is not None:
            fm, sm = fast.meta, slow.meta
            pairs += [
                (
                    "meta",
                    (fm.deadline_ms, fm.trace, fm.reply_to) if fm else None,
                    (sm.deadline_ms, sm.trace, sm.reply_to) if sm else None,
                )
            ]
        for name, a, b in pairs:
            if a != b or type(a) is not type(b):
                return f"{name}: fast path {a!r}, pydantic {b!r}"
        return None

    def check(value: Any) -> None:
        report.inputs["decoder:envelope"] += 1
        started = time.perf_counter()
        try:
            fast = envelope.read(value)
        except BaseException as exc:
            report.add("decoder:envelope", value, f"envelope.read raised {type(exc).__name__}: {exc}")
            return
        try:
            slow = validate(value)
        except InvalidMessage:
            slow = None
        except BaseException as exc:
            report.add("decoder:envelope", value, f"validate raised {type(exc).__name__}: {exc}")
            return
        if time.perf_counter() - started > HANG_SECONDS:
            report.add("decoder:envelope", value, "took more than {HANG_SECONDS} s")
        report.outcome("decoder:envelope", ("fast " if fast else "") + ("valid" if slow else "invalid"))
        if fast is not None and slow is None:
            report.add("decoder:envelope", value, "the fast path accepts a message pydantic refuses")
        elif fast is not None and (why := same(fast, slow)):
            report.add("decoder:envelope", value, f"the fast path reads it differently: {why}")

    return check


# -- wsfast: the bus's own frame reader against websockets' ---------------------------------

_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _open_protocol(max_size: int | None) -> Any:
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    protocol = ServerProtocol(max_size=max_size)
    protocol.receive_data(_HANDSHAKE)
    [request] = protocol.events_received()
    protocol.send_response(protocol.accept(request))
    protocol.data_to_send()
    assert protocol.state is State.OPEN
    return protocol


def ws_frame(
    fin: bool, rsv: int, opcode: int, masked: bool, length_form: int, payload: bytes, key: bytes
) -> bytes:
    """One WebSocket frame as written, including ones websockets must refuse."""
    from websockets.utils import apply_mask

    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)])
    size = len(payload)
    bit = 0x80 if masked else 0
    if length_form == 0 and size < 126:
        head += bytes([bit | size])
    elif length_form <= 1 and size < 65536:
        head += bytes([bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + size.to_bytes(8, "big")
    return head + (key + apply_mask(payload, key) if masked else payload)


_ws_frames = st.builds(
    ws_frame,
    st.booleans() | st.just(True),
    st.sampled_from([0, 0, 0, 0, 1, 4, 7]),
    st.sampled_from([2, 2, 2, 1, 0, 8, 9, 10, 3, 11, 15]),
    st.booleans() | st.just(True) | st.just(True),
    st.sampled_from([0, 0, 0, 1, 2]),
    st.binary(max_size=300) | st.sampled_from([b"\x00" * 125, b"\x01" * 126, b"\x02" * 70_000]),
    st.binary(min_size=4, max_size=4),
)
_ws_streams = st.tuples(
    st.lists(_ws_frames, max_size=6).map(b"".join),
    _MUTATIONS | st.just([]) | st.just([]),
    st.lists(st.integers(1, 400), max_size=6),
    st.sampled_from([None, 2**20, 100, 10]),
    st.sampled_from([128 * 1024, 64, 10, 1]),
)


def _frames_seen(protocol: Any) -> list[tuple[int, bool, bytes]]:
    from websockets.frames import Frame

    return [(int(e.opcode), e.fin, bytes(e.data)) for e in protocol.events_received() if isinstance(e, Frame)]


def _wsfast_check(report: Report) -> Callable[[Any], None]:
    from websockets.frames import Opcode

    from daemon.wsfast import read_frames

    class Sink:
        def __init__(self) -> None:
            self.frames: list[tuple[int, bool, bytes]] = []
            self.on_frame: Callable[[bytes], bool] | None = self.take

        def take(self, payload: bytes) -> bool:
            self.frames.append((int(Opcode.BINARY), True, payload))
            return True

    def check(case: tuple[bytes, list[tuple[int, int, bytes]], list[int], int | None, int]) -> None:
        stream, mutations, cuts, max_size, limit = case
        data = mutate(stream, mutations) if mutations else stream
        report.inputs["decoder:wsfast"] += 1
        chunks, pos = [], 0
        for cut in cuts:
            chunks.append(data[pos : pos + cut])
            pos += cut
        chunks.append(data[pos:])
        started = time.perf_counter()
        try:
            fast, sink = _open_protocol(max_size), Sink()
            for chunk in chunks:
                if not chunk:
                    continue
                rest = read_frames(sink, fast, chunk, limit, masked=True)
                sink.frames += _frames_seen(fast)  # what websockets made of earlier chunks' rests
                if rest:
                    fast.receive_data(rest)
                    sink.frames += _frames_seen(fast)
            plain = _open_protocol(max_size)
            seen: list[tuple[int, bool, bytes]] = []
            for chunk in chunks:
                if chunk:
                    plain.receive_data(chunk)
                    seen += _frames_seen(plain)
        except BaseException as exc:
            report.add("decoder:wsfast", data, f"raised {type(exc).__name__}: {exc}")
            return
        if time.perf_counter() - started > HANG_SECONDS:
            report.add("decoder:wsfast", data, f"took more than {HANG_SECONDS} s")
        report.outcome("decoder:wsfast", f"{len(seen)} frames, {plain.state.name}")
        if sink.frames != seen:
            report.add(
                "decoder:wsfast",
                (data, cuts, max_size, limit),
                f"fast path saw {_short_repr(sink.frames, 200)}, websockets alone {_short_repr(seen, 200)}",
            )
        elif (fast.state, type(fast.parser_exc)) != (plain.state, type(plain.parser_exc)):
            report.add(
                "decoder:wsfast",
                (data, cuts, max_size, limit),
                f"ends {fast.state.name} ({fast.parser_exc!r}), "
                f"websockets alone {plain.state.name} ({plain.parser_exc!r})",
            )

    return check


#: Each hypothesis-drawn decoder input is also fed as this many cheap mutants (random byte
#: and member mutations): drawing is most of hypothesis's cost, about 3 ms an input here.
MUTANTS = 9
#: Values a structural mutant puts in place of a member.
_POOL: list[Any] = [
    *_INTERESTING_INTS,
    *_ODD_TEXT,
    None,
    True,
    False,
    1.5,
    -0.0,
    [],
    {},
    [1],
    {"a": 1},
    {"deadline_ms": 5},
    {"$bytes": "AA=="},
    b"\x00",
    "2.0",
    "persona:demo",
    "cap:x",
]


def _random_ops(rng: random.Random) -> list[tuple[int, int, bytes]]:
    return [
        (rng.randrange(7), rng.randrange(2**16), rng.randbytes(rng.randrange(1, 9)))
        for _ in range(rng.randrange(1, 5))
    ]


def _mutate_value(value: Any, rng: random.Random) -> Any:
    """A structural mutant: one member (at any depth) dropped, replaced or added."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        out = dict(value)
        key = rng.choice(sorted(out, key=repr))
        roll = rng.random()
        if roll < 0.3:
            del out[key]
        elif roll < 0.6:
            out[key] = rng.choice(_POOL)
        elif roll < 0.8:
            out[key] = _mutate_value(out[key], rng)
        else:
            out[rng.choice(_KEYS)] = rng.choice(_POOL)
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        out_list = list(value)
        out_list[rng.randrange(len(out_list))] = _mutate_value(rng.choice(out_list), rng)
        return out_list
    return rng.choice(_POOL)


def _variants(name: str, value: Any, rng: random.Random) -> Iterator[Any]:
    """``value`` and MUTANTS cheap mutants of it, for decoder ``name``."""
    yield value
    for _ in range(MUTANTS):
        if name == "msgpack":
            yield mutate(value, _random_ops(rng))
        elif name == "json":
            yield mutate(value.encode("utf-8", "surrogatepass"), _random_ops(rng)).decode("utf-8", "replace")
        elif name == "envelope":
            yield _mutate_value(value, rng)
        else:
            stream, _, cuts, max_size, limit = value
            cuts = [rng.randrange(1, 400) for _ in range(rng.randrange(0, 5))]
            yield (stream, _random_ops(rng) if rng.random() < 0.7 else [], cuts, max_size, limit)


def _checker(name: str, report: Report) -> Callable[[Any], None]:
    if name in ("msgpack", "json"):
        return _decode_check(name, report)
    if name == "envelope":
        return _envelope_check(report)
    if name == "wsfast":
        return _wsfast_check(report)
    raise ValueError(f"no decoder {name!r}; choose from {', '.join(DECODERS)}")


def _strategy(name: str) -> st.SearchStrategy[Any]:
    if name == "msgpack":
        return _msgpack_frames()
    if name == "json":
        return _json_frames()
    if name == "envelope":
        return _envelope_values() | json_values
    return _ws_streams


def fuzz_decoders(
    n: int, seed: int = 0, *, decoders: tuple[str, ...] = DECODERS, atheris: bool = True
) -> Report:
    """``n`` inputs for each decoder: hypothesis-drawn ones and their mutants; as many again by
    atheris (coverage-guided, a child process) when it is installed and ``atheris`` is true."""
    report = Report()
    for name in decoders:
        check = _checker(name, report)
        rng = random.Random(seed)
        started = time.perf_counter()
        left = [n]

        def amplified(
            value: Any,
            name: str = name,
            rng: random.Random = rng,
            check: Callable[[Any], None] = check,
            left: list[int] = left,
        ) -> None:
            for variant in _variants(name, value, rng):
                if left[0] <= 0:
                    return
                left[0] -= 1
                check(variant)

        run_each(_strategy(name), -(-n // (MUTANTS + 1)), seed, amplified)
        report.seconds[f"decoder:{name}"] = time.perf_counter() - started
        if atheris and atheris_available():
            started = time.perf_counter()
            report.merge(run_atheris(name, n, seed))
            report.seconds[f"decoder:{name}:atheris"] = time.perf_counter() - started
    return report


# -- atheris: coverage-guided, in a child process (its Fuzz() never returns) ---------------------


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _atheris_seeds(name: str) -> list[bytes]:
    frames = valid_frames()
    packed = [msgpack.packb(f, use_bin_type=True) for f in frames]
    if name == "json":
        return [json.dumps(f, default=lambda b: {"$bytes": "iVBORw=="}).encode() for f in frames]
    if name == "wsfast":  # two bytes of cuts, then a stream of masked frames
        return [b"\x00\x00" + ws_frame(True, 0, 2, True, 0, p, b"abcd") * 2 for p in packed[:20]]
    return packed


def _atheris_input(name: str, data: bytes) -> Any:
    """The check's input for libFuzzer's bytes (None: not one, e.g. not msgpack for envelope)."""
    if name == "msgpack":
        return data
    if name == "json":
        return data.decode("utf-8", "replace")
    if name == "envelope":
        from protocol import MSGPACK
        from protocol.errors import DecodeError

        try:
            return MSGPACK.decode_data(data)
        except DecodeError:
            return None
    if len(data) < 2:
        return None
    cuts = [1 + (data[0] >> 4) * 16, 1 + (data[0] & 15) * 16][: data[1] % 3]
    return (
        data[2:],
        [],
        cuts,
        [None, 2**20, 100, 10][data[1] >> 6],
        [128 * 1024, 64, 10, 1][(data[1] >> 4) & 3],
    )


def run_atheris(name: str, n: int, seed: int) -> Report:
    """libFuzzer's coverage-guided mutator on decoder ``name`` for ``n`` runs, from valid frames."""
    report = Report()
    with tempfile.TemporaryDirectory(prefix="fuzz-atheris-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i, data in enumerate(_atheris_seeds(name)):
            (corpus / f"seed{i}").write_bytes(data)
        findings = Path(tmp) / "findings.jsonl"
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "_atheris",
            name,
            str(findings),
            f"-runs={n}",
            f"-seed={seed + 1}",
            "-max_len=4096",
            f"-timeout={int(HANG_SECONDS * 5)}",
            "-rss_limit_mb=4096",
            str(corpus),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        runs = re.search(r"Done (\d+) runs", done.stderr)
        report.inputs[f"decoder:{name}:atheris"] += int(runs.group(1)) if runs else 0
        if findings.exists():
            for line in findings.read_text().splitlines():
                item = json.loads(line)
                report.add(f"decoder:{name}:atheris", item["input"], item["what"])
        if done.returncode != 0 or runs is None:
            report.add(
                f"decoder:{name}:atheris", "", f"libFuzzer exited {done.returncode}: {done.stderr[-1500:]}"
            )
    return report


def _atheris_main(name: str, findings: str, libfuzzer_args: list[str]) -> None:
    """``fuzz.py _atheris NAME FILE -runs=N …``: the same checks, findings appended to FILE."""
    import atheris

    with atheris.instrument_imports(include=["protocol", "daemon.envelope", "daemon.wsfast"]):
        import daemon.envelope
        import daemon.wsfast  # noqa: F401
        import protocol  # noqa: F401
    report = Report()
    check = _checker(name, report)
    out = open(findings, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life

    def one(data: bytes) -> None:
        value = _atheris_input(name, data)
        if value is None:
            return
        kept = len(report.findings)
        check(value)
        for finding in report.findings[kept:]:
            out.write(json.dumps({"input": finding.input, "what": finding.what}) + "\n")
            out.flush()
        del report.findings[kept:]  # written: keep memory flat and the per-target cap off

    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


# -- part 2: every command's params over a real bus ------------------------------------------

#: Methods that start long work: short deadlines, a fifth of the share, TIMEOUT is a fine answer.
SLOW_METHODS = frozenset(
    {
        "adapter.train",
        "adapter.merge",
        "academy.enroll",
        "academy.examine",
        "academy.judge",
        "hub.run",
        "hub.compose",
        "hub.status",
        "persona.generate",
        "persona.merge",
        "chat",
        "inference.generate",
        "inference.embed",
        "inference.load_stack",
        "lora.load_stack",
        "skill.acquire",
        "skill.fetch",
        "browser.navigate",
        "browser_js",
        "screenshot",
        "persona.session.join",
        "persona.plugin.run",
    }
)
SLOW_DEADLINE_MS = 1500
#: Frames over the bus's limit (16 MiB) close the connection by design; the fuzz does not send them.
MAX_FRAME = 16 * 1024 * 1024 - 4096
DEADLINE_MS = 30_000
#: Per target: a cheap call that shows it still answers.
PROBES: dict[str, tuple[str, dict[str, Any]]] = {
    "bus": ("bus.ping", {}),
    "persona": ("persona.ping", {}),
    "cap:registry": ("persona.list", {}),
    "cap:inference": ("inference.status", {}),
    "cap:browser": ("browser.close_context", {"context": "fuzz-probe"}),
    "cap:academy": ("academy.status", {}),
    "cap:skills": ("skill.popular", {}),
    "cap:hub": ("hub.plan", {"count": 1}),
    "mesh": ("skill.held", {}),
}
#: Codes an error may carry whatever the method: the bus's own and JSON-RPC's.
_UNCLEAR = re.compile(r"Traceback|object at 0x|<class '|File \"|\bNone\b is not|^\s*$")


def _bus_codes() -> set[int]:
    from protocol import ErrorCode

    return {int(c) for c in ErrorCode}


_BUS_CODES = _bus_codes()


def _method_codes(method: str) -> set[int]:
    """The codes ``method`` (and its variants) documents itself."""
    from protocol.commands.registry import REGISTRY, VARIANTS

    commands = [REGISTRY[method], *(v for (m, _), v in VARIANTS.items() if m == method)]
    return {int(code) for command in commands for code, _ in command.error_list()}


def documented_codes(method: str) -> set[int]:
    """The protocol's codes plus the ones ``method`` (and its variants) documents."""
    from protocol import ErrorCode
    from protocol.commands.registry import REGISTRY, VARIANTS

    codes = {int(c) for c in ErrorCode}
    commands = [REGISTRY[method], *(v for (m, _), v in VARIANTS.items() if m == method)]
    for command in commands:
        codes |= {int(code) for code, _ in command.error_list()}
    return codes


def request_methods() -> list[str]:
    from protocol.commands import REGISTRY

    return [m for m, c in sorted(REGISTRY.items()) if not c.notification and m != "hello"]


# -- params from a JSON Schema, and junk ---------------------------------------------------------

_junk = st.recursive(
    _leaves | st.binary(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_boundary_numbers = st.sampled_from(
    [-1, 0, -(2**63), 2**63 - 1, 2**64 - 1, -1e308, 1e308, -0.0, 0.5, 1e-300, 2**53 + 1]
)


def _nested(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


_odd = (
    _boundary_numbers
    | st.sampled_from(_ODD_TEXT)
    | st.sampled_from([60, 400]).map(_nested)
    | st.sampled_from([[None] * 3000, {f"k{i}": i for i in range(500)}]).map(lambda v: v)
    | st.sampled_from([5000, 70_000, 300_000]).map(lambda n: "y" * n)
    | _junk
)


def from_schema(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """A strategy for values of ``schema`` (pydantic's JSON Schema), mostly valid, bounds included."""
    if depth > 8:
        return st.none()
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        return st.deferred(lambda: from_schema(target, defs, depth + 1))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, defs, depth + 1) for s in schema[key]])
    if "allOf" in schema:
        return from_schema(schema["allOf"][0], defs, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, defs, depth) for k in kind])
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fixed = {k: from_schema(v, defs, depth + 1) for k, v in props.items() if k in required}
        optional = {k: from_schema(v, defs, depth + 1) for k, v in props.items() if k not in required}
        base = st.fixed_dictionaries(fixed, optional=optional)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not props:
            return st.dictionaries(st.text(max_size=10), from_schema(extra, defs, depth + 1), max_size=3)
        if extra is True and not props:
            return st.dictionaries(st.text(max_size=10), _junk, max_size=3)
        return base
    if kind == "string":
        if schema.get("format") == "binary":
            return st.binary(max_size=64)
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        if "pattern" in schema:
            text = st.from_regex(schema["pattern"], fullmatch=True)
            if hi is not None or lo:
                text = text.filter(lambda s: lo <= len(s) <= (hi if hi is not None else len(s)))
        else:
            text = st.text(min_size=lo, max_size=min(hi if hi is not None else 40, lo + 40))
        edges = [lo, *([hi] if hi is not None and hi <= 100_000 else [])]
        return text | st.sampled_from(edges).map(lambda k: "a" * k)
    if kind in ("integer", "number"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        ints = st.integers(
            min_value=math.ceil(lo)
            if lo is not None
            else math.floor(xlo) + 1
            if xlo is not None
            else -(2**40),
            max_value=math.floor(hi) if hi is not None else math.ceil(xhi) - 1 if xhi is not None else 2**40,
        )
        if kind == "integer":
            return ints
        floats = st.floats(
            min_value=lo if lo is not None else xlo,
            max_value=hi if hi is not None else xhi,
            exclude_min=lo is None and xlo is not None,
            exclude_max=hi is None and xhi is not None,
            allow_nan=False,
            allow_infinity=False,
        )
        lo_int = math.ceil(lo) if lo is not None else math.floor(xlo) + 1 if xlo is not None else -(2**40)
        hi_int = math.floor(hi) if hi is not None else math.ceil(xhi) - 1 if xhi is not None else 2**40
        return floats | st.integers(lo_int, hi_int) if lo_int <= hi_int else floats
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = schema.get("items")
        if "prefixItems" in schema:
            return st.tuples(*(from_schema(s, defs, depth + 1) for s in schema["prefixItems"])).map(list)
        inner = from_schema(items, defs, depth + 1) if isinstance(items, dict) else _junk
        lo = schema.get("minItems", 0)
        hi = schema.get("maxItems")
        return st.lists(inner, min_size=lo, max_size=min(hi if hi is not None else 4, lo + 4))
    return _junk  # no type: any JSON value


_MISSING = object()


def _mutate_params(params: dict[str, Any], ops: list[tuple[int, int, Any]]) -> Any:
    """Drop, add, retype and stretch members of a params object."""
    out = dict(params)
    for op, where, value in ops:
        keys = sorted(out)
        key = keys[where % len(keys)] if keys else None
        if op == 0 and key is not None:
            del out[key]
        elif op == 1:
            out[f"zz_{where % 7}"] = value
        elif op in (2, 3) and key is not None:
            out[key] = value
        elif op == 4 and key is not None:  # a string made too long (within a frame), a number made huge
            old = out[key]
            out[key] = (old * 4097)[:1_000_000] if isinstance(old, str) and old else value
        elif op == 5 and key is not None:
            out[key] = [out[key]] * (1 + where % 3)
    return out


def params_strategy(method: str) -> st.SearchStrategy[Any]:
    """Params for ``method``: from its schema and example, mutated, or junk."""
    from protocol.commands import REGISTRY
    from protocol.examples import EXAMPLES

    schema = REGISTRY[method].params.model_json_schema()
    valid = from_schema(schema, schema.get("$defs", {}))
    example = EXAMPLES.get(method)
    seeds = valid | st.just(example) if example is not None else valid
    ops = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 99), _odd), min_size=1, max_size=3)
    mutated = st.builds(_mutate_params, seeds.filter(lambda p: isinstance(p, dict)), ops)
    return st.one_of(
        valid,
        valid,
        seeds,
        mutated,
        mutated,
        mutated,
        st.dictionaries(
            st.sampled_from(sorted(schema.get("properties", {})) or ["x"]) | st.text(max_size=6),
            _odd,
            max_size=4,
        ),
        st.lists(_junk, max_size=3),
        st.just(_MISSING),
    )


# -- a raw client: any params, both codecs, answers matched by id ---------------------------------


class RawClient:
    """One WebSocket connection saying hello; ``call`` sends anything and waits for its answer."""

    def __init__(self, url: str, token: str, codec: str, name: str) -> None:
        from protocol import JSON, MSGPACK

        self.url, self.token, self.name = url, token, name
        self.codec = MSGPACK if codec == "msgpack" else JSON
        self.ws: Any = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.reader: asyncio.Task[None] | None = None
        self.closed: str | None = None
        self.grants: tuple[str, ...] = ()
        self.starting = asyncio.Lock()

    async def start(self) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(
            self.url, subprotocols=[self.codec.subprotocol], compression=None, max_size=None
        )  # type: ignore[list-item]
        hello = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "hello",
            "params": {"protocol": 1, "kind": "cli", "name": self.name, "token": self.token},
        }
        await self.ws.send(self.codec.dumps(hello))
        answer = self.codec.decode_data(await self.ws.recv(), max_bytes=2**31)
        if "result" not in answer:
            raise RuntimeError(f"hello refused: {answer}")
        self.grants = tuple(answer["result"]["grants"])
        self.closed = None
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for frame in self.ws:
                data = self.codec.decode_data(frame, max_bytes=2**31)
                if isinstance(data, dict) and "method" not in data:
                    future = self.pending.pop(data.get("id"), None)  # type: ignore[arg-type]
                    if future is not None and not future.done():
                        future.set_result(data)
        except ConnectionClosed:
            pass
        finally:
            self.closed = f"closed {self.ws.close_code} {self.ws.close_reason!r}"
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(self.closed))
            self.pending.clear()

    def frame(self, method: str, params: Any, to: str | None, deadline_ms: int) -> tuple[int, bytes | str]:
        rid = next(self.ids)
        message: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": rid,
            "method": method,
            "meta": {"deadline_ms": deadline_ms},
        }
        if params is not _MISSING:
            message["params"] = params
        if to is not None:
            message["to"] = to
        return rid, self.codec.dumps(message)

    async def send(self, rid: int, frame: bytes | str, timeout: float) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        try:
            await self.ws.send(frame)
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop(rid, None)

    async def cancel(self, rid: int) -> None:
        with contextlib.suppress(Exception):
            await self.ws.send(
                self.codec.dumps({"jsonrpc": "2.0", "method": "bus.cancel", "params": {"id": rid}})
            )

    async def call(
        self, method: str, params: Any, to: str | None, deadline_ms: int = DEADLINE_MS
    ) -> dict[str, Any]:
        rid, frame = self.frame(method, params, to, deadline_ms)
        return await self.send(rid, frame, deadline_ms / 1000 + 10)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


# -- the command campaign ---------------------------------------------------------------------------


def target_of(served_by: str, targets: dict[str, str | None]) -> tuple[bool, str | None]:
    """(reachable, ``to``) for a method served by ``served_by``."""
    if served_by not in targets:
        return False, None
    return True, targets[served_by]


def judge(method: str, answer: dict[str, Any], codes: set[int], slow: bool) -> tuple[str, str | None]:
    """(outcome, a finding or None) for one answer."""
    from protocol import ErrorCode

    if ("result" in answer) == ("error" in answer):
        return "malformed", f"the answer has neither or both of result and error: {_short_repr(answer)}"
    if "result" in answer:
        return "result", None
    error = answer["error"]
    code, message = error.get("code"), error.get("message")
    outcome = str(code)
    if not isinstance(code, int) or code not in codes:
        return outcome, f"undocumented error code {code!r}: {message!r}"
    if not isinstance(message, str) or not message.strip():
        return outcome, f"error {code} without a message"
    if code == ErrorCode.INTERNAL_ERROR and (error.get("data") or {}).get("reason") != "result_too_large":
        return outcome, f"INTERNAL_ERROR (the handler failed): {message!r}"
    if code == ErrorCode.INVALID_PARAMS:
        if _UNCLEAR.search(message) or len(message) > 2000:
            return outcome, f"INVALID_PARAMS with an unclear message: {_short_repr(message, 300)}"
        data = error.get("data")
        if isinstance(data, list) and any(
            not isinstance(d, dict) or {"loc", "msg", "type"} - d.keys() or "input" in d for d in data
        ):
            return (
                outcome,
                f"INVALID_PARAMS data is not a list of {{loc, msg, type}}: {_short_repr(data, 300)}",
            )
    if code == ErrorCode.TIMEOUT and not slow and code not in _method_codes(method):
        return outcome, f"TIMEOUT: a quick method did not answer within {DEADLINE_MS} ms: {message!r}"
    if code == ErrorCode.TARGET_OFFLINE:
        return outcome, f"TARGET_OFFLINE: {message!r} (did the server go away?)"
    return outcome, None


@dataclass
class Input:
    method: str
    params: Any
    codec: str
    weak: bool = False


def plan_inputs(methods: list[str], n: int, seed: int, weak_share: float = 0.05) -> list[Input]:
    """``n`` inputs shared among ``methods`` (slow ones a fifth as many), on both codecs,
    ``weak_share`` of them with the weak token."""
    weights = {m: 1 if m in SLOW_METHODS else 5 for m in methods}
    total = sum(weights.values())
    rng = random.Random(seed)
    inputs: list[Input] = []
    for i, method in enumerate(methods):
        share = max(1, round(n * weights[method] / total))
        for params in draw(params_strategy(method), share, seed + i):
            codec = "json" if rng.random() < 0.3 else "msgpack"
            inputs.append(Input(method, params, codec, weak=rng.random() < weak_share))
    return inputs


async def probe(client: RawClient, targets: dict[str, str | None]) -> list[str]:
    """Which servers do not answer their cheap call (any answer but TIMEOUT/TARGET_OFFLINE is one)."""
    from protocol import ErrorCode

    dead = []
    for served_by, to in targets.items():
        method, params = PROBES.get(served_by, ("bus.ping", {}))
        try:
            answer = await client.call(method, params, to, deadline_ms=DEADLINE_MS)
        except (TimeoutError, ConnectionError) as exc:
            dead.append(f"{to or 'bus'} ({method}: {type(exc).__name__})")
            continue
        code = (answer.get("error") or {}).get("code")
        if code in (ErrorCode.TIMEOUT, ErrorCode.TARGET_OFFLINE):
            dead.append(f"{to or 'bus'} ({method}: {answer['error']['message']})")
    return dead


async def fuzz_commands(
    url: str,
    token: str,
    targets: dict[str, str | None],
    n: int,
    seed: int = 0,
    *,
    weak_token: str | None = None,
    grace: float = 10.0,
    window: int = 8,
    methods: list[str] | None = None,
    alive: Callable[[], list[str]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """About ``n`` fuzzed requests over the bus at ``url``, shared among every request method.

    ``targets`` maps a method's ``served_by`` ("bus", "persona", "cap:inference",
    "mesh" …) to its ``to`` (None for the bus); methods served by anything
    else are skipped. ``weak_token`` (without the grants) gets a share,
    answered FORBIDDEN. ``alive`` returns the names of started processes that
    died (checked after each method with the probes).
    """
    from daemon.tokens import TokenEntry
    from protocol import ErrorCode
    from protocol.commands import REGISTRY

    report = Report()
    methods = methods if methods is not None else request_methods()
    reachable = [m for m in methods if REGISTRY[m].served_by in targets]
    for m in sorted(set(methods) - set(reachable)):
        report.outcome(f"command:{m}", f"skipped: nothing serves {REGISTRY[m].served_by}")
    started = time.perf_counter()
    inputs = plan_inputs(reachable, n, seed, weak_share=0.05 if weak_token else 0.0)
    report.seconds["commands:generate"] = time.perf_counter() - started
    by_method: dict[str, list[Input]] = {}
    for item in inputs:
        by_method.setdefault(item.method, []).append(item)

    clients = {
        codec: RawClient(url, token, codec, f"fuzz-{codec}-{os.getpid()}") for codec in ("msgpack", "json")
    }
    weak = RawClient(url, weak_token, "msgpack", f"fuzz-weak-{os.getpid()}") if weak_token else None
    for client in [*clients.values(), *([weak] if weak else [])]:
        await client.start()
    weak_grants = TokenEntry("weak", "weak", "observer", "*", weak.grants, "") if weak is not None else None
    limiter = asyncio.Semaphore(window)
    started = time.perf_counter()

    async def one(item: Input) -> None:
        command = REGISTRY[item.method]
        to = targets[command.served_by]
        slow = item.method in SLOW_METHODS
        deadline = SLOW_DEADLINE_MS if slow else DEADLINE_MS
        client = weak if item.weak and weak is not None else clients[item.codec]
        name = f"command:{item.method}"
        report.inputs[name] += 1
        shown = {
            "method": item.method,
            "to": to,
            "codec": client.codec.name,
            "params": "(none)" if item.params is _MISSING else item.params,
            "weak_token": client is weak,
        }
        try:
            rid, frame = client.frame(item.method, item.params, to, deadline)
            if len(frame) > MAX_FRAME:
                raise ValueError("over the bus's frame limit (closed with 1009, by design)")
        except Exception as exc:
            report.outcome(name, f"unsendable on {client.codec.name}: {type(exc).__name__}")
            return
        async with limiter:
            async with client.starting:
                if client.closed is not None:
                    await client.start()
            sent = time.monotonic()
            try:
                answer = await client.send(rid, frame, deadline / 1000 + grace)
            except TimeoutError:
                await client.cancel(rid)
                report.outcome(name, "hang")
                report.add(name, shown, f"hang: no answer within the deadline ({deadline} ms) + {grace} s")
                return
            except ConnectionError as exc:
                report.outcome(name, "connection closed")
                report.add(name, shown, f"the bus closed the connection: {exc}")
                return
        took = time.monotonic() - sent
        if took > deadline / 1000 + grace:
            report.add(
                name, shown, f"answered after {took:.1f} s, past the deadline ({deadline} ms) + {grace} s"
            )
        if client is weak and (weak_grants is None or not weak_grants.allows(item.method, to or "bus")):
            code = (answer.get("error") or {}).get("code")
            report.outcome(name, f"weak token: {code}")
            if code != ErrorCode.FORBIDDEN:
                report.add(
                    name, shown, f"a token without the grant got {_short_repr(answer, 300)}, not FORBIDDEN"
                )
            return
        outcome, finding = judge(item.method, answer, documented_codes(item.method), slow)
        report.outcome(name, outcome)
        if finding is not None:
            report.add(name, shown, finding)

    probe_client = RawClient(url, token, "msgpack", f"fuzz-probe-{os.getpid()}")
    await probe_client.start()
    try:
        for index, (method, items) in enumerate(by_method.items()):
            t0 = time.perf_counter()
            await asyncio.gather(*(one(item) for item in items))
            report.seconds[f"command:{method}"] = time.perf_counter() - t0
            dead = await probe(probe_client, targets)
            gone = alive() if alive is not None else []
            if dead or gone:
                report.add(
                    f"command:{method}",
                    {"after": method},
                    f"after {len(items)} inputs: no answer from {', '.join(dead) or '-'}; "
                    f"processes gone: {', '.join(gone) or '-'}",
                )
            if progress is not None:
                progress(
                    f"{index + 1}/{len(by_method)} {method}: {len(items)} inputs "
                    f"in {time.perf_counter() - t0:.1f} s "
                    f"{dict(report.outcomes.get('command:' + method, {}))}"
                )
    finally:
        for client in [*clients.values(), probe_client, *([weak] if weak else [])]:
            await client.close()
    report.seconds["commands"] = time.perf_counter() - started
    return report


# -- a system to fuzz: real processes on loopback ----------------------------------------------------

PERSONA = "fuzz"
#: served_by -> to, for the system System starts.
SYSTEM_TARGETS: dict[str, str | None] = {
    "bus": None,
    "persona": f"persona:{PERSONA}",
    "cap:registry": "cap:registry",
    "cap:inference": "cap:inference",
    "cap:browser": "cap:browser",
    "cap:academy": "cap:academy",
    "cap:skills": "cap:skills",
    "cap:hub": "cap:hub",
    "mesh": "mesh:main",
}
#: Who must be on the bus before fuzzing: capabilities and client ids.
_READY = {"registry", "inference", "browser", "academy", "skills", "hub", f"persona:{PERSONA}", "mesh:main"}


class System:
    """The bus and every service as separate ``python -m daemon`` processes, in a throwaway state dir."""

    def __init__(
        self, root: Path, *, model: str | None = None, services: tuple[str, ...] | None = None
    ) -> None:
        from daemon.state import StateDir

        self.root = root
        self.state = StateDir(root / "state")
        self.config = root / "config"
        self.logs = root / "logs"
        self.model = model
        self.services = services or (
            "registry",
            "persona",
            "inference",
            "browser",
            "academy",
            "skills",
            "hub",
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = ""
        self.admin_token = ""
        self.weak_token = ""

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "PERSONAD_TOKEN")}
        env.update(
            PERSONAD_STATE_DIR=str(self.state.root),
            PERSONAD_CONFIG_DIR=str(self.config),
            PYTHONUNBUFFERED="1",
            HF_HUB_OFFLINE="1",
        )
        env.setdefault("PERSONAD_OV_CACHE", str(REPO / ".cache" / "openvino-ir"))
        if self.url:
            env["PERSONAD_URL"] = self.url
        return env

    def _spawn(self, name: str, *args: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "daemon", *args],
                env=self._env(),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def argv(self, name: str) -> list[str]:
        if name == "registry":
            return ["registry", "--config-dir", str(self.config)]
        if name == "persona":
            return ["persona", PERSONA]
        if name == "inference":
            return ["inference", "--threads", "1", *(["--model", self.model] if self.model else [])]
        if name == "browser":
            return ["browser"]
        return [name, "serve"]

    def start(self, timeout: float = 600.0) -> None:
        token = self.state.init()
        assert token is not None, "a fresh state dir"
        self.admin_token = token
        self.weak_token = self.state.issue_token(name="fuzz-observer", role="observer", subject="*").token
        (self.config / "personas").mkdir(parents=True, exist_ok=True)
        (self.config / "personas" / f"{PERSONA}.toml").write_text(
            f'id = "{PERSONA}"\nname = "Fuzz"\ndescription = "A persona that gets hostile input."\n', "utf-8"
        )
        self._spawn("bus", "bus", "--port", "0")
        deadline = time.monotonic() + timeout
        while not self.url:
            text = (self.logs / "bus.log").read_text("utf-8", "replace")
            if match := re.search(r"listening on (ws://\S+)", text):
                self.url = match.group(1)
            elif self.procs["bus"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bus did not start:\n{text}")
            else:
                time.sleep(0.05)
        for name in self.services:
            self._spawn(name, *self.argv(name))
        asyncio.run(self._wait_ready(deadline))

    def needed(self) -> set[str]:
        wanted = {"persona": f"persona:{PERSONA}", "skills": "mesh:main"}
        out = {s for s in self.services if s != "persona"}
        out |= {wanted[s] for s in self.services if s in wanted}
        return out & _READY

    async def _wait_ready(self, deadline: float) -> None:
        client = RawClient(self.url, self.admin_token, "msgpack", "fuzz-ready")
        await client.start()
        try:
            while True:
                answer = await client.call("bus.clients", {}, None)
                present = set()
                for entry in answer["result"]["clients"]:
                    present.add(entry["id"])
                    present.update(entry["capabilities"])
                missing = self.needed() - present
                if not missing:
                    return
                if gone := self.dead():
                    raise RuntimeError(f"{', '.join(gone)} exited while starting; see {self.logs}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"not on the bus in time: {', '.join(sorted(missing))}; see {self.logs}"
                    )
                await asyncio.sleep(0.25)
        finally:
            await client.close()

    def targets(self) -> dict[str, str | None]:
        keep = {
            "bus",
            *(f"cap:{s}" for s in self.services),
            *(["persona"] if "persona" in self.services else []),
            *(["mesh"] if "skills" in self.services else []),
        }
        return {k: v for k, v in SYSTEM_TARGETS.items() if k in keep}

    def dead(self) -> list[str]:
        return [f"{name} (exit {p.returncode})" for name, p in self.procs.items() if p.poll() is not None]

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(list(self.procs.values())):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:]) if path.exists() else ""

    def tracebacks(self) -> list[str]:
        """Each logged traceback's last lines, from every process's log (what INTERNAL_ERROR hides)."""
        found = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text("utf-8", "replace")
            for match in re.finditer(r"(?m)^(.*(?:failed|error).*)\nTraceback[\s\S]*?\n(\S[^\n]*)$", text):
                found.append(f"{path.stem}: {match.group(1)[-160:]} -> {match.group(2)[:200]}")
        return found


@contextlib.contextmanager
def running_system(root: Path | None = None, **kwargs: Any) -> Iterator[System]:
    """A started System, stopped (and its directory removed, when it made one) at the end."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="personad-fuzz-")))
        system = System(root, **kwargs)
        try:
            system.start()
            yield system
        finally:
            system.stop()


# -- the script --------------------------------------------------------------------------------------


def print_report(report: Report) -> None:
    print(f"{'target':<34} {'inputs':>9} {'seconds':>8} {'inputs/s':>9}")
    for target, count in sorted(report.inputs.items()):
        seconds = report.seconds.get(target, 0.0)
        rate = f"{count / seconds:,.0f}" if seconds else "-"
        print(f"{target:<34} {count:>9,} {seconds:>8.1f} {rate:>9}")
    decoders = sum(c for t, c in report.inputs.items() if t.startswith("decoder:"))
    commands = sum(c for t, c in report.inputs.items() if t.startswith("command:"))
    print(f"decoder inputs {decoders:,}, command inputs {commands:,}, total {report.total:,}")
    if "commands" in report.seconds:
        print(
            f"commands: {commands / report.seconds['commands']:,.0f} inputs/s "
            f"over {report.seconds['commands']:.0f} s"
        )
    print(f"findings: {len(report.findings) + sum(report.more_findings.values())}")
    if not report.ok:
        print(report.describe_findings())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_atheris":
        _atheris_main(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--decoder-inputs",
        type=int,
        default=150_000,
        help="inputs per decoder (and as many again by atheris for msgpack and json)",
    )
    parser.add_argument(
        "--command-inputs",
        type=int,
        default=20_000,
        help="fuzzed requests in total, shared among the methods",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-decoders", action="store_true")
    parser.add_argument("--no-commands", action="store_true")
    parser.add_argument(
        "--no-atheris", action="store_true", help="hypothesis only, even with atheris installed"
    )
    parser.add_argument(
        "--methods", default="", help="comma-separated methods to fuzz (default: every request method)"
    )
    parser.add_argument("--url", help="fuzz an already running system (its bus) instead of starting one")
    parser.add_argument("--token", help="with --url: an admin token")
    parser.add_argument(
        "--weak-token", help="with --url: a token lacking grants (observer), for the FORBIDDEN share"
    )
    parser.add_argument(
        "--targets",
        default="",
        help="with --url: served_by=to pairs, e.g. persona=persona:demo,cap:hub=cap:hub",
    )
    parser.add_argument("--model", help="the inference service's --model (default: its own default, SmolLM2)")
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds past the deadline before an unanswered request is a hang",
    )
    parser.add_argument("--keep", help="keep the system's directory (state, logs) here")
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args()

    report = Report()
    started = time.perf_counter()
    if not args.no_decoders:
        report.merge(fuzz_decoders(args.decoder_inputs, args.seed, atheris=not args.no_atheris))
        print_report(report)
    if not args.no_commands:
        methods = [m for m in args.methods.split(",") if m] or None
        say = lambda line: print(line, flush=True)  # noqa: E731
        if args.url:
            if not args.token:
                parser.error("--url needs --token")
            targets: dict[str, str | None] = {"bus": None}
            for pair in filter(None, args.targets.split(",")):
                key, _, value = pair.partition("=")
                targets[key] = value
            report.merge(
                asyncio.run(
                    fuzz_commands(
                        args.url,
                        args.token,
                        targets,
                        args.command_inputs,
                        args.seed,
                        weak_token=args.weak_token,
                        grace=args.grace,
                        methods=methods,
                        progress=say,
                    )
                )
            )
        else:
            root = Path(args.keep) if args.keep else None
            if root is not None:
                root.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            with running_system(root, model=args.model) as system:
                print(
                    f"system up in {time.perf_counter() - t0:.0f} s at {system.url} (logs: {system.logs})",
                    flush=True,
                )
                report.merge(
                    asyncio.run(
                        fuzz_commands(
                            system.url,
                            system.admin_token,
                            system.targets(),
                            args.command_inputs,
                            args.seed,
                            weak_token=system.weak_token,
                            grace=args.grace,
                            methods=methods,
                            alive=system.dead,
                            progress=say,
                        )
                    )
                )
                if gone := system.dead():
                    report.add("system", gone, "processes exited during the fuzz")
                for line in system.tracebacks():
                    print(f"  logged: {line}")
    report.seconds["total"] = time.perf_counter() - started
    print()
    print_report(report)
    print(f"in {report.seconds['total']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    print(f"fuzz.py: {'ok' if report.ok else 'FAIL'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

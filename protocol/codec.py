"""Codecs: the only place msgpack and json are imported.

Two codecs, chosen per connection by WebSocket subprotocol (RFC 6455 §1.9):

=====================  ============  ==========================================
subprotocol            frames        bytes values
=====================  ============  ==========================================
``personad.v1.msgpack`` binary        msgpack ``bin`` type, raw
``personad.v1.json``    text          ``{"$bytes": "<base64>"}``
=====================  ============  ==========================================

Daemons use msgpack (PNG screenshots and adapter chunks travel as raw bytes);
browsers, people and tools such as websocat use JSON.

Decoding only ever raises the :class:`~protocol.errors.DecodeError` family,
whatever the input: the hypothesis fuzz test in tests/protocol holds us to it.
The data model on the wire is JSON's plus bytes: maps with string keys, no
msgpack extension types, no NaN/Infinity, so any message can be relayed
between a msgpack peer and a JSON peer unchanged.

Decoding is bounded by the frame's size, not only the frame size by a limit:
an empty msgpack array is one byte on the wire but a 56-byte Python list, so
a 7.6 MiB frame of eight million of them would become half a gigabyte. A
frame may hold at most :func:`container_budget` lists and maps (never fewer
than 4096, so every bounded result such as 1000 ``brain.query`` rows of
one column passes; beyond that one per 32 bytes, far denser than any message
the project sends). What remains is the cost of scalars, at most about 20
times the frame for a frame made only of tiny distinct strings.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from abc import ABC, abstractmethod
from typing import Any, Final

import msgpack
from pydantic import ValidationError

from .errors import EncodeError, FrameTooLarge, InvalidMessage, MalformedFrame, WrongFrameType
from .messages import Notification, Request, Response, message_adapter, to_wire

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "JSON",
    "MIN_CONTAINERS",
    "MSGPACK",
    "SUBPROTOCOLS",
    "Codec",
    "codec_for",
    "container_budget",
]

#: 16 MiB: a full-page PNG screenshot fits; a runaway client does not.
DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024

#: Lists and maps any frame may hold, however small (see container_budget).
MIN_CONTAINERS: Final = 4096
#: Beyond MIN_CONTAINERS, one list or map per this many bytes of frame.
BYTES_PER_CONTAINER: Final = 32


def container_budget(size: int) -> int:
    """How many lists and maps a frame of ``size`` bytes may decode to.

    The densest message the project sends is a ``brain.query`` result of
    1000 one-column rows, one list per 2-4 bytes but only 1003 lists; big
    frames (screenshots, adapters, recall hits) hold one container per
    hundreds of bytes. A Python list or dict costs 56-232 bytes, so this
    keeps containers within a few times the frame's size.
    """
    return max(MIN_CONTAINERS, size // BYTES_PER_CONTAINER)


AnyMessage = Request | Notification | Response


class Codec(ABC):
    """Turns messages into frame payloads and back. Stateless; share freely.

    Subclasses supply ``dumps``/``loads`` for one data format; everything
    else (limits, error translation, validation) is shared here.
    """

    name: str
    subprotocol: str
    #: True when messages travel in binary frames, False for text frames.
    binary: bool

    @abstractmethod
    def dumps(self, data: dict[str, Any]) -> bytes | str:
        """Plain data to a frame payload."""

    @abstractmethod
    def loads(self, frame: bytes | str, *, max_containers: int) -> Any:
        """A frame payload to plain data (any exception means "garbage").

        Raises MalformedFrame, before building them all, when the data holds
        more than ``max_containers`` lists and maps.
        """

    def encode(self, message: AnyMessage) -> bytes | str:
        """The frame payload for ``message``. Raises EncodeError."""
        return self.encode_wire(to_wire(message))

    def encode_wire(self, data: dict[str, Any]) -> bytes | str:
        """Encode an already-built wire dict (the bus's relay path)."""
        try:
            return self.dumps(data)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise EncodeError(f"cannot encode message with {self.name}: {exc}") from exc

    def decode_data(self, frame: bytes | str, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
        """Frame payload to plain data, checking frame type and size."""
        if isinstance(frame, str) == self.binary:
            kind = "text" if isinstance(frame, str) else "binary"
            raise WrongFrameType(f"{kind} frame on a {self.name} connection")
        size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8", "replace"))
        if size > max_bytes:
            raise FrameTooLarge(size, max_bytes)
        try:
            return self.loads(frame, max_containers=container_budget(size))
        except RecursionError as exc:
            raise MalformedFrame(f"{self.name} nesting too deep") from exc
        except MalformedFrame:
            raise
        except Exception as exc:
            raise MalformedFrame(f"not valid {self.name}: {_short(exc)}") from exc

    def decode(self, frame: bytes | str, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> AnyMessage:
        """Frame payload to a validated message. Raises only DecodeError subclasses."""
        return validate(self.decode_data(frame, max_bytes=max_bytes))


def validate(data: Any) -> AnyMessage:
    """Plain data to a validated message; raises InvalidMessage."""
    try:
        return message_adapter.validate_python(data)
    except ValidationError as exc:
        raise InvalidMessage(_summarise(exc), request_id=_salvage_id(data)) from None
    except RecursionError:
        raise InvalidMessage("message nesting too deep", request_id=_salvage_id(data)) from None


class _JsonCodec(Codec):
    name = "json"
    subprotocol = "personad.v1.json"
    binary = False

    def __init__(self) -> None:
        # Compact separators: smaller frames; allow_nan=False: NaN is not JSON.
        self._encoder = json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
        )
        self._decoder = json.JSONDecoder(
            object_hook=_json_object_hook,
            parse_constant=_no_constant,
            parse_int=_msgpack_int,
            parse_float=_finite_float,
        )

    def dumps(self, data: dict[str, Any]) -> str:
        return self._encoder.encode(data)

    def loads(self, frame: bytes | str, *, max_containers: int) -> Any:
        assert isinstance(frame, str)
        _check_json_containers(frame, max_containers)
        value, end = self._decoder.raw_decode(frame, _skip_ws(frame, 0))
        if _skip_ws(frame, end) != len(frame):
            raise MalformedFrame("trailing data after the JSON value")
        # A "\ud800" escape decodes to a lone surrogate, which no UTF-8 frame
        # (and no msgpack peer) can carry. Only frames with such escapes pay
        # for the walk.
        if _SURROGATE_ESCAPE.search(frame):
            _check_utf8(value)
        return value


#: Characters scanned per step when counting brackets outside strings: each
#: step is a few C calls on this much text, so a decoding thread hands the
#: GIL back to the event loop between steps.
_SCAN_CHUNK = 256 * 1024


def _check_json_containers(text: str, max_containers: int) -> None:
    """Refuse text with more arrays and objects than ``max_containers``.

    json has no list hook, so count before parsing: every container opens
    with ``[`` or ``{``. Brackets inside strings count too in the fast count
    (C speed, no copy); only text that fails it pays for a second count with
    the strings left out, so prose or code full of brackets still passes.
    """
    if len(text) // 2 <= max_containers:  # each container takes two characters at least
        return
    if text.count("[") + text.count("{") <= max_containers:
        return
    if _brackets_outside_strings(text) > max_containers:
        raise MalformedFrame(
            f"more than {max_containers} arrays and objects in a {len(text)}-character frame"
        )


def _brackets_outside_strings(text: str) -> int:
    """``[`` and ``{`` outside JSON strings, in linear time and bounded steps.

    Escaped backslashes, then escaped quotes, are dropped first (pairs from
    the left, as JSON reads them); every quote left opens or closes a string.
    No regular expression: one that handles escapes itself rescans from each
    escaped quote (quadratic, 33 s for 85 KB), and any single re call holds
    the GIL for the whole text. On invalid JSON the count may be off either
    way; the parser refuses such text anyway.
    """
    plain = text.replace("\\\\", "").replace('\\"', "")
    count, inside = 0, False
    for start in range(0, len(plain), _SCAN_CHUNK):
        parts = plain[start : start + _SCAN_CHUNK].split('"')
        outside = "".join(parts[1::2] if inside else parts[::2])
        count += outside.count("[") + outside.count("{")
        if len(parts) % 2 == 0:  # an odd number of quotes: the chunk ends in the other state
            inside = not inside
    return count


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _json_object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$bytes" in obj:
        raw = obj["$bytes"]
        if not isinstance(raw, str):
            raise MalformedFrame("$bytes must be a base64 string")
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedFrame("$bytes is not valid base64") from exc
    return obj


def _msgpack_int(text: str) -> int:
    # msgpack carries -2**63 .. 2**64-1; refuse larger integers at the door so
    # a JSON peer's message can always be relayed to a msgpack peer. (Python's
    # own 4300-digit cap, CVE-2020-10735, also surfaces here as ValueError.)
    value = int(text)
    if not -(2**63) <= value < 2**64:
        raise MalformedFrame("integer out of the 64-bit range")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf
        raise MalformedFrame("number out of the float range")
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_utf8(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise MalformedFrame("lone surrogate in a string") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _no_constant(name: str) -> Any:
    raise MalformedFrame(f"{name} is not valid JSON")


class _MsgpackCodec(Codec):
    name = "msgpack"
    subprotocol = "personad.v1.msgpack"
    binary = True

    def dumps(self, data: dict[str, Any]) -> bytes:
        # packb rather than a shared Packer: Packer instances are not reentrant.
        return msgpack.packb(data, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]

    def loads(self, frame: bytes | str, *, max_containers: int) -> Any:
        assert isinstance(frame, bytes)
        # The hooks cost about 4 µs on a small message, four times per relayed
        # request (caller, bus twice, target), a sixth of the request path.
        # A frame without a single bin or ext type byte, nor the bytes that
        # begin a NaN or an Infinity (looked for anywhere, even inside a
        # string: then it merely takes the hooked path), holds nothing they
        # refuse; one of no more bytes than the budget cannot hold more
        # containers than it (each takes at least one byte).
        if (
            len(frame) <= max_containers
            and len(frame.translate(None, _HOOKED_TYPES)) == len(frame)
            and ((b"\xca" not in frame and b"\xcb" not in frame) or _NON_FINITE.search(frame) is None)
        ):
            return msgpack.unpackb(frame, raw=False, strict_map_key=True, ext_hook=_no_ext, timestamp=0)
        hooks = _MsgpackHooks(max_containers)
        return msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            ext_hook=_no_ext,
            timestamp=0,
            # object_hook, not object_pairs_hook: msgpack builds the dict
            # itself, where pairs would first be a list of 2-tuples (about
            # 36 bytes of Python per 2 bytes of wire).
            object_hook=hooks.map,
            list_hook=hooks.list,
        )


#: msgpack's type bytes for bin (0xc4-0xc6: bytes, which strict_map_key lets
#: through as map keys) and ext (0xc7-0xc9 and fixext 0xd4-0xd8: timestamps
#: bypass ext_hook).
_HOOKED_TYPES: Final = bytes([*range(0xC4, 0xCA), *range(0xD4, 0xD9)])
#: A float64 (0xcb) or float32 (0xca) whose exponent bits are all ones: NaN or ±Infinity.
_NON_FINITE: Final = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]|\xca[\x7f\xff][\x80-\xff]")


def _no_ext(code: int, data: bytes) -> Any:
    raise MalformedFrame(f"msgpack extension type {code} is not allowed")


class _MsgpackHooks:
    """Per-decode hooks: check what JSON cannot carry, and count containers.

    msgpack calls a hook as each list or map is completed, innermost first,
    so counting here stops a frame of a million empty arrays after
    ``max_containers`` of them, before the rest exist. One instance per
    decode: codecs are shared between threads.
    """

    __slots__ = ("left",)

    def __init__(self, max_containers: int) -> None:
        self.left = max_containers

    def _count(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise MalformedFrame("too many arrays and maps for the frame's size")

    def map(self, obj: dict[Any, Any]) -> dict[str, Any]:
        self._count()
        for key, value in obj.items():
            if not isinstance(key, str):  # strict_map_key lets bytes through
                raise MalformedFrame("map keys must be strings")
            _check_scalar(value)
        return obj

    def list(self, items: list[Any]) -> list[Any]:
        self._count()
        for value in items:
            _check_scalar(value)
        return items


def _check_scalar(value: Any) -> None:
    # What JSON cannot carry must not enter: a msgpack peer's message may be
    # relayed to a JSON peer unchanged. (Timestamps bypass ext_hook.)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MalformedFrame("NaN and Infinity are not allowed")
    elif isinstance(value, msgpack.Timestamp):
        raise MalformedFrame("msgpack timestamps are not allowed")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _summarise(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in error["loc"] if p not in {"request", "notification", "response"})
        parts.append(f"{loc or 'message'}: {error['msg']}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "invalid message: " + "; ".join(parts)


def _salvage_id(data: Any) -> int | str | None:
    if isinstance(data, dict):
        rid = data.get("id")
        if isinstance(rid, str) and len(rid) <= 128:
            return rid
        if isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) <= 2**53:
            return rid
    return None


JSON: Final[Codec] = _JsonCodec()
MSGPACK: Final[Codec] = _MsgpackCodec()

#: Subprotocol name to codec, in the server's order of preference.
SUBPROTOCOLS: Final[dict[str, Codec]] = {MSGPACK.subprotocol: MSGPACK, JSON.subprotocol: JSON}


def codec_for(subprotocol: str | None) -> Codec:
    """The codec for a negotiated subprotocol. Raised ValueError when unknown."""
    if subprotocol is None:
        raise ValueError(f"no subprotocol negotiated; offer one of {', '.join(SUBPROTOCOLS)}")
    try:
        return SUBPROTOCOLS[subprotocol]
    except KeyError:
        raise ValueError(f"unknown subprotocol {subprotocol!r}") from None

"""Errors of the inference subsystem.

    InferenceError              base: a clear, user-facing inference failure
    ├── ModelUnavailable        the base model is missing or cannot be loaded
    ├── AdapterNotFound         no adapter by that name / hash in the store
    ├── AdapterIncompatible     the adapter was made for another base model
    ├── AdapterCorrupt          the stored adapter is damaged
    ├── InvalidAdapterName      a name that is not a dotted adapter path
    ├── TrainingDataError       a training file is not chat-format JSONL
    ├── InvalidSchema           a json_schema xgrammar cannot compile
    ├── ReplyInvalid            a constrained reply breaks its schema where the grammar could not hold it
    ├── Unsupported             the request cannot be served as asked
    ├── Overloaded              too many requests are already waiting
    └── EngineClosed            the engine stopped (shutting down)

The tree hangs under :class:`daemon.errors.PersonadError`, the daemon's one
error root, so the CLI prints any of them to an operator the same way.

Each class carries the JSON-RPC ``error.code`` it becomes on the wire
(:func:`to_rpc`), so the service and a persona translate at their boundary in
one place (the httpx ``_exceptions`` pattern). Messages name the adapter,
file or module at fault and, where there is one, the fix.
"""

from __future__ import annotations

from protocol import ErrorCode, RpcError
from protocol.commands.inference import InferenceErrorCode

from ..errors import PersonadError


class InferenceError(PersonadError):
    """Raised for inference failures an operator or caller should read."""

    code: int = ErrorCode.INTERNAL_ERROR


class ModelUnavailable(InferenceError):
    """Raised when the base model is not installed or cannot be loaded."""

    code = InferenceErrorCode.MODEL_UNAVAILABLE


class AdapterNotFound(InferenceError):
    """Raised when a name (or a pinned hash) is not in the adapter store."""

    code = InferenceErrorCode.ADAPTER_NOT_FOUND


class AdapterIncompatible(InferenceError):
    """Raised when an adapter targets modules or shapes this base model does not have."""

    code = InferenceErrorCode.ADAPTER_INCOMPATIBLE


class AdapterCorrupt(InferenceError):
    """Raised when a stored adapter cannot be read or does not match its hash."""

    code = InferenceErrorCode.ADAPTER_CORRUPT


class InvalidAdapterName(InferenceError):
    """Raised when a name is not a dotted adapter path (``legal.patent``)."""

    code = ErrorCode.INVALID_PARAMS


class TrainingDataError(InferenceError):
    """Raised when a training file is not valid chat-format JSONL (names the line)."""

    code = ErrorCode.INVALID_PARAMS


class InvalidSchema(InferenceError):
    """Raised when inference.generate's ``json_schema`` cannot be compiled into a grammar."""

    code = ErrorCode.INVALID_PARAMS


class ReplyInvalid(InferenceError):
    """Raised when a constrained reply breaks its ``json_schema`` in a way the backend's grammar
    could not prevent (OpenVINO: strict JSON, string lengths). The request was served; another
    seed (or the torch engine) may give a reply that holds. On the wire: INTERNAL_ERROR with
    ``data.reason = "reply_invalid"``."""

    code = ErrorCode.INTERNAL_ERROR
    reason = "reply_invalid"


class Unsupported(InferenceError):
    """Raised when a request cannot be served as asked (prompt too long, mode impossible)."""

    code = InferenceErrorCode.UNSUPPORTED


class Overloaded(InferenceError):
    """Raised when the engine's queue (or one caller's share of it) is full."""

    code = ErrorCode.OVERLOADED


class EngineClosed(InferenceError):
    """Raised when work is submitted to, or pending in, an engine that has stopped."""

    code = ErrorCode.SHUTTING_DOWN


def to_rpc(exc: InferenceError) -> RpcError:
    """The wire form of an inference error."""
    reason = getattr(exc, "reason", None)
    return RpcError(int(exc.code), str(exc), {"reason": reason} if reason else None)


#: Client id prefixes the store's writers (adapter.merge, adapter.delete, adapter.train) refuse.
STORE_WRITERS_REFUSED = ("persona:",)


def refuse_store_writer(caller: str | None, method: str, who_may: str) -> None:
    """RpcError(FORBIDDEN) when a persona calls a method that writes the shared adapter store.

    Persona tokens do not hold these grants; this refuses a persona an
    operator granted one anyway: one persona must not change the adapters
    every other persona runs. ``who_may`` says who does, for the message.
    """
    if caller is not None and caller.startswith(STORE_WRITERS_REFUSED):
        raise RpcError(
            ErrorCode.FORBIDDEN,
            f"{caller} may not call {method}: it writes the shared adapter store, which {who_may}",
        )

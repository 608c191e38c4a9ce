"""RpcError's readings of its data: the reason and the pause OVERLOADED asks for."""

from __future__ import annotations

from protocol import ErrorCode, RpcError


def test_retry_after_ms_is_read_only_when_it_is_a_sensible_number() -> None:
    busy = RpcError(ErrorCode.OVERLOADED, "busy", {"reason": "busy", "retry_after_ms": 200})
    assert (200, "busy") == (busy.retry_after_ms, busy.reason)
    assert 1.5 == RpcError(ErrorCode.OVERLOADED, "x", {"retry_after_ms": 1.5}).retry_after_ms
    odd = ({"retry_after_ms": "200"}, {"retry_after_ms": True}, {"retry_after_ms": -1})
    for data in (None, [], "200", *odd):
        error = RpcError(ErrorCode.OVERLOADED, "x", data)
        assert error.retry_after_ms is None, data
        assert error.reason is None, data
    assert RpcError(ErrorCode.INTERNAL_ERROR, "x", {"reason": 3}).reason is None

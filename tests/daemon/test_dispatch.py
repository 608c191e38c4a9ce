"""The dispatcher answers a full disk with a clear error, whatever layer hit it,
and a part with too much work waiting (Busy) with OVERLOADED at once; a handler
knows its caller (daemon.callers.current_caller) wherever it runs.

The errors are real: ENOSPC from writing to /dev/full, SQLITE_FULL from a
SQLCipher database capped with max_page_count. (The soak, bench/soak.py,
does the same to a persona on a real full filesystem.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import sqlcipher3.dbapi2 as sqlcipher

from daemon.callers import current_caller
from daemon.dispatch import Dispatcher, disk_full
from daemon.errors import Busy
from protocol import ErrorCode, Request, RpcError

REMEMBER = Request(id=1, method="memory.remember", params={"content": "a fact"})


@dataclass
class Asked:
    """What of a CallContext the dispatcher reads: who asked."""

    caller: str | None = "cli:tester"


def _write_to_dev_full() -> None:
    with open("/dev/full", "wb", buffering=0) as f:
        f.write(b"x" * 4096)


def _insert_into_a_full_database() -> None:
    db = sqlcipher.connect(":memory:")
    db.execute("PRAGMA key = 'k'")
    db.execute("CREATE TABLE memories (content TEXT)")
    db.execute("PRAGMA max_page_count = 2")
    db.execute("INSERT INTO memories VALUES (zeroblob(100000))")


async def _answer(failing: Any) -> RpcError:
    dispatcher = Dispatcher()

    async def handler(params: Any, ctx: Any) -> dict[str, Any]:
        failing()
        return {"id": 1}

    dispatcher.register("memory.remember", handler)
    with pytest.raises(RpcError) as caught:
        await dispatcher(REMEMBER, Asked())  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize("failing", [_write_to_dev_full, _insert_into_a_full_database])
async def test_a_full_disk_is_a_clear_error_not_an_internal_one(failing: Any) -> None:
    error = await _answer(failing)
    assert ErrorCode.INTERNAL_ERROR == error.code
    assert {"reason": "disk_full"} == error.data
    assert "memory.remember: the disk is full, so nothing was written" in error.message


async def test_a_full_disk_is_found_behind_a_wrapping_error() -> None:
    def wrapped() -> None:
        try:
            _insert_into_a_full_database()
        except sqlcipher.OperationalError as exc:
            raise RuntimeError("the brain could not commit") from exc

    assert {"reason": "disk_full"} == (await _answer(wrapped)).data


async def test_other_failures_are_not_called_a_full_disk() -> None:
    def refused() -> None:
        raise RpcError(ErrorCode.FORBIDDEN, "no")

    def broken() -> None:
        raise ZeroDivisionError("a bug")

    assert ErrorCode.FORBIDDEN == (await _answer(refused)).code
    dispatcher = Dispatcher()

    async def handler(params: Any, ctx: Any) -> dict[str, Any]:
        broken()
        return {"id": 1}

    dispatcher.register("memory.remember", handler)
    with pytest.raises(ZeroDivisionError):  # left to the client: INTERNAL_ERROR, logged with its trace
        await dispatcher(REMEMBER, Asked())  # type: ignore[arg-type]
    assert not disk_full(FileNotFoundError(2, "No such file or directory"))
    assert not disk_full(PermissionError(13, "Permission denied"))


async def test_a_busy_part_is_answered_overloaded_with_when_to_retry() -> None:
    def busy() -> None:
        raise Busy("the brain's reads are busy: 64 already wait their turn", retry_after_ms=200)

    error = await _answer(busy)
    assert ErrorCode.OVERLOADED == error.code
    assert {"reason": "busy", "retry_after_ms": 200} == error.data
    assert "memory.remember: the brain's reads are busy" in error.message


async def test_a_handler_and_what_it_awaits_know_the_caller_and_only_while_it_runs() -> None:
    dispatcher = Dispatcher()
    seen: list[str | None] = []

    async def deeper() -> None:
        seen.append(current_caller.get())

    async def handler(params: Any, ctx: Any) -> dict[str, Any]:
        await deeper()
        return {"id": 1}

    dispatcher.register("memory.remember", handler)
    await dispatcher(REMEMBER, Asked("persona:ada"))  # type: ignore[arg-type]
    await dispatcher(REMEMBER, Asked(None))  # type: ignore[arg-type]
    assert ["persona:ada", None] == seen
    assert current_caller.get() is None

"""From pydantic's ValidationError to an INVALID_PARAMS answer.

The message names the first bad field; ``data`` lists every problem as
``{loc, msg, type}``, never echoing the input itself (it may be large or
secret).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .errors import ErrorCode, RpcError

__all__ = ["invalid_params"]


def invalid_params(exc: ValidationError) -> RpcError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "params"
    more = len(errors) - 1
    message = f"invalid params: {where}: {first['msg']}" + (f" (and {more} more)" if more else "")
    data: list[dict[str, Any]] = [
        {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors[:20]
    ]
    return RpcError(ErrorCode.INVALID_PARAMS, message, data)

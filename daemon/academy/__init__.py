"""The Academy's roles: the Testing Droid (droid.py, templates.py) and the Protocol Sheriff (sheriff.py).

Both are personas on the bus, chosen by ``[academy] role`` in the persona's
config (daemon/persona/academy_roles.py registers their methods); the
service that runs the exam → train → re-exam loop lives beside them. See
docs/academy.md.
"""

from __future__ import annotations

from protocol import ErrorCode, RpcError

__all__ = ["invalid"]


def invalid(field: str, message: str) -> RpcError:
    """INVALID_PARAMS naming ``field`` (``data.field``), as the rest of the bus's methods do."""
    return RpcError(ErrorCode.INVALID_PARAMS, f"invalid params: {field}: {message}", {"field": field})

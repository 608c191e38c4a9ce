"""Errors of the daemon layer.

    PersonadError               base: a clear, user-facing failure
    ├── ConfigError             a config file or option is invalid
    ├── StateDirError           the state/session directory is unusable
    ├── AuthError               no usable token / the bus refused it
    ├── BusUnavailable          could not reach the bus
    └── Busy                    more work is waiting than this part takes on: retry later

Remote errors travel as :class:`protocol.RpcError`. Every PersonadError's
message is meant to be printed to an operator as-is: it names the file, field
or address at fault and, where there is one, the fix.
"""

from __future__ import annotations


class PersonadError(Exception):
    """Raised for failures an operator should read; base of this module's tree."""


class ConfigError(PersonadError):
    """Raised when a configuration file or option is invalid or missing."""


class StateDirError(PersonadError):
    """Raised when the state or session directory cannot be created or trusted."""


class AuthError(PersonadError):
    """Raised when no token is available or the bus refuses the one presented."""


class BusUnavailable(PersonadError):
    """Raised when the bus cannot be reached at the configured URL."""


class Busy(PersonadError):
    """Raised when a part already has as much work waiting as it takes on.

    Refusing at once, rather than queueing behind work the caller's deadline
    would expire under, keeps latency bounded and lets a backlog drain: the
    dispatcher answers it OVERLOADED with ``data.retry_after_ms``.
    """

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

"""Errors of the browser worker, translated to RpcError at the bus boundary.

All of them are in the daemon's error tree (daemon/errors.py), so the CLI
reports any of them as a clear one-line error instead of a traceback:

    PersonadError
    ├── BrowserError              base of the worker's own failures
    │   ├── CdpError              Chromium answered a CDP command with an error
    │   ├── CdpClosed             the CDP connection (or one page's session) is gone:
    │   │   └── BrowserCrashed    … because Chromium exited
    │   ├── LaunchError           Chromium could not be started
    │   └── ImageError            bytes that are not a PNG/JPEG of readable size (images.py)
    └── ConfigError
        └── ChromiumNotFound      no Chromium where we looked (a setup problem, like
                                  a bad --allow entry, which raises ConfigError itself)

Handlers in worker.py turn these into :class:`protocol.RpcError` with a code
of :class:`protocol.commands.browser.BrowserErrorCode`, so a caller sees one
vocabulary whatever went wrong inside.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, PersonadError

#: What to tell an operator when Chromium is missing (Debian's packages).
INSTALL_HINT = "sudo apt-get install -y chromium chromium-driver"


class BrowserError(PersonadError):
    """Raised for failures of the browser worker; base of this module's tree."""


class CdpError(BrowserError):
    """Raised when Chromium answers a CDP command with an ``error`` object."""

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (CDP error {code})")
        self.method = method
        self.code = code
        self.message = message
        self.data = data


class CdpClosed(BrowserError):
    """Raised when the connection, or the page session a command went to, is gone."""


class BrowserCrashed(CdpClosed):
    """Raised for commands in flight when the Chromium process exits."""


class LaunchError(BrowserError):
    """Raised when Chromium cannot be started or never answers on its pipe."""


class ChromiumNotFound(ConfigError):
    """Raised when the Chromium executable does not exist or cannot be run."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"Chromium not found at {path}: install Debian's with `{INSTALL_HINT}`, "
            "or point --chromium (env PERSONAD_CHROMIUM) at another build"
        )
        self.path = path

"""personad's running parts: the bus, persona daemons, the CLI, and their glue.

One subpackage per role (``bus/``, ``persona/`` …); small shared pieces at the
top (tokens, client, logging, systemd notify, state directory).
"""

__version__ = "0.1.0"

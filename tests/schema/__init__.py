"""Ajv, the independent JSON Schema validator the schema tests hold `personad schema` to.

``package.json`` and ``package-lock.json`` pin Ajv and ajv-formats; ``make
test`` installs them with ``npm ci`` (and :func:`ensure_ajv` does when run
without make). Node.js 20 and npm are Debian packages (``scripts/system-deps``).
"""

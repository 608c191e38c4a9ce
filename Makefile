# The two commands of the README:
#   make up     set up .venv and run the embedded default (bus + personas)
#   make test   set up .venv (and the Debian packages the tests need) and run the tests
# Everything else here is what those two need.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: up test lint bench system-deps clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "personad needs Python 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

up: $(STAMP)
	$(VENV)/bin/personad up

test: $(STAMP) system-deps
	$(VENV)/bin/pytest

system-deps:
	@scripts/system-deps

lint: $(STAMP)
	$(VENV)/bin/ruff check protocol daemon tests bench
	$(VENV)/bin/mypy protocol

bench: $(STAMP)
	$(VENV)/bin/python bench/bus.py

clean:
	rm -rf $(VENV) .personad .pytest_cache .mypy_cache .ruff_cache

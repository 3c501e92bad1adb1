# One entry point for every task; each target builds .venv first when needed,
# so a fresh machine with Python 3.11 and make is enough.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: install test check lint fmt typecheck demo bench reliability completions cov clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not bench and not reliability_long"

lint: $(STAMP)
	$(BIN)/ruff check ghlsync_cli tests
	$(BIN)/ruff format --check ghlsync_cli tests

fmt: $(STAMP)
	$(BIN)/ruff format ghlsync_cli tests
	$(BIN)/ruff check --fix ghlsync_cli tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

cov: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not bench and not reliability_long" --cov=ghlsync_cli --cov-fail-under=85

completions: $(STAMP)
	$(BIN)/python -m ghlsync_cli.completions completions

demo: $(STAMP)
	$(BIN)/python -m ghlsync_cli.demo

bench: $(STAMP)
	$(BIN)/python -m pytest tests/benchmarks -m bench -s -p no:xdist

reliability: $(STAMP)
	$(BIN)/python -m pytest tests/reliability -m "reliability_long" -n $(PYTEST_WORKERS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache

# featurelake developer commands. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
FL := $(VENV)/bin/featurelake
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install featurelake with its dev extras

demo: $(STAMP) ## run the quickstart end to end on the embedded default
	PATH="$(abspath $(VENV))/bin:$$PATH" FL=featurelake bash examples/quickstart/run_demo.sh

test: $(STAMP) ## run the whole test suite (PostgreSQL tests need 127.0.0.1:5432 or FEATURELAKE_TEST_PG_URL)
	$(PY) -m pytest -q

test-fast: $(STAMP) ## the test suite without slow multi-process tests
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) ## run the benchmarks in benchmarks/ and print their tables
	$(PY) benchmarks/backfill.py

clean: ## remove the virtualenv and generated state
	rm -rf $(VENV) examples/quickstart/.featurelake examples/quickstart/data .pytest_cache .mypy_cache .ruff_cache

# featurelake developer commands. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
FL := $(VENV)/bin/featurelake
STAMP := $(VENV)/.installed
SPARK_STAMP := $(VENV)/.spark-installed

.DEFAULT_GOAL := help
.PHONY: help install spark demo test test-fast lint format bench bench-peers reliability clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install featurelake with its dev extras

$(SPARK_STAMP): $(STAMP) scripts/setup-spark.sh
	VENV=$(VENV) bash scripts/setup-spark.sh
	touch $(SPARK_STAMP)

spark: $(SPARK_STAMP) ## install the Spark engine: JDK, JDBC drivers, Iceberg runtime, relocated-Jackson jar

demo: $(STAMP) ## run the quickstart end to end on the embedded default
	PATH="$(abspath $(VENV))/bin:$$PATH" FL=featurelake bash examples/quickstart/run_demo.sh

.PHONY: demo-s3
demo-s3: $(STAMP) ## the quickstart with its warehouse and artifacts on S3 (a moto server on loopback; S3_ENDPOINT= for yours)
	PATH="$(abspath $(VENV))/bin:$$PATH" FL=featurelake bash examples/quickstart/run_demo_s3.sh

test: $(STAMP) $(SPARK_STAMP) ## run the whole test suite (PostgreSQL tests need 127.0.0.1:5432 or FEATURELAKE_TEST_PG_URL)
	$(PY) -m pytest -q

test-fast: $(STAMP) $(SPARK_STAMP) ## the test suite without slow multi-process tests
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) $(SPARK_STAMP) ## run the benchmarks in benchmarks/ and print their tables
	bash benchmarks/need-wrk.sh
	$(PY) benchmarks/backfill.py
	$(PY) benchmarks/audit.py
	$(PY) benchmarks/online.py
	$(PY) benchmarks/maintenance.py
	$(PY) benchmarks/partitions.py
	$(PY) benchmarks/monitoring.py
	$(PY) benchmarks/training_set.py
	$(PY) benchmarks/predict.py
	$(PY) benchmarks/engines.py

bench-peers: $(STAMP) ## featurelake vs Feast side by side (own venv benchmarks/.peers-venv); writes docs/benchmarks.md
	bash benchmarks/need-wrk.sh
	PYTHON=$(PYTHON) bash benchmarks/peers/setup.sh
	$(PY) benchmarks/peers/run.py $(ARGS)

reliability: $(STAMP) ## fault-injection, hostile-input and concurrency suites (tests/reliability, docs/reliability.md)
	$(PY) -m pytest -q -m reliability tests/reliability
	$(PY) -m tests.reliability.load_run  # 60 s loopback load run of `featurelake serve`; not in CI

clean: ## remove the virtualenv and generated state
	rm -rf $(VENV) examples/quickstart/.featurelake examples/quickstart/data .pytest_cache .mypy_cache .ruff_cache

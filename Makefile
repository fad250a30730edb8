# featurelake developer commands. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
FL := $(VENV)/bin/featurelake
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
SPARK_STAMP := $(VENV)/.spark-installed
# The quickstart's own needs beyond the core: train_model.py fits a scikit-learn model on a pandas frame.
DEMO_REQUIREMENTS := "scikit-learn>=1.3" "pandas>=2"
# A second virtualenv (inside .venv, so every tool and .gitignore skip it) with the lowest supported versions.
LOWEST_VENV ?= $(VENV)/lowest
LOWEST_STAMP := $(LOWEST_VENV)/.installed
# Airflow pins FastAPI/SQLAlchemy ranges the dev resolve does not meet: its tests run in a virtualenv of their own
# (featurelake[airflow] + pytest; httpx2 keeps starlette's TestClient, which Airflow imports, from warning).
# One of them runs on the Spark engine: the `spark` extra, the Iceberg runtime wheel (--no-deps, as
# scripts/setup-spark.sh) and the relocated Jackson/httpclient5 jars built in the venv (java + jarjar from
# `make system`, about 2 s); a local warehouse needs no S3 jars, so nothing is downloaded twice.
AIRFLOW_VENV ?= $(VENV)/airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_TESTS := tests/test_airflow.py
# `make test` re-runs the tests that lean hardest on the ranged libraries (PyIceberg, PyArrow, DuckDB, pydantic)
# on their lowest versions; `make test-lowest` runs every test but Spark, slow and install ones there.
LOWEST_MARKERS := not spark and not slow and not install
LOWEST_TESTS := $(addprefix tests/,test_wap.py test_lakehouse_write.py test_pyiceberg_compat.py test_lakehouse_retry.py \
	test_apply.py test_partitions.py test_lookback.py test_aggregations.py test_audit_wap.py test_validation_fast.py \
	test_validation_checks.py test_training_join.py test_training_set.py test_config_cli.py test_units.py \
	test_online_store.py test_online_sync.py test_maintenance.py test_storage.py)

.DEFAULT_GOAL := help
# Steps depend on each other's side effects (system packages, then the venv, then the Spark jars): one at a time.
.NOTPARALLEL:
.PHONY: help install system spark demo test test-fast test-lowest test-airflow lint format bench bench-peers reliability clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Newest resolve of every extra and the dev tools; constraints/dev.txt pins torch to the CPU build on disk.
$(STAMP): pyproject.toml constraints/dev.txt | $(PY)
	$(PIP) install -e '.[dev]' -c constraints/dev.txt
	touch $(STAMP)

install: $(STAMP) ## create .venv and install featurelake with its dev extras

$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PIP) install -e . $(DEMO_REQUIREMENTS)
	touch $(DEMO_STAMP)

system: ## install (apt-get, as root) and start the system packages and services the tests need
	PYTHON=$(PYTHON) bash scripts/setup-system.sh

$(SPARK_STAMP): $(STAMP) scripts/setup-spark.sh
	VENV=$(VENV) bash scripts/setup-spark.sh
	touch $(SPARK_STAMP)

spark: $(SPARK_STAMP) ## install the Spark engine: JDK, JDBC drivers, Iceberg runtime, relocated Jackson and httpclient5 jars, S3A (hadoop-aws)

demo: $(DEMO_STAMP) ## install featurelake + scikit-learn and pandas, run the quickstart end to end
	PATH="$(abspath $(VENV))/bin:$$PATH" FL=featurelake bash examples/quickstart/run_demo.sh

.PHONY: demo-s3
demo-s3: $(STAMP) ## the quickstart with its warehouse and artifacts on S3 (a moto server on loopback; S3_ENDPOINT= for yours)
	PATH="$(abspath $(VENV))/bin:$$PATH" FL=featurelake bash examples/quickstart/run_demo_s3.sh

test: system $(STAMP) $(SPARK_STAMP) $(LOWEST_STAMP) $(AIRFLOW_STAMP) ## install what the tests need (system packages, .venv, Spark jars), run them all, then again on the lowest versions, then the Airflow tests (.venv/airflow)
	$(PY) -m pytest -q --ignore=$(AIRFLOW_TESTS)
	$(LOWEST_VENV)/bin/python -m pytest -q -m "$(LOWEST_MARKERS)" $(LOWEST_TESTS)
	$(AIRFLOW_VENV)/bin/python -m pytest -q $(AIRFLOW_TESTS)

test-fast: system $(STAMP) $(SPARK_STAMP) ## the test suite without slow multi-process tests
	$(PY) -m pytest -q -m "not slow" --ignore=$(AIRFLOW_TESTS)

$(LOWEST_STAMP): pyproject.toml constraints/dev.txt constraints/lowest.txt
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/pip install --upgrade pip
	$(LOWEST_VENV)/bin/pip install -e '.[dev]' -c constraints/dev.txt -c constraints/lowest.txt
	touch $(LOWEST_STAMP)

test-lowest: system $(LOWEST_STAMP) ## the suite but Spark, slow and install tests, on the lowest versions (constraints/lowest.txt)
	$(LOWEST_VENV)/bin/python -m pytest -q -m "$(LOWEST_MARKERS)" --ignore=$(AIRFLOW_TESTS)

$(AIRFLOW_STAMP): pyproject.toml
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install -e '.[airflow,spark]' 'pytest>=8' 'httpx2>=2'
	$(AIRFLOW_VENV)/bin/pip install --no-deps 'snowpark-connect-deps-iceberg==1.0.3'
	$(AIRFLOW_VENV)/bin/python -c 'from featurelake.engines import spark_jars as j; j.jackson_jar(); j.httpclient_jar()'
	touch $(AIRFLOW_STAMP)

test-airflow: system $(AIRFLOW_STAMP) ## the Airflow integration tests (dag.test() on SQLite, one on Spark) in their own virtualenv .venv/airflow
	$(AIRFLOW_VENV)/bin/python -m pytest -q $(AIRFLOW_TESTS)

lint: $(STAMP) ## ruff (lint + format check), mypy and the import-linter layers contract
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) $(SPARK_STAMP) ## run the benchmarks in benchmarks/ and print their tables
	bash benchmarks/need-wrk.sh
	$(PY) benchmarks/backfill.py
	$(PY) benchmarks/audit.py
	$(PY) benchmarks/online.py
	$(PY) benchmarks/streaming.py
	$(PY) benchmarks/maintenance.py
	$(PY) benchmarks/partitions.py
	$(PY) benchmarks/monitoring.py
	$(PY) benchmarks/training_set.py
	$(PY) benchmarks/training_set.py --large --no-iceberg --repeats 3
	$(PY) benchmarks/predict.py
	$(PY) benchmarks/engines.py
	$(PY) benchmarks/aggregations.py --events 1000000
	$(PY) benchmarks/cli.py
	$(PY) benchmarks/ui.py
	$(PY) benchmarks/storage.py
	$(PY) benchmarks/scale.py

bench-peers: $(STAMP) ## featurelake vs Feast side by side (own venv benchmarks/.peers-venv): 1M rows, then 3M/10M/30M (ARGS='--scale-sizes 3M,10M' or '--no-scale'); writes docs/benchmarks.md
	bash benchmarks/need-wrk.sh
	PYTHON=$(PYTHON) bash benchmarks/peers/setup.sh
	$(PY) benchmarks/peers/run.py $(ARGS)

reliability: $(STAMP) ## fault-injection, hostile-input and concurrency suites (tests/reliability, docs/reliability.md)
	$(PY) -m pytest -q -m reliability tests/reliability
	$(PY) -m tests.reliability.load_run  # 60 s loopback load run of `featurelake serve`; not in CI

clean: ## remove the virtualenv and generated state
	rm -rf $(VENV) examples/quickstart/.featurelake examples/quickstart/data .pytest_cache .mypy_cache .ruff_cache

"""featurelake.integrations.airflow: real Airflow 3 (``dag.test()`` on its SQLite metadata database) over the small
project of tests/orchestration_helpers.py; every outcome is checked on the Iceberg tables too.

Airflow pins FastAPI and SQLAlchemy ranges of its own, so these tests run in their own virtualenv:
``make test-airflow`` (``.venv/airflow``; ``make test`` runs it). The main suite leaves this file out
(``--ignore`` in the Makefile); run anywhere else it fails naming that target. One test runs the daily DAG on
the Spark engine (``spark`` marker): the Makefile installs ``featurelake[airflow,spark]`` and the jars there.
"""

from __future__ import annotations

import logging
import runpy
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import featurelake
from featurelake.lakehouse import lineage
from tests.orchestration_helpers import days_of, main_snapshot, orchestrated_project, register_model, summary


@pytest.fixture(scope="session")
def airflow_dags(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """AIRFLOW_HOME in a temporary directory with a migrated SQLite database; yields its DAGs folder."""
    home = tmp_path_factory.mktemp("airflow_home")
    dags = home / "dags"
    dags.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_HOME", str(home))
        mp.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(dags))
        mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        try:
            import airflow  # noqa: F401
        except ImportError:
            pytest.fail(
                "apache-airflow is not installed in this environment: the Airflow tests run in their own "
                "virtualenv, `make test-airflow` (.venv/airflow)"
            )
        airflow_cli = Path(sys.executable).with_name("airflow")
        subprocess.run([str(airflow_cli), "db", "migrate"], check=True, capture_output=True, timeout=600)
        yield dags


def _dag_file(dags: Path, name: str, body: str) -> Any:
    """Write a DAG file into the DAGs folder (as a user would) and load it; returns its module globals."""
    path = dags / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return runpy.run_path(str(path))


def _states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _xcom(run: Any, task_id: str, key: str = "return_value") -> Any:
    (ti,) = [t for t in run.get_task_instances() if t.task_id == task_id]
    return ti.xcom_pull(task_ids=task_id, key=key)


def test_dag_from_project_runs_days_refuses_and_scores(
    airflow_dags: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATURELAKE_CODE_VERSION", "af42")
    project = orchestrated_project(tmp_path / "proj")
    module = _dag_file(
        airflow_dags,
        "fl_daily",
        f"""
        from featurelake.integrations.airflow import dag_from_project, maintenance_dags

        dag = dag_from_project({str(project)!r}, dag_id="fl_daily")
        globals().update(maintenance_dags({str(project)!r}, prefix="fl_daily"))
        """,
    )
    dag = module["dag"]
    assert dag.timetable.expression == "0 1 * * *"
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {
        "backfill_user_features",
        "backfill_user_rollup",
        "sync_user_features",
        "sync_user_rollup",
    }
    assert tasks["backfill_user_rollup"].upstream_task_ids == {"backfill_user_features"}
    assert tasks["sync_user_features"].upstream_task_ids == {"backfill_user_features"}
    crons = {
        k: module[k].timetable.expression
        for k in ("fl_daily_compaction", "fl_daily_expiry", "fl_daily_orphans")
    }
    assert crons == {
        "fl_daily_compaction": "0 3 * * 0",
        "fl_daily_expiry": "0 2 * * *",
        "fl_daily_orphans": "0 4 * * 0",
    }

    # The run triggered at 2024-01-03 01:00 covers 2024-01-02.
    run = dag.test(logical_date=datetime(2024, 1, 3, 1, 0, tzinfo=UTC))
    assert str(run.state) == "success", _states(run)
    out = _xcom(run, "backfill_user_features")
    with featurelake.open(project) as fl:
        sid = main_snapshot(fl, "user_features")
        assert out["snapshot_id"] == str(sid)
        props = summary(fl, "features.user_features", sid)  # type: ignore[arg-type]
        assert out["run_id"] == props[lineage.RUN_ID] and out["run_id"].startswith("20240102_")
        assert out["code_version"] == props[lineage.CODE_VERSION] == "af42"
        assert props[lineage.WINDOW_START].startswith("2024-01-02") and props[lineage.WINDOW_END].startswith(
            "2024-01-03"
        )
        assert Path(out["audit_report"]).is_file()
        assert out["rows"] == fl.read("user_features").num_rows
        assert days_of(fl.read("user_features")) == days_of(fl.read("user_rollup")) == ["2024-01-02"]
        latest = fl.read("user_features").to_pylist()[0]
        (row,) = fl.online.get(
            "user_features", [latest["user_id"]], now=latest["event_ts"] + timedelta(hours=1)
        )
        assert row.status == "PRESENT" and row.values["txn_count_1d"] == latest["txn_count_1d"]
        before = (sid, main_snapshot(fl, "user_rollup"))

    # 2024-01-03 has no amounts: the audit refuses, the task fails without retry, main does not move.
    run = dag.test(logical_date=datetime(2024, 1, 4, 1, 0, tzinfo=UTC))
    states = _states(run)
    assert str(run.state) == "failed"
    assert states["backfill_user_features"] == "failed"
    assert states["backfill_user_rollup"] == "upstream_failed"
    refusal = _xcom(run, "backfill_user_features", key="refusal")
    assert "null rate of amount_avg_1d" in refusal["failures"]
    assert Path(refusal["audit_report"]).is_file()
    assert refusal["branch"].startswith("audit_20240103_")
    with featurelake.open(project) as fl:
        assert (main_snapshot(fl, "user_features"), main_snapshot(fl, "user_rollup")) == before
        assert days_of(fl.read("user_features")) == ["2024-01-02"]
        register_model(fl, tmp_path)

    # A model in Production: the DAG (parsed again) scores its view's day after the backfill.
    dag = _dag_file(
        airflow_dags,
        "fl_daily",
        f"""
        from featurelake.integrations.airflow import dag_from_project

        dag = dag_from_project({str(project)!r}, dag_id="fl_daily")
        """,
    )["dag"]
    assert {t.task_id: t for t in dag.tasks}["predict_spend"].upstream_task_ids == {"backfill_user_features"}
    run = dag.test(logical_date=datetime(2024, 1, 6, 1, 0, tzinfo=UTC))
    assert str(run.state) == "success", _states(run)
    scored = _xcom(run, "predict_spend")
    with featurelake.open(project) as fl:
        preds = fl.read("predictions.spend")
        day = [
            r
            for r in fl.read("user_features").to_pylist()
            if r["event_ts"].date().isoformat() == "2024-01-05"
        ]
        assert days_of(preds) == ["2024-01-05"]
        assert preds.num_rows == len(day) == scored["rows"]
        assert set(preds["run_id"].to_pylist()) == {scored["run_id"]}
        by_user = {r["user_id"]: r["amount_sum_1d"] * 2 for r in day}
        assert {r["user_id"]: r["prediction"] for r in preds.to_pylist()} == pytest.approx(by_user)


def test_operators_with_their_templated_interval(airflow_dags: Path, tmp_path: Path) -> None:
    project = orchestrated_project(tmp_path / "proj")
    dag = _dag_file(
        airflow_dags,
        "fl_operators",
        f"""
        from datetime import datetime, timedelta, timezone

        from airflow.sdk import DAG, CronTriggerTimetable

        from featurelake.integrations.airflow import (
            FeaturelakeBackfillOperator,
            FeaturelakeMaintainOperator,
            FeaturelakeSyncOperator,
        )

        PROJECT = {str(project)!r}
        with DAG(
            "fl_operators",
            schedule=CronTriggerTimetable("0 0 * * *", timezone="UTC", interval=timedelta(days=2)),
            start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
        ) as dag:
            backfill = FeaturelakeBackfillOperator(task_id="backfill", project_dir=PROJECT, view="user_features")
            sync = FeaturelakeSyncOperator(task_id="sync", project_dir=PROJECT)
            compact = FeaturelakeMaintainOperator(task_id="compact", project_dir=PROJECT, operation="compaction")
            backfill >> sync >> compact
        """,
    )["dag"]
    # Two days of data interval: [2024-01-06, 2024-01-08) in one WAP run.
    run = dag.test(logical_date=datetime(2024, 1, 8, tzinfo=UTC))
    assert str(run.state) == "success", _states(run)
    out = _xcom(run, "backfill")
    assert (out["window_start"], out["window_end"]) == (
        "2024-01-06T00:00:00+00:00",
        "2024-01-08T00:00:00+00:00",
    )
    assert out["run_id"].startswith("20240106-20240107_")
    assert [s["view"] for s in _xcom(run, "sync")] == ["user_features", "user_rollup"]
    assert "features.user_features" in _xcom(run, "compact")["tables"]
    with featurelake.open(project) as fl:
        assert days_of(fl.read("user_features")) == ["2024-01-06", "2024-01-07"]
        published = main_snapshot(fl, "user_features")
        assert published is not None
        assert summary(fl, "features.user_features", published)[lineage.RUN_ID] == out["run_id"]


@pytest.mark.spark
def test_daily_dag_on_the_spark_engine(
    airflow_dags: Path, tmp_path: Path, spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daily DAG with ``engine.type: spark``: dag.test() runs the tasks in this process, on the session's
    local[2] Spark (the ``spark`` fixture); the backfills publish through WAP, then a model scores a day."""
    # Airflow's logging config lets py4j's INFO lines through; the last one, logged at interpreter exit by a
    # connection's __del__, would hit pytest's closed capture stream ("--- Logging error ---").
    logging.getLogger("py4j").setLevel(logging.WARNING)
    monkeypatch.setenv("FEATURELAKE_CODE_VERSION", "afspark")
    project = orchestrated_project(tmp_path / "proj", engine="spark")
    body = f"""
        from featurelake.integrations.airflow import dag_from_project

        dag = dag_from_project({str(project)!r}, dag_id="fl_spark")
        """
    run = _dag_file(airflow_dags, "fl_spark", body)["dag"].test(
        logical_date=datetime(2024, 1, 3, 1, 0, tzinfo=UTC)
    )
    assert str(run.state) == "success", _states(run)
    out = _xcom(run, "backfill_user_features")
    with featurelake.open(project) as fl:
        assert fl.project.engine.name == "spark"
        sid = main_snapshot(fl, "user_features")
        props = summary(fl, "features.user_features", sid)  # type: ignore[arg-type]
        assert out["snapshot_id"] == str(sid) and out["run_id"] == props[lineage.RUN_ID]
        assert out["run_id"].startswith("20240102_") and props[lineage.CODE_VERSION] == "afspark"
        assert out["rows"] == fl.read("user_features").num_rows
        assert days_of(fl.read("user_features")) == days_of(fl.read("user_rollup")) == ["2024-01-02"]
        register_model(fl, tmp_path)

    # With a model in Production the DAG (parsed again) scores its view's day on Spark after the backfill.
    run = _dag_file(airflow_dags, "fl_spark", body)["dag"].test(
        logical_date=datetime(2024, 1, 6, 1, 0, tzinfo=UTC)
    )
    assert str(run.state) == "success", _states(run)
    scored = _xcom(run, "predict_spend")
    with featurelake.open(project) as fl:
        day = [
            r
            for r in fl.read("user_features").to_pylist()
            if r["event_ts"].date().isoformat() == "2024-01-05"
        ]
        preds = fl.read("predictions.spend")
        assert days_of(preds) == ["2024-01-05"]
        assert preds.num_rows == len(day) == scored["rows"]
        by_user = {r["user_id"]: r["amount_sum_1d"] * 2 for r in day}
        assert {r["user_id"]: r["prediction"] for r in preds.to_pylist()} == pytest.approx(by_user)


def test_operator_arguments_are_checked(airflow_dags: Path, tmp_path: Path) -> None:
    from featurelake.errors import ConfigError
    from featurelake.integrations.airflow import FeaturelakeMaintainOperator, dag_from_project

    with pytest.raises(ValueError, match="operation 'vacuum': use compaction, expiry or orphans"):
        FeaturelakeMaintainOperator(task_id="m", project_dir=tmp_path, operation="vacuum")  # type: ignore[arg-type]
    project = orchestrated_project(tmp_path / "proj")
    yaml = project / "featurelake.yaml"
    yaml.write_text(yaml.read_text().replace("orchestration:\n  start_date: 2024-01-01\n", ""))
    with pytest.raises(ConfigError, match=r"set orchestration\.start_date"):
        dag_from_project(project)

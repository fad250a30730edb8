"""The Spark engine beyond the shared contract: one catalog for both engines, configuration errors, jars,
PostgreSQL, and a real standalone cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import featurelake
from featurelake.config import SparkConfig
from featurelake.engines import spark_jars
from featurelake.errors import ConfigError, SchemaError
from featurelake.lakehouse import lineage, wap
from tests.helpers import DEFAULT_FEATURES, day, make_project, transactions
from tests.spark_support import (
    TEST_JVM,
    StandaloneCluster,
    assert_rows_close,
    engine_config,
    expected_features,
    sorted_rows,
)

pytestmark = pytest.mark.spark
VIEW = "user_features"


def switch_engine(proj: Path, engine: str, extra: str = "") -> None:
    (proj / "featurelake.yaml").write_text(engine_config(engine, extra=extra))


def summaries(fl: featurelake.Featurelake) -> dict[str, dict[str, str]]:
    """Snapshot summaries on main, keyed by run id."""
    tbl = fl.project.load_table(VIEW)
    out = {}
    for sid in wap.ancestors(tbl, wap.main_snapshot_id(tbl)):
        snap = tbl.metadata.snapshot_by_id(sid)
        props = dict(snap.summary.additional_properties) if snap and snap.summary else {}
        if lineage.RUN_ID in props:
            out[props[lineage.RUN_ID]] = props
    return out


# --- one catalog, two engines ---------------------------------------------------------------------------


def test_local_writes_spark_reads_and_extends_with_lineage(spark: Any, tmp_path: Path) -> None:
    source = transactions(days=8)
    proj = make_project(tmp_path / "p", config=engine_config("local"), data=source)
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(4), run_id="by-local")
        local_rows = sorted_rows(fl.read(VIEW))
    switch_engine(proj, "spark")
    with featurelake.open(proj) as fl:
        assert fl.project.engine.name == "spark"
        assert sorted_rows(fl.read(VIEW)) == local_rows  # Spark reads what PyIceberg wrote
        # Re-run a window PyIceberg wrote (Spark deletes its files) and add new days.
        fl.backfill(VIEW, day(2), day(8), run_id="by-spark")
        runs = summaries(fl)
    assert runs["by-spark"][lineage.PIPELINE_USER] == "test-user"
    assert runs["by-spark"][lineage.WINDOW_START].startswith(day(2))
    assert runs["by-spark"]["spark.app.id"]  # Iceberg's Spark writer adds its own lineage too
    assert runs["by-local"][lineage.WINDOW_END].startswith(day(4))
    switch_engine(proj, "local")
    with featurelake.open(proj) as fl:
        assert_rows_close(sorted_rows(fl.read(VIEW)), expected_features(source, 0, 8))
        history = {h.run_id: h for h in fl.history(VIEW)}
        assert {"by-local", "by-spark"} <= set(history)
        assert history["by-spark"].code_version and history["by-spark"].view == VIEW


def test_spark_writes_local_reads_and_extends(spark: Any, tmp_path: Path) -> None:
    source = transactions(days=6)
    proj = make_project(tmp_path / "p", config=engine_config("spark"), data=source)
    with featurelake.open(proj) as fl:
        fl.apply()  # the table is created through PyIceberg whatever the engine: one apply path
        first = fl.backfill(VIEW, day(0), day(4), run_id="s1")
    switch_engine(proj, "local")
    with featurelake.open(proj) as fl:
        assert_rows_close(sorted_rows(fl.read(VIEW)), expected_features(source, 0, 4))
        assert fl.read(VIEW, snapshot_id=first.snapshot_id).num_rows == first.rows
        fl.backfill(VIEW, day(3), day(6), run_id="l1")
        tbl = fl.project.load_table(VIEW)
        assert wap.is_ancestor(tbl, first.snapshot_id, wap.main_snapshot_id(tbl))
    switch_engine(proj, "spark")
    with featurelake.open(proj) as fl:
        assert_rows_close(sorted_rows(fl.read(VIEW)), expected_features(source, 0, 6))
        assert set(summaries(fl)) >= {"s1", "l1"}


def test_both_engines_publish_the_same_table_and_audit_verdicts(spark: Any, tmp_path: Path) -> None:
    source = transactions(days=5, null_share=0.05, seed=8)  # 7.6% null averages: passes, but measured
    tables, reports = {}, {}
    for engine in ("local", "spark"):
        proj = make_project(tmp_path / engine, config=engine_config(engine), data=source)
        with featurelake.open(proj) as fl:
            fl.apply()
            res = fl.backfill(VIEW, day(0), day(5), run_id="same")
            tables[engine] = sorted_rows(fl.read(VIEW))
            reports[engine] = [(r.check, r.column, r.passed, r.observed) for r in res.report.results]
    assert_rows_close(tables["spark"], tables["local"])
    assert reports["spark"] == reports["local"]


def test_source_table_in_the_shared_catalog(spark: Any, tmp_path: Path) -> None:
    features = DEFAULT_FEATURES.replace(
        'Source.parquet("data/transactions/*.parquet", timestamp_field="ts")',
        'Source.table("raw.transactions", timestamp_field="ts")',
    )
    source = transactions(days=4)
    proj = make_project(tmp_path / "p", config=engine_config("spark"), features=features, data=source)
    with featurelake.open(proj) as fl:
        cat = fl.project.catalog
        cat.create_namespace("raw")
        raw = cat.create_table("raw.transactions", schema=source.schema)
        raw.append(source)  # written by PyIceberg, read by Spark as the view's source
        fl.apply()
        fl.backfill(VIEW, day(1), day(3), run_id="t")
        assert_rows_close(sorted_rows(fl.read(VIEW)), expected_features(source, 1, 3))


def test_string_keys(spark: Any, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "s", config=engine_config("spark"), data=transactions(string_keys=True))
    with featurelake.open(proj) as fl:
        fl.apply()
        fl.backfill(VIEW, day(0), day(2))
        data = fl.read(VIEW)
    user_type = data.schema.field("user_id").type
    assert pa.types.is_string(user_type) or pa.types.is_large_string(user_type)
    assert not data.schema.field("user_id").nullable
    assert all(k.startswith("u") for k in data.column("user_id").to_pylist())


@pytest.mark.postgres
def test_shared_postgres_catalog(spark: Any, tmp_path: Path, pg_url: str) -> None:
    source = transactions(days=4)
    extra = f"catalog:\n  uri: {pg_url}\n"
    proj = make_project(tmp_path / "pg", config=engine_config("spark", extra=extra), data=source)
    with featurelake.open(proj) as fl:
        fl.apply()
        res = fl.backfill(VIEW, day(0), day(4), run_id="pg-spark")
    switch_engine(proj, "local", extra)
    with featurelake.open(proj) as fl:
        assert_rows_close(sorted_rows(fl.read(VIEW)), expected_features(source, 0, 4))
        assert wap.main_snapshot_id(fl.project.load_table(VIEW)) == res.snapshot_id
        assert summaries(fl)["pg-spark"][lineage.PIPELINE_USER] == "test-user"


# --- errors -----------------------------------------------------------------------------------------------


def test_query_spark_cannot_run_is_refused_with_the_translation(spark: Any, tmp_path: Path) -> None:
    features = DEFAULT_FEATURES.replace(
        "avg(amount) AS amount_avg_1d", "jaro_similarity('a', 'b') AS amount_avg_1d"
    )
    proj = make_project(tmp_path / "p", config=engine_config("spark"), features=features)
    with featurelake.open(proj) as fl:
        with pytest.raises(SchemaError) as info:
            fl.apply()
        msg = str(info.value)
        assert "user_features" in msg and "Spark SQL" in msg and "JARO_SIMILARITY" in msg.upper()
        assert "translated from DuckDB" in msg
        assert not fl.project.catalog.table_exists(f"features.{VIEW}")


def test_second_master_in_one_process_is_refused(spark: Any, tmp_path: Path) -> None:
    extra = ""
    proj = make_project(
        tmp_path / "p", config=engine_config("spark", extra=extra).replace("local[2]", "local[1]")
    )
    with featurelake.open(proj) as fl:
        with pytest.raises(ConfigError) as info:
            fl.apply()
        msg = str(info.value)
        assert "'local[2]' is already running" in msg and "'local[1]'" in msg and "new process" in msg
        assert not fl.project.catalog.table_exists(f"features.{VIEW}")


def test_missing_iceberg_runtime_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from featurelake.engines.spark_session import _static_conf

    monkeypatch.setattr(spark_jars, "runtime_jar", lambda: None)
    with pytest.raises(ConfigError) as info:
        _static_conf(SparkConfig())
    assert "scripts/setup-spark.sh" in str(info.value) and spark_jars.RUNTIME_PACKAGE in str(info.value)
    # With Maven coordinates the local jars are not needed at all.
    conf = _static_conf(SparkConfig(conf={"spark.jars.packages": spark_jars.RUNTIME_PACKAGE}))
    assert "iceberg-spark-runtime" not in conf["spark.jars"]
    assert conf["spark.sql.session.timeZone"] == "UTC"


def test_user_conf_cannot_move_sessions_off_utc() -> None:
    from featurelake.engines.spark_session import _static_conf

    conf = _static_conf(
        SparkConfig(conf={"spark.sql.session.timeZone": "Europe/Paris", "spark.ui.enabled": "true"})
    )
    assert conf["spark.sql.session.timeZone"] == "UTC" and conf["spark.ui.enabled"] == "true"


def test_catalog_uri_mapping() -> None:
    from featurelake.engines.spark import jdbc_catalog_conf

    conf = jdbc_catalog_conf(
        "fl", "postgresql+psycopg://u:s3cret@db.example:6543/cat?sslmode=require", "s3://w", 5
    )
    assert conf["spark.sql.catalog.fl.uri"] == "jdbc:postgresql://db.example:6543/cat"
    assert (
        conf["spark.sql.catalog.fl.jdbc.user"] == "u"
        and conf["spark.sql.catalog.fl.jdbc.password"] == "s3cret"
    )
    assert conf["spark.sql.catalog.fl.jdbc.sslmode"] == "require"
    sqlite = jdbc_catalog_conf("fl", "sqlite:////tmp/x/catalog.db", "file:///tmp/x/wh", 2.5)
    assert sqlite["spark.sql.catalog.fl.uri"] == "jdbc:sqlite:/tmp/x/catalog.db"
    assert sqlite["spark.sql.catalog.fl.jdbc.busy_timeout"] == "2500"
    assert sqlite["spark.sql.catalog.fl.jdbc.init-catalog-tables"] == "false"
    for bad, needle in (("sqlite:///:memory:", ":memory:"), ("mysql://h/db", "mysql")):
        with pytest.raises(ConfigError, match=needle):
            jdbc_catalog_conf("fl", bad, "file:///w", 1)


def test_relocated_jackson_jar_is_built_from_pysparks_jackson(tmp_path: Path) -> None:
    jar = spark_jars.build_jackson_jar(tmp_path / "jackson.jar")
    with zipfile.ZipFile(jar) as z:
        names = set(z.namelist())
    assert "org/apache/iceberg/shaded/com/fasterxml/jackson/core/JsonFactoryBuilder.class" in names
    assert "org/apache/iceberg/shaded/com/fasterxml/jackson/databind/ObjectMapper.class" in names
    assert not any(n.startswith("com/fasterxml/") for n in names)


def test_jackson_jar_without_jarjar_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spark_jars, "JARJAR", tmp_path / "missing.jar")
    with pytest.raises(ConfigError, match="libjarjar-java"):
        spark_jars.build_jackson_jar(tmp_path / "out.jar")
    assert not (tmp_path / "out.jar").exists()


# --- a real cluster ----------------------------------------------------------------------------------------


def test_backfill_on_a_standalone_cluster(tmp_path: Path) -> None:
    """Master and worker on 127.0.0.1; a driver process backfills with ``master: spark://127.0.0.1:<port>``,
    then scores the published features with a registered pickle on the worker's executor."""
    import pickle

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 3)) * [2.0, 40.0, 10.0] + [5.0, 100.0, 20.0]
    model = LogisticRegression(max_iter=1000).fit(x, (x[:, 1] > 100.0).astype(int))
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(pickle.dumps(model))
    columns = ["txn_count_1d", "amount_sum_1d", "amount_avg_1d"]
    signature = [{"name": c, "type": "long" if c == "txn_count_1d" else "double"} for c in columns]
    cluster = StandaloneCluster(tmp_path / "cluster").start()
    try:
        source = transactions(days=4)
        conf = (
            f'  spark:\n    master: "{cluster.master_url}"\n    conf:\n'
            f'      spark.executor.memory: "512m"\n      spark.cores.max: "1"\n'
            f'      spark.driver.extraJavaOptions: "{TEST_JVM}"\n'
            f'      spark.executor.extraJavaOptions: "{TEST_JVM}"\n'
        )
        proj = make_project(
            tmp_path / "p",
            config=f"project: c\nnamespace: features\nengine:\n  type: spark\n{conf}",
            data=source,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURELAKE_")}
        env["FEATURELAKE_PIPELINE_USER"] = "cluster-test"
        # One driver process (a SparkContext costs seconds): apply, then the backfill, as a scheduler would.
        script = (
            "import json, sys, featurelake\n"
            "with featurelake.open(sys.argv[1]) as fl:\n"
            "    fl.apply()\n"
            f"    res = fl.backfill({VIEW!r}, {day(0)!r}, {day(4)!r}, run_id='on-cluster')\n"
            "    print(json.dumps(res.to_dict()))\n"
            f"    fl.models.register('churn', {str(artifact)!r}, 'pickle', signature={signature!r})\n"
            f"    pred = fl.predict('churn@latest', {VIEW!r}, run_id='scored-on-cluster')\n"
            "    print(json.dumps(pred.to_dict()))\n"
        )
        run = subprocess.run(
            [sys.executable, "-c", script, str(proj)], capture_output=True, text=True, env=env, timeout=300
        )
        assert run.returncode == 0, run.stderr
        result, scored = (json.loads(line) for line in run.stdout.strip().splitlines()[-2:])
        assert result["rows"] == len(expected_features(source, 0, 4))
        assert scored["table"] == "predictions.churn" and scored["audit"]["passed"]
    finally:
        cluster.stop()
    switch_engine(proj, "local")
    with featurelake.open(proj) as fl:
        assert_rows_close(sorted_rows(fl.read(VIEW)), expected_features(source, 0, 4))
        props = summaries(fl)["on-cluster"]
        ptbl = fl.project.catalog.load_table("predictions.churn")
        predictions = ptbl.scan().to_arrow().to_pylist()
        written = ptbl.metadata.snapshot_by_id(scored["snapshot_id"])
    assert written is not None and written.summary is not None
    # Main fast-forwarded to the snapshot the cluster application wrote on the run's branch.
    assert written.summary.additional_properties["spark.app.id"].startswith("app-")
    # One prediction per user, from its latest feature row, as the model scores it here.
    latest: dict[Any, dict[str, Any]] = {}
    for r in expected_features(source, 0, 4):
        latest[r["user_id"]] = r  # rows are sorted by (user_id, event_ts)
    assert scored["rows"] == len(predictions) == len(latest)
    for p in predictions:
        want = latest[p["user_id"]]
        assert p["event_ts"] == want["event_ts"] and p["run_id"] == "scored-on-cluster"
        assert p["model_name"] == "churn" and p["model_version"] == "1.0.0"
        assert p["feature_snapshot_id"] == result["snapshot_id"]
        expected = model.predict_proba(np.array([[float(want[c]) for c in columns]]))[0, 1]
        assert p["prediction"] == pytest.approx(expected, abs=1e-12)
    assert props[lineage.PIPELINE_USER] == "cluster-test"
    assert props["spark.app.id"].startswith("app-")  # a standalone application, not local-*
    worker_log = (tmp_path / "cluster" / "worker.log").read_text()
    assert "Asked to launch executor" in worker_log  # the work ran in the worker's executor

"""The Spark engine with the warehouse and the sources only in S3 (moto's server on loopback), on the SQL catalog
(Iceberg's JdbcCatalog on the same database) and on the REST catalog adapter (Iceberg's RESTCatalog on the same
server): backfill (one refused by its audit), predict, sync and maintain run on Spark in their own process
(tests/spark_s3_flow.py); this process then reads what Spark wrote with PyIceberg.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import featurelake
from featurelake.config import CatalogConfig, SparkConfig
from featurelake.engines import spark_jars
from featurelake.engines.spark import SparkEngine
from featurelake.engines.spark_session import REDACTION_REGEX, rest_catalog_conf
from featurelake.errors import ConfigError
from tests.helpers import transactions
from tests.rest_catalog import RestCatalogProcess
from tests.s3_project import corrupt_days, s3_project, upload_hive_source
from tests.s3_servers import S3Bucket, moto_s3, s3
from tests.spark_cluster import Cluster
from tests.spark_support import TEST_JVM, assert_rows_close, expected_features, free_port, sorted_rows

_FIXTURES = (moto_s3, s3)
pytestmark = [pytest.mark.spark, pytest.mark.s3]
REPO = Path(__file__).resolve().parent.parent
VIEW = "user_features"
TOKEN = "rest-token-spark-5a4b"


def spark_config(master: str = "local[2]", conf: dict[str, str] | None = None) -> str:
    settings = {
        "spark.driver.extraJavaOptions": TEST_JVM,
        "spark.sql.shuffle.partitions": "2",
        **(conf or {}),
    }
    lines = "".join(f"      {k}: '{v}'\n" for k, v in settings.items())
    return f"engine:\n  type: spark\n  spark:\n    master: '{master}'\n    conf:\n{lines}"


def run_flow(root: Path, steps: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """tests/spark_s3_flow.py in its own process (its JVM reads the AWS environment when it starts)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.spark_s3_flow", str(root), steps],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result: dict[str, object] = json.loads(lines[-1][len("RESULT ") :])
    return result


@pytest.fixture(params=["sql", "rest"])
def catalog(request: pytest.FixtureRequest, s3: S3Bucket, tmp_path: Path) -> Iterator[str]:
    """The ``catalog:`` keys: the SQL catalog, or the REST adapter behind a bearer token from the environment."""
    if request.param == "sql":
        yield ""
        return
    server = RestCatalogProcess(
        f"sqlite:///{tmp_path}/rest-backend.db", s3.url("warehouse"), s3_endpoint=s3.endpoint, token=TOKEN
    ).start()
    mp = pytest.MonkeyPatch()
    mp.setenv("FL_TEST_CATALOG_TOKEN", TOKEN)
    try:
        yield f"  type: rest\n  uri: {server.url}\n  properties:\n    token: '${{FL_TEST_CATALOG_TOKEN}}'\n"
    finally:
        mp.undo()
        server.stop()


def local_files(root: Path) -> list[Path]:
    """Table data or metadata on the local disk under ``root``."""
    suffixes = (".parquet", ".avro", ".metadata.json")
    return [p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffixes)]


def test_spark_flow_on_s3(catalog: str, s3: S3Bucket, tmp_path: Path) -> None:
    root = s3_project(tmp_path / "proj", s3, catalog=catalog, extra=spark_config())
    upload_hive_source(s3, corrupt_days(10))  # days 10-11: the third backfill's audit refuses them
    result = run_flow(root, "apply,backfill,refused,predict,sync,maintain")
    assert result["engine"] == "spark"

    backfill = result["backfill"]
    assert isinstance(backfill, dict)
    assert "null rate of amount_avg_1d" in str(result["refused"])
    with featurelake.open(root) as fl:
        tbl = fl.project.catalog.load_table(f"features.{VIEW}")
        # what Spark wrote (days 0-2 twice: the last run rewrote them), read by PyIceberg
        assert_rows_close(sorted_rows(tbl.scan().to_arrow()), expected_features(transactions(), 0, 10))
        runs = [s.summary for s in tbl.snapshots() if s.summary is not None and "run-id" in s.summary]
        assert {r["run-id"] for r in runs} >= {"second", "broken", "again"}  # "first" expired
        assert all(r.get("engine-name") == "spark" for r in runs)
        # the refused run's branch is still there, main is the last good run
        assert "audit_broken" in tbl.metadata.refs
        predictions = fl.project.catalog.load_table("predictions.scorer")
        predict = result["predict"]
        assert isinstance(predict, dict)
        assert predictions.scan().to_arrow().num_rows == 2 * predict["rows"]
        assert all(
            t.file.file_path.startswith(f"s3://{s3.bucket}/warehouse/predictions/scorer/")
            for t in predictions.scan().plan_files()
        )
    assert isinstance(result["sync"], int) and result["sync"] > 0
    maintain = result["maintain"]
    assert isinstance(maintain, dict)
    assert maintain["expired"] > 0 and maintain["deleted"] and maintain["compacted_snapshot"] is not None
    objects = set(s3.objects("warehouse/"))
    deleted = {str(u).split(f"{s3.bucket}/", 1)[1] for u in maintain["deleted"]}
    assert deleted and not (deleted & objects)
    # the warehouse is the bucket: no table file on the local disk
    assert local_files(root) == []
    assert any(k.startswith("warehouse/features/user_features/data/") for k in objects)


def test_spark_needs_s3a_jars_for_an_s3_warehouse(
    s3: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = s3_project(tmp_path / "proj", s3, extra=spark_config())
    monkeypatch.setenv("FEATURELAKE_SPARK_JARS_DIR", str(tmp_path / "no-jars"))
    with (
        featurelake.open(root) as fl,
        pytest.raises(ConfigError, match=r"S3A filesystem, which is not installed.*setup-spark"),
    ):
        SparkEngine(fl.project.catalog, root, SparkConfig(), fl.project.config.settings.catalog)


def test_spark_refuses_a_catalog_it_cannot_share(s3: S3Bucket, tmp_path: Path) -> None:
    root = s3_project(tmp_path / "proj", s3, extra=spark_config())
    with featurelake.open(root) as fl:
        catalog_settings = fl.project.config.settings.catalog.model_copy(update={"type": "glue"})
        with pytest.raises(ConfigError, match=r"catalog.type sql or rest .*glue"):
            SparkEngine(fl.project.catalog, root, SparkConfig(), catalog_settings)


@pytest.mark.slow
def test_backfill_and_predict_on_a_two_worker_cluster(s3: S3Bucket, tmp_path: Path) -> None:
    """A standalone master and two workers, each its own process with its own directory and the project hidden
    from it; the data only in S3. Both workers' executors run tasks, and no table file lands on local disk."""
    root = tmp_path / "proj"
    root.mkdir()
    cluster = Cluster(tmp_path / "cluster", workers=2, memory="512m", hidden=(root,)).start()
    try:
        conf = {
            "spark.executor.memory": "512m",
            "spark.executor.cores": "1",
            "spark.cores.max": "2",
            "spark.executor.extraJavaOptions": TEST_JVM,
            "spark.ui.enabled": "true",  # the driver's status API: tasks per executor
            "spark.ui.port": str(free_port()),
        }
        s3_project(root, s3, extra=spark_config(cluster.master_url, conf))
        # apply too runs in the driver's process: this one must not hold a Spark application (and the cores)
        result = run_flow(root, "apply,backfill,predict,executors")
        states = [cluster.worker_state(i) for i in range(2)]
    finally:
        cluster.stop()

    backfill, predict = result["backfill"], result["predict"]
    assert isinstance(backfill, dict) and isinstance(predict, dict)
    with featurelake.open(root) as fl:
        tbl = fl.project.catalog.load_table(f"features.{VIEW}")
        assert_rows_close(sorted_rows(tbl.scan().to_arrow()), expected_features(transactions(), 0, 10))
        assert (
            fl.project.catalog.load_table("predictions.scorer").scan().to_arrow().num_rows == predict["rows"]
        )
    # two executors, one per worker, and each ran tasks
    executors = result["executors"]
    assert isinstance(executors, list) and len(executors) == 2, executors
    assert all(e["tasks"] > 0 for e in executors), executors
    app_ids = [
        {e["appid"] for e in [*state.get("executors", []), *state.get("finishedexecutors", [])]}
        for state in states
    ]
    assert all(len(ids) == 1 for ids in app_ids) and app_ids[0] == app_ids[1], app_ids
    for i in range(2):  # each worker's executor worked in its own directory
        assert list((cluster.worker_dir(i) / "work").glob("app-*/*/stderr")), i
    # the driver's disk holds no table data: not in the project, not anywhere a warehouse path would put it
    assert local_files(root) == []
    assert not (root / ".featurelake" / "warehouse").exists()
    assert any(k.startswith("warehouse/predictions/scorer/data/") for k in s3.objects("warehouse/"))
    # the credentials stayed in the environment: no log or file of the master, workers or executors holds them
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    logs = [f for f in (tmp_path / "cluster").rglob("*") if f.is_file() and f.suffix != ".jar"]
    assert logs and [f for f in logs if secret in f.read_bytes()] == []


def test_spark_refuses_a_warehouse_it_cannot_reach(tmp_path: Path) -> None:
    catalog = SimpleNamespace(
        name="featurelake", properties={"uri": f"sqlite:///{tmp_path}/c.db", "warehouse": "gs://bucket/wh"}
    )
    with pytest.raises(ConfigError, match=r"gs://bucket/wh: the Spark engine reaches local paths and s3://"):
        SparkEngine(catalog, tmp_path, SparkConfig(), CatalogConfig())


def test_httpclient_jar_needs_debians_httpclient5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spark_jars, "HTTPCLIENT_SOURCES", (tmp_path / "httpclient5.jar",))
    with pytest.raises(ConfigError, match=r"httpclient5.jar missing; apt-get install libhttpclient5-java"):
        spark_jars.build_httpclient_jar(tmp_path / "out.jar")
    assert spark_jars.httpclient_jar() is not None  # the installed one is still found


def test_rest_catalog_conf_passes_the_clients_properties_only() -> None:
    conf = rest_catalog_conf(
        "lake",
        "http://127.0.0.1:1",
        "s3://b/wh",
        {
            "token": "t0k",
            "scope": "PRINCIPAL_ROLE:ALL",
            "header.X-A": "1",
            "s3.endpoint": "http://x",
            "py-io-impl": "y",
        },
    )
    assert conf["spark.sql.catalog.lake.type"] == "rest"
    assert conf["spark.sql.catalog.lake.token"] == "t0k" and conf["spark.sql.catalog.lake.header.X-A"] == "1"
    assert not any(k.endswith(("s3.endpoint", "py-io-impl")) for k in conf)
    assert re.search(REDACTION_REGEX, "spark.sql.catalog.lake.credential")
    assert re.search(REDACTION_REGEX, "spark.sql.catalog.lake.token")

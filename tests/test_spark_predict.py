"""Batch prediction on Spark: the same model scored by the local engine and by Spark (mapInArrow on the
executors) gives the same rows, predictions and lineage; executor-side failures (digest mismatch, missing
inputs) come back as featurelake errors and leave main and the branches as they were."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import featurelake
from featurelake.errors import ArtifactIntegrityError, ConfigError, DataError, SchemaError
from featurelake.lakehouse import lineage, wap
from featurelake.prediction import score_spark as spark_predict
from featurelake.prediction import table as ptable
from featurelake.prediction.flavors import ModelPayload, model_info
from featurelake.prediction.inputs import BoundInput
from featurelake.prediction.scoring import Lineage
from tests import predict_helpers as ph
from tests.helpers import START, make_project, transactions
from tests.spark_support import engine_config

NULL_USERS = [11, 19, 40]  # every amount of these users is null (seed 5, as in test_predict_errors)
CLEAN = f"user_id NOT IN ({', '.join(map(str, NULL_USERS))})"
VIEW = "user_features"


def opened(root: Path, engine: str) -> featurelake.Featurelake:
    """The project on ``engine`` (both engines share its catalog, registry and tables)."""
    (root / "featurelake.yaml").write_text(engine_config(engine))
    return featurelake.open(root)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 days published (by the local engine: faster), the model as pickle (with fill defaults) and ONNX."""
    root = make_project(
        tmp_path_factory.mktemp("spark_predict") / "proj", data=transactions(null_share=0.05, seed=5)
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATURELAKE_PIPELINE_USER", "test-user")
        with opened(root, "local") as fl:
            fl.apply()
            ph.published_project(fl)
            ts = ph.training_set(fl)
            model = ph.fit(ts)
            art = root.parent / "artifacts"
            art.mkdir()
            models = {
                "churn_pickle": ("pickle", ph.export_pickle(model, art / "m.pkl"), {}),
                "churn_filled": ("pickle", ph.export_pickle(model, art / "f.pkl"),
                                 {"amount_sum_1d": 0, "amount_avg_1d": 0}),
                "churn_onnx": ("onnx", ph.export_onnx(model, art / "m.onnx"), {}),
            }  # fmt: skip
            for name, (flavor, path, defaults) in models.items():
                mv = fl.models.register(name, path, flavor, training_set=ts, defaults=defaults)
                fl.models.promote(name, mv.version, "Staging")
                fl.models.promote(name, mv.version, "Production")
            latest = fl.read(VIEW).to_pylist()
    assert {r["user_id"] for r in latest if r["amount_avg_1d"] is None} == set(NULL_USERS)
    return root


def run_rows(fl: featurelake.Featurelake, table: str, run_id: str) -> list[dict[str, Any]]:
    rows = fl.project.catalog.load_table(table).scan().to_arrow().to_pylist()
    return sorted((r for r in rows if r["run_id"] == run_id), key=lambda r: (r["user_id"], r["event_ts"]))


def state(fl: featurelake.Featurelake) -> dict[str, Any]:
    """Every predictions table: main, refs and row count (what a refused run must not change)."""
    cat = fl.project.catalog
    out: dict[str, Any] = {}
    for ident in sorted(".".join(i) for i in cat.list_tables("predictions")):
        tbl = cat.load_table(ident)
        out[ident] = (wap.main_snapshot_id(tbl), sorted(tbl.metadata.refs), len(tbl.scan().to_arrow()))
    return out


def first_snapshot(fl: featurelake.Featurelake) -> int:
    return next(h.snapshot_id for h in fl.history(VIEW) if h.run_id == "first")


# --- the same results on both engines ----------------------------------------------------------------------

CASES = {
    # model, request, tolerance (ONNX runs in float32: the same runtime on both engines, any batch split)
    "latest_fill": ("churn_filled", {}, 1e-12),
    "latest_where_max_age": (
        "churn_pickle",
        {"where": f"{CLEAN} AND txn_count_1d > 3", "max_age": "MAX_AGE"},
        1e-12,
    ),
    "window_at_snapshot_onnx": (
        "churn_onnx",
        {"where": CLEAN, "snapshot_id": "FIRST", "start": "2024-01-02", "end": "2024-01-04"},
        1e-6,
    ),
}


@pytest.mark.spark
@pytest.mark.parametrize("case", list(CASES))
def test_spark_scores_what_the_local_engine_scores(spark: Any, lake: Path, case: str) -> None:
    name, request, tol = CASES[case]
    results, rows = {}, {}
    for engine in ("local", "spark"):
        with opened(lake, engine) as fl:
            kwargs: dict[str, Any] = dict(request)
            if kwargs.get("snapshot_id") == "FIRST":
                kwargs["snapshot_id"] = first_snapshot(fl)
            if kwargs.get("max_age") == "MAX_AGE":
                # Entities whose latest day is before START + 8 days drop out (days are midnight-aligned).
                kwargs["max_age"] = datetime.now(UTC) - (START + timedelta(days=7, hours=12))
            res = fl.predict(name, VIEW, run_id=f"{case}_{engine}", **kwargs)
            results[engine], rows[engine] = res, run_rows(fl, res.table, res.run_id)
            tbl = fl.project.catalog.load_table(res.table)
            assert set(tbl.metadata.refs) == {"main"}  # published, branch removed
            snap = tbl.metadata.snapshot_by_id(res.snapshot_id)
            assert snap is not None and snap.summary is not None
            props = snap.summary.additional_properties
            assert props[lineage.RUN_ID] == res.run_id and props[lineage.PIPELINE_USER] == "test-user"
            assert props[ptable.MODEL_NAME] == name and props[ptable.MODEL_VERSION] == "1.0.0"
            assert props[ptable.FEATURE_SNAPSHOT] == str(res.feature_snapshot_id)
            assert props[ptable.PREDICTED_AT] == res.predicted_at.isoformat()
            assert ("spark.app.id" in props) == (engine == "spark")  # Iceberg's Spark writer committed it
    local, remote = results["local"], results["spark"]
    assert remote.rows == local.rows == len(rows["spark"]) == len(rows["local"]) > 0
    assert remote.mode == local.mode and remote.feature_snapshot_id == local.feature_snapshot_id
    assert remote.report.passed and [r.check for r in remote.report.results] == [
        r.check for r in local.report.results
    ]
    assert remote.prediction_mean == pytest.approx(local.prediction_mean, rel=1e-9)
    if case == "latest_where_max_age":
        assert 0 < local.rows < 37  # the filter and the cutoff both dropped entities
    for got, want in zip(rows["spark"], rows["local"], strict=True):
        assert (got["user_id"], got["event_ts"]) == (want["user_id"], want["event_ts"])
        assert got["prediction"] == pytest.approx(want["prediction"], abs=tol)
        for col in ("model_name", "model_version", "feature_snapshot_id"):
            assert got[col] == want[col]
        assert got["run_id"] == remote.run_id and got["predicted_at"] == remote.predicted_at
        assert want["run_id"] == local.run_id and want["predicted_at"] == local.predicted_at
    assert rows["spark"][0]["model_name"] == name and rows["spark"][0]["feature_snapshot_id"] == (
        remote.feature_snapshot_id
    )


# --- refusals ------------------------------------------------------------------------------------------------


def refused(fl: featurelake.Featurelake, exc: type[Exception], match: str, *args: Any, **kwargs: Any) -> Any:
    before = state(fl)
    with pytest.raises(exc, match=match) as info:
        fl.predict(*args, **kwargs)
    assert state(fl) == before
    return info.value


SIGNATURE = [{"name": c, "type": "long" if c == "txn_count_1d" else "double", "feature": f"{VIEW}:{c}"}
             for c in ph.COLUMNS]  # fmt: skip


@pytest.mark.spark
def test_digest_mismatch_is_caught_on_the_executor(
    spark: Any, lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 3))
    path = tmp_path / "sealed.pkl"  # a model no executor worker of this session has loaded yet
    path.write_bytes(pickle.dumps(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))))
    real = spark_predict.model_payload

    def corrupted(*args: Any, **kwargs: Any) -> ModelPayload:
        # The driver read verified bytes; what reaches the executors is not them (a bad copy, a swap).
        good = real(*args, **kwargs)
        return ModelPayload(
            good.flavor, good.data[:-8] + b"tampered", good.sha256, good.info, good.allow_pickle
        )

    with opened(lake, "spark") as fl:
        fl.models.register("sealed", path, "pickle", signature=SIGNATURE)
        fl.predict("churn_filled", VIEW, output="guarded", run_id="guarded_ok_first")
        monkeypatch.setattr(spark_predict, "model_payload", corrupted)
        err = refused(fl, ArtifactIntegrityError, "do not match the recorded digest", "sealed@latest", VIEW,
                      where=CLEAN, output="guarded", run_id="tampered")  # fmt: skip
    assert "model sealed 1.0.0" in str(err) and "refusing to load" in str(err)
    assert any("Spark executor" in note for note in err.__notes__)


@pytest.mark.spark
def test_missing_inputs_fail_on_the_executor_and_the_branch_is_removed(
    spark: Any, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with opened(lake, "spark") as fl:
        err = refused(fl, DataError, "has no recorded default", "churn_pickle", VIEW, output="partial")
        assert "--default amount_sum_1d=VALUE" in str(err)
        assert any("Spark executor" in note for note in err.__notes__)
        # A failure after rows reached the branch (the append committed, then the driver failed): the
        # branch is removed, main untouched.
        from pyspark.sql.readwriter import DataFrameWriterV2

        real_append, removed = DataFrameWriterV2.append, []

        def append_then_fail(self: DataFrameWriterV2) -> None:
            real_append(self)
            raise RuntimeError("driver lost after the branch commit")

        real_remove = wap.remove_branch

        def spy_remove(tbl: Any, name: str) -> None:
            removed.append(name)
            real_remove(tbl, name)

        fl.predict("churn_filled", VIEW, output="partial", run_id="partial_ok")  # the table exists
        monkeypatch.setattr(DataFrameWriterV2, "append", append_then_fail)
        monkeypatch.setattr(wap, "remove_branch", spy_remove)
        refused(fl, RuntimeError, "driver lost", "churn_filled", VIEW, output="partial", run_id="dies")
    assert removed == ["audit_dies"]


@pytest.mark.spark
def test_a_model_whose_features_are_missing_is_refused(spark: Any, lake: Path, tmp_path: Path) -> None:
    sig = [
        {"name": "txn_count_1d", "type": "long", "feature": "user_features:txn_count_1d"},
        {"name": "refund_rate_7d", "type": "double", "feature": "user_features:refund_rate_7d"},
    ]
    path = tmp_path / "m.bin"
    path.write_bytes(pickle.dumps("never loaded"))
    with opened(lake, "spark") as fl:
        fl.models.register("wants_more", path, "pickle", signature=sig)
        msg = str(refused(fl, SchemaError, "needs features that view user_features does not have",
                          "wants_more@latest", VIEW))  # fmt: skip
    assert "refund_rate_7d" in msg
    assert "predictions.wants_more" not in state(fl)


# --- the executor function, in this process ------------------------------------------------------------------


class _Broadcast:
    def __init__(self, data: bytes) -> None:
        self.data, self.reads = data, 0

    @property
    def value(self) -> bytes:
        self.reads += 1
        return self.data


def test_a_worker_loads_each_model_once_and_checks_its_digest_first(lake: Path) -> None:
    import hashlib

    with opened(lake, "local") as fl:
        mv = fl.models.resolve("churn_filled")
        data = fl.models.artifact_bytes(mv)
        feats = fl.read(VIEW).slice(0, 6)
    info = model_info(mv)
    inputs = tuple(BoundInput(i.name, i.name, "double", 0.0) for i in info.inputs)
    schema = pa.schema(
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("event_ts", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("prediction", pa.float64()),
            pa.field("model_name", pa.string(), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("feature_snapshot_id", pa.int64(), nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("predicted_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    )
    when = datetime.now(UTC)

    def task(artifact: _Broadcast, where: str | None = None) -> spark_predict.ScoreTask:
        return spark_predict.ScoreTask(
            flavor="pickle", sha256=mv.artifact_sha256, info=info, allow_pickle=True, artifact=artifact,
            inputs=inputs, keys=("user_id",), timestamp="event_ts", nan_policy="fill", view=VIEW,
            lineage=Lineage(mv.name, mv.version, 7, "r1", when), schema=schema, where=where,
        )  # fmt: skip

    spark_predict._models.clear()
    before = spark_predict.model_loads
    good = _Broadcast(data)
    batches = feats.to_batches(max_chunksize=2)
    out = [b for _ in range(3) for b in spark_predict.score_partition(task(good), iter(batches))]
    assert spark_predict.model_loads == before + 1 and good.reads == 1  # three tasks, one load
    scored = pa.Table.from_batches(out)
    assert scored.num_rows == 18 and scored.schema.equals(schema)
    assert set(scored.column("run_id").to_pylist()) == {"r1"}
    expected = pickle.loads(data).predict_proba(ph.features_matrix(feats))[:, 1]
    assert scored.column("prediction").to_pylist()[:6] == pytest.approx(list(expected), abs=1e-12)
    filtered = list(spark_predict.score_partition(task(good, "txn_count_1d > 5"), iter(batches)))
    assert sum(b.num_rows for b in filtered) == sum(1 for r in feats.to_pylist() if r["txn_count_1d"] > 5)

    # Bytes that do not hash to the recorded digest are never unpickled; the driver gets the same error.
    spark_predict._models.clear()
    bad = _Broadcast(data + b"x")
    assert hashlib.sha256(bad.data).hexdigest() != mv.artifact_sha256
    with pytest.raises(RuntimeError) as info_:
        list(spark_predict.score_partition(task(bad), iter(batches)))
    err = spark_predict.from_executor(RuntimeError(f"Job aborted ... {info_.value} ... at java.lang"))
    assert isinstance(err, ArtifactIntegrityError) and "model churn_filled 1.0.0" in str(err)
    assert spark_predict.model_loads == before + 1 and not spark_predict._models
    # An executor without featurelake fails before any of its code runs: the driver says what to install.
    missing = spark_predict.from_executor(RuntimeError("ModuleNotFoundError: No module named 'featurelake'"))
    assert isinstance(missing, ConfigError) and "spark.pyspark.python" in str(missing)
    assert spark_predict.from_executor(RuntimeError("java.lang.OutOfMemoryError")) is None

"""Bad input to batch prediction: each is refused with a message that names the problem, and no
predictions table is left half written (main unchanged, no branch left behind, no rows of the run)."""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import featurelake
from featurelake.errors import (
    ArtifactIntegrityError,
    AuditFailed,
    ConfigError,
    DataError,
    NotFoundError,
    SchemaError,
    UsageError,
)
from featurelake.lakehouse import wap
from tests import predict_helpers as ph
from tests.helpers import DEFAULT_FEATURES, START, make_project, transactions, write_source

SEGMENTS = (
    DEFAULT_FEATURES
    + '''
user_segments = FeatureView(
    name="user_segments",
    entity=user,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="""
        SELECT user_id, date_trunc('day', ts) AS event_ts,
               CASE WHEN count(*) > 5 THEN 'busy' ELSE 'quiet' END AS segment, count(*) AS n_1d
        FROM source GROUP BY ALL
    """,
    timestamp_field="event_ts",
    fields={"segment": "string", "n_1d": "long"},
)
'''
)
NULL_USERS = [11, 19, 40]  # every amount of these users is null (seed 5)
NAN_USER, INF_USER = 41, 42  # one day of NaN amounts, one day of infinite amounts
CLEAN = f"user_id NOT IN ({', '.join(map(str, [*NULL_USERS, NAN_USER, INF_USER]))})"


def _odd_rows() -> pa.Table:
    ts = [START + timedelta(days=9, hours=h) for h in (1, 2)]
    return pa.table(
        {
            "user_id": pa.array([NAN_USER, NAN_USER, INF_USER, INF_USER], pa.int64()),
            "ts": pa.array(ts + ts, pa.timestamp("us", tz="UTC")),
            "amount": pa.array([float("nan"), float("nan"), float("inf"), 3.0], pa.float64()),
        }
    )


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[featurelake.Featurelake]:
    """Two views; users with null, NaN and infinite features; the model registered three ways (Production)."""
    root = make_project(
        tmp_path_factory.mktemp("predict_err") / "proj",
        features=SEGMENTS,
        data=transactions(null_share=0.05, seed=5),
    )
    write_source(root, _odd_rows(), name="odd.parquet")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATURELAKE_PIPELINE_USER", "test-user")
        with featurelake.open(root) as fl:
            fl.apply()
            ph.published_project(fl)
            fl.backfill("user_segments", "2024-01-01", "2024-01-11", run_id="seg")
            ph.register_three(fl, root.parent / "artifacts")
            yield fl


def state(fl: featurelake.Featurelake) -> dict[str, Any]:
    """Every predictions table: its main snapshot, refs and row count (what a refused run must not change)."""
    cat = fl.project.catalog
    try:
        idents = sorted(".".join(i) for i in cat.list_tables("predictions"))
    except Exception:
        return {}
    out: dict[str, Any] = {}
    for ident in idents:
        tbl = cat.load_table(ident)
        out[ident] = (wap.main_snapshot_id(tbl), sorted(tbl.metadata.refs), len(tbl.scan().to_arrow()))
    return out


def refused(fl: featurelake.Featurelake, exc: type[Exception], match: str, *args: Any, **kwargs: Any) -> str:
    before = state(fl)
    with pytest.raises(exc, match=match) as info:
        fl.predict(*args, **kwargs)
    assert state(fl) == before
    return str(info.value)


def register(fl: featurelake.Featurelake, tmp: Path, name: str, data: bytes, flavor: str, **kw: Any) -> None:
    path = tmp / f"{name}.bin"
    path.write_bytes(data)
    fl.models.register(name, path, flavor, **kw)


# --- the registry side ------------------------------------------------------------------------------------


def test_no_production_version(dirty: featurelake.Featurelake, tmp_path: Path) -> None:
    register(
        dirty, tmp_path, "unpromoted", pickle.dumps({"not": "a model"}), "pickle", signature={"n_1d": "long"}
    )
    msg = refused(
        dirty, NotFoundError, "model unpromoted has no version in Production", "unpromoted", "user_segments"
    )
    assert "featurelake models promote unpromoted VERSION Production" in msg
    assert "predictions.unpromoted" not in state(dirty)
    refused(dirty, NotFoundError, "no model 'nosuch'", "nosuch", "user_features")
    refused(dirty, NotFoundError, "has no alias 'champion'", "churn_onnx@champion", "user_features")


def test_artifact_digest_mismatch_is_refused_before_loading(
    dirty: featurelake.Featurelake, tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=0.5).fit(np.eye(3), [0, 1, 1])
    register(dirty, tmp_path, "tampered", pickle.dumps(model), "pickle", training_set=ph.training_set(dirty))
    mv = dirty.models.resolve("tampered@latest")
    blob = dirty.project.config.path(".featurelake/artifacts") / mv.artifact_key
    os.chmod(blob, 0o644)
    blob.write_bytes(
        pickle.dumps(LogisticRegression(C=9.0).fit(np.eye(3), [1, 0, 0]))
    )  # someone swaps the model
    msg = refused(
        dirty,
        ArtifactIntegrityError,
        "does not match its recorded digest",
        "tampered@latest",
        "user_features",
    )
    assert "model tampered 1.0.0" in msg and "refused" in msg


def test_pickles_refused_when_the_project_disallows_them(
    dirty: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATURELAKE_REGISTRY__ALLOW_PICKLE", "false")
    with featurelake.open(dirty.project.root) as strict:
        msg = refused(strict, ConfigError, "registry.allow_pickle is false", "churn_pickle", "user_features")
        assert "runs arbitrary code" in msg and "ONNX or TorchScript" in msg
        other = strict.predict("churn_onnx", "user_features", output="strict_onnx", where=CLEAN)
        assert other.rows > 0  # other flavors are still fine


@pytest.mark.parametrize(
    ("model", "module", "extra"), [("churn_onnx", "onnxruntime", "onnx"), ("churn_torch", "torch", "torch")]
)
def test_runtime_not_installed_gives_an_install_hint(
    dirty: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch, model: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the extra looks like
    msg = refused(dirty, ConfigError, f"needs {module}, which is not installed", model, "user_features")
    assert f"pip install 'featurelake[{extra}]'" in msg


# --- the model against the view -------------------------------------------------------------------------


def test_features_missing_from_the_view_are_named(dirty: featurelake.Featurelake, tmp_path: Path) -> None:
    sig = [
        {"name": "txn_count_1d", "type": "long", "feature": "user_features:txn_count_1d"},
        {"name": "refund_rate_7d", "type": "double", "feature": "user_features:refund_rate_7d"},
        {"name": "chargebacks", "type": "long"},
    ]
    register(dirty, tmp_path, "wants_more", pickle.dumps("never loaded"), "pickle", signature=sig)
    dirty.models.promote("wants_more", "1.0.0", "Staging")
    msg = refused(
        dirty, SchemaError, "needs features that view user_features does not have", "wants_more@staging"
    )
    assert (
        "refund_rate_7d, chargebacks" in msg
        and "txn_count_1d" not in msg.split("does not have")[1].split("(")[0]
    )


def test_features_of_another_view_and_no_signature(dirty: featurelake.Featurelake, tmp_path: Path) -> None:
    sig = [{"name": "segment", "type": "string", "feature": "user_segments:segment"}]
    register(dirty, tmp_path, "elsewhere", pickle.dumps("never loaded"), "pickle", signature=sig)
    refused(dirty, SchemaError, r"reads features of other views \(user_segments: user_segments:segment\)",
            "elsewhere@latest", "user_features")  # fmt: skip
    register(dirty, tmp_path, "unsigned", pickle.dumps("never loaded"), "pickle")
    refused(dirty, UsageError, "has no recorded input signature", "unsigned@latest", "user_features")
    refused(dirty, UsageError, "give --view VIEW", "unsigned@latest")


def test_a_type_the_flavor_cannot_take(dirty: featurelake.Featurelake, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    sig = [{"name": "segment", "type": "string", "feature": "user_segments:segment"},
           {"name": "n_1d", "type": "long", "feature": "user_segments:n_1d"}]  # fmt: skip
    from sklearn.linear_model import LogisticRegression

    two = LogisticRegression().fit(np.eye(2), [0, 1])
    register(dirty, tmp_path, "by_segment", ph.export_onnx(two, tmp_path / "x.onnx", 2).read_bytes(), "onnx",
             signature=sig)  # fmt: skip
    msg = refused(
        dirty, SchemaError, "input segment is string, which the onnx flavor cannot take", "by_segment@latest"
    )
    assert "encode it as a number" in msg
    # An ONNX graph taking int64 inputs cannot take the view's double features without truncating them.
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["X"], ["F"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["F"], ["Y"], keepdims=0, axes=None),
        ],
        "ints",
        [helper.make_tensor_value_info("X", TensorProto.INT64, [None, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(proto)
    register(
        dirty, tmp_path, "int_inputs", proto.SerializeToString(), "onnx", training_set=ph.training_set(dirty)
    )
    msg = refused(
        dirty, SchemaError, "input amount_sum_1d is double but the model takes int64", "int_inputs@latest"
    )
    assert "would truncate" in msg


def test_model_inputs_that_disagree_with_the_signature(
    dirty: featurelake.Featurelake, tmp_path: Path
) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    ts = ph.training_set(dirty)
    two = LogisticRegression().fit(ph.features_matrix(ts)[:, :2], ts["label"].to_numpy())
    register(dirty, tmp_path, "two_cols", pickle.dumps(two), "pickle", training_set=ts)
    refused(dirty, SchemaError, r"takes 2 input columns \(n_features_in_\) but its recorded signature has 3",
            "two_cols@latest")  # fmt: skip
    zipmap = to_onnx(
        two, np.zeros((1, 2), np.float32)
    )  # skl2onnx's default: probabilities as a list of dicts
    # Found when it is registered now (the graph is checked then), before anything can score it.
    with pytest.raises(SchemaError, match=r"model zipmap .*sequence of maps.*zipmap"):
        register(
            dirty,
            tmp_path,
            "zipmap",
            zipmap.SerializeToString(),
            "onnx",
            signature={"txn_count_1d": "long", "amount_sum_1d": "double"},
        )
    assert "zipmap" not in {m.name for m in dirty.models.list_models()}


# --- the data -----------------------------------------------------------------------------------------------


def test_missing_inputs_fail_or_fill_per_policy(dirty: featurelake.Featurelake, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"view": "user_features", "where": f"user_id <> {INF_USER}"}
    msg = refused(
        dirty,
        DataError,
        r"input amount_sum_1d is missing \(null or NaN\)",
        "churn_pickle",
        nan_policy="fail",
        **kw,
    )
    assert "nan policy 'fail'" in msg and "Nothing was written" in msg
    assert any(f"user_id {u}" in msg or f", {u}" in msg for u in [*NULL_USERS, NAN_USER])
    msg = refused(
        dirty, DataError, "has no recorded default", "churn_onnx", **kw
    )  # fill, but no defaults recorded
    assert "--default amount_sum_1d=VALUE" in msg
    # The same model registered with the defaults it was trained with (nan_to_num: 0) fills and scores.
    ts = ph.training_set(dirty)
    model = ph.fit(ts)
    fl = dirty
    fl.models.register("filled", ph.export_pickle(model, tmp_path / "f.pkl"), "pickle", training_set=ts,
                       defaults={"amount_sum_1d": 0, "amount_avg_1d": 0})  # fmt: skip
    refused(
        fl, DataError, "nan policy 'fail' refuses missing inputs", "filled@latest", nan_policy="fail", **kw
    )
    res = fl.predict("filled@latest", **kw)
    rows = {r["user_id"]: r for r in fl.project.catalog.load_table(res.table).scan().to_arrow().to_pylist()}
    assert set(NULL_USERS) | {NAN_USER} <= set(rows) and INF_USER not in rows
    latest: dict[int, dict[str, Any]] = {}
    for r in fl.read("user_features", snapshot_id=res.feature_snapshot_id).to_pylist():
        if r["user_id"] not in latest or r["event_ts"] > latest[r["user_id"]]["event_ts"]:
            latest[r["user_id"]] = r
    for u in [*NULL_USERS, NAN_USER]:
        r = latest[u]
        x = [
            [
                float(r["txn_count_1d"]),
                *(0.0 if v is None or np.isnan(v) else v for v in (r["amount_sum_1d"], r["amount_avg_1d"])),
            ]
        ]
        assert rows[u]["prediction"] == pytest.approx(model.predict_proba(np.array(x))[0, 1], abs=1e-12)


def test_infinite_inputs_always_fail(dirty: featurelake.Featurelake) -> None:
    msg = refused(dirty, DataError, "input amount_sum_1d is infinite for 1 row", "churn_onnx", "user_features",
                  where=f"user_id = {INF_USER}")  # fmt: skip
    assert f"user_id {INF_USER}" in msg


def test_a_failure_mid_stream_removes_the_partly_written_branch(
    dirty: featurelake.Featurelake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurelake.prediction import table as ptable
    from featurelake.prediction.scoring import BatchScorer

    monkeypatch.setenv("FEATURELAKE_PREDICTION__BATCH_ROWS", "4")
    monkeypatch.setenv("FEATURELAKE_PREDICTION__WRITE_ROWS", "4")
    real_score, calls, flushed, removed = BatchScorer.score, [0], [0], []

    def flaky(self: BatchScorer, batch: pa.RecordBatch, matrix: Any = None) -> pa.RecordBatch:
        calls[0] += 1
        if calls[0] == 4:
            raise DataError("the model crashed on batch 4")
        return real_score(self, batch, matrix)

    real_flush = ptable.BranchWriter.flush

    def counting_flush(self: ptable.BranchWriter) -> None:
        flushed[0] += bool(self._buffer)
        real_flush(self)

    real_remove = wap.remove_branch

    def spy_remove(tbl: Any, name: str) -> None:
        removed.append(name)
        real_remove(tbl, name)

    with featurelake.open(dirty.project.root) as fl:
        fl.predict(
            "churn_pickle", where=CLEAN, output="midway", run_id="first_ok"
        )  # the table exists with rows
        monkeypatch.setattr(BatchScorer, "score", flaky)
        monkeypatch.setattr(ptable.BranchWriter, "flush", counting_flush)
        monkeypatch.setattr(wap, "remove_branch", spy_remove)
        refused(
            fl, DataError, "crashed on batch 4", "churn_pickle", where=CLEAN, output="midway", run_id="dies"
        )
    assert flushed[0] == 3 and removed == ["audit_dies"]  # three chunks had reached the branch; it is gone


def test_audit_refuses_out_of_range_and_null_predictions(
    dirty: featurelake.Featurelake, tmp_path: Path
) -> None:
    import io
    import warnings

    import torch

    class Logits(torch.nn.Module):  # claims to be a classifier but returns raw scores: outside [0, 1]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0] * 10.0

    class Holes(torch.nn.Module):  # NaN for busy users: no prediction for them
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.where(x[:, 0] > 6, torch.full_like(x[:, 0], float("nan")), torch.sigmoid(x[:, 0]))

    for name, module in (("logits", Logits()), ("holes", Holes())):
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(module), buf)
        register(dirty, tmp_path, name, buf.getvalue(), "torchscript", training_set=ph.training_set(dirty),
                 params={"task": "classification"})  # fmt: skip
    before = state(dirty)
    with pytest.raises(
        AuditFailed, match=r"audit failed for predictions.logits run bad1: .*outside \[0.0, 1.0\]"
    ) as info:
        dirty.predict("logits@latest", where=CLEAN, run_id="bad1")
    assert "main is unchanged; inspect branch audit_bad1" in str(info.value)
    tbl = dirty.project.catalog.load_table("predictions.logits")
    assert sorted(tbl.metadata.refs) == ["audit_bad1", "main"]  # kept for inspection
    assert len(tbl.scan().to_arrow()) == 0  # main holds nothing of the run
    assert len(tbl.scan().use_ref("audit_bad1").to_arrow()) > 0
    with pytest.raises(AuditFailed, match=r"null rate of prediction is 0\.\d+"):
        dirty.predict("holes@latest", where=CLEAN, run_id="bad2")
    assert len(dirty.project.catalog.load_table("predictions.holes").scan().to_arrow()) == 0
    assert {k: v for k, v in state(dirty).items() if k in before} == before


# --- the request --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        "1=1; DROP TABLE features.user_features",
        "1=1) UNION SELECT * FROM feats WHERE (1=1",
        "(SELECT count(*) FROM read_csv('/etc/passwd')) > 0",
        "read_text('/etc/passwd') IS NOT NULL",
        "txn_count_1d > 1 -- and the rest",
        "txn_count_1d > $1",
        "EXISTS (SELECT 1)",
        "txn_count_1d > 1 ORDER BY 1",
    ],
)
def test_where_injection_is_refused(dirty: featurelake.Featurelake, where: str) -> None:
    refused(dirty, UsageError, "is refused", "churn_onnx", "user_features", where=where)


def test_bad_where_and_arguments(dirty: featurelake.Featurelake) -> None:
    msg = refused(dirty, UsageError, "is not valid over view user_features", "churn_onnx", "user_features",
                  where="refunds > 2")  # fmt: skip
    assert "refunds" in msg and "txn_count_1d" in msg
    refused(dirty, UsageError, "nothing to score", "churn_onnx", "user_features", where="txn_count_1d < 0")
    refused(dirty, UsageError, "give both --start and --end", "churn_onnx", start="2024-01-02")
    refused(dirty, UsageError, "must be before --end", "churn_onnx", start="2024-01-03", end="2024-01-02")
    refused(
        dirty,
        UsageError,
        "give one or the other",
        "churn_onnx",
        start="2024-01-02",
        end="2024-01-03",
        max_age="2d",
    )
    refused(
        dirty, UsageError, "either --as-of or --snapshot", "churn_onnx", as_of="2024-01-02", snapshot_id=1
    )
    refused(dirty, UsageError, "expected a duration", "churn_onnx", max_age="soon")
    refused(dirty, UsageError, "use one of fail, fill", "churn_onnx", nan_policy="guess")
    refused(dirty, UsageError, "run id 'a b' is not valid", "churn_onnx", run_id="a b")
    refused(dirty, UsageError, "--output 'a.b.c'", "churn_onnx", output="a.b.c")
    refused(dirty, ConfigError, "unknown feature view 'nope'|nope", "churn_onnx", "nope")


def test_an_existing_table_of_another_shape_is_not_written(dirty: featurelake.Featurelake) -> None:
    from pyiceberg.schema import Schema
    from pyiceberg.types import DoubleType, LongType, NestedField

    cat = dirty.project.catalog
    cat.create_namespace_if_not_exists("predictions")
    cat.create_table("predictions.customers", schema=Schema(NestedField(1, "customer_id", LongType(), required=True),
                                                             NestedField(2, "score", DoubleType())))  # fmt: skip
    msg = refused(dirty, SchemaError, "predictions table predictions.customers does not fit", "churn_onnx",
                  "user_features", output="customers")  # fmt: skip
    assert "user_id (long; table has no such column)" in msg and "pass --output" in msg

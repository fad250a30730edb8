"""The ModelFlavor implementations on their own (real runtimes, small models): input layouts, output shapes,
refused artifacts, the payload's digest check, and the --where validator and its DuckDB sandbox."""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from featurelake.errors import ArtifactIntegrityError, DataError, SchemaError, UsageError
from featurelake.prediction import ModelInfo, ModelInput, ModelPayload, load_flavor
from featurelake.prediction.inputs import BoundInput, InputBinding, match_inputs
from featurelake.prediction.where import bind_where, check_where, sandbox

INPUTS = (
    ModelInput("a", "double", 0.0, "v:a"),
    ModelInput("b", "long", None, "v:b"),
    ModelInput("c", "double"),
)
X = np.array([[0.5, 1.0, -2.0], [1.5, 0.0, 3.0], [-1.0, 2.0, 0.25]])


def info(params: dict[str, Any] | None = None, inputs: tuple[ModelInput, ...] = INPUTS) -> ModelInfo:
    return ModelInfo("m", "1.0.0", inputs, params or {})


def torchscript(module: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


# --- pickle ---------------------------------------------------------------------------------------------------


def test_pickle_regressor_classifier_and_dataframe_fitted_models() -> None:
    import pandas as pd
    from sklearn.linear_model import LinearRegression, LogisticRegression

    reg = LinearRegression().fit(X, [1.0, 2.0, 3.0])
    f = load_flavor("pickle", pickle.dumps(reg), info())
    assert f.output_kind == "value" and f.output_range is None
    np.testing.assert_allclose(f.predict(X), reg.predict(X))

    multi = LogisticRegression().fit(np.vstack([X, X]), [0, 1, 2, 2, 1, 0])
    f = load_flavor("pickle", pickle.dumps(multi), info())
    assert f.output_kind == "label" and f.output_range == (0.0, 2.0)
    np.testing.assert_array_equal(f.predict(X), multi.predict(X))

    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    named = LogisticRegression().fit(frame, [0, 1, 1])
    f = load_flavor("pickle", pickle.dumps(named), info())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "X does not have valid feature names"
        np.testing.assert_allclose(f.predict(np.asfortranarray(X)), named.predict_proba(frame)[:, 1])
    swapped = LogisticRegression().fit(frame[["b", "a", "c"]], [0, 1, 1])
    with pytest.raises(
        SchemaError, match=r"do not match its recorded signature: order b, a, c instead of a, b, c"
    ):
        load_flavor("pickle", pickle.dumps(swapped), info())


def test_pickle_refuses_non_models_and_broken_bytes() -> None:
    with pytest.raises(UsageError, match="the unpickled dict has no predict"):
        load_flavor("pickle", pickle.dumps({"a": 1}), info())
    with pytest.raises(UsageError, match="cannot be unpickled"):
        load_flavor("pickle", b"\x80\x05not a pickle", info())
    with pytest.raises(UsageError, match="unknown model flavor 'h5'"):
        load_flavor("h5", b"", info())


# --- onnx -----------------------------------------------------------------------------------------------------


def _onnx(inputs: list[tuple[str, int]], body: list[Any], outputs: list[Any]) -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        body,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, w]) for n, w in inputs],
        outputs,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def test_onnx_named_inputs_are_fed_by_name_and_class_scores_become_labels() -> None:
    from onnx import TensorProto, helper

    # One [batch, 1] input per feature, named like the signature, given in another order than the signature.
    body = [helper.make_node("Concat", ["c", "a", "b"], ["Y"], axis=1)]  # returns [c, a, b]
    data = _onnx(
        [("c", 1), ("a", 1), ("b", 1)],
        body,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 3])],
    )
    f = load_flavor("onnx", data, info())
    assert f.output_kind == "label" and f.output_range == (0.0, 2.0)
    # arg-max over [c, a, b] per row
    np.testing.assert_array_equal(f.predict(X.astype(np.float32)), np.argmax(X[:, [2, 0, 1]], axis=1))
    wrong = _onnx([("a", 1), ("z", 1), ("b", 1)], [helper.make_node("Concat", ["a", "z", "b"], ["Y"], axis=1)],
                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 3])])  # fmt: skip
    with pytest.raises(SchemaError, match="missing c; unexpected z"):
        load_flavor("onnx", wrong, info())
    with pytest.raises(UsageError, match="onnxruntime cannot load it"):
        load_flavor("onnx", b"not onnx", info())


def test_onnx_single_output_value_and_width_check() -> None:
    from onnx import TensorProto, helper

    body = [helper.make_node("ReduceSum", ["X", "axes"], ["Y"], keepdims=0)]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        body, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None])], initializer=[axes],
    )  # fmt: skip
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    f = load_flavor("onnx", data, info())
    assert f.output_kind == "value" and f.input_dtype == np.float32
    np.testing.assert_allclose(f.predict(X.astype(np.float32)), X.sum(axis=1), rtol=1e-6)
    assert load_flavor("onnx", data, info({"task": "classification"})).output_kind == "probability"
    with pytest.raises(SchemaError, match=r"takes 3 input columns .* signature has 2 \(a, b\)"):
        load_flavor("onnx", data, info(inputs=INPUTS[:2]))


# --- torchscript ----------------------------------------------------------------------------------------------


def test_torchscript_output_shapes() -> None:
    import torch

    class Two(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = torch.sigmoid(x[:, 0])
            return torch.stack([1 - p, p], dim=1)

    class Scores(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    class Column(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(dim=1, keepdim=True)

    f = load_flavor("torchscript", torchscript(Two()), info())
    assert f.output_kind == "probability"
    np.testing.assert_allclose(f.predict(X.astype(np.float32)), 1 / (1 + np.exp(-X[:, 0])), rtol=1e-6)
    f = load_flavor("torchscript", torchscript(Scores()), info())
    assert f.output_kind == "label" and f.output_range == (0.0, 2.0)
    np.testing.assert_array_equal(f.predict(X.astype(np.float32)), X.argmax(axis=1))
    f = load_flavor("torchscript", torchscript(Column()), info())
    assert f.output_kind == "value"
    np.testing.assert_allclose(f.predict(X.astype(np.float32)), X.sum(axis=1), rtol=1e-6)


def test_torchscript_refuses_wrong_width_and_bad_bytes() -> None:
    import torch

    lin = torch.nn.Linear(5, 1)
    with pytest.raises(SchemaError, match=r"rejects a \[batch, 3\] input .*a, b, c"):
        load_flavor("torchscript", torchscript(lin), info())
    with pytest.raises(UsageError, match=r"torch\.jit\.load cannot read it"):
        load_flavor("torchscript", b"PK\x03\x04 not a model", info())


# --- payload and binding --------------------------------------------------------------------------------------


def test_payload_reverifies_its_bytes_where_it_is_loaded() -> None:
    from sklearn.linear_model import LinearRegression

    data = pickle.dumps(LinearRegression().fit(X, [1.0, 2.0, 3.0]))
    good = ModelPayload("pickle", data, hashlib.sha256(data).hexdigest(), info())
    assert good.load().output_kind == "value"
    bad = ModelPayload("pickle", data + b"x", hashlib.sha256(data).hexdigest(), info())
    with pytest.raises(ArtifactIntegrityError, match="do not match the recorded digest"):
        bad.load()


def test_binding_builds_the_matrix_in_signature_order_and_fills_defaults() -> None:
    from sklearn.linear_model import LinearRegression

    flavor = load_flavor("pickle", pickle.dumps(LinearRegression().fit(X, [1.0, 2.0, 3.0])), info())
    types = {"k": "long", "c": "double", "b": "long", "a": "double"}
    bound = match_inputs(flavor.info, "v", "k", types)
    assert [(b.name, b.column) for b in bound] == [("a", "a"), ("b", "b"), ("c", "c")]
    binding = InputBinding.bind(flavor, bound, "v", "k", "fill")
    batch = pa.record_batch(
        {
            "k": pa.array([1, 2, 3]),
            "c": pa.array([1.0, 2.0, 3.0]),
            "b": pa.array([4, 5, 6]),
            "a": pa.array([None, float("nan"), 7.0]),
        }
    )
    np.testing.assert_array_equal(binding.matrix(batch), [[0.0, 4, 1.0], [0.0, 5, 2.0], [7.0, 6, 3.0]])
    no_default = batch.set_column(1, "c", pa.array([1.0, None, 3.0]))
    with pytest.raises(
        DataError, match=r"input c is missing \(null or NaN\) for 1 row\(s\) of this batch \(k 2\)"
    ):
        binding.matrix(no_default)
    with pytest.raises(DataError, match="nan policy 'fail'"):
        InputBinding.bind(flavor, bound, "v", "k", "fail").matrix(batch)
    with pytest.raises(SchemaError, match=r"input b \(column b of view v\) is string"):
        InputBinding.bind(
            flavor, [*bound[:1], BoundInput("b", "b", "string", None), bound[2]], "v", "k", "fill"
        )


# --- --where ---------------------------------------------------------------------------------------------------


def test_where_accepts_filters_and_reports_their_columns() -> None:
    cols = ["user_id", "event_ts", "txn_count_1d", "amount_avg_1d"]
    assert check_where(" txn_count_1d > 3 AND amount_avg_1d IS NOT NULL ", cols) == (
        "txn_count_1d > 3 AND amount_avg_1d IS NOT NULL",
        ["txn_count_1d", "amount_avg_1d"],
    )
    ok = [
        "user_id IN (1, 2, 3)",
        "CAST(txn_count_1d AS DECIMAL(10, 2)) BETWEEN 1 AND 5",
        "date_trunc('day', event_ts) = DATE '2024-01-03' OR lower('A;B') = 'a;b'",
        "CASE WHEN txn_count_1d > 1 THEN true ELSE false END",
        "coalesce(amount_avg_1d, 0) > 1 AND NOT isnan(amount_avg_1d)",
    ]
    for expr in ok:
        check_where(expr, cols)
    with pytest.raises(UsageError, match=r"longer than 2000 characters"):
        check_where("txn_count_1d > 1 AND " * 200 + "true", cols)
    with pytest.raises(UsageError, match="is empty"):
        check_where("  ", cols)
    with pytest.raises(UsageError, match="function getenv"):
        check_where("getenv('HOME') IS NOT NULL", cols)
    with pytest.raises(UsageError, match="ATTACH is not allowed"):
        check_where("ATTACH '/tmp/x.db'", cols)
    schema = pa.schema([("user_id", pa.int64()), ("txn_count_1d", pa.int64())])
    with pytest.raises(
        UsageError, match=r'Referenced column "nope" not found.*its columns are user_id, txn_count_1d'
    ):
        bind_where("nope > 1", schema, "v")


def test_the_sandbox_cannot_touch_files_or_change_its_settings(tmp_path: Any) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    con = sandbox()
    try:
        con.register("batch", pa.table({"a": [1, 2]}))
        assert con.execute("SELECT count(*) FROM batch WHERE a > 1").fetchone() == (1,)
        for sql in (
            f"SELECT * FROM read_csv('{secret}')",
            f"COPY batch TO '{tmp_path / 'out.csv'}'",
            f"ATTACH '{tmp_path / 'x.db'}'",
            "SET enable_external_access = true",
            "INSTALL httpfs",
        ):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
    finally:
        con.close()
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.db").exists()


def test_score_all_builds_matrices_ahead_but_fails_in_batch_order() -> None:
    from datetime import UTC, datetime

    from pyiceberg.types import LongType
    from sklearn.linear_model import LinearRegression

    from featurelake.prediction.scoring import BatchScorer, Lineage
    from featurelake.prediction.table import predictions_schema

    model = LinearRegression().fit(X, [1.0, 2.0, 3.0])
    flavor = load_flavor("pickle", pickle.dumps(model), info(inputs=(ModelInput("a", "double"), *INPUTS[1:])))
    types = {"k": "long", "ts": "timestamp", "c": "double", "b": "long", "a": "double"}
    binding = InputBinding.bind(flavor, match_inputs(flavor.info, "v", "k", types), "v", "k", "fill")
    schema = predictions_schema("k", LongType(), "ts").as_arrow()
    scorer = BatchScorer(binding, Lineage("m", "1.0.0", 7, "r", datetime.now(UTC)), schema, "ts")

    def batch(i: int, c: list[float | None]) -> pa.RecordBatch:
        return pa.record_batch(
            {
                "k": pa.array([3 * i, 3 * i + 1, 3 * i + 2]),
                "ts": pa.array([datetime(2024, 1, 1, tzinfo=UTC)] * 3, pa.timestamp("us", tz="UTC")),
                "a": pa.array([0.5, 1.5, -1.0]),
                "b": pa.array([1, 0, 2]),
                "c": pa.array(c),
            }
        )

    good = [batch(0, [-2.0, 3.0, 0.25]), batch(1, [1.0, 2.0, 3.0])]
    out = list(scorer.score_all(good))
    assert [b.num_rows for b in out] == [3, 3]
    np.testing.assert_allclose(out[0].column("prediction").to_numpy(), model.predict(X))
    assert (
        out[1].column("k").to_pylist() == [3, 4, 5] and out[1].column("feature_snapshot_id")[0].as_py() == 7
    )
    # The third batch's matrix fails (c has no default) while the second is still being scored: the first
    # two come out, then the error.
    stream = scorer.score_all([*good, batch(2, [1.0, None, 3.0]), batch(3, [1.0, 2.0, 3.0])])
    got = [next(stream), next(stream)]
    assert [b.column("k")[0].as_py() for b in got] == [0, 3]
    with pytest.raises(DataError, match=r"input c is missing .* \(k 7\)"):
        next(stream)

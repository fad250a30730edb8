"""Multi-output models (`models register --output label,proba`): a classifier writes its predicted class to
`prediction` and one `proba_<class>` column per class to `predictions.<model>`, and `/predict/{model}` answers the
same; for each flavor (scikit-learn pickled, the same model as ONNX via skl2onnx, a TorchScript module with two
outputs), with clear errors for models that cannot give both."""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import featurelake
from featurelake import SchemaError, UsageError
from featurelake.cli.app import cli
from featurelake.serving.server import create_app
from tests.helpers import make_project
from tests.online_helpers import append, config
from tests.predict_helpers import (
    COLUMNS,
    FEATURES,
    export_onnx,
    features_matrix,
    published_project,
    training_set,
)

CLASSES = [0, 1, 2]
PROBA = [f"proba_{c}" for c in CLASSES]


def three_classes(fl: featurelake.Featurelake) -> pa.Table:
    """A training set whose entity frame carries a 3-class label learnable from amount_sum_1d."""
    first = training_set(fl)
    x = features_matrix(first)
    label = np.digitize(x[:, 1], np.quantile(x[:, 1], [1 / 3, 2 / 3])).astype(np.int64)
    ents = first.select(["user_id", "event_timestamp"]).append_column("label", pa.array(label))
    return fl.training_set(ents, FEATURES)


def fit(ts: pa.Table) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000).fit(features_matrix(ts), ts["label"].to_numpy())


def torch_two_outputs(model: Any, path: Path) -> Path:
    """The logistic regression in torch, returning (label, probabilities): softmax over the sklearn scores."""
    import torch

    class TwoOutputs(torch.nn.Module):
        def __init__(self, k: int, c: int) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(k, c)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            proba = torch.softmax(self.linear(x), dim=1)
            return proba.argmax(dim=1), proba

    m = TwoOutputs(model.coef_.shape[1], model.coef_.shape[0])
    with torch.no_grad():
        m.linear.weight.copy_(torch.tensor(model.coef_, dtype=torch.float32))
        m.linear.bias.copy_(torch.tensor(model.intercept_, dtype=torch.float32))
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; it is the format under test
        warnings.simplefilter("ignore", DeprecationWarning)
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(m.eval()), buf)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[featurelake.Featurelake, Any, pa.Table, Path]]:
    """A published, SQLite-served project with the 3-class model registered three ways (Production)."""
    tmp = tmp_path_factory.mktemp("multi")
    make_project(tmp / "proj", config=config("sqlite"))
    fl = featurelake.open(tmp / "proj")
    fl.apply()
    published_project(fl)
    ts = three_classes(fl)
    model = fit(ts)
    arts = {
        "multi_pickle": ("pickle", tmp / "m.pkl"),
        "multi_onnx": ("onnx", export_onnx(model, tmp / "m.onnx")),
        "multi_torch": ("torchscript", torch_two_outputs(model, tmp / "m.pt")),
    }
    arts["multi_pickle"][1].write_bytes(pickle.dumps(model))
    for name, (flavor, path) in arts.items():
        mv = fl.models.register(name, path, flavor, training_set=ts, output="label,proba")
        assert mv.params["featurelake.output"] == "label,proba"
        fl.models.promote(name, mv.version, "Staging")
        fl.models.promote(name, mv.version, "Production")
    try:
        yield fl, model, ts, tmp
    finally:
        fl.close()


@pytest.mark.parametrize(
    ("name", "tolerance"), [("multi_pickle", 0.0), ("multi_onnx", 1e-5), ("multi_torch", 1e-5)]
)
def test_batch_prediction_writes_the_label_and_a_probability_per_class(
    trained: tuple[featurelake.Featurelake, Any, pa.Table, Path], name: str, tolerance: float
) -> None:
    fl, model, _, _ = trained
    result = fl.predict(name, "user_features")
    assert result.report.passed and result.rows == 40
    checks = {(r.check, r.column) for r in result.report.results}
    assert {("between", c) for c in PROBA} <= checks  # every probability audited into [0, 1]
    rows = fl.read(f"predictions.{name}")
    assert rows.column_names[:6] == ["user_id", "event_ts", "prediction", *PROBA]
    latest = fl.read("user_features").to_pandas().sort_values("event_ts").groupby("user_id").tail(1)
    latest = latest.set_index("user_id").loc[rows["user_id"].to_pylist()]
    x = np.column_stack([latest[c].to_numpy(dtype=np.float64) for c in COLUMNS])
    want = model.predict_proba(x)
    got = np.column_stack([rows[c].to_numpy() for c in PROBA])
    np.testing.assert_allclose(got, want, atol=tolerance, rtol=tolerance * 10)
    assert set(rows["prediction"].to_pylist()) <= {0.0, 1.0, 2.0}
    agree = np.mean(rows["prediction"].to_numpy() == model.predict(x))
    assert agree == 1.0 if tolerance == 0 else agree >= 0.95  # float32 runtimes may flip a near tie
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_predict_endpoint_answers_the_same_shape(
    trained: tuple[featurelake.Featurelake, Any, pa.Table, Path],
) -> None:
    fl, model, _, _ = trained
    now = datetime.now(UTC)
    append(fl, [(1, now - timedelta(hours=1), 10.0), (2, now - timedelta(hours=2), 400.0)])
    fl.sync()
    x = np.array([[10.0, 10.0, 10.0], [400.0, 400.0, 400.0]])
    with TestClient(create_app(fl.project)) as client:
        for name in ("multi_pickle", "multi_onnx", "multi_torch"):
            r = client.post(f"/predict/{name}", json={"entities": {"user_id": [1, 2, 99999]}})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["predictions"][:2] == model.predict(x).astype(float).tolist()
            assert body["predictions"][2] is None and body["statuses"][2] == "NOT_FOUND"
            assert list(body["probabilities"]) == PROBA
            got = np.array([[body["probabilities"][c][i] for c in PROBA] for i in (0, 1)])
            np.testing.assert_allclose(got, model.predict_proba(x), atol=1e-5)
            assert [body["probabilities"][c][2] for c in PROBA] == [None, None, None]
        plain = client.post("/predict/multi_pickle", json={"entities": {"user_id": [1]}}).json()
        assert "probabilities" in plain


def test_models_register_output_from_the_command_line(
    trained: tuple[featurelake.Featurelake, Any, pa.Table, Path],
) -> None:
    fl, _, ts, tmp = trained
    import pyarrow.parquet as pq

    pq.write_table(ts, tmp / "train.parquet")
    args = ["-C", str(fl.project.root), "models", "register", "cli_multi", "--artifact", str(tmp / "m.pkl"),
            "--flavor", "pickle", "--training-set", str(tmp / "train.parquet")]  # fmt: skip
    ok = CliRunner().invoke(cli, [*args, "--output", "proba,label", "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"featurelake.output": "label,proba"' in ok.output
    bad = CliRunner().invoke(cli, [*args, "--output", "scores"])
    assert isinstance(bad.exception, UsageError)
    assert (
        "model cli_multi: --output 'scores' is not an output featurelake writes; give --output label,proba"
        in str(bad.exception)
    )


def test_models_that_cannot_give_a_label_and_probabilities_are_refused(
    trained: tuple[featurelake.Featurelake, Any, pa.Table, Path],
) -> None:
    from sklearn.linear_model import LinearRegression

    from tests.online_helpers import LinearModel

    fl, model, ts, tmp = trained
    # A pickle without predict_proba: found when it is loaded (the registration does not unpickle).
    (tmp / "lin.pkl").write_bytes(pickle.dumps(LinearModel([1.0, 0.0, 0.0])))
    mv = fl.models.register("no_proba", tmp / "lin.pkl", "pickle", training_set=ts, output="label,proba")
    with pytest.raises(
        SchemaError, match="declared --output label,proba, but the unpickled LinearModel has no predict_proba"
    ):
        fl.predict(f"no_proba@{mv.version}", "user_features")
    # An ONNX regressor has no probability output: refused when registered (its graph is read then).
    from skl2onnx import to_onnx

    reg = LinearRegression().fit(features_matrix(ts), ts["label"].to_numpy().astype(float))
    (tmp / "reg.onnx").write_bytes(to_onnx(reg, np.zeros((1, 3), np.float32)).SerializeToString())
    with pytest.raises(
        SchemaError, match=r"declared --output label,proba, but none of the onnx model's outputs \(variable"
    ):
        fl.models.register("reg_onnx", tmp / "reg.onnx", "onnx", training_set=ts, output="label,proba")
    assert "reg_onnx" not in {m.name for m in fl.models.list_models()}  # refused before anything was stored
    # A TorchScript module with two outputs needs the declaration, and says so.
    path = torch_two_outputs(model, tmp / "two.pt")
    plain = fl.models.register("two_plain", path, "torchscript", training_set=ts)
    with pytest.raises(
        SchemaError, match=r"returns tuple; batch prediction needs a tensor \(a module returning a label"
    ):
        fl.predict(f"two_plain@{plain.version}", "user_features")
    # A single-output torch module cannot be read as label and probabilities.
    one = fl.models.register(
        "one_out", torch_sum(tmp / "one.pt"), "torchscript", training_set=ts, output="label,proba"
    )
    with pytest.raises(
        SchemaError, match=r"declared --output label,proba, but the torchscript model returns \[1\]"
    ):
        fl.predict(f"one_out@{one.version}", "user_features")


def torch_sum(path: Path) -> Path:
    """A TorchScript module with one output per row (the sum of its inputs)."""
    import torch

    class Sum(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(dim=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(Sum()), buf)
    path.write_bytes(buf.getvalue())
    return path


def test_a_multi_output_version_cannot_write_to_a_single_output_table(
    trained: tuple[featurelake.Featurelake, Any, pa.Table, Path],
) -> None:
    fl, _, ts, tmp = trained
    single = fl.models.register(
        "mixed", tmp / "m.pkl", "pickle", training_set=ts, params={"task": "classification"}
    )
    fl.predict(f"mixed@{single.version}", "user_features")
    multi = fl.models.register("mixed", tmp / "m.pkl", "pickle", training_set=ts, output="label,proba")
    with pytest.raises(
        SchemaError, match=r"predictions table predictions.mixed does not fit this run: it needs proba_0"
    ):
        fl.predict(f"mixed@{multi.version}", "user_features")
    result = fl.predict(f"mixed@{multi.version}", "user_features", output="mixed_multi")
    assert result.table == "predictions.mixed_multi" and result.rows == 40

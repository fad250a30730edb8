"""One scikit-learn model exported three ways (pickle, ONNX via skl2onnx, TorchScript), registered on a project."""

from __future__ import annotations

import io
import pickle
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import featurelake
from tests.helpers import START, day

FEATURES = ["user_features:txn_count_1d", "user_features:amount_sum_1d", "user_features:amount_avg_1d"]
COLUMNS = [f.split(":")[1] for f in FEATURES]


def published_project(fl: featurelake.Featurelake, days: int = 10) -> None:
    """Backfill days 0..days-1 of user_features (two published runs)."""
    fl.backfill("user_features", day(0), day(days // 2), run_id="first")
    fl.backfill("user_features", day(days // 2), day(days), run_id="second")


def training_set(fl: featurelake.Featurelake, n: int = 400, seed: int = 5) -> pa.Table:
    """A point-in-time training set over user_features, with a label learnable from the features."""
    rng = np.random.default_rng(seed)
    secs = rng.integers(86_400, 10 * 86_400, n)
    ents = pa.table(
        {
            "user_id": pa.array(rng.integers(1, 41, n), pa.int64()),
            "event_timestamp": pa.array(
                [START + timedelta(seconds=int(s)) for s in secs], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    ts = fl.training_set(ents, FEATURES)
    x = features_matrix(ts)
    label = (x[:, 1] / 100.0 + rng.normal(0, 0.5, len(x)) > np.median(x[:, 1]) / 100.0).astype(np.int64)
    return ts.append_column("label", pa.array(label))


def features_matrix(table: pa.Table, columns: list[str] = COLUMNS) -> np.ndarray:
    return np.column_stack(
        [np.nan_to_num(table[c].to_numpy(zero_copy_only=False).astype(np.float64)) for c in columns]
    )


def fit(ts: pa.Table) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000).fit(features_matrix(ts), ts["label"].to_numpy())


def export_pickle(model: Any, path: Path) -> Path:
    path.write_bytes(pickle.dumps(model))
    return path


def export_onnx(model: Any, path: Path, k: int = 3) -> Path:
    from skl2onnx import to_onnx

    onx = to_onnx(model, np.zeros((1, k), np.float32), options={id(model): {"zipmap": False}})
    path.write_bytes(onx.SerializeToString())
    return path


def torch_module(model: Any) -> Any:
    """The logistic regression re-implemented in torch: Linear with the sklearn weights, then sigmoid."""
    import torch

    class LogReg(torch.nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(k, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.linear(x)).squeeze(-1)

    m = LogReg(model.coef_.shape[1])
    with torch.no_grad():
        m.linear.weight.copy_(torch.tensor(model.coef_, dtype=torch.float32))
        m.linear.bias.copy_(torch.tensor(model.intercept_, dtype=torch.float32))
    return m.eval()


def export_torchscript(model: Any, path: Path) -> Path:
    import torch

    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; it is the format under test
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(torch_module(model))
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
    path.write_bytes(buf.getvalue())
    return path


def register_three(fl: featurelake.Featurelake, tmp: Path, *, promote: bool = True) -> tuple[Any, pa.Table]:
    """Fit once, register as churn_pickle / churn_onnx / churn_torch (Production), return the sklearn model."""
    ts = training_set(fl)
    model = fit(ts)
    tmp.mkdir(parents=True, exist_ok=True)
    arts = {
        "churn_pickle": ("pickle", export_pickle(model, tmp / "m.pkl"), {}),
        "churn_onnx": ("onnx", export_onnx(model, tmp / "m.onnx"), {}),
        "churn_torch": ("torchscript", export_torchscript(model, tmp / "m.pt"), {"task": "classification"}),
    }
    for name, (flavor, path, params) in arts.items():
        mv = fl.models.register(name, path, flavor, training_set=ts, params=params)
        if promote:
            fl.models.promote(name, mv.version, "Staging")
            fl.models.promote(name, mv.version, "Production")
    return model, ts

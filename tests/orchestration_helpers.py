"""A small project for the Dagster and Airflow tests (tests/test_dagster.py, tests/test_airflow.py): two views,
the second reading the first (``Source.table``), ten days of transactions of which 2024-01-03 has no amounts
(its audit refuses it), and a pickled model that needs no library beyond NumPy."""

from __future__ import annotations

import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import featurelake
from tests.helpers import DEFAULT_FEATURES, START, make_project, transactions

#: The day whose amounts are all null: ``null_rate(amount_avg_1d) <= 0.10`` refuses it.
BROKEN_DAY = "2024-01-03"

FEATURES = (
    DEFAULT_FEATURES
    + """
user_rollup = FeatureView(
    name="user_rollup",
    entity=user,
    source=Source.table("features.user_features", timestamp_field="event_ts"),
    query="SELECT user_id, event_ts, txn_count_1d * 2 AS txn_count_x2 FROM source",
    timestamp_field="event_ts",
    fields={"txn_count_x2": "long"},
    checks=[checks.between("txn_count_x2", 0, 100_000)],
    lookback=timedelta(days=2),
)
"""
)


def source_with_broken_day() -> pa.Table:
    data = transactions()
    day = pc.floor_temporal(data["ts"], unit="day")
    broken = pc.equal(day, pa.scalar(START + timedelta(days=2), pa.timestamp("us", tz="UTC")))
    amount = pc.if_else(broken, pa.scalar(None, pa.float64()), data["amount"])
    return data.set_column(data.schema.get_field_index("amount"), "amount", amount)


def orchestrated_project(root: Path, extra_config: str = "", engine: str = "local") -> Path:
    """The project, applied (tables created), with ``orchestration.start_date: 2024-01-01``."""
    config = f"project: orch test\nnamespace: features\nengine:\n  type: {engine}\n"
    if engine == "spark":
        config += '  spark:\n    master: "local[2]"\n'
    config += "orchestration:\n  start_date: 2024-01-01\n" + extra_config
    make_project(root, features=FEATURES, config=config, data=source_with_broken_day())
    with featurelake.open(root) as fl:
        fl.apply()
    return root


class DoubleAmount:
    """A "model" scoring ``2 * amount_sum_1d``: pickled by reference to this importable class."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)[:, 1] * 2.0


class NanScore:
    """A broken "model": every prediction is NaN, which the predictions audit refuses (null rate 1.0)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), np.nan)


def register_model(fl: featurelake.Featurelake, tmp: Path, name: str = "spend", model: Any = None) -> str:
    """Register and promote to Production a model over user_features (published days needed)."""
    rng = np.random.default_rng(3)
    entities = pa.table(
        {
            "user_id": pa.array(rng.integers(1, 41, 50), pa.int64()),
            "event_timestamp": pa.array([START + timedelta(days=2)] * 50, pa.timestamp("us", tz="UTC")),
        }
    )
    ts = fl.training_set(
        entities,
        ["user_features:txn_count_1d", "user_features:amount_sum_1d", "user_features:amount_avg_1d"],
    )
    path = tmp / f"{name}.pkl"
    path.write_bytes(pickle.dumps(model if model is not None else DoubleAmount()))
    mv = fl.models.register(name, path, "pickle", training_set=ts)
    fl.models.promote(name, mv.version, "Staging")
    fl.models.promote(name, mv.version, "Production")
    return mv.version


def main_snapshot(fl: featurelake.Featurelake, view: str) -> int | None:
    snap = fl.project.load_table(view).current_snapshot()
    return snap.snapshot_id if snap is not None else None


def days_of(table: pa.Table, column: str = "event_ts") -> list[str]:
    return sorted({d.date().isoformat() for d in table[column].to_pylist()})


def summary(fl: featurelake.Featurelake, table: str, snapshot_id: int) -> dict[str, Any]:
    snap = fl.project.load_any_table(table).snapshot_by_id(snapshot_id)
    assert snap is not None and snap.summary is not None
    return dict(snap.summary.additional_properties)

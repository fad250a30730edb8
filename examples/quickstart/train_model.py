"""The quickstart's model: will a user transact tomorrow? Trained on a point-in-time correct training set.

python train_model.py entities   # .featurelake/entities.parquet: (user, end of day D) rows, label = active on D+1
python train_model.py fit        # reads .featurelake/train.parquet, writes .featurelake/model.pkl, prints the AUC

Entity times are the last microsecond of day D: the quickstart view stamps a day's aggregates at the start of
that day (event_ts = date_trunc('day', ts)), so asking at any earlier time of day D would already see the whole
of day D.
"""

from __future__ import annotations

import pickle
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
STATE = HERE / ".featurelake"
FIRST_DAY = datetime(2026, 9, 1, tzinfo=UTC)
DAYS = 28
USERS_PER_DAY = 600


def entities() -> None:
    tx = pq.read_table(HERE / "data" / "transactions", columns=["user_id", "ts"])
    days = pc.floor_temporal(tx["ts"], unit="day")
    rng = np.random.default_rng(11)
    users = np.unique(tx["user_id"].to_numpy())
    rows: dict[str, list[object]] = {"user_id": [], "event_timestamp": [], "active_next_day": []}
    for d in range(DAYS):
        day = FIRST_DAY + timedelta(days=d)
        nxt = pc.equal(days, pa.scalar(day + timedelta(days=1), pa.timestamp("us", tz="UTC")))
        active = set(pc.unique(tx.filter(nxt)["user_id"]).to_pylist())
        for u in rng.choice(users, USERS_PER_DAY, replace=False):
            rows["user_id"].append(int(u))
            rows["event_timestamp"].append(day + timedelta(days=1) - timedelta(microseconds=1))
            rows["active_next_day"].append(int(u in active))
    table = pa.table(
        {
            "user_id": pa.array(rows["user_id"], pa.int64()),
            "event_timestamp": pa.array(rows["event_timestamp"], pa.timestamp("us", tz="UTC")),
            "active_next_day": pa.array(rows["active_next_day"], pa.int64()),
        }
    )
    STATE.mkdir(exist_ok=True)
    pq.write_table(table, STATE / "entities.parquet")
    print(f"{table.num_rows} entity rows, {sum(rows['active_next_day'])} positive")


def fit() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from featurelake.training import Provenance

    path = STATE / "train.parquet"
    prov = Provenance.load(path)
    columns = [ref.column for ref in prov.feature_refs()]  # the model's input signature, in order
    df = pq.read_table(path).to_pandas()
    # Missing features (no activity within the ttl) are 0: registered as the inputs' defaults, so scoring
    # fills them the same way. The pickle takes the raw features in signature order.
    x = df[columns].fillna(0.0).to_numpy(dtype=float)
    y = df["active_next_day"].to_numpy()
    cut = (df["event_timestamp"] < FIRST_DAY + timedelta(days=21)).to_numpy()  # train 3 weeks, test the 4th
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=1000))
    model.fit(x[cut], y[cut])
    auc = roc_auc_score(y[~cut], model.predict_proba(x[~cut])[:, 1])
    with (STATE / "model.pkl").open("wb") as f:
        pickle.dump(model, f)
    (STATE / "auc.txt").write_text(f"{auc:.4f}")
    print(f"trained on {int(cut.sum())} rows with inputs {', '.join(columns)}; held-out AUC {auc:.3f}")
    print(
        "(the generator draws every day's activity afresh, so there is little to learn: the point is the lineage)"
    )
    print("features came from " + ", ".join(f"{v} snapshot {s}" for v, s in prov.views.items()))


if __name__ == "__main__":
    {"entities": entities, "fit": fit}[sys.argv[1] if len(sys.argv) > 1 else "fit"]()

"""A project whose view is keyed by (user_id, merchant_id): merchant ids hold ',', '=' and '%'."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

import featurelake
from tests.helpers import make_project

VIEW = "user_merchant_features"
KEYS = ["user_id", "merchant_id"]
#: "a,b" and "a%2Cb" would share one store key if ',' were escaped but '%' not; "b=c" would confuse the
#: CLI's col=value form if it were split on every '='.
MERCHANTS = ["a,b", "a%2Cb", "b=c", "plain"]
USERS = 5
DAYS = 6
#: The first day of data: six days ending yesterday, so the 3-day ttl leaves recent keys PRESENT online.
ANCHOR = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=DAYS)

FEATURES = '''
from datetime import timedelta
from featurelake import Entity, FeatureView, Source, checks

user = Entity("user", join_key="user_id")
user_merchant = Entity("user_merchant", join_keys=["user_id", "merchant_id"])

user_features = FeatureView(
    name="user_features",
    entity=user,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="""
        SELECT user_id, date_trunc('day', ts) AS event_ts, count(*) AS txn_count_1d, sum(amount) AS amount_sum_1d
        FROM source GROUP BY ALL
    """,
    fields={"txn_count_1d": "long", "amount_sum_1d": "double"},
    ttl=timedelta(days=3),
)

user_merchant_features = FeatureView(
    name="user_merchant_features",
    entity=user_merchant,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="""
        SELECT user_id, merchant_id, date_trunc('day', ts) AS event_ts,
               count(*) AS um_count_1d, sum(amount) AS um_amount_1d
        FROM source GROUP BY ALL
    """,
    fields={"um_count_1d": "long", "um_amount_1d": "double"},
    checks=[checks.between("um_count_1d", 0, 10_000)],
    ttl=timedelta(days=3),
)
'''


def day(n: int) -> str:
    return (ANCHOR + timedelta(days=n)).date().isoformat()


def transactions(seed: int = 3, rows_per_day: int = 40, null_merchant_rows: int = 0) -> pa.Table:
    """Deterministic transactions over DAYS days from ANCHOR; user 5 buys only on the first day, from
    merchant 'plain' (so its online row is older than the ttl)."""
    rng = np.random.default_rng(seed)
    n = DAYS * rows_per_day
    day_idx = np.repeat(np.arange(DAYS), rows_per_day)
    secs = rng.integers(0, 86_400, n)
    users = rng.integers(1, USERS, n)  # 1..4 every day
    merchants = [MERCHANTS[i] for i in rng.integers(0, len(MERCHANTS), n)]
    users[0], merchants[0] = USERS, "plain"  # user 5: one row on day 0
    ts = [ANCHOR + timedelta(days=int(d), seconds=int(s)) for d, s in zip(day_idx, secs, strict=True)]
    amount = np.round(rng.lognormal(3.0, 0.6, n), 2)
    merchant_col: list[str | None] = list(merchants)
    for i in range(null_merchant_rows):
        merchant_col[n - 1 - i] = None
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "merchant_id": pa.array(merchant_col, pa.string()),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "amount": pa.array(amount, pa.float64()),
        }
    )


def composite_project(root: Path, config: str | None = None) -> Path:
    return make_project(root, features=FEATURES, config=config, data=transactions())


def latest_rows(fl: featurelake.Featurelake) -> dict[tuple[int, str], dict[str, Any]]:
    """Main's latest row per (user_id, merchant_id), computed with DuckDB from a fresh scan."""
    data = fl.project.load_table(VIEW).scan().to_arrow()
    con = duckdb.connect()
    con.register("t", data)
    rows = con.sql(
        "SELECT * FROM t QUALIFY row_number() OVER (PARTITION BY user_id, merchant_id ORDER BY event_ts DESC) = 1"
    ).to_arrow_table()
    con.close()
    return {(r["user_id"], r["merchant_id"]): r for r in rows.to_pylist()}


class SumModel:
    """A picklable model: ``predict(X) = X @ weights``."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = weights

    def predict(self, x: Any) -> Any:
        return np.asarray(x, dtype=float) @ np.asarray(self.weights)


def drop_pair_on_day(root: Path, pair: tuple[int, str], day_index: int) -> int:
    """Rewrite the source without ``pair``'s transactions of day ``day_index``; returns how many went."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = root / "data" / "transactions" / "part-0.parquet"
    data = pq.read_table(path)
    lo = ANCHOR + timedelta(days=day_index)
    gone = pc.and_(
        pc.and_(pc.equal(data["user_id"], pair[0]), pc.equal(data["merchant_id"], pair[1])),
        pc.and_(
            pc.greater_equal(data["ts"], pa.scalar(lo, data["ts"].type)),
            pc.less(data["ts"], pa.scalar(lo + timedelta(days=1), data["ts"].type)),
        ),
    )
    pq.write_table(data.filter(pc.invert(gone)), path)
    return int(pc.sum(gone).as_py() or 0)


AGGREGATIONS = """
from datetime import timedelta
from featurelake import Aggregation, Entity, FeatureView, Source

user_merchant = Entity("user_merchant", join_keys=["user_id", "merchant_id"])

pair_windows = FeatureView(
    name="pair_windows",
    entity=user_merchant,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    aggregations=[Aggregation("amount", "sum", window=timedelta(days=2)), Aggregation("*", "count", window=timedelta(days=2))],
    step=timedelta(days=1),
)
"""


def window_reference(source: pa.Table, rows: pa.Table) -> list[tuple[Any, ...]]:
    """For each produced row (pair, t): the brute-force sum and count over ``t - 2 days < ts <= t``."""
    out = []
    events = source.to_pylist()
    for r in rows.to_pylist():
        t = r["event_ts"]
        hits = [
            e["amount"]
            for e in events
            if (e["user_id"], e["merchant_id"]) == (r["user_id"], r["merchant_id"])
            and t - timedelta(days=2) < e["ts"] <= t
        ]
        out.append((r["user_id"], r["merchant_id"], t, round(sum(hits), 6) if hits else None, len(hits)))
    return out

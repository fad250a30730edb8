"""Shared builders for tests: small deterministic projects with real Parquet sources."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

START = datetime(2024, 1, 1, tzinfo=UTC)

DEFAULT_FEATURES = '''
from datetime import timedelta
from featurelake import Entity, FeatureView, Source, checks

user = Entity("user", join_key="user_id")

user_features = FeatureView(
    name="user_features",
    entity=user,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="""
        SELECT user_id, date_trunc('day', ts) AS event_ts,
               count(*) AS txn_count_1d, sum(amount) AS amount_sum_1d, avg(amount) AS amount_avg_1d
        FROM source GROUP BY ALL
    """,
    timestamp_field="event_ts",
    fields={"txn_count_1d": "long", "amount_sum_1d": "double", "amount_avg_1d": "double"},
    checks=[checks.null_rate("amount_avg_1d", max=0.10), checks.between("txn_count_1d", 0, 10_000)],
    ttl=timedelta(days=7),
)
'''


def transactions(
    days: int = 10,
    users: int = 40,
    rows_per_day: int = 200,
    start: datetime = START,
    seed: int = 1,
    null_share: float = 0.0,
    string_keys: bool = False,
) -> pa.Table:
    """Deterministic transactions: ``rows_per_day`` rows on each of ``days`` days from ``start``."""
    rng = np.random.default_rng(seed)
    n = days * rows_per_day
    day_idx = np.repeat(np.arange(days), rows_per_day)
    secs = rng.integers(0, 86_400, n)
    ts = [start + timedelta(days=int(d), seconds=int(s)) for d, s in zip(day_idx, secs, strict=True)]
    uid = rng.integers(1, users + 1, n)
    amount = np.round(rng.lognormal(3.0, 0.8, n), 2)
    mask = None
    if null_share:
        broken = rng.random(users + 1) < null_share
        mask = broken[uid]
    keys = pa.array([f"u{u:04d}" for u in uid]) if string_keys else pa.array(uid, pa.int64())
    return pa.table(
        {
            "user_id": keys,
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "amount": pa.array(amount, pa.float64(), mask=mask),
        }
    )


def write_source(
    root: Path, table: pa.Table, name: str = "part-0.parquet", subdir: str = "data/transactions"
) -> Path:
    d = root / subdir
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    pq.write_table(table, path)
    return path


def make_project(
    root: Path,
    *,
    features: str = DEFAULT_FEATURES,
    config: str | None = None,
    data: pa.Table | None = None,
) -> Path:
    """Write featurelake.yaml, features.py and (unless ``data`` is an empty table) a Parquet source."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "featurelake.yaml").write_text(
        config if config is not None else "project: test\nnamespace: features\n"
    )
    (root / "features.py").write_text(textwrap.dedent(features))
    if data is None:
        data = transactions()
    if data.num_rows:
        write_source(root, data)
    return root


def day(n: int) -> str:
    """ISO date of day ``n`` after START (for windows)."""
    return (START + timedelta(days=n)).date().isoformat()

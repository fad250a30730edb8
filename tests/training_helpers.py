"""Builders for training-set and registry tests: a two-view project and entity frames."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import featurelake
from tests.helpers import DEFAULT_FEATURES, START, day, make_project

# A second view on the same source without a ttl: every value stays valid forever.
TWO_VIEWS = (
    DEFAULT_FEATURES
    + '''
user_max = FeatureView(
    name="user_max",
    entity=user,
    source=Source.parquet("data/transactions/*.parquet", timestamp_field="ts"),
    query="""
        SELECT user_id, date_trunc('day', ts) AS event_ts, max(amount) AS amount_max_1d
        FROM source GROUP BY ALL
    """,
    timestamp_field="event_ts",
    fields={"amount_max_1d": "double"},
)
'''
)

FEATURES = ["user_features:amount_avg_1d", "user_features:txn_count_1d", "user_max:amount_max_1d"]


def two_view_project(root: Path, days: int = 5) -> Path:
    """Applied, with days 0..days-1 of both views published."""
    make_project(root, features=TWO_VIEWS)
    with featurelake.open(root) as fl:
        fl.apply()
        for v in ("user_features", "user_max"):
            fl.backfill(v, day(0), day(days), run_id=f"{v}_first")
    return root


def entities(n: int = 300, seed: int = 3, users: int = 45, days: int = 12) -> pa.Table:
    """Entity rows at random times over ``days`` days (some before any feature row, some unknown users)."""
    rng = np.random.default_rng(seed)
    secs = rng.integers(-86_400, days * 86_400, n)
    return pa.table(
        {
            "user_id": pa.array(rng.integers(1, users + 1, n), pa.int64()),
            "event_timestamp": pa.array(
                [START + timedelta(seconds=int(s)) for s in secs], pa.timestamp("us", tz="UTC")
            ),
            "label": pa.array(rng.integers(0, 2, n), pa.int64()),
        }
    )


def brute_force(
    fl: featurelake.Featurelake, ents: pa.Table, view: str, snapshot_id: int, features: list[str], ttl: Any
) -> dict[str, list[Any]]:
    """The PIT rule evaluated row by row in Python over the view read at ``snapshot_id``."""
    rows = fl.read(view, snapshot_id=snapshot_id).to_pylist()
    by_key: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        by_key.setdefault(r["user_id"], []).append(r)
    out: dict[str, list[Any]] = {f: [] for f in features}
    for e in ents.to_pylist():
        t = e["event_timestamp"]
        cands = [
            r
            for r in by_key.get(e["user_id"], [])
            if r["event_ts"] <= t and (ttl is None or t - r["event_ts"] <= ttl)
        ]
        best = max(cands, key=lambda r: r["event_ts"]) if cands else None
        for f in features:
            out[f].append(best[f] if best else None)
    return out


def run_cli(capsys: Any, project_dir: Path, *args: str) -> tuple[int, str, str]:
    """Run the real CLI entry point in this process: (exit code, stdout, stderr)."""
    from featurelake.cli.main import main

    capsys.readouterr()
    code = 0
    try:
        main(["-C", str(project_dir), *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err

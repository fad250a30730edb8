"""The Spark side of tests/test_spark_s3.py, run as its own process: ``python -m tests.spark_s3_flow ROOT STEPS``.

Its own process because the driver's JVM reads the AWS credential chain (the environment variables the test
sets) when it starts, as a user's ``featurelake backfill`` does; a JVM the test session started earlier would
not have them. Prints one JSON line with what it did; the test checks the tables with PyIceberg afterwards.

Steps (comma-separated): ``apply``, ``backfill`` (two windows, then one refused by its audit), ``predict`` (a scikit-learn
model registered with its artifact in S3, scored on Spark), ``sync`` (the online store from Spark executors),
``maintain`` (expiry and orphan removal on the view, compaction of the predictions table, all on Spark),
``executors`` (per-executor task counts from the driver's status API, for the cluster test).
"""

from __future__ import annotations

import json
import pickle
import sys
import tempfile
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import featurelake
from tests.helpers import START, day

VIEW = "user_features"
FEATURES = ["user_features:amount_avg_1d", "user_features:txn_count_1d"]


def entities(n: int = 200, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "user_id": pa.array(rng.integers(1, 41, n), pa.int64()),
            "event_timestamp": pa.array(
                [START + timedelta(days=9, hours=int(h)) for h in rng.integers(0, 24, n)],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )


def executors(fl: featurelake.Featurelake) -> list[dict[str, Any]]:
    """The application's executors (not the driver) with their task counts, from Spark's status API."""
    engine: Any = fl.project.engine
    sc = engine.spark.sparkContext
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/allexecutors"
    with urllib.request.urlopen(url, timeout=30) as answer:
        found = json.load(answer)
    return [
        {"id": e["id"], "host_port": e["hostPort"], "tasks": e["totalTasks"]}
        for e in found
        if e["id"] != "driver"
    ]


def run(root: Path, steps: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with featurelake.open(root) as fl:
        out["engine"] = fl.project.engine.name
        if "apply" in steps:
            fl.apply()
        if "backfill" in steps:
            first = fl.backfill(VIEW, day(0), day(5), run_id="first")
            second = fl.backfill(VIEW, day(5), day(10), run_id="second")
            out["backfill"] = {
                "first": [first.rows, first.snapshot_id],
                "second": [second.rows, second.snapshot_id],
            }
            if "refused" in steps:
                try:
                    fl.backfill(VIEW, day(10), day(12), run_id="broken")
                    out["refused"] = None
                except featurelake.AuditFailed as exc:
                    out["refused"] = str(exc)
        if "predict" in steps:
            from sklearn.linear_model import LinearRegression

            ts = fl.training_set(entities(), FEATURES)
            x = np.column_stack(
                [
                    np.nan_to_num(ts[c].to_numpy(zero_copy_only=False).astype(float))
                    for c in ("amount_avg_1d", "txn_count_1d")
                ]
            )
            model = LinearRegression().fit(x, x[:, 0] * 2.0 + x[:, 1])
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "scorer.pkl"
                path.write_bytes(pickle.dumps(model))
                mv = fl.models.register("scorer", str(path), "pickle", training_set=ts)
            fl.models.promote("scorer", mv.version, "Staging")
            fl.models.promote("scorer", mv.version, "Production")
            scored = fl.predict("scorer", VIEW, run_id="p1")
            out["predict"] = {"rows": scored.rows, "version": mv.version}
        if "sync" in steps:
            out["sync"] = sum(s.rows for s in fl.sync())
        if "maintain" in steps:
            later = datetime.now(UTC) + timedelta(days=10)
            fl.backfill(VIEW, day(0), day(2), run_id="again")  # a newer snapshot: the older ones can expire
            done = fl.maintain(VIEW, expire_older_than="7d", orphan_min_age="3d", now=later)[0]
            assert done.error is None, done.error
            assert done.expiry is not None and done.orphans is not None
            fl.predict("scorer", VIEW, run_id="p2")
            compaction = fl.maintain("predictions.scorer", compact=True)[0]
            assert compaction.error is None and compaction.compaction is not None, compaction.error
            out["maintain"] = {
                "expired": len(done.expiry.expired),
                "deleted": done.expiry.deleted,
                "orphans": done.orphans.orphans,
                "compacted_snapshot": compaction.compaction.snapshot_id,
            }
        if "executors" in steps:
            out["executors"] = executors(fl)
    return out


def main() -> None:
    root, steps = Path(sys.argv[1]), sys.argv[2].split(",")
    result = run(root, steps)
    print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: sync and read of small daily feature rows under each ``partition=`` layout vs the same rows in one file.

The case from the issue: a view with one row per entity per day, for a few entities over years, is tiny
(18,260 rows for 10 entities over 5 years), but ``partition="day"`` gives it one data file per day, and reading
or syncing it opens every one of them. For each layout (``day``, ``month``, ``year``) this script builds a
project, backfills the whole range in one window, re-backfills the last 90 days ``--rebackfills`` times (as a
corrected upstream export would), then times

- **read**: ``fl.read(VIEW)`` (the whole table to Arrow through the local engine), and
- **sync**: ``fl.sync(VIEW, full=True)`` (a full sync of the latest row per entity into the SQLite online
  store: plan, read every live file, reduce, write),

best and median of ``--repeats``. The reference is **the same rows in one file**: a ``partition="none"`` view
backfilled in one window, which leaves exactly one data file; its re-backfills are left out so it stays one
file. Headline: ``year`` read and sync time / one-file time (target: about 1), with ``month`` beside it and
``day`` for contrast. Live data files and bytes under the table location are reported for every layout.

    .venv/bin/python benchmarks/partitions.py [--years N] [--entities N] [--rebackfills K] [--repeats K]
                                              [--json PATH] [--workdir DIR] [--keep]

About a minute on a 2-core machine with the defaults (most of it building the day-partitioned table).
Exits non-zero only on errors (or if a layout reads different rows), never because a result is slow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import featurelake
from featurelake.maintenance import checksum, list_files
from featurelake.units import format_size

VIEW = "daily"
START = datetime(2020, 1, 1, tzinfo=UTC)
SEED = 20200101
LAYOUTS = ["none", "year", "month", "day"]  # "none": the one-file reference

FEATURES_PY = """
from featurelake import Entity, FeatureView, Source

account = Entity("account", join_key="account_id")

daily = FeatureView(
    name="daily",
    entity=account,
    source=Source.parquet("data/daily/*.parquet", timestamp_field="event_ts"),
    query="SELECT * FROM source",
    fields={"balance": "double", "spend_1d": "double", "txn_count_1d": "long", "risk_score": "double"},
    partition=PARTITION,
)
"""


def generate(days: int, entities: int) -> pa.Table:
    """One row per entity per day, ``days`` days from START, in time order."""
    rng = np.random.default_rng(SEED)
    rows = days * entities
    day = np.repeat(np.arange(days, dtype=np.int64), entities)
    base = int(START.timestamp()) * 1_000_000
    return pa.table(
        {
            "account_id": pa.array(np.tile(np.arange(1, entities + 1), days), pa.int64()),
            "event_ts": pa.array(base + day * 86_400_000_000, pa.timestamp("us", tz="UTC")),
            "balance": np.round(rng.normal(5_000.0, 1_500.0, rows), 2),
            "spend_1d": np.round(rng.lognormal(3.0, 0.8, rows), 2),
            "txn_count_1d": pa.array(rng.poisson(3.0, rows), pa.int64()),
            "risk_score": rng.beta(2.0, 30.0, rows),
        }
    )


def timed(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, Any], Any]:
    samples, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return {"best": min(samples), "median": statistics.median(samples), "samples": samples}, result


def run_layout(
    root: Path, partition: str, data: pa.Table, days: int, rebackfills: int, repeats: int
) -> dict[str, Any]:
    (root / "data" / "daily").mkdir(parents=True)
    pq.write_table(data, root / "data" / "daily" / "part-0.parquet")
    (root / "featurelake.yaml").write_text("project: bench\nnamespace: features\n")
    (root / "features.py").write_text(FEATURES_PY.replace("PARTITION", repr(partition)))
    end = START + timedelta(days=days)
    with featurelake.open(root) as fl:
        fl.apply()
        t0 = time.perf_counter()
        fl.backfill(VIEW, START.date().isoformat(), end.date().isoformat(), run_id="full")
        backfill_s = time.perf_counter() - t0
        redo = (end - timedelta(days=90)).date().isoformat()
        redo_s = []
        for i in range(rebackfills if partition != "none" else 0):
            t0 = time.perf_counter()
            fl.backfill(VIEW, redo, end.date().isoformat(), run_id=f"redo{i}")
            redo_s.append(time.perf_counter() - t0)
        tbl = fl.project.load_table(VIEW)
        live = list(tbl.scan().plan_files())
        stored = list_files(tbl.io, tbl.metadata.location)
        read, table = timed(lambda: fl.read(VIEW), repeats)
        sync, results = timed(lambda: fl.sync(VIEW, full=True), repeats)
    return {
        "partition": partition,
        "live_files": len(live),
        "live_bytes": sum(t.file.file_size_in_bytes for t in live),
        "stored_files": len(stored),
        "stored_bytes": sum(f.size for f in stored),
        "backfill_s": backfill_s,
        "rebackfill_s": redo_s,
        "read": read,
        "sync": sync,
        "rows": table.num_rows,
        "checksum": checksum(table),
        "sync_files_read": results[0].files_read,
        "synced_keys": results[0].keys,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--years", type=int, default=5, help="years of daily rows (default 5)")
    ap.add_argument("--entities", type=int, default=10, help="entities, one row each per day (default 10)")
    ap.add_argument("--rebackfills", type=int, default=3, help="re-backfills of the last 90 days (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="reads and syncs per measurement (default 3)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build the projects (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    args = ap.parse_args(argv)

    days = (START.replace(year=START.year + args.years) - START).days
    data = generate(days, args.entities)
    work = Path(tempfile.mkdtemp(prefix="fl-bench-part-", dir=args.workdir))
    try:
        print(
            f"{data.num_rows:,} rows ({args.entities} entities x {days} days); full backfill, then "
            f"{args.rebackfills} re-backfills of the last 90 days; read and sync best/median of {args.repeats}",
            flush=True,
        )
        results = {}
        for layout in LAYOUTS:
            print(f"  partition={layout} ...", flush=True)
            results[layout] = run_layout(work / layout, layout, data, days, args.rebackfills, args.repeats)
        same = len({(r["rows"], r["checksum"]) for r in results.values()}) == 1
        ref = results["none"]
        print()
        head = (
            f"{'partition':<16}  {'live files':>10}  {'live size':>10}  {'stored files':>12}  "
            f"{'backfill s':>10}  {'read s':>15}  {'sync s':>15}  {'read x':>7}  {'sync x':>7}"
        )
        print(head)
        print("-" * len(head))
        for layout in LAYOUTS:
            r = results[layout]
            name = "none (one file)" if layout == "none" else layout
            print(
                f"{name:<16}  {r['live_files']:>10,}  {format_size(r['live_bytes']):>10}  {r['stored_files']:>12,}  "
                f"{r['backfill_s']:>10.2f}  {r['read']['best']:>6.3f} / {r['read']['median']:<6.3f}  "
                f"{r['sync']['best']:>6.3f} / {r['sync']['median']:<6.3f}  "
                f"{r['read']['best'] / ref['read']['best']:>6.2f}x  {r['sync']['best'] / ref['sync']['best']:>6.2f}x"
            )
        print()
        for layout in ("year", "month", "day"):
            r = results[layout]
            print(
                f"partition={layout}: read {r['read']['best'] / ref['read']['best']:.2f}x and sync "
                f"{r['sync']['best'] / ref['sync']['best']:.2f}x the one-file time (best; median "
                f"{r['read']['median'] / ref['read']['median']:.2f}x / {r['sync']['median'] / ref['sync']['median']:.2f}x); "
                f"{r['live_files']:,} live files after {args.rebackfills} re-backfills"
            )
        print(f"rows identical in every layout: {same}")
        print(f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        if args.json:
            payload = {
                "rows": data.num_rows,
                "entities": args.entities,
                "days": days,
                "rebackfills": args.rebackfills,
                "repeats": args.repeats,
                "results": {k: {**v, "checksum": list(v["checksum"])} for k, v in results.items()},
                "identical": same,
            }
            args.json.write_text(json.dumps(payload, indent=2, default=str))
        return 0 if same else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: compaction of a table of many small files, and a full scan before and after (the speed-up).

Builds a featurelake project whose feature table (day-partitioned, 11 columns) holds ``--rows`` seeded rows in
``--files`` small data files spread over 30 day partitions, as micro-batch writers leave it: the files are
written with PyIceberg's own writer and committed in one fast append, so building it is quick. Then:

1. times a full scan of main to Arrow (PyIceberg ``scan().to_arrow()``, best and median of ``--repeats``) and a
   3-day range scan, both before compaction;
2. runs ``featurelake maintain VIEW --compact`` through the Python API (plan, rewrite, read-back checksum
   verification of every group, one commit) and times it;
3. times the same scans after compaction and checks the rows are identical (count and order-independent
   checksum, at the new snapshot and at the old one);
4. expires the pre-compaction snapshots as if 8 days had passed (``now=`` +8d) and reports the files deleted
   and bytes reclaimed.

Headline: full-scan speed-up = scan time before / scan time after (best of each). The reference the issue
names is the same table before compaction, measured in the same run.

    .venv/bin/python benchmarks/maintenance.py [--rows N] [--files N] [--repeats K] [--json PATH]
                                               [--workdir DIR] [--keep]

Exits non-zero only on errors (or if the rows changed), never because a result is slow.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan
from pyiceberg.manifest import DataFile

import featurelake
from featurelake.lakehouse import compat
from featurelake.maintenance import checksum, list_files
from featurelake.units import format_size

VIEW = "user_features"
DAYS = 30
START = datetime(2024, 1, 1, tzinfo=UTC)
SEED = 20240101

FEATURES_PY = """
from featurelake import Entity, FeatureView, Source

user = Entity("user", join_key="user_id")

user_features = FeatureView(
    name="user_features",
    entity=user,
    source=Source.parquet("data/features/*.parquet", timestamp_field="event_ts"),
    query="SELECT * FROM source",
    timestamp_field="event_ts",
    fields={
        "amount": "double", "amount_avg_7d": "double", "amount_std_7d": "double", "session_minutes": "double",
        "ctr_30d": "double", "txn_count_1d": "long", "txn_count_7d": "long", "pages_viewed": "long",
        "days_since_signup": "long",
    },
)
"""


def generate(rows: int) -> pa.Table:
    rng = np.random.default_rng(SEED)
    day = np.sort(rng.integers(0, DAYS, rows))
    micros = np.sort(day * 86_400_000_000 + rng.integers(0, 86_400_000_000, rows))
    base = int(START.timestamp()) * 1_000_000
    return pa.table(
        {
            "user_id": pa.array(rng.integers(1, 50_001, rows), pa.int64()),
            "event_ts": pa.array(base + micros, pa.timestamp("us", tz="UTC")),
            "amount": np.round(rng.lognormal(3.0, 0.8, rows), 2),
            "amount_avg_7d": np.round(rng.lognormal(3.0, 0.5, rows), 2),
            "amount_std_7d": np.abs(rng.normal(10.0, 4.0, rows)),
            "session_minutes": rng.exponential(12.0, rows),
            "ctr_30d": rng.beta(2.0, 30.0, rows),
            "txn_count_1d": pa.array(rng.poisson(3.0, rows), pa.int64()),
            "txn_count_7d": pa.array(rng.poisson(20.0, rows), pa.int64()),
            "pages_viewed": pa.array(rng.integers(1, 200, rows), pa.int64()),
            "days_since_signup": pa.array(rng.integers(0, 3_650, rows), pa.int64()),
        }
    )


def build(root: Path, rows: int, files: int) -> tuple[featurelake.Featurelake, float]:
    """A project whose table holds ``rows`` rows in about ``files`` small files; returns it and build time."""
    data = generate(rows)
    (root / "data" / "features").mkdir(parents=True)
    pq.write_table(data.slice(0, 1000), root / "data" / "features" / "sample.parquet")
    (root / "featurelake.yaml").write_text("project: bench\nnamespace: features\n")
    (root / "features.py").write_text(FEATURES_PY)
    t0 = time.perf_counter()
    fl = featurelake.open(root)
    fl.apply()
    tbl = fl.project.load_table(VIEW)
    data = data.cast(tbl.schema().as_arrow())
    chunk = max(1, rows // files)
    written: list[DataFile] = []
    write_uuid, counter = uuid.uuid4(), itertools.count(0)
    for start in range(0, rows, chunk):
        # Each slice lies within one or two days: one small file per partition it touches.
        written.extend(
            compat.write_data_files(tbl.metadata, data.slice(start, chunk), tbl.io, write_uuid, counter)
        )
    with tbl.transaction() as txn, txn.update_snapshot().fast_append() as append:
        for f in written:
            append.append_data_file(f)
    return fl, time.perf_counter() - t0


def timed(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, Any], Any]:
    samples: list[float] = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return {"best": min(samples), "median": statistics.median(samples), "samples": samples}, result


def scans(fl: featurelake.Featurelake, repeats: int) -> dict[str, Any]:
    tbl = fl.project.load_table(VIEW)
    lo, hi = START + timedelta(days=10), START + timedelta(days=13)
    window = And(
        GreaterThanOrEqual("event_ts", lo.isoformat()),  # type: ignore[call-arg, arg-type]
        LessThan("event_ts", hi.isoformat()),  # type: ignore[call-arg, arg-type]
    )
    full, table = timed(lambda: tbl.scan().to_arrow(), repeats)
    ranged, _ = timed(lambda: tbl.scan(row_filter=window).to_arrow(), repeats)
    files = len(tbl.inspect.files())
    return {
        "full": full,
        "range": ranged,
        "files": files,
        "rows": table.num_rows,
        "checksum": checksum(table),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the table (default 1,000,000)")
    ap.add_argument("--files", type=int, default=2_000, help="small files to start from (default 2,000)")
    ap.add_argument("--repeats", type=int, default=3, help="scans per measurement (default 3)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build the project (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="fl-bench-maint-", dir=args.workdir))
    try:
        print(f"building {args.rows:,} rows in ~{args.files:,} small files over {DAYS} days ...", flush=True)
        fl, build_s = build(work / "proj", args.rows, args.files)
        with fl:
            current = fl.project.load_table(VIEW).current_snapshot()
            assert current is not None
            old_snapshot = current.snapshot_id
            before = scans(fl, args.repeats)
            t0 = time.perf_counter()
            (report,) = fl.maintain(VIEW, compact=True)
            compact_s = time.perf_counter() - t0
            after = scans(fl, args.repeats)
            tbl = fl.project.load_table(VIEW)
            at_old = checksum(tbl.scan(snapshot_id=old_snapshot).to_arrow())
            stored_before = list_files(tbl.io, tbl.metadata.location)
            t0 = time.perf_counter()
            (expiry,) = fl.maintain(VIEW, expire=True, now=datetime.now(UTC) + timedelta(days=8))
            expire_s = time.perf_counter() - t0
        same = before["checksum"] == after["checksum"] == at_old and before["rows"] == args.rows
        c, e = report.compaction, expiry.expiry
        assert c is not None and e is not None
        speedup = before["full"]["best"] / after["full"]["best"]
        speedup_med = before["full"]["median"] / after["full"]["median"]
        range_speedup = before["range"]["best"] / after["range"]["best"]

        print(f"(table built in {build_s:.1f}s; scans: best and median of {args.repeats})")
        print()
        w = 34
        print(f"{'measure':<{w}}  {'before':>12}  {'after':>12}  {'ratio':>8}")
        print(f"{'-' * w}  {'-' * 12}  {'-' * 12}  {'-' * 8}")
        print(
            f"{'data files on main':<{w}}  {before['files']:>12,}  {after['files']:>12,}  {before['files'] / after['files']:>7.1f}x"
        )
        for key, label in (("full", "full scan to Arrow, best s"), ("range", "3-day range scan, best s")):
            b, a = before[key]["best"], after[key]["best"]
            print(f"{label:<{w}}  {b:>12.3f}  {a:>12.3f}  {b / a:>7.2f}x")
        b, a = before["full"]["median"], after["full"]["median"]
        print(f"{'full scan to Arrow, median s':<{w}}  {b:>12.3f}  {a:>12.3f}  {b / a:>7.2f}x")
        print()
        print(
            f"compaction: {c.files_rewritten:,} files in {len(c.groups)} groups -> {c.files_written} files, "
            f"{compact_s:.2f}s (read, rewrite, read-back checksum, one commit; attempts {c.attempts})"
        )
        print(
            f"expiry (+8 days): {len(e.expired)} snapshot(s) expired, {len(e.deleted):,} files deleted, "
            f"{format_size(e.bytes_reclaimed)} reclaimed in {expire_s:.2f}s "
            f"({len(stored_before):,} -> {expiry.files_after:,} files under the table location)"
        )
        print(f"rows identical before/after and at the old snapshot: {'yes' if same else 'NO'}")
        print()
        print(
            f"headline: full-scan speed-up after compaction = {speedup:.2f}x best, {speedup_med:.2f}x median"
        )
        print(f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "rows": args.rows,
                        "files_requested": args.files,
                        "build_seconds": build_s,
                        "before": {k: v for k, v in before.items() if k != "checksum"},
                        "after": {k: v for k, v in after.items() if k != "checksum"},
                        "compaction_seconds": compact_s,
                        "compaction": report.to_dict()["compaction"] | {"groups": len(c.groups)},
                        "expiry_seconds": expire_s,
                        "snapshots_expired": len(e.expired),
                        "files_deleted": len(e.deleted),
                        "bytes_reclaimed": e.bytes_reclaimed,
                        "full_scan_speedup_best": speedup,
                        "full_scan_speedup_median": speedup_med,
                        "range_scan_speedup_best": range_speedup,
                        "rows_identical": same,
                    },
                    indent=2,
                )
            )
        return 0 if same else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

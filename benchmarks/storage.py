"""Benchmark: the lakehouse on S3 (moto's S3 server on loopback, started here) against plain PyIceberg.

1. Backfill to S3. ``fl.backfill`` (Write-Audit-Publish: query over the Parquet source in S3, branch write,
   audit, publish) of 1,000,000 rows into a day-partitioned table whose warehouse is in the bucket, versus the
   reference: read the same Parquet objects from S3 with PyArrow and ``table.append`` them into an identically
   defined table in the same bucket. Target ratio <= 1.5 (as on local disk, benchmarks/backfill.py). Measured
   with the default ``backfill.batch_days`` (1: a day at a time, each day listing the source and opening its
   objects) and with ``batch_days: 0`` (the window in one pass).
2. Training set from S3. ``build_training_set`` (snapshot, pruned scan of S3, point-in-time join, provenance)
   of 100,000 entity rows over 1,000,000 feature rows, versus the reference of benchmarks/training_set.py: a
   PyIceberg scan of the same snapshot plus DuckDB's ``ASOF LEFT JOIN`` with the ttl. Both outputs are checked
   to hold the same values.

The data is the same as benchmarks/backfill.py and benchmarks/training_set.py generate. Each run gets fresh
tables (a fresh warehouse prefix); the sides alternate which goes first. moto keeps objects in memory and is a
Python server, so absolute times are far from a real object store's; the ratios compare like with like.

    .venv/bin/python benchmarks/storage.py [--rows N] [--entities M] [--repeats K] [--json PATH]

Exits non-zero only on errors, never because a result is slow.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backfill as bf
import featurelake
import training_set as tsb
from featurelake.training import build_training_set

TARGET_RATIO = 1.5
AWS = {
    "AWS_ACCESS_KEY_ID": "featurelake-bench",
    "AWS_SECRET_ACCESS_KEY": "featurelake-bench-secret",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class Moto:
    """``python -m moto.server`` on a free loopback port, stopped by its process id."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2):
                    break
            except urllib.error.HTTPError:
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start (pip install 'moto[server]')") from None
                time.sleep(0.1)
        self.fs = pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            region="us-east-1",
            force_virtual_addressing=False,
            allow_bucket_creation=True,
        )

    def bucket(self, name: str) -> str:
        self.fs.create_dir(name)
        return name

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def config(endpoint: str, bucket: str, prefix: str, extra: str = "") -> str:
    return (
        "project: bench\nnamespace: features\n"
        f"catalog:\n  warehouse: s3://{bucket}/{prefix}/warehouse\n"
        f"storage:\n  s3: {{endpoint: '{endpoint}', region: us-east-1, path_style: true}}\n" + extra
    )


def project(root: Path, features_py: str, cfg: str) -> Path:
    root.mkdir(parents=True)
    (root / "featurelake.yaml").write_text(cfg)
    (root / "features.py").write_text(textwrap.dedent(features_py).lstrip())
    return root


def upload_days(moto: Moto, parts: list[pa.Table], bucket: str, prefix: str, ts: str) -> None:
    """One Parquet object per day, like the local benchmarks' files."""
    for part in parts:
        if part.num_rows:
            day = pc.min(part[ts]).as_py().date().isoformat()
            buf = io.BytesIO()
            pq.write_table(part, buf)
            with moto.fs.open_output_stream(f"{bucket}/{prefix}/{day}.parquet") as out:
                out.write(buf.getvalue())


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def best_median(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


# --- 1. backfill -------------------------------------------------------------------------------------


def s3_view(bucket: str) -> str:
    """benchmarks/backfill.py's view with its source in the bucket."""
    return bf.FEATURES_PY.replace('"data/features/*.parquet"', f'"s3://{bucket}/source/*.parquet"')


def backfill_side(moto: Moto, work: Path, bucket: str, run: str, rows: int, extra: str = "") -> float:
    root = project(work / run, s3_view(bucket), config(moto.endpoint, bucket, run, extra))
    with featurelake.open(root) as fl:
        fl.apply()
        wall, _, result = timed(lambda: fl.backfill(bf.VIEW, *bf.WINDOW))
    if result.rows != rows:
        raise RuntimeError(f"backfill wrote {result.rows} rows, expected {rows}")
    return wall


def reference_side(moto: Moto, work: Path, bucket: str, run: str, rows: int) -> float:
    root = project(work / run, s3_view(bucket), config(moto.endpoint, bucket, run))
    with featurelake.open(root) as fl:
        fl.apply()
        tbl = fl.project.catalog.load_table(fl.project.table_name(bf.VIEW))
        target = tbl.schema().as_arrow()

        def read_append() -> int:
            files = sorted(i.path for i in moto.fs.get_file_info(pafs.FileSelector(f"{bucket}/source")))
            data = pq.read_table(files, filesystem=moto.fs).select(target.names).cast(target)
            tbl.append(data)
            return data.num_rows

        wall, _, n = timed(read_append)
    if n != rows:
        raise RuntimeError(f"reference appended {n} rows, expected {rows}")
    return wall


# --- 2. training set ---------------------------------------------------------------------------------


def training_sides(
    moto: Moto, work: Path, bucket: str, rows: int, entities: int
) -> dict[str, Callable[[], Any]]:
    features, ents = tsb.generate(rows, entities)
    day = pc.floor_temporal(features.column("event_ts"), unit="day")
    parts = [
        features.filter(pc.equal(day, pa.scalar(tsb.START + timedelta(days=d), pa.timestamp("us", tz="UTC"))))
        for d in range(tsb.DAYS)
    ]
    upload_days(moto, parts, bucket, "ts-source", "event_ts")
    features_py = tsb.FEATURES_PY.replace('"data/features/*.parquet"', f'"s3://{bucket}/ts-source/*.parquet"')
    root = project(work / "ts", features_py, config(moto.endpoint, bucket, "ts"))
    fl = featurelake.open(root)
    fl.apply()
    fl.backfill(
        "user_features",
        tsb.START.date().isoformat(),
        (tsb.START + timedelta(days=tsb.DAYS)).date().isoformat(),
    )
    tbl = fl.project.load_table("user_features")
    sid = tbl.metadata.refs["main"].snapshot_id
    names = [f"user_features:{f}" for f in tsb.FEATURES]

    def ours() -> pa.Table:
        return build_training_set(fl.project, ents, names).table

    def reference() -> pa.Table:
        data = tbl.scan(snapshot_id=sid, selected_fields=("user_id", "event_ts", *tsb.FEATURES)).to_arrow()
        return tsb.reference_join(ents, data)

    if not tsb.same_values(reference(), ours()):
        raise RuntimeError("the training set from S3 and the reference join disagree")
    return {"featurelake": ours, "reference": reference}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--rows", type=int, default=1_000_000, help="rows to backfill and feature rows (1,000,000)"
    )
    ap.add_argument("--entities", type=int, default=100_000, help="entity rows of the training set (100,000)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side (default 3)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    os.environ.update(AWS)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        os.environ.pop(key, None)
    load_start = bf._loadavg()
    print(
        f"storage benchmark (moto S3 on loopback): backfill {args.rows:,} rows; training set {args.entities:,} "
        f"entities x {args.rows:,} feature rows; {args.repeats} runs per side"
    )
    print(
        f"python {platform.python_version()}, pyarrow {pa.__version__}, {os.cpu_count()} CPUs, load average {load_start}"
    )
    moto = Moto()
    work = Path(tempfile.mkdtemp(prefix="featurelake-bench-s3-"))
    results: dict[str, Any] = {"rows": args.rows, "entities": args.entities, "load_start": load_start}
    try:
        bucket = moto.bucket("bench")
        upload_days(moto, bf.generate(args.rows), bucket, "source", "event_ts")
        # untimed warm-up of both sides (imports, first connections, moto's first buckets)
        warm = max(bf.DAYS, args.rows // 10)
        wbucket = moto.bucket("warm")
        upload_days(moto, bf.generate(warm), wbucket, "source", "event_ts")
        backfill_side(moto, work, wbucket, "warm-wap", warm)
        reference_side(moto, work, wbucket, "warm-ref", warm)
        # "wap": the default backfill.batch_days (1: the window computed a day at a time, each day's compute
        # listing the source and opening its objects); "whole": batch_days 0, the window in one pass.
        samples: dict[str, list[float]] = {"wap": [], "whole": [], "ref": []}
        for i in range(args.repeats):
            order = ("wap", "whole", "ref") if i % 2 == 0 else ("ref", "whole", "wap")
            for side in order:
                run = f"{side}-{i}"
                if side == "ref":
                    samples[side].append(reference_side(moto, work, bucket, run, args.rows))
                else:
                    extra = "backfill:\n  batch_days: 0\n" if side == "whole" else ""
                    samples[side].append(backfill_side(moto, work, bucket, run, args.rows, extra))
            print(
                f"  backfill run {i + 1}: WAP {samples['wap'][-1]:.2f}s, WAP batch_days=0 "
                f"{samples['whole'][-1]:.2f}s, read+append {samples['ref'][-1]:.2f}s",
                flush=True,
            )
        wap, whole, ref = (best_median(samples[k]) for k in ("wap", "whole", "ref"))
        ratio, ratio_whole = wap[0] / ref[0], whole[0] / ref[0]
        results["backfill"] = {
            "samples": samples,
            "ratio_best": ratio,
            "ratio_median": wap[1] / ref[1],
            "ratio_whole_best": ratio_whole,
            "ratio_whole_median": whole[1] / ref[1],
        }

        sides = training_sides(moto, work, bucket, args.rows, args.entities)
        ts_samples: dict[str, list[float]] = {k: [] for k in sides}
        for i in range(args.repeats):
            for name in list(sides) if i % 2 == 0 else list(sides)[::-1]:
                ts_samples[name].append(timed(sides[name])[0])
        ours, theirs = best_median(ts_samples["featurelake"]), best_median(ts_samples["reference"])
        ts_ratio = ours[0] / theirs[0]
        results["training_set"] = {
            "samples": ts_samples,
            "ratio_best": ts_ratio,
            "ratio_median": ours[1] / theirs[1],
        }
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'measure':<58} {'best s':>8} {'median s':>9}")
    for label, (b, m) in (
        ("backfill to S3: fl.backfill (WAP full cycle)", wap),
        ("backfill to S3, backfill.batch_days 0 (one pass)", whole),
        ("backfill reference: read Parquet from S3 + table.append", ref),
        ("training set from S3: build_training_set", ours),
        ("training set reference: PyIceberg scan + DuckDB ASOF", theirs),
    ):
        print(f"{label:<58} {b:>8.2f} {m:>9.2f}")
    print()
    print(
        f"backfill to S3 ratio, WAP / (read + append) (best): {ratio:.2f} (target <= {TARGET_RATIO}) "
        f"{'ok' if ratio <= TARGET_RATIO else 'ABOVE TARGET'}; median {results['backfill']['ratio_median']:.2f}"
    )
    print(
        f"backfill to S3 ratio with batch_days 0 (best): {ratio_whole:.2f} (target <= {TARGET_RATIO}) "
        f"{'ok' if ratio_whole <= TARGET_RATIO else 'ABOVE TARGET'}; median {results['backfill']['ratio_whole_median']:.2f}"
    )
    print(
        f"training set from S3 ratio, featurelake / (scan + ASOF) (best): {ts_ratio:.2f} (target <= {TARGET_RATIO}) "
        f"{'ok' if ts_ratio <= TARGET_RATIO else 'ABOVE TARGET'}; median {results['training_set']['ratio_median']:.2f}"
    )
    results["load_end"] = bf._loadavg()
    print(f"load average at start {load_start}, at end {results['load_end']} ({os.cpu_count()} CPUs)")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

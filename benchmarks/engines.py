"""Benchmark: the same Write-Audit-Publish backfill on the local engine and on Spark local[2].

Source: ``--rows`` (default 1,000,000) seeded transactions over 30 days for 50k users, one Parquet file per
day. View: the SDK's documented query (``date_trunc('day', ts)``, ``count/sum/avg``, ``GROUP BY ALL``) with a
``null_rate`` and a ``between`` check, so both engines run the whole cycle: query over the source, branch,
overwrite of the window's day partitions, audit, race-safe publish, branch removal.

Each engine gets a fresh project per run; runs alternate which engine goes first. Spark's session start
(once per process) and its first, cold backfill are reported apart from the warm runs. A second, smaller
size (``--small``, default 100k rows) gives each engine's fixed cost and per-row cost, from which the
crossover estimate in docs/scaling.md is derived. Prints a table and the ratio spark / local.

    .venv/bin/python benchmarks/engines.py [--rows N] [--small N] [--repeats K] [--json PATH] [--master M]

Exits non-zero only on errors, never because a result is slow.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import featurelake

VIEW = "user_features"
DAYS = 30
USERS = 50_000
START = datetime(2024, 1, 1, tzinfo=UTC)
WINDOW = (START.date().isoformat(), (START + timedelta(days=DAYS)).date().isoformat())

FEATURES_PY = '''
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
)
'''


def write_source(directory: Path, rows: int, seed: int = 20240101) -> list[Path]:
    rng = np.random.default_rng(seed)
    day = np.sort(rng.integers(0, DAYS, rows))
    micros = np.sort(day * 86_400_000_000 + rng.integers(0, 86_400_000_000, rows))
    base = int(START.timestamp()) * 1_000_000
    table = pa.table(
        {
            "user_id": pa.array(rng.integers(1, USERS + 1, rows), pa.int64()),
            "ts": pa.array(base + micros, pa.timestamp("us", tz="UTC")),
            "amount": pa.array(np.round(rng.lognormal(3.0, 0.8, rows), 2), pa.float64()),
        }
    )
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.searchsorted(day, np.arange(DAYS + 1))
    paths = []
    for d in range(DAYS):
        part = table.slice(bounds[d], bounds[d + 1] - bounds[d])
        path = directory / f"{(START + timedelta(days=d)).date().isoformat()}.parquet"
        pq.write_table(part, path)
        paths.append(path)
    return paths


def make_project(root: Path, sources: list[Path], engine: str, master: str) -> Path:
    data = root / "data" / "transactions"
    data.mkdir(parents=True)
    for src in sources:
        try:
            os.link(src, data / src.name)
        except OSError:
            shutil.copy2(src, data / src.name)
    config = f"project: bench\nnamespace: features\nengine:\n  type: {engine}\n"
    if engine == "spark":
        config += f'  spark:\n    master: "{master}"\n'
    (root / "featurelake.yaml").write_text(config)
    (root / "features.py").write_text(textwrap.dedent(FEATURES_PY).lstrip())
    return root


def one_backfill(root: Path) -> dict[str, Any]:
    """Apply (untimed), then time one backfill of the whole window, with a per-phase split."""
    phases: dict[str, float] = {}
    with featurelake.open(root) as fl:
        fl.apply()
        engine = fl.project.engine
        originals = {}
        for name in ("compute", "write_window", "audit"):
            originals[name] = getattr(engine, name)

            def timed(*args: Any, _n: str = name, **kwargs: Any) -> Any:
                t = time.perf_counter()
                try:
                    return originals[_n](*args, **kwargs)
                finally:
                    phases[_n] = phases.get(_n, 0.0) + time.perf_counter() - t

            setattr(engine, name, timed)
        gc.collect()
        t0 = time.perf_counter()
        result = fl.backfill(VIEW, *WINDOW, run_id="bench")
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows": result.rows, "phases": phases}


def measure(rows: int, repeats: int, master: str, work: Path) -> dict[str, Any]:
    sources = write_source(work / f"source-{rows}", rows)
    times: dict[str, list[float]] = {"local": [], "spark": []}
    phases: dict[str, dict[str, float]] = {}
    out_rows: dict[str, int] = {}
    cold: float | None = None
    runs = 0
    for i in range(repeats + 1):
        order = ("spark", "local") if i % 2 else ("local", "spark")
        for engine in order:
            runs += 1
            res = one_backfill(make_project(work / f"p{rows}-{runs}", sources, engine, master))
            out_rows[engine] = res["rows"]
            if i == 0:  # warm-up: each engine's first run is not part of the statistics
                if engine == "spark":
                    cold = res["seconds"]
                continue
            times[engine].append(res["seconds"])
            phases[engine] = res["phases"]
    if out_rows["local"] != out_rows["spark"]:
        raise RuntimeError(
            f"engines disagree: local wrote {out_rows['local']} rows, spark {out_rows['spark']}"
        )
    return {"rows": rows, "feature_rows": out_rows["local"], "times": times, "phases": phases, "cold": cold}


def _fmt(seconds: float) -> str:
    return f"{seconds:7.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--small", type=int, default=100_000, help="second size for fixed/per-row costs (0: skip)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting"
    )
    args = parser.parse_args(argv)

    from featurelake.config import SparkConfig
    from featurelake.engines.spark import spark_session, stop_spark

    work = Path(tempfile.mkdtemp(prefix="featurelake-bench-engines-"))
    try:
        t0 = time.perf_counter()
        extra = dict(item.split("=", 1) for item in args.conf)
        spark_session(SparkConfig(master=args.master, conf=extra))
        session_start = time.perf_counter() - t0
        sizes = [args.rows] + ([args.small] if args.small else [])
        results = [measure(n, args.repeats, args.master, work) for n in sizes]
    finally:
        stop_spark()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nengines benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}, load {os.getloadavg()[0]:.2f}; Spark master {args.master}"
    )
    print(f"Spark session start (once per process): {session_start:.2f} s")
    header = (
        f"{'source rows':>12} {'feature rows':>12} {'engine':>6} {'best':>9} {'median':>9} {'rows/s':>10}"
    )
    print(header)
    print("-" * len(header))
    summary: dict[str, Any] = {"session_start": session_start, "sizes": []}
    for r in results:
        entry: dict[str, Any] = {
            "rows": r["rows"],
            "feature_rows": r["feature_rows"],
            "cold_spark": r["cold"],
        }
        for engine in ("local", "spark"):
            ts = r["times"][engine]
            best, med = min(ts), statistics.median(ts)
            entry[engine] = {"best": best, "median": med, "runs": ts, "phases": r["phases"][engine]}
            print(
                f"{r['rows']:>12,} {r['feature_rows']:>12,} {engine:>6} {_fmt(best)} {_fmt(med)} "
                f"{r['rows'] / best:>10,.0f}"
            )
        ratio_best = entry["spark"]["best"] / entry["local"]["best"]
        ratio_med = entry["spark"]["median"] / entry["local"]["median"]
        entry["ratio_best"], entry["ratio_median"] = ratio_best, ratio_med
        print(
            f"{'':>12} {'':>12} {'ratio':>6} spark/local best {ratio_best:.2f}x, median {ratio_med:.2f}x; "
            f"Spark cold first backfill {r['cold']:.2f} s"
        )
        for engine in ("local", "spark"):
            ph = entry[engine]["phases"]
            print(
                f"{'':>12} {'':>12} {engine:>6} phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in ph.items())
            )
        summary["sizes"].append(entry)
    if len(results) == 2:
        big, small = summary["sizes"]
        dn = big["rows"] - small["rows"]
        print("\nlinear model (median): seconds = fixed + rows x per-row cost")
        for engine in ("local", "spark"):
            per_row = (big[engine]["median"] - small[engine]["median"]) / dn
            fixed = big[engine]["median"] - per_row * big["rows"]
            summary[f"{engine}_model"] = {"fixed": fixed, "per_million": per_row * 1e6}
            print(f"  {engine:>5}: fixed {fixed:6.2f} s, {per_row * 1e6:6.2f} s per million source rows")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

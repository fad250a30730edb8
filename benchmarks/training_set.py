"""Benchmark: featurelake's point-in-time join versus a plain DuckDB ASOF join of the same Arrow data.

Data (default): 1,000,000 feature rows (50k users, 30 days, 10 float64 features) and 100,000 entity rows
(users of which ~10% have no features, times from a day before the first feature row to a day after the
last), a 7-day ttl: the setup of Feast's historical-retrieval measurement in shared/notes/feast-baseline.md.
``--large``: 10,000,000 feature rows x 1,000,000 entity rows (issue #23: the join at ten times the size);
users are always feature rows / 20 (``--users`` overrides), so both sizes have the same shape.

Headline (target <= 0.6): ``point_in_time_join`` (featurelake's join: a NumPy sort-merge over one int64 per
row, ttl, ties resolved by content, order kept, one Arrow ``take``) versus the reference

    SELECT e.*, CASE WHEN e.event_timestamp - f.event_ts <= INTERVAL 7 DAY THEN f.f0 END AS f0, ...
    FROM e ASOF LEFT JOIN f ON e.user_id = f.user_id AND e.event_timestamp >= f.event_ts

over the very same Arrow tables, materialised to Arrow (DuckDB with its default threads, one per core).
Both outputs are checked to hold the same values. Best of ``--repeats`` runs, sides interleaved; the peak
RSS each side adds above the inputs (sampled every 2 ms from /proc/self/statm) is printed beside it.

Second line (target <= 1.5): end to end from Iceberg. ``build_training_set`` (resolve the snapshot, scan
with time pruning, join, fingerprint the entities, attach provenance) versus scanning the same snapshot with
PyIceberg and running the reference join.

    .venv/bin/python benchmarks/training_set.py [--large] [--features N] [--entities M] [--users U]
                                                [--repeats K] [--no-iceberg] [--json PATH] [--workdir DIR]
                                                [--keep]

Exits non-zero only on errors (or when the two joins disagree), never because a result is slow.
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
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import featurelake
from featurelake.training import ViewFrame, build_training_set, point_in_time_join

DAYS = 30
FEATURES = [f"f{i}" for i in range(10)]
TTL = timedelta(days=7)
START = datetime(2024, 1, 1, tzinfo=UTC)
SEED = 20240101
JOIN_TARGET = 0.6  # issue #23 item 4 (was 1.5)
E2E_TARGET = 1.5
PAGE = os.sysconf("SC_PAGE_SIZE")

FEATURES_PY = f"""
from datetime import timedelta
from featurelake import Entity, FeatureView, Source

user = Entity("user", join_key="user_id")

user_features = FeatureView(
    name="user_features",
    entity=user,
    source=Source.parquet("data/features/*.parquet", timestamp_field="event_ts"),
    query="SELECT * FROM source",
    timestamp_field="event_ts",
    fields={{{", ".join(f'"{f}": "double"' for f in FEATURES)}}},
    ttl=timedelta(days=7),
)
"""


def generate(
    rows: int, entities: int, users: int | None = None, seed: int = SEED
) -> tuple[pa.Table, pa.Table]:
    """Feature rows (sorted by time) and entity rows; ``users`` defaults to ``rows // 20``."""
    users = users or max(1, rows // 20)
    rng = np.random.default_rng(seed)
    base = int(START.timestamp()) * 1_000_000
    micros = np.sort(rng.integers(0, DAYS * 86_400_000_000, rows))
    cols: dict[str, Any] = {
        "user_id": pa.array(rng.integers(1, users + 1, rows), pa.int64()),
        "event_ts": pa.array(base + micros, pa.timestamp("us", tz="UTC")),
    }
    for f in FEATURES:
        cols[f] = pa.array(rng.random(rows), pa.float64())
    features = pa.table(cols)
    e_micros = rng.integers(-86_400_000_000, (DAYS + 1) * 86_400_000_000, entities)
    ents = pa.table(
        {
            "user_id": pa.array(rng.integers(1, int(users * 1.1) + 1, entities), pa.int64()),
            "event_timestamp": pa.array(base + e_micros, pa.timestamp("us", tz="UTC")),
            "label": pa.array(rng.integers(0, 2, entities), pa.int64()),
        }
    )
    return features, ents


def reference_join(ents: pa.Table, features: pa.Table) -> pa.Table:
    con = duckdb.connect()
    try:
        con.register("e", ents)
        con.register("f", features)
        cols = ", ".join(
            f"CASE WHEN e.event_timestamp - f.event_ts <= INTERVAL {TTL.days} DAY THEN f.{c} END AS {c}"
            for c in FEATURES
        )
        return con.sql(
            f"SELECT e.*, {cols} FROM e ASOF LEFT JOIN f "
            "ON e.user_id = f.user_id AND e.event_timestamp >= f.event_ts"
        ).to_arrow_table()
    finally:
        con.close()


def featurelake_join(ents: pa.Table, features: pa.Table) -> pa.Table:
    view = ViewFrame(
        name="user_features",
        entity_key="user_id",
        key="user_id",
        timestamp_field="event_ts",
        features=tuple(FEATURES),
        output_names=tuple(FEATURES),
        ttl=TTL,
        data=features,
    )
    out, _ = point_in_time_join(ents, "event_timestamp", [view])
    return out


def same_values(a: pa.Table, b: pa.Table) -> bool:
    """Equal as multisets of rows (the reference does not keep the entity order)."""
    keys = [
        ("user_id", "ascending"),
        ("event_timestamp", "ascending"),
        ("label", "ascending"),
        ("f0", "ascending"),
    ]
    sa, sb = a.sort_by(keys), b.sort_by(keys)
    # DuckDB labels UTC "Etc/UTC": compare the instants, not the zone's name.
    same_time = (
        sa.column("event_timestamp").cast(pa.int64()).equals(sb.column("event_timestamp").cast(pa.int64()))
    )
    return same_time and all(sa.column(c).equals(sb.column(c)) for c in ["user_id", "label", *FEATURES])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def timed(fn: Callable[[], Any]) -> tuple[float, float, int, Any]:
    """Wall seconds, CPU seconds of the process, the peak RSS added above the start (bytes), the result."""
    gc.collect()
    start = rss_bytes()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    c0, t0 = time.process_time(), time.perf_counter()
    try:
        result = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        done.set()
        sampler.join()
    return wall, cpu, max(peak[0], rss_bytes()) - start, result


def measure(sides: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": [], "rss": []} for k in sides}
    names = list(sides)
    for fn in sides.values():  # warm-up: imports, DuckDB start-up, page cache
        fn()
    for i in range(repeats):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            wall, cpu, rss, _ = timed(sides[name])
            samples[name]["wall"].append(wall)
            samples[name]["cpu"].append(cpu)
            samples[name]["rss"].append(rss)
    return samples


def make_project(root: Path, features: pa.Table) -> Path:
    data = root / "data" / "features"
    data.mkdir(parents=True)
    day = pc.floor_temporal(features.column("event_ts"), unit="day")
    for d in range(DAYS):
        lo = START + timedelta(days=d)
        mask = pc.equal(day, pa.scalar(lo, pa.timestamp("us", tz="UTC")))
        pq.write_table(features.filter(mask), data / f"{lo.date().isoformat()}.parquet")
    (root / "featurelake.yaml").write_text("project: bench\nnamespace: features\n")
    (root / "features.py").write_text(textwrap.dedent(FEATURES_PY).lstrip())
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill(
            "user_features", START.date().isoformat(), (START + timedelta(days=DAYS)).date().isoformat()
        )
    return root


def stats(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--large", action="store_true", help="10,000,000 feature rows x 1,000,000 entity rows (issue #23)"
    )
    p.add_argument("--features", type=int, default=None, help="feature rows (default 1,000,000)")
    p.add_argument("--entities", type=int, default=None, help="entity rows (default 100,000)")
    p.add_argument("--users", type=int, default=None, help="distinct users (default feature rows / 20)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-iceberg", action="store_true", help="skip the end-to-end comparison from Iceberg")
    p.add_argument("--json", type=Path, default=None, help="also write samples and ratios here")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.features is None:
        args.features = 10_000_000 if args.large else 1_000_000
    if args.entities is None:
        args.entities = 1_000_000 if args.large else 100_000
    if args.users is None:
        args.users = max(1, args.features // 20)

    print(
        f"training-set benchmark: {args.features:,} feature rows ({args.users:,} users) x {args.entities:,} "
        f"entity rows, ttl {TTL.days}d, best of {args.repeats}"
    )
    print(f"python {platform.python_version()}, duckdb {duckdb.__version__}, pyarrow {pa.__version__}, "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    features, ents = generate(args.features, args.entities, args.users)
    ref, ours = reference_join(ents, features), featurelake_join(ents, features)
    if ours.num_rows != ents.num_rows or not same_values(ref, ours):
        print("ERROR: featurelake's join and the DuckDB reference disagree", file=sys.stderr)
        return 1
    matched = ents.num_rows - ours.column("f0").null_count
    print(f"check: both joins hold the same values; {matched:,} of {ents.num_rows:,} rows got features")

    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    join = measure(
        {
            "featurelake": lambda: featurelake_join(ents, features),
            "duckdb_asof": lambda: reference_join(ents, features),
        },
        args.repeats,
    )
    results["join"] = join

    e2e: dict[str, dict[str, list[float]]] | None = None
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fl-bench-ts-"))
    try:
        if not args.no_iceberg:
            t0 = time.perf_counter()
            root = make_project(work / "proj", features)
            print(
                f"setup: applied and backfilled the Iceberg table in {time.perf_counter() - t0:.1f}s (untimed)"
            )
            fl = featurelake.open(root)
            tbl = fl.project.load_table("user_features")
            sid = tbl.metadata.refs["main"].snapshot_id

            def ours_e2e() -> pa.Table:
                return build_training_set(fl.project, ents, [f"user_features:{f}" for f in FEATURES]).table

            def ref_e2e() -> pa.Table:
                data = tbl.scan(
                    snapshot_id=sid, selected_fields=("user_id", "event_ts", *FEATURES)
                ).to_arrow()
                return reference_join(ents, data)

            if not same_values(ref_e2e(), ours_e2e()):
                print("ERROR: end-to-end results disagree", file=sys.stderr)
                return 1
            e2e = measure({"featurelake": ours_e2e, "iceberg_scan+duckdb_asof": ref_e2e}, args.repeats)
            results["end_to_end"] = e2e
            fl.close()
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'measure':<44} {'best s':>8} {'median s':>9} {'best cpu s':>11} {'peak +RSS MB':>13}")
    rows: list[tuple[str, dict[str, list[float]]]] = [
        ("join: featurelake point_in_time_join", join["featurelake"]),
        ("join: DuckDB ASOF LEFT JOIN (reference)", join["duckdb_asof"]),
    ]
    if e2e is not None:
        rows += [
            ("from Iceberg: featurelake build_training_set", e2e["featurelake"]),
            ("from Iceberg: PyIceberg scan + DuckDB ASOF", e2e["iceberg_scan+duckdb_asof"]),
        ]
    for label, s in rows:
        best, med = stats(s["wall"])
        rss = max(s["rss"]) / 2**20
        print(f"{label:<44} {best:>8.3f} {med:>9.3f} {min(s['cpu']):>11.3f} {rss:>13,.0f}")
    print()
    ratios: dict[str, float] = {}

    def ratio(name: str, a: dict[str, list[float]], b: dict[str, list[float]], target: float) -> None:
        best = min(a["wall"]) / min(b["wall"])
        med = statistics.median(a["wall"]) / statistics.median(b["wall"])
        cpu = min(a["cpu"]) / min(b["cpu"])
        ratios[name] = best
        verdict = "met" if best <= target else "NOT MET"
        print(
            f"ratio {name:<36} best {best:.2f}  median {med:.2f}  cpu {cpu:.2f}  (target <= {target}: {verdict})"
        )

    ratio("join / DuckDB ASOF (headline)", join["featurelake"], join["duckdb_asof"], JOIN_TARGET)
    if e2e is not None:
        ratio("end to end / scan + ASOF", e2e["featurelake"], e2e["iceberg_scan+duckdb_asof"], E2E_TARGET)
    print(f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results["ratios"] = ratios
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

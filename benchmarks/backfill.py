"""Benchmark: a Write-Audit-Publish backfill versus a plain PyIceberg append of the same rows.

WAP side: ``featurelake.open(dir).backfill(view, start, end)`` over a day-partitioned feature table, i.e.
the view computed over the Parquet source (a ``SELECT * FROM source`` view is read by Arrow, no DuckDB),
the window's day partitions overwritten on a branch created in that same commit (audited meanwhile),
report and audit log, fast-forward publish removing the branch in the same commit, statistics appended. ``featurelake apply`` (untimed, both sides) creates the tables, featurelake's audit
log and statistics tables included.

Reference side: ``table.append(arrow_table)`` of the same rows (read from the same Parquet files and cast to
the table's Arrow schema) into an identically defined table (same SqlCatalog on SQLite, same schema and
partition spec, created by ``featurelake apply`` of the same ``features.py``).

Headline ratio (issue #23: "a plain read + PyIceberg append" of the same rows): WAP full cycle / (read the
Parquet source to Arrow + ``table.append``), best of N each (target <= 1.1). Both sides start from the same
Parquet files. WAP / append alone (the Arrow table already in memory, excluding the read) is printed too.
Every run gets fresh tables (a fresh project directory); the two sides alternate which goes first.

    .venv/bin/python benchmarks/backfill.py [--rows N] [--repeats K] [--json PATH] [--workdir DIR] [--keep]
                                            [--no-breakdown]

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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import featurelake
from featurelake.auditing import audit_log, stats_log, wap_run
from featurelake.lakehouse import lineage, wap

VIEW = "user_features"
DAYS = 30
USERS = 50_000
START = datetime(2024, 1, 1, tzinfo=UTC)
WINDOW = (START.date().isoformat(), (START + timedelta(days=DAYS)).date().isoformat())
TARGET_RATIO = 1.1  # WAP / (read + append), best of N
SEED = 20240101

FEATURES_PY = '''
"""Benchmark view: every source column is a feature; one row per event."""

from featurelake import Entity, FeatureView, Source, checks

user = Entity("user", join_key="user_id")

user_features = FeatureView(
    name="user_features",
    entity=user,
    source=Source.parquet("data/features/*.parquet", timestamp_field="event_ts"),
    query="SELECT * FROM source",
    timestamp_field="event_ts",
    fields={
        "amount": "double",
        "amount_avg_7d": "double",
        "amount_std_7d": "double",
        "session_minutes": "double",
        "ctr_30d": "double",
        "txn_count_1d": "long",
        "txn_count_7d": "long",
        "pages_viewed": "long",
        "days_since_signup": "long",
    },
    checks=[
        checks.null_rate("amount_avg_7d", max=0.05),
        checks.null_rate("ctr_30d", max=0.05),
        checks.between("txn_count_1d", 0, 10_000),
        checks.between("ctr_30d", 0.0, 1.0),
    ],
)
'''

CONFIG_YAML = "project: bench\nnamespace: features\n"


# --- data and projects ----------------------------------------------------------------------------


def generate(rows: int, seed: int = SEED) -> list[pa.Table]:
    """``rows`` events over DAYS days (time-ordered), one Arrow table per day."""
    rng = np.random.default_rng(seed)
    day = np.sort(rng.integers(0, DAYS, rows))
    micros = day * 86_400_000_000 + rng.integers(0, 86_400_000_000, rows)
    micros.sort()
    base = int(START.timestamp()) * 1_000_000
    amount = np.round(rng.lognormal(3.0, 0.8, rows), 2)
    avg7 = np.round(rng.lognormal(3.0, 0.5, rows), 2)
    ctr = rng.beta(2.0, 30.0, rows)
    table = pa.table(
        {
            "user_id": pa.array(rng.integers(1, USERS + 1, rows), pa.int64()),
            "event_ts": pa.array(base + micros, pa.timestamp("us", tz="UTC")),
            "amount": pa.array(amount, pa.float64()),
            "amount_avg_7d": pa.array(avg7, pa.float64(), mask=rng.random(rows) < 0.01),
            "amount_std_7d": pa.array(np.abs(rng.normal(10.0, 4.0, rows)), pa.float64()),
            "session_minutes": pa.array(rng.exponential(12.0, rows), pa.float64()),
            "ctr_30d": pa.array(ctr, pa.float64(), mask=rng.random(rows) < 0.005),
            "txn_count_1d": pa.array(rng.poisson(3.0, rows), pa.int64()),
            "txn_count_7d": pa.array(rng.poisson(20.0, rows), pa.int64()),
            "pages_viewed": pa.array(rng.integers(1, 200, rows), pa.int64()),
            "days_since_signup": pa.array(rng.integers(0, 3_650, rows), pa.int64()),
        }
    )
    bounds = np.searchsorted(day, np.arange(DAYS + 1))
    return [table.slice(bounds[d], bounds[d + 1] - bounds[d]) for d in range(DAYS)]


def write_source(data_dir: Path, rows: int) -> list[Path]:
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for d, part in enumerate(generate(rows)):
        if part.num_rows == 0:
            continue
        path = data_dir / f"{(START + timedelta(days=d)).date().isoformat()}.parquet"
        pq.write_table(part, path)
        paths.append(path)
    return paths


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def make_project(root: Path, source_files: list[Path]) -> Path:
    """A featurelake project whose data/features/*.parquet are the shared source files (hard links)."""
    data = root / "data" / "features"
    data.mkdir(parents=True)
    for f in source_files:
        _link_or_copy(f, data / f.name)
    (root / "featurelake.yaml").write_text(CONFIG_YAML)
    (root / "features.py").write_text(textwrap.dedent(FEATURES_PY).lstrip())
    return root


def total_records(tbl: Any) -> int:
    snap = tbl.current_snapshot()
    return int(snap.summary["total-records"]) if snap is not None and snap.summary is not None else 0


# --- the two sides ----------------------------------------------------------------------------------


def run_wap(root: Path, rows: int, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Apply (untimed), then time one full backfill of the whole window."""
    with featurelake.open(root) as fl:
        fl.apply()
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        result = fl.backfill(VIEW, *WINDOW, progress=progress)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        got = total_records(fl.project.load_table(VIEW))
    if result.rows != rows or got != rows:
        raise RuntimeError(f"WAP backfill wrote {result.rows} rows (main holds {got}), expected {rows}")
    return {"wap": seconds, "wap_cpu": cpu}


def run_reference(root: Path, rows: int) -> dict[str, Any]:
    """Apply (untimed), then time reading the Parquet to Arrow and a plain append of that table."""
    with featurelake.open(root) as fl:
        fl.apply()
        catalog = fl.project.catalog
        tbl = catalog.load_table(fl.project.table_name(VIEW))
        files = sorted(str(p) for p in (root / "data" / "features").glob("*.parquet"))
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        target = tbl.schema().as_arrow()
        arrow = pq.read_table(files).select(target.names).cast(target)
        c1, t1 = time.process_time(), time.perf_counter()
        tbl.append(arrow)
        c2, t2 = time.process_time(), time.perf_counter()
        got = total_records(catalog.load_table(fl.project.table_name(VIEW)))
    if arrow.num_rows != rows or got != rows:
        raise RuntimeError(f"reference append wrote {got} rows from {arrow.num_rows}, expected {rows}")
    return {
        "read": t1 - t0,
        "append": t2 - t1,
        "read_append": t2 - t0,
        "append_cpu": c2 - c1,
        "read_append_cpu": c2 - c0,
    }


# --- phase breakdown ---------------------------------------------------------------------------------


class PhaseClock:
    """Timestamps of the backfill's progress messages, plus wall time of wrapped featurelake calls."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.marks: list[tuple[float, str]] = []
        self.calls: dict[str, list[tuple[float, float]]] = {}

    def progress(self, msg: str) -> None:
        self.marks.append((time.perf_counter(), msg))

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            c, t = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = (time.perf_counter() - t, time.process_time() - c)
                self.calls.setdefault(name, []).append(spent)

        return timed


@contextmanager
def instrumented(fl: Any, clock: PhaseClock) -> Iterator[None]:
    """Wrap (without changing src/) the calls the backfill job makes, to time each step."""
    project = fl.project
    engine = project.engine
    with ExitStack() as stack:
        for attr in ("compute", "write_window", "audit"):
            stack.enter_context(
                mock.patch.object(engine, attr, clock.wrap(f"engine.{attr}", getattr(engine, attr)))
            )
        stack.enter_context(
            mock.patch.object(project, "load_table", clock.wrap("project.load_table", project.load_table))
        )
        for mod, attr in (
            (lineage, "lineage_properties"),
            (wap, "create_branch"),
            (wap, "publish"),
            (wap, "fast_forward"),
            (wap, "remove_branch"),
            (wap_run, "run_audit"),
            (audit_log, "record"),
            (stats_log, "record_published"),
        ):
            label = f"{mod.__name__.removeprefix('featurelake.')}.{attr}"
            stack.enter_context(mock.patch.object(mod, attr, clock.wrap(label, getattr(mod, attr))))
        yield


def phase_breakdown(root: Path, rows: int) -> dict[str, Any]:
    clock = PhaseClock()
    with featurelake.open(root) as fl:
        fl.apply()
        gc.collect()
        with instrumented(fl, clock):
            c0, clock.t0 = time.process_time(), time.perf_counter()
            result = fl.backfill(VIEW, *WINDOW, progress=clock.progress)
            total, total_cpu = time.perf_counter() - clock.t0, time.process_time() - c0
    if result.rows != rows:
        raise RuntimeError(f"instrumented backfill wrote {result.rows} rows, expected {rows}")
    # Progress-message phases (what the job reports), from the outside.
    edges = [(clock.t0, "start: load view/table, check run id"), *clock.marks]
    phases = []
    for i, (t, msg) in enumerate(edges):
        end = edges[i + 1][0] if i + 1 < len(edges) else clock.t0 + total
        phases.append({"phase": msg, "seconds": end - t})
    calls = {
        k: {"calls": len(v), "seconds": sum(w for w, _ in v), "cpu_seconds": sum(c for _, c in v)}
        for k, v in clock.calls.items()
    }
    return {"total": total, "total_cpu": total_cpu, "progress_phases": phases, "calls": calls}


# --- reporting -------------------------------------------------------------------------------------------


def summarize(samples: list[float], rows: int) -> dict[str, float]:
    best, median = min(samples), statistics.median(samples)
    return {"best": best, "median": median, "rows_per_s": rows / best if best else float("inf")}


def print_table(stats: dict[str, dict[str, float]], labels: dict[str, str]) -> None:
    width = max(len(v) for v in labels.values())
    print(f"{'measure':<{width}}  {'best s':>8}  {'median s':>8}  {'rows/s':>12}")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 8}  {'-' * 12}")
    for key, label in labels.items():
        s = stats[key]
        print(f"{label:<{width}}  {s['best']:>8.3f}  {s['median']:>8.3f}  {s['rows_per_s']:>12,.0f}")


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows to backfill (default 1,000,000)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side (default 3)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="where to build the projects (default: a temp dir)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the instrumented per-phase run")
    args = ap.parse_args(argv)
    if args.rows < DAYS or args.repeats < 1:
        ap.error(f"--rows must be >= {DAYS} and --repeats >= 1")

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="backfill-", dir=args.workdir))
    else:
        work = Path(tempfile.mkdtemp(prefix="featurelake-bench-"))
    try:
        t = time.perf_counter()
        files = write_source(work / "source", args.rows)
        print(
            f"featurelake backfill benchmark: {args.rows:,} rows, {DAYS} days, ~{USERS:,} users, "
            f"{len(files)} Parquet files; {args.repeats} runs per side; work dir {work}"
        )
        load_start = _loadavg()
        print(
            f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {load_start}; "
            f"data generated in {time.perf_counter() - t:.1f}s"
        )
        print()

        # Untimed warm-up of both sides on a tenth of the rows (imports, first-use caches, file system).
        warm = max(DAYS, args.rows // 10)
        warm_files = write_source(work / "warm-source", warm)
        run_wap(make_project(work / "warm-wap", warm_files), warm)
        run_reference(make_project(work / "warm-ref", warm_files), warm)
        for d in ("warm-source", "warm-wap", "warm-ref"):
            shutil.rmtree(work / d, ignore_errors=True)

        samples: dict[str, list[float]] = {
            k: []
            for k in ("wap", "append", "read", "read_append", "wap_cpu", "append_cpu", "read_append_cpu")
        }
        for i in range(args.repeats):
            order = ("wap", "ref") if i % 2 == 0 else ("ref", "wap")
            for side in order:
                root = make_project(work / f"{side}-{i}", files)
                out = run_wap(root, args.rows) if side == "wap" else run_reference(root, args.rows)
                for k, v in out.items():
                    samples[k].append(v)
                shutil.rmtree(root, ignore_errors=True)
            print(
                f"  run {i + 1}/{args.repeats} ({' then '.join(order)}): WAP {samples['wap'][-1]:.3f}s, "
                f"append {samples['append'][-1]:.3f}s, read {samples['read'][-1]:.3f}s",
                flush=True,
            )
        print()

        stats = {k: summarize(v, args.rows) for k, v in samples.items()}
        labels = {
            "wap": "WAP backfill, full cycle (fl.backfill)",
            "append": "reference: table.append(arrow)",
            "read": "reference: read Parquet -> Arrow",
            "read_append": "reference: read Parquet + append",
        }
        print_table(stats, labels)
        print("(rows/s from the best time; every run writes into a freshly created table)")
        print()
        ratio_best = stats["wap"]["best"] / stats["append"]["best"]
        ratio_median = stats["wap"]["median"] / stats["append"]["median"]
        fair_best = stats["wap"]["best"] / stats["read_append"]["best"]
        fair_median = stats["wap"]["median"] / stats["read_append"]["median"]
        verdict = "ok" if fair_best <= TARGET_RATIO else "ABOVE TARGET"
        print(
            "headline = WAP full cycle / (read Parquet + plain PyIceberg append), both from the Parquet files:"
        )
        print(f"WAP vs read+append ratio (best): {fair_best:.2f} (target <= {TARGET_RATIO}) {verdict}")
        print(f"WAP vs read+append ratio (median): {fair_median:.2f}")
        print("secondary = WAP full cycle / plain append of the Arrow table already in memory:")
        print(f"WAP vs append ratio (best): {ratio_best:.2f}, (median): {ratio_median:.2f}")
        cpu_best = stats["wap_cpu"]["best"] / stats["append_cpu"]["best"]
        cpu_fair = stats["wap_cpu"]["best"] / stats["read_append_cpu"]["best"]
        print(
            f"process CPU time (all threads, less sensitive to a busy machine): WAP {stats['wap_cpu']['best']:.3f}s, "
            f"append {stats['append_cpu']['best']:.3f}s, read+append {stats['read_append_cpu']['best']:.3f}s (best); "
            f"ratios {cpu_best:.2f} / {cpu_fair:.2f}"
        )
        print(f"load average at start {load_start}, at end {_loadavg()} ({os.cpu_count()} CPUs)")

        breakdown = None
        if not args.no_breakdown:
            root = make_project(work / "breakdown", files)
            breakdown = phase_breakdown(root, args.rows)
            shutil.rmtree(root, ignore_errors=True)
            print()
            print(
                f"phase breakdown of one extra WAP run ({breakdown['total']:.3f}s wall, "
                f"{breakdown['total_cpu']:.3f}s CPU, instrumented):"
            )
            print("  by progress message (timestamped from the progress callback):")
            for p in breakdown["progress_phases"]:
                share = p["seconds"] / breakdown["total"] * 100
                print(f"    {p['seconds']:>7.3f}s {share:>5.1f}%  {p['phase']}")
            print(
                "  by call (wrapped from outside; run_audit waits for the audit pass begun beside the write,"
            )
            print(
                "  saves the reports and appends the audit log; wap.publish includes its own table load and"
            )
            print("  fast_forward, the one commit that moves main and removes the branch; record_published")
            print("  appends the statistics after it; the rest is the job's glue):")
            print(f"    {'wall s':>7}  {'share':>5}  {'CPU s':>6}  call")
            for name, c in sorted(breakdown["calls"].items(), key=lambda kv: -kv[1]["seconds"]):
                share = c["seconds"] / breakdown["total"] * 100
                print(
                    f"    {c['seconds']:>7.3f}  {share:>4.1f}%  {c['cpu_seconds']:>6.3f}  {name} x{c['calls']}"
                )

        if args.json is not None:
            payload = {
                "rows": args.rows,
                "days": DAYS,
                "repeats": args.repeats,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "samples": samples,
                "stats": stats,
                "ratios": {
                    "headline": "wap / read_append",
                    "wap_over_append_best": ratio_best,
                    "wap_over_append_median": ratio_median,
                    "wap_over_read_append_best": fair_best,
                    "wap_over_read_append_median": fair_median,
                    "cpu_wap_over_append_best": cpu_best,
                    "cpu_wap_over_read_append_best": cpu_fair,
                    "target": TARGET_RATIO,
                },
                "breakdown": breakdown,
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(payload, indent=2))
            print(f"\nresults written to {args.json}")
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

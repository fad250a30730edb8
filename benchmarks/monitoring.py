"""Benchmark: what monitoring costs a job, and the server's hot path.

1. **Recording**: 100,000 metric updates through a :class:`Recorder` (which updates the one prometheus_client
   registry AND buffers the update for the local state) plus the one flush that writes them, versus the same
   100,000 updates on raw prometheus_client objects. Counters, gauges and histograms separately.
2. **Flush of one job**: the state write of what a backfill records (~40 samples), in milliseconds.
3. **Backfill with and without hooks**: ``run_backfill`` (decorated with ``@monitored_job``) versus the
   undecorated function on the same small project, alternating, median of ``--repeats``. Headline ratio.
4. **Server hot path**: ``metrics.observe_prediction_latency`` per call versus ``Histogram.observe``.

    .venv/bin/python benchmarks/monitoring.py [--updates N] [--repeats K]

Exits non-zero only on errors, never because a result is slow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import day, make_project, transactions

import featurelake
from featurelake import telemetry as metrics
from featurelake.jobs import backfill as backfill_job
from featurelake.monitoring.recorder import Recorder
from featurelake.monitoring.state import MetricsState

TARGET_BACKFILL_RATIO = 1.05


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def recording(n: int, workdir: Path) -> list[tuple[str, float, float]]:
    raw = CollectorRegistry()
    c = Counter("bench_rows_total", "x", ("job", "table"), registry=raw)
    g = Gauge("bench_null_rate", "x", ("view", "feature"), registry=raw)
    h = Histogram("bench_seconds", "x", ("job",), registry=raw, buckets=metrics.JOB_DURATION_BUCKETS)
    state = MetricsState(workdir / "bench-metrics.db")
    out = []

    def raw_counter() -> None:
        for i in range(n):
            c.labels("backfill", f"t{i % 10}").inc(3)

    def rec_counter() -> None:
        rec = Recorder("bench")
        for i in range(n):
            rec.inc("featurelake_rows_written_total", {"job": "backfill", "table": f"t{i % 10}"}, 3)
        state.record(rec.updates, rec.source)

    def raw_gauge() -> None:
        for i in range(n):
            g.labels("v", f"f{i % 10}").set(i)

    def rec_gauge() -> None:
        rec = Recorder("bench")
        for i in range(n):
            rec.set(
                "featurelake_feature_null_rate",
                {"view": "v", "feature": f"f{i % 10}", "published": "true"},
                i,
            )
        state.record(rec.updates, rec.source)

    def raw_hist() -> None:
        for i in range(n):
            h.labels("backfill").observe(i % 100)

    def rec_hist() -> None:
        rec = Recorder("bench")
        for i in range(n):
            rec.observe("featurelake_job_duration_seconds", {"job": "backfill"}, i % 100)
        state.record(rec.updates, rec.source)

    for name, base, ours in (
        ("counter inc", raw_counter, rec_counter),
        ("gauge set", raw_gauge, rec_gauge),
        ("histogram observe", raw_hist, rec_hist),
    ):
        base()  # warm-up
        b = min(_time(base) for _ in range(3))
        o = min(_time(ours) for _ in range(3))
        out.append((name, b, o))
    return out


def job_flush(workdir: Path, repeats: int) -> float:
    """Median ms to write what one backfill records (outcome, duration histogram, rows, 3 null rates)."""
    state = MetricsState(workdir / "job-metrics.db")
    times = []
    for _ in range(repeats * 10):
        rec = Recorder("backfill")
        rec.observe("featurelake_job_duration_seconds", {"job": "backfill"}, 2.5)
        rec.inc("featurelake_job_success_total", {"job": "backfill", "view": "v"})
        rec.set("featurelake_last_success_timestamp_seconds", {"job": "backfill", "view": "v"}, time.time())
        rec.inc("featurelake_rows_written_total", {"job": "backfill", "table": "features.v"}, 1000)
        for f in ("a", "b", "c"):
            rec.null_rate("v", f, 0.0)
        times.append(_time(partial(state.record, rec.updates, rec.source)) * 1000)
    return statistics.median(times)


def _cpu(fn: Callable[[], object]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def backfills(workdir: Path, repeats: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    root = make_project(
        workdir / "proj", config="project: bench\n", data=transactions(days=10, rows_per_day=2000)
    )
    hooked: list[tuple[float, float]] = []
    bare: list[tuple[float, float]] = []
    undecorated = backfill_job.run_backfill.__wrapped__  # type: ignore[attr-defined]
    with featurelake.open(root) as fl:
        fl.apply()
        project = fl.project
        fl.backfill("user_features", day(0), day(5))  # warm-up: caches, first snapshot
        for i in range(repeats):
            pairs = [("hooked", backfill_job.run_backfill), ("bare", undecorated)]
            if i % 2:
                pairs.reverse()
            for label, fn in pairs:
                took = _cpu(partial(fn, project, "user_features", day(0), day(5)))
                (hooked if label == "hooked" else bare).append(took)
    return hooked, bare


def hot_path(n: int) -> tuple[float, float]:
    raw = Histogram(
        "bench_latency", "x", ("endpoint",), registry=CollectorRegistry(), buckets=metrics.LATENCY_BUCKETS
    )

    def bare() -> None:
        for _ in range(n):
            raw.labels("/p").observe(0.002)

    def ours() -> None:
        for _ in range(n):
            metrics.observe_prediction_latency("/p", 0.002)

    b = min(_time(bare) for _ in range(3))
    o = min(_time(ours) for _ in range(3))
    return b / n * 1e9, o / n * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fl-bench-monitoring-"))
    try:
        print(
            f"featurelake monitoring benchmark (load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cpus)"
        )
        print(f"\n1. {args.updates:,} metric updates: raw prometheus_client vs Recorder (+ one state flush)")
        print(f"{'kind':<20}{'raw s':>10}{'recorder s':>12}{'ratio':>8}{'recorder ns/update':>20}")
        for name, b, o in recording(args.updates, workdir):
            print(f"{name:<20}{b:>10.3f}{o:>12.3f}{o / b:>8.2f}{o / args.updates * 1e9:>20.0f}")
        print(
            f"\n2. one backfill's metrics flushed to the local state: {job_flush(workdir, args.repeats):.2f} ms (median)"
        )
        hooked, bare = backfills(workdir, args.repeats)
        print(f"\n3. backfill of 5 days x 2000 rows/day, {args.repeats} runs each, alternating")
        print(f"{'':<22}{'median wall s':>14}{'best wall s':>12}{'median CPU s':>14}")
        med = {}
        for label, runs in (("with @monitored_job", hooked), ("without hooks", bare)):
            wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
            med[label] = (statistics.median(wall), min(wall), statistics.median(cpu))
            print(f"{label:<22}{med[label][0]:>14.3f}{med[label][1]:>12.3f}{med[label][2]:>14.3f}")
        (hw, hb, hc), (bw, bb, bc) = med["with @monitored_job"], med["without hooks"]
        print(
            f"headline ratio with/without hooks: CPU median {hc / bc:.3f}, wall median {hw / bw:.3f}, "
            f"wall best {hb / bb:.3f} (target <= {TARGET_BACKFILL_RATIO}); CPU overhead {1000 * (hc - bc):+.1f} ms"
        )
        raw_ns, our_ns = hot_path(args.updates)
        print(
            f"\n4. server hot path: Histogram.observe {raw_ns:.0f} ns/call, "
            f"metrics.observe_prediction_latency {our_ns:.0f} ns/call (ratio {our_ns / raw_ns:.2f})"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark: how time and peak memory grow with the rows of a window (bounded memory, linear cost).

For each size (default 3M, 10M and 30M rows over 30 days, 12 columns: the key, the event time, 6 float64
and 4 int64 features; ``rows / 60`` entities, at least 50k and at most 1M), on the local engine:

- ``backfill``: ``fl.backfill`` of the 30 days (Write-Audit-Publish, one snapshot);
- ``sync``: a full ``fl.sync`` of that table to the SQLite online store;
- ``training``: ``fl.training_set`` of 500k entity rows (random entities and times in the window) against
  the table, written to Parquet;
- ``predict``: ``fl.predict`` of a pickled scikit-learn model over the latest row per entity.

Each job runs in a fresh Python process; wall time and peak RSS are measured from outside (``os.wait4`` on
that process: its own ``ru_maxrss``), so interpreter start-up and imports count. The table prints each job
per size and the targets of issue 23 against the smallest size: peak RSS at the largest size <= 1.5x the
smallest and <= 2 GB; time <= 11x the smallest's (for 30M vs 3M: cost linear in rows, 10x, plus slack).

    .venv/bin/python benchmarks/scale.py [--sizes 3M,10M,30M] [--jobs backfill,sync,training,predict]
                                         [--workdir DIR] [--keep] [--json PATH]

``--json PATH`` also writes the figures as ``{"featurelake": {"<job>": [{"rows": N, "seconds": s,
"peak_rss_mb": m, "load": l}, ...]}}`` (sizes ascending; ``load``: the 1-minute load average after the job),
for plotting time and peak RSS against rows.

Exits non-zero only on errors, never because a result is slow or large.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

# The data (and its constants) are shared with Feast's side of `make bench-peers`: benchmarks/scale_data.py.
from scale_data import (
    DAYS,
    END,
    ENTITY_ROWS,
    FEATURES,
    FLOATS,
    LONGS,
    SEED,
    START,
    human,
    parse_size,
    write_entities,
    write_source,
)

JOBS = ("backfill", "sync", "training", "predict")
RSS_RATIO, RSS_MAX, TIME_RATIO = 1.5, 2 * 1024**3, 11.0
FEATURES_PY = """
from featurelake import Entity, FeatureView, Source

user = Entity("user", join_key="user_id", dtype="long")
events = FeatureView(
    name="events",
    entity=user,
    source=Source.parquet("data/events/*.parquet", timestamp_field="event_ts"),
    query="SELECT * FROM source",
    timestamp_field="event_ts",
    fields=FIELDS,
)
"""


# --- setup (untimed) ----------------------------------------------------------------------------------


def write_model(root: Path) -> Path:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(SEED + 2)
    x = rng.normal(0.0, 1.0, (2_000, len(FEATURES)))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    path = root / "model.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression().fit(x, y)))
    return path


def make_project(root: Path, rows: int) -> None:
    root.mkdir(parents=True)
    (root / "featurelake.yaml").write_text("project: scale\nnamespace: features\n")
    fields = {**{f"f{i}": "double" for i in range(FLOATS)}, **{f"n{i}": "long" for i in range(LONGS)}}
    (root / "features.py").write_text(textwrap.dedent(FEATURES_PY).replace("FIELDS", repr(fields)))
    write_source(root, rows)
    write_entities(root, rows)
    write_model(root)


# --- the jobs (each in a child process) ---------------------------------------------------------------


def child(job: str, root: Path) -> dict[str, Any]:
    """Run ``job`` on the project at ``root``; returns what it did (the parent times the process)."""
    import featurelake

    os.environ.setdefault("FEATURELAKE_CODE_VERSION", "bench")
    with featurelake.open(root) as fl:
        t0 = time.perf_counter()
        if job == "setup":
            fl.apply()
            sig = [{"name": f, "type": "double", "feature": f"events:{f}"} for f in FEATURES]
            mv = fl.models.register("scale_model", root / "model.pkl", "pickle", signature=sig)
            (root / "model.version").write_text(mv.version)
            return {"rows": 0}
        if job == "backfill":
            r = fl.backfill("events", START.date().isoformat(), END.date().isoformat())
            out: dict[str, Any] = {"rows": r.rows}
        elif job == "sync":
            (s,) = fl.sync("events", full=True)
            out = {"rows": s.rows, "keys": s.keys}
        elif job == "training":
            import pyarrow.parquet as pq

            table = fl.training_set(str(root / "entities.parquet"), [f"events:{f}" for f in FEATURES])
            pq.write_table(table, root / "training.parquet")
            out = {"rows": table.num_rows}
        elif job == "predict":
            version = (root / "model.version").read_text().strip()
            p = fl.predict(f"scale_model@{version}", "events")
            out = {"rows": p.rows}
        else:
            raise SystemExit(f"unknown job {job}")
        out["inside_s"] = time.perf_counter() - t0
        return out


def measure(job: str, root: Path) -> dict[str, Any]:
    """Run ``job`` in a fresh process: its wall time and peak RSS measured from outside."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", job, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Drain the pipes first (a full pipe would block the child), then reap it with wait4 for its rusage.
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{job} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(job=job, seconds=seconds, peak_rss=usage.ru_maxrss * 1024)
    return dict(result)


# --- report -------------------------------------------------------------------------------------------


def report(results: dict[int, dict[str, dict[str, Any]]], jobs: list[str]) -> list[str]:
    sizes = sorted(results)
    lines = [
        f"{'job':<10}" + "".join(f"{human(s) + ' time':>14}{human(s) + ' RSS':>14}" for s in sizes),
    ]
    for job in jobs:
        row = f"{job:<10}"
        for s in sizes:
            r = results[s][job]
            row += f"{r['seconds']:>13.1f}s{r['peak_rss'] / 1024**2:>11.0f} MB"
        lines.append(row)
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        factor = large / small
        time_target = TIME_RATIO * factor / 10  # 11x for 10x the rows
        lines.append("")
        lines.append(
            f"targets, {human(large)} vs {human(small)} ({factor:g}x the rows): peak RSS <= {RSS_RATIO}x and "
            f"<= {RSS_MAX / 1024**3:g} GB; time <= {time_target:g}x"
        )
        for job in jobs:
            a, b = results[small][job], results[large][job]
            rss = b["peak_rss"] / a["peak_rss"]
            t = b["seconds"] / a["seconds"]
            ok_rss = rss <= RSS_RATIO and b["peak_rss"] <= RSS_MAX
            ok_t = t <= time_target
            lines.append(
                f"  {job:<10} RSS ratio {rss:5.2f} ({'met' if ok_rss else 'NOT met'}), "
                f"time ratio {t:6.2f} ({'met' if ok_t else 'NOT met'})"
            )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3M,10M,30M", help="comma-separated row counts, e.g. 3M,10M")
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=2, metavar=("JOB", "ROOT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return 0
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    jobs = [j for j in args.jobs.split(",") if j]
    unknown = sorted(set(jobs) - set(JOBS))
    if unknown:
        ap.error(f"unknown jobs {unknown}; choose from {', '.join(JOBS)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fl-scale-"))
    print(
        f"scale benchmark: {platform.python_version()}, {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; sizes {', '.join(map(human, sizes))}; "
        f"{DAYS} days, 12 columns, {human(ENTITY_ROWS)} entity rows for training"
    )
    results: dict[int, dict[str, dict[str, Any]]] = {}
    try:
        for rows in sizes:
            root = work / f"rows-{rows}"
            if root.exists():
                shutil.rmtree(root)
            make_project(root, rows)
            measure("setup", root)
            results[rows] = {}
            for job in JOBS:  # every job depends on the backfill; run it even when not reported
                if job != "backfill" and job not in jobs:
                    continue
                r = measure(job, root)
                r["load"] = os.getloadavg()[0]
                results[rows][job] = r
                print(
                    f"  {human(rows)} {job}: {r['seconds']:.1f}s, peak RSS {r['peak_rss'] / 1024**2:.0f} MB "
                    f"({r['rows']} rows; load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    shown = [j for j in JOBS if j in jobs]
    print()
    print("\n".join(report(results, shown)))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(as_json(results, shown), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def as_json(results: dict[int, dict[str, dict[str, Any]]], jobs: list[str]) -> dict[str, Any]:
    """``{"featurelake": {job: [{"rows", "seconds", "peak_rss_mb", "load"}, ...]}}``, sizes ascending (the shape
    the plotting script reads; ``load``: the 1-minute load average right after the job)."""
    return {
        "featurelake": {
            job: [
                {
                    "rows": rows,
                    "seconds": round(results[rows][job]["seconds"], 3),
                    "peak_rss_mb": round(results[rows][job]["peak_rss"] / 1024**2, 1),
                    "load": round(results[rows][job]["load"], 2),
                }
                for rows in sorted(results)
            ]
            for job in jobs
        }
    }


if __name__ == "__main__":
    sys.exit(main())

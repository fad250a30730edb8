"""Feast at scale: ``materialize`` and ``get_historical_features`` at 3M, 10M and 30M rows, peak RSS from outside.

Runs in the peers virtualenv (benchmarks/.peers-venv), never in featurelake's. The data is benchmarks/scale.py's
(benchmarks/scale_data.py: 30 days, one Parquet file a day, 12 columns, rows/60 entities, 500k entity rows);
the Feast repo reads it with a ``FileSource`` on the directory (file offline store) and materializes into its
SQLite online store, the counterparts of featurelake's ``fl.sync`` to SQLite and ``fl.training_set`` in
scale.py. The feature view has no ttl (``timedelta(0)``), like featurelake's view there, so both answer each
entity row with the latest feature row at or before its time.

Each job runs in a fresh Python process; wall time and peak RSS (``ru_maxrss`` from ``os.wait4``) are measured
from outside, so interpreter start-up and imports count, as in scale.py:

- ``materialize``: ``store.materialize(START, END)`` of the whole window into SQLite, Feast's defaults;
- ``materialize_latest``: the same with Feast's settings against its memory use (``materialization:
  pull_latest_features: true``, the offline store returns each key's latest row only, and
  ``online_write_batch_size: 10000``), into another SQLite file;
- ``historical``: ``store.get_historical_features(entity_df, 10 features).to_df()``, written to Parquet.

A guard watches each job: the resident memory of its process tree is read every 50 ms and the tree is killed
(SIGKILL) once it passes ``--cap-gb`` (default 8), so a job that would take the shared machine down is
recorded as ``killed`` instead; past ``--timeout`` seconds it is killed and recorded as ``timed out``. (An
address-space limit, RLIMIT_AS, is not used: Arrow's allocator and thread stacks reserve far more address space
than they touch, so it stops processes at a fraction of the memory they would use and reports an
out-of-memory that is not one.) After each job an untimed check counts what it produced (keys in SQLite,
rows of the training set).

    benchmarks/.peers-venv/bin/python benchmarks/peers/feast_scale.py --json OUT [--sizes 3M,10M,30M]
        [--jobs materialize,historical] [--cap-gb 8] [--timeout 1800] [--workdir DIR] [--keep]

Result (--json): ``{"feast": {"materialize": [{"rows", "seconds", "peak_rss_mb", "status", "load", ...}],
"historical": [...]}, "feast_version", "cap_gb", "timeout_s", "load_start", "load_end"}``; ``status`` is
``finished``, ``killed`` (memory cap), ``timed out`` or ``failed`` (with the error's last lines). Exits
non-zero only on errors of the benchmark itself, never because Feast was killed, slow or failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from scale_data import (  # noqa: E402
    END,
    FEATURES,
    FLOATS,
    START,
    human,
    parse_size,
    write_entities,
    write_source,
)

JOBS = ("materialize", "materialize_latest", "historical")
POLL_S = 0.05

REPO_PY = """
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
source = FileSource(path="{path}", timestamp_field="event_ts")
events = FeatureView(
    name="events",
    entities=[user],
    ttl=timedelta(0),  # no ttl, like featurelake's view in benchmarks/scale.py
    schema=[Field(name="user_id", dtype=Int64)]
    + [Field(name=f, dtype=Float64) for f in {floats!r}]
    + [Field(name=f, dtype=Int64) for f in {longs!r}],
    source=source,
    online=True,
)
"""

STORE_YAML = """project: scale
registry: {repo}/registry.db
provider: local
online_store:
  type: sqlite
  path: {repo}/online.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""

# Feast's own answer to materialize's memory (feast-dev/feast #5713, #6307): pull only each key's latest row
# from the offline store and write the online store in batches. Same registry, its own SQLite file.
LATEST_YAML = (
    STORE_YAML.replace("online.db", "online_latest.db")
    + """materialization:
  pull_latest_features: true
  online_write_batch_size: 10000
"""
)


# --- the jobs (each in a child process) ---------------------------------------------------------------


def _store(root: Path, yaml: str = "feature_store.yaml") -> Any:
    from feast import FeatureStore

    repo = root / "feast_repo"
    return FeatureStore(repo_path=str(repo), fs_yaml_file=repo / yaml)


def child(job: str, root: Path) -> dict[str, Any]:
    """Run ``job`` on the repo under ``root``; returns what it did (the parent times the process)."""
    t0 = time.perf_counter()
    if job == "setup":
        import importlib.util

        repo = root / "feast_repo"
        repo.mkdir()
        (repo / "feature_store.yaml").write_text(STORE_YAML.format(repo=repo))
        (repo / "feature_store_latest.yaml").write_text(LATEST_YAML.format(repo=repo))
        (repo / "features.py").write_text(
            REPO_PY.format(path=root / "data" / "events", floats=FEATURES[:FLOATS], longs=FEATURES[FLOATS:])
        )
        spec = importlib.util.spec_from_file_location("scale_feast_repo", repo / "features.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _store(root).apply([mod.user, mod.events])
        _store(root, "feature_store_latest.yaml").apply([mod.user, mod.events])  # its SQLite file's table
        import feast

        return {"feast_version": feast.__version__}
    if job in ("materialize", "materialize_latest"):
        yaml = "feature_store_latest.yaml" if job == "materialize_latest" else "feature_store.yaml"
        _store(root, yaml).materialize(start_date=START, end_date=END)
        out: dict[str, Any] = {}
    elif job == "historical":
        import pandas as pd

        entity_df = pd.read_parquet(root / "entities.parquet")
        df = (
            _store(root)
            .get_historical_features(entity_df=entity_df, features=[f"events:{f}" for f in FEATURES])
            .to_df()
        )
        df.to_parquet(root / "feast_training.parquet")
        out = {"rows_out": len(df)}
    else:
        raise SystemExit(f"unknown job {job}")
    out["inside_s"] = time.perf_counter() - t0
    return out


def check(job: str, root: Path) -> dict[str, Any]:
    """What a finished job left behind, counted outside the timed process."""
    if job in ("materialize", "materialize_latest"):
        db = root / "feast_repo" / ("online_latest.db" if job == "materialize_latest" else "online.db")
        with sqlite3.connect(db) as conn:
            (table,) = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%events'"
            ).fetchone()
            (keys,) = conn.execute(f'SELECT count(DISTINCT entity_key) FROM "{table}"').fetchone()
        return {"keys": int(keys)}
    import pyarrow.parquet as pq

    meta = pq.read_metadata(root / "feast_training.parquet")
    return {"rows_out": meta.num_rows}


# --- the guard ----------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (/proc/<pid>/task/<tid>/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue  # it ended meanwhile
    return out


def _rss(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


def measure(job: str, root: Path, cap: int, timeout: float) -> dict[str, Any]:
    """Run ``job`` in a fresh process under the guard: wall time, peak RSS (wait4) and how it ended."""
    la = round(os.getloadavg()[0], 2)
    err_path = root / f"{job}.stderr"
    t0 = time.perf_counter()
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", job, str(root)],
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,  # its own process group: the guard ends the whole tree
        )
        status, usage = None, None
        verdict, seen = "finished", 0
        while True:
            pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, usage = st, ru
                break
            rss = _rss(_tree(proc.pid))
            seen = max(seen, rss)
            elapsed = time.perf_counter() - t0
            if rss > cap or elapsed > timeout:
                verdict = "killed" if rss > cap else "timed out"
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(POLL_S)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = proc.stdout.read().decode() if proc.stdout else ""  # small: one JSON line
    peak = max(usage.ru_maxrss * 1024, seen)
    result: dict[str, Any] = {
        "job": job, "seconds": round(seconds, 2), "peak_rss_mb": round(peak / 1024**2),
        "status": verdict, "load": [la, round(os.getloadavg()[0], 2)],
    }  # fmt: skip
    if verdict == "killed":
        result["note"] = f"memory over the {cap / 1024**3:g} GB cap after {seconds:.0f} s"
    elif verdict == "timed out":
        result["note"] = f"still running after {timeout:g} s"
    elif proc.returncode != 0:
        result["status"] = "failed"
        tail = err_path.read_text()[-1500:].strip().splitlines()
        result["note"] = f"exit {proc.returncode}: " + " | ".join(tail[-3:])
    else:
        result.update(json.loads(stdout.strip().splitlines()[-1]))
    return result


# --- the run ------------------------------------------------------------------------------------------


def run(
    sizes: list[int], jobs: list[str], cap_gb: float, timeout: float, work: Path, keep: bool
) -> dict[str, Any]:
    cap = int(cap_gb * 1024**3)
    out: dict[str, Any] = {
        "feast": {j: [] for j in jobs}, "cap_gb": cap_gb, "timeout_s": timeout,
        "load_start": [round(x, 2) for x in os.getloadavg()], "cores": os.cpu_count(),
    }  # fmt: skip
    for rows in sizes:
        root = work / f"rows-{rows}"
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        write_source(root, rows)
        write_entities(root, rows)
        setup = measure("setup", root, cap, timeout)
        if setup["status"] != "finished":
            raise SystemExit(
                f"Feast repo setup at {human(rows)} rows: {setup['status']}: {setup.get('note')}"
            )
        out["feast_version"] = setup["feast_version"]
        for job in jobs:
            r = measure(job, root, cap, timeout)
            r["rows"] = rows
            if r["status"] == "finished":
                r.update(check(job, root))
            out["feast"][job].append(r)
            extra = f" ({r['note']})" if "note" in r else ""
            print(
                f"  Feast {human(rows)} {job}: {r['status']}{extra}, {r['seconds']:.1f}s, peak RSS "
                f"{r['peak_rss_mb']} MB, load {r['load'][0]:.2f}-{r['load'][1]:.2f}",
                flush=True,
            )
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    out["load_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3M,10M,30M", help="comma-separated row counts, e.g. 3M,10M")
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--cap-gb", type=float, default=8.0, help="kill a job whose RSS passes this (GB)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="kill a job running longer (seconds)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", type=Path, required=False)
    ap.add_argument("--child", nargs=2, metavar=("JOB", "ROOT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return 0
    jobs = [j for j in args.jobs.split(",") if j]
    unknown = sorted(set(jobs) - set(JOBS))
    if unknown:
        ap.error(f"unknown jobs {unknown}; choose from {', '.join(JOBS)}")
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fl-feast-scale-"))
    print(
        f"Feast scale: sizes {', '.join(map(human, sizes))}; cap {args.cap_gb:g} GB RSS, timeout "
        f"{args.timeout:g} s a job; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    try:
        out = run(sizes, jobs, args.cap_gb, args.timeout, work, args.keep)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

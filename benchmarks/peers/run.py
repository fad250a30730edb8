"""``make bench-peers``: featurelake and Feast side by side, same machine, same run, same data, same Redis.

Runs in featurelake's .venv; the Feast half (benchmarks/peers/feast_side.py) runs in the separate peers
virtualenv made by benchmarks/peers/setup.sh. Steps:

1. generate seeded Parquet: ROWS feature rows (USERS users, 30 days ending today 00:00 UTC, 20 float64
   features, 7-day ttl) and ENTITIES entity rows (user ids up to 1.1 x USERS, so ~10% have no features;
   times from a day before the first feature row to a day after the last, plus a ``row_id`` column);
2. start ONE ``redis-server`` on a free loopback port (featurelake on db 0, Feast on db 1);
3. featurelake: apply, backfill (timed apart: Feast does no such step), ``fl.sync()``, in-process
   ``fl.online.get_online_features`` at 1 and 100 entities, ``featurelake serve`` (its default workers: one
   per core) through loadgen.py, then under 1, 8 and 32 concurrent keep-alive clients (wrk, concurrency.py),
   ``fl.training_set``;
4. Feast: materialize, ``get_online_features``, ``feast serve`` (its defaults: one worker) through the same
   loadgen.py and the same concurrent clients, then ``feast serve --workers <cores>`` under the concurrent
   clients too (the same number of processes as featurelake), ``get_historical_features``;
5. check both training sets hold the same values where both have a row, print the table with the ratio per
   line, write docs/benchmarks.md and docs/img/bench-peers.png;
6. the scale section (benchmarks/peers/scale_section.py; ``--no-scale`` skips it, ``--scale-only`` runs it
   alone): featurelake's benchmarks/scale.py and Feast's materialize and get_historical_features
   (benchmarks/peers/feast_scale.py) at ``--scale-sizes`` (3M, 10M, 30M rows), each job a fresh process with
   its peak RSS measured from outside, Feast's under a memory cap and a timeout; writes its section of
   docs/benchmarks.md and docs/img/scale-vs-feast.png.

    .venv/bin/python benchmarks/peers/run.py [--rows 1000000] [--users 50000] [--entities 100000]
                                              [--requests 2000] [--no-docs] [--no-scale | --scale-only]
                                              [--scale-sizes 3M,10M,30M] [--scale-cap-gb 8]
                                              [--scale-timeout 1800] [--scale-fl-json F [--scale-fl-log L]]

Ratio = Feast / featurelake for times (and featurelake / Feast for rows/s): above 1 featurelake is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEERS_PY = ROOT / "benchmarks" / ".peers-venv" / "bin" / "python"
sys.path.insert(0, str(HERE))

import scale_section  # noqa: E402
from concurrency import run_levels, wrk_binary  # noqa: E402
from report import write_page, write_scale_section  # noqa: E402

import featurelake  # noqa: E402

FEATURES = [f"f{i:02d}" for i in range(20)]
VIEW = "bench_features"
DAYS = 30
TTL_DAYS = 7

FEATURES_PY = f'''
from datetime import timedelta
from featurelake import Entity, FeatureView, Source

user = Entity("user", join_key="user_id", dtype="long")

{VIEW} = FeatureView(
    name="{VIEW}",
    entity=user,
    source=Source.parquet("{{data}}/features-*.parquet", timestamp_field="event_ts"),
    query="SELECT * FROM source",
    timestamp_field="event_ts",
    fields={{{", ".join(f'"{f}": "double"' for f in FEATURES)}}},
    ttl=timedelta(days={TTL_DAYS}),
)
'''


def workers() -> int:
    """What ``featurelake serve`` starts without --workers: one process per core."""
    return len(os.sched_getaffinity(0))


def load() -> float:
    return round(os.getloadavg()[0], 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def generate(work: Path, rows: int, users: int, entities: int, seed: int) -> dict[str, Any]:
    """Seeded data; the time axis ends at today's UTC midnight so online reads are within the ttl."""
    rng = np.random.default_rng(seed)
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=DAYS)
    base = int(start.timestamp()) * 1_000_000
    span = DAYS * 86_400_000_000
    micros = np.sort(rng.integers(0, span, rows))
    cols: dict[str, Any] = {
        "user_id": pa.array(rng.integers(1, users + 1, rows), pa.int64()),
        "event_ts": pa.array(base + micros, pa.timestamp("us", tz="UTC")),
    }
    for f in FEATURES:
        cols[f] = pa.array(rng.random(rows), pa.float64())
    table = pa.table(cols)
    e_micros = rng.integers(-86_400_000_000, span + 86_400_000_000, entities)
    ents = pa.table(
        {
            "user_id": pa.array(rng.integers(1, int(users * 1.1) + 1, entities), pa.int64()),
            "event_timestamp": pa.array(base + e_micros, pa.timestamp("us", tz="UTC")),
            "row_id": pa.array(np.arange(entities), pa.int64()),
        }
    )
    data = work / "data"
    data.mkdir(parents=True)
    # One file for Feast's FileSource; the same bytes under the glob featurelake's Source reads.
    pq.write_table(table, data / "features.parquet")
    os.link(data / "features.parquet", data / "features-0.parquet")
    pq.write_table(ents, data / "entities.parquet")
    meta = {
        "rows": rows, "users": users, "entities": entities, "features": FEATURES, "ttl_days": TTL_DAYS,
        "start": start.isoformat(), "end": end.isoformat(), "seed": seed,
        "distinct_users": len(pc.unique(table.column("user_id"))),
    }  # fmt: skip
    (work / "meta.json").write_text(json.dumps(meta))
    return meta


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(500):
        try:
            if redis.Redis(host="127.0.0.1", port=port).ping():
                return proc, port
        except redis.RedisError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("redis-server did not start")


def run_loadgen(port: int, users: int, args: argparse.Namespace, refs: list[str]) -> dict[str, Any]:
    gen = subprocess.run(
        [sys.executable, str(HERE / "loadgen.py"), str(port), str(users), str(args.requests),
         str(args.seconds), str(args.seed), json.dumps(refs)],
        capture_output=True, text=True, timeout=args.seconds * 3 + 60,
    )  # fmt: skip
    if gen.returncode != 0:
        raise SystemExit(f"load generator failed: {gen.stderr}{gen.stdout}")
    return dict(json.loads(gen.stdout))


def featurelake_side(work: Path, meta: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    proj = work / "fl_project"
    proj.mkdir()
    (proj / "featurelake.yaml").write_text("project: peers\nonline_store:\n  type: redis\n")
    (proj / "features.py").write_text(FEATURES_PY.replace("{data}", str(work / "data")))
    out: dict[str, Any] = {"featurelake_version": featurelake.__version__}
    refs = [f"{VIEW}:{f}" for f in FEATURES]
    users = int(meta["users"])
    fl = featurelake.open(proj)
    try:
        fl.apply()
        start = datetime.fromisoformat(meta["start"])
        end = datetime.fromisoformat(meta["end"])
        la = load()
        t0 = time.perf_counter()
        fl.backfill(VIEW, start.date().isoformat(), (end + timedelta(days=1)).date().isoformat())
        out["backfill"] = {"seconds": time.perf_counter() - t0, "load": [la, load()]}
        print(f"featurelake backfill: {out['backfill']['seconds']:.2f}s", file=sys.stderr)
        la = load()
        t0 = time.perf_counter()
        (result,) = fl.sync()
        secs = time.perf_counter() - t0
        if result.keys != meta["distinct_users"]:
            raise SystemExit(f"sync wrote {result.keys} keys, expected {meta['distinct_users']}")
        out["sync"] = {"seconds": secs, "rows": meta["rows"], "keys": result.keys, "load": [la, load()]}
        print(f"featurelake sync: {secs:.2f}s", file=sys.stderr)

        out["sdk"] = {}
        for width in (1, 100):
            import random

            rng = random.Random(args.seed + width)
            lat: list[float] = []
            la = load()
            present = 0
            for i in range(args.requests + 100):
                ids = [rng.randint(1, users) for _ in range(width)]
                t0 = time.perf_counter()
                res = fl.online.get_online_features(refs, {"user_id": ids})
                t1 = time.perf_counter()
                if i >= 100:
                    lat.append(t1 - t0)
                if i == 100:
                    present = sum(v is not None for v in res["results"][1]["values"])
            out["sdk"][str(width)] = {
                "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "n": len(lat), "load": [la, load()],
                "non_null_first": present,
            }  # fmt: skip
            print(f"featurelake sdk {width}: {out['sdk'][str(width)]}", file=sys.stderr)

        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "featurelake", "-C", str(proj), "serve", "--port", str(port),
             "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        err = server.stderr.read().decode() if server.stderr else ""
                        raise SystemExit(f"featurelake serve did not start: {err[-2000:]}") from None
                    time.sleep(0.2)
            la = load()
            http = run_loadgen(port, users, args, refs)
            out["http"] = {
                w: {"p50": pct(d["lat"], 0.5), "p99": pct(d["lat"], 0.99), "n": len(d["lat"]),
                    "errors": d["errors"], "stalls": d["stalls"], "load": [la, load()]}
                for w, d in http.items()
            }  # fmt: skip
            print(f"featurelake serve: {out['http']}", file=sys.stderr)
            out["concurrency"] = run_levels(
                port, users, refs, seconds=args.concurrency_seconds, seed=args.seed
            )
            out["workers"] = workers()
            print(f"featurelake serve, concurrent clients: {out['concurrency']}", file=sys.stderr)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

        ents = pq.read_table(work / "data" / "entities.parquet")
        la = load()
        t0 = time.perf_counter()
        ts = fl.training_set(ents, refs)
        secs = time.perf_counter() - t0
        pq.write_table(ts, work / "fl_training_set.parquet")
        out["training_set"] = {
            "seconds": secs, "entity_rows": ents.num_rows, "rows_out": ts.num_rows, "load": [la, load()],
        }  # fmt: skip
        print(f"featurelake training_set: {secs:.2f}s, {ts.num_rows} rows", file=sys.stderr)
    finally:
        fl.close()
    return out


def compare_training_sets(work: Path) -> dict[str, Any]:
    """Same values where both return a row (null and NaN count as equal; floats compared exactly)."""
    ours = pq.read_table(work / "fl_training_set.parquet").to_pandas()
    theirs = pq.read_table(work / "feast_training_set.parquet").to_pandas()
    merged = ours.merge(theirs, on="row_id", suffixes=("_fl", "_feast"))
    mismatched_rows = np.zeros(len(merged), dtype=bool)
    for f in FEATURES:
        a = merged[f"{f}_fl"].to_numpy(dtype=float, na_value=np.nan)
        b = merged[f"{f}_feast"].to_numpy(dtype=float, na_value=np.nan)
        both_nan = np.isnan(a) & np.isnan(b)
        mismatched_rows |= ~(both_nan | (a == b))
    dropped = set(ours["row_id"]) - set(theirs["row_id"])
    dup = int(theirs["row_id"].duplicated().sum())
    return {
        "common_rows": len(merged),
        "mismatched_rows": int(mismatched_rows.sum()),
        "rows_only_in_featurelake": len(dropped),
        "feast_duplicate_rows": dup,
        "featurelake_non_null": int(ours[FEATURES[0]].notna().sum()),
        "feast_non_null": int(theirs[FEATURES[0]].notna().sum()),
    }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    return {
        "nproc": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1), "cpu": cpu,
        "kernel": platform.release(), "python": platform.python_version(),
        "redis": next((w.split("=", 1)[1] for w in redis_v if w.startswith("v=")), "unknown"),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }  # fmt: skip


def lines(fl: dict[str, Any], fe: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparison rows: (measure, feast, featurelake, unit, ratio, loads)."""
    rows: list[dict[str, Any]] = []
    n = fl["sync"]["rows"]
    fe_rps = n / fe["materialize"]["seconds"]
    fl_rps = n / fl["sync"]["seconds"]
    bf_rps = n / (fl["sync"]["seconds"] + fl["backfill"]["seconds"])
    rows.append({"measure": "materialize latest values into Redis (Feast materialize vs fl.sync)",
                 "feast": fe_rps, "featurelake": fl_rps, "unit": "rows/s", "ratio": fl_rps / fe_rps,
                 "load": fe["materialize"]["load"] + fl["sync"]["load"], "key": "materialize"})  # fmt: skip
    rows.append({"measure": "  featurelake backfill + sync (backfill is extra work Feast does not do)",
                 "feast": fe_rps, "featurelake": bf_rps, "unit": "rows/s", "ratio": bf_rps / fe_rps,
                 "load": fe["materialize"]["load"] + fl["backfill"]["load"], "key": "backfill+sync"})  # fmt: skip
    for kind, label in (("sdk", "in-process SDK lookup"), ("http", "HTTP server lookup")):
        for w in ("1", "100"):
            for q in ("p50", "p99"):
                a, b = fe[kind][w][q], fl[kind][w][q]
                rows.append({"measure": f"{label}, {w} entit{'y' if w == '1' else 'ies'}, {q}",
                             "feast": a, "featurelake": b, "unit": "ms", "ratio": a / b,
                             "load": fe[kind][w]["load"] + fl[kind][w]["load"],
                             "key": f"{kind} {w} {q}"})  # fmt: skip
    for c, d in fl["concurrency"].items():
        f = fe["concurrency"][c]
        rows.append({"measure": f"HTTP, {c} concurrent keep-alive client{'s' if c != '1' else ''}, 1 entity, requests/s",
                     "feast": f["rps"], "featurelake": d["rps"], "unit": "req/s", "ratio": d["rps"] / f["rps"],
                     "load": f["load"] + d["load"], "key": f"http x{c} req/s"})  # fmt: skip
        rows.append({"measure": f"  HTTP, {c} concurrent client{'s' if c != '1' else ''}, 1 entity, p99",
                     "feast": f["p99"], "featurelake": d["p99"], "unit": "ms", "ratio": f["p99"] / d["p99"],
                     "load": f["load"] + d["load"], "key": f"http x{c} p99"})  # fmt: skip
    a, b = fe["training_set"]["seconds"], fl["training_set"]["seconds"]
    rows.append({"measure": f"training set, {fl['training_set']['entity_rows']:,} entity rows x {n:,} feature rows",
                 "feast": a, "featurelake": b, "unit": "s", "ratio": a / b,
                 "load": fe["training_set"]["load"] + fl["training_set"]["load"], "key": "training_set"})  # fmt: skip
    return rows


def print_table(
    rows: list[dict[str, Any]], fl: dict[str, Any], fe: dict[str, Any], check: dict[str, Any]
) -> None:
    print()
    print(f"{'measure':<78} {'Feast':>12} {'featurelake':>12} {'unit':>6} {'ratio':>7}  load avg")
    for r in rows:
        loads = "/".join(f"{x:.1f}" for x in r["load"])
        print(f"{r['measure']:<78} {r['feast']:>12,.2f} {r['featurelake']:>12,.2f} {r['unit']:>6} "
              f"{r['ratio']:>6.2f}x  {loads}")  # fmt: skip
    print(f"\nfeaturelake backfill alone: {fl['backfill']['seconds']:.2f} s; "
          f"sync {fl['sync']['seconds']:.2f} s; Feast materialize {fe['materialize']['seconds']:.2f} s")  # fmt: skip
    print(f"training-set rows: featurelake {fl['training_set']['rows_out']:,}, Feast {fe['training_set']['rows_out']:,} "
          f"of {fl['training_set']['entity_rows']:,} entity rows; same values on {check['common_rows']:,} common rows: "
          f"{check['mismatched_rows']} mismatched")  # fmt: skip
    print(
        f"\nconcurrent keep-alive clients, 1 entity (wrk; featurelake serve: {fl['workers']} workers, "
        f"Feast: 1 worker (its default) and {fl['workers']} workers):"
    )
    print(f"{'clients':>8} {'fl req/s':>9} {'p50':>6} {'p99':>7} {'Feast req/s':>11} {'p50':>6} {'p99':>7} "
          f"{'ratio':>6} {'Feast xN req/s':>14} {'p50':>6} {'p99':>7} {'ratio':>6}  load avg")  # fmt: skip
    for c, d in fl["concurrency"].items():
        f, g = fe["concurrency"][c], fe["concurrency_workers"][c]
        print(f"{c:>8} {d['rps']:>9,.0f} {d['p50']:>6.2f} {d['p99']:>7.2f} {f['rps']:>11,.0f} {f['p50']:>6.2f} "
              f"{f['p99']:>7.2f} {d['rps'] / f['rps']:>5.2f}x {g['rps']:>14,.0f} {g['p50']:>6.2f} {g['p99']:>7.2f} "
              f"{d['rps'] / g['rps']:>5.2f}x  {d['load'][0]:.1f}-{d['load'][1]:.1f}")  # fmt: skip
        errors = d["errors"] + f["errors"] + g["errors"]
        if errors:
            print(f"         errors: featurelake {d['errors']}, Feast {f['errors']}, Feast xN {g['errors']}")
    for kind in ("http",):
        for w in ("1", "100"):
            print(f"{kind} {w}: Feast errors {fe[kind][w]['errors']} stalls>250ms {fe[kind][w]['stalls']}; "
                  f"featurelake errors {fl[kind][w]['errors']} stalls {fl[kind][w]['stalls']}")  # fmt: skip
    print("ratio: Feast/featurelake for times, featurelake/Feast for rows/s; > 1 means featurelake is faster")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=2000, help="timed lookups per width and system")
    ap.add_argument("--seconds", type=int, default=90, help="time limit per HTTP width and system")
    ap.add_argument(
        "--concurrency-seconds", type=int, default=10, help="wrk run per concurrency level and server"
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-docs", action="store_true", help="print only; do not rewrite docs/benchmarks.md")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    scale_group = ap.add_mutually_exclusive_group()
    scale_group.add_argument("--no-scale", action="store_true", help="skip the scale section")
    scale_group.add_argument("--scale-only", action="store_true", help="run the scale section alone")
    ap.add_argument("--scale-sizes", default="3M,10M,30M", help="rows of the scale section, e.g. 3M,10M")
    ap.add_argument("--scale-cap-gb", type=float, default=8.0, help="memory cap of each Feast scale job (GB)")
    ap.add_argument(
        "--scale-timeout", type=float, default=1800.0, help="time limit of each Feast scale job (s)"
    )
    ap.add_argument(
        "--scale-fl-json",
        type=Path,
        help="featurelake's figures from an earlier `benchmarks/scale.py --json` run (not re-run)",
    )
    ap.add_argument("--scale-fl-log", type=Path, help="that run's printed output (for its load averages)")
    args = ap.parse_args()
    if not PEERS_PY.exists():
        raise SystemExit(f"{PEERS_PY} missing: run `make bench-peers` (it runs benchmarks/peers/setup.sh)")
    if args.scale_only:
        return run_scale(args)
    wrk_binary()  # fail now, not after the data generation, when wrk is missing

    work = Path(tempfile.mkdtemp(prefix="fl-bench-peers-"))
    print(f"work dir {work}; load average {os.getloadavg()}", file=sys.stderr)
    meta = generate(work, args.rows, args.users, args.entities, args.seed)
    redis_proc, redis_port = start_redis(work)
    try:
        os.environ["FEATURELAKE_ONLINE_STORE__URL"] = f"redis://127.0.0.1:{redis_port}/0"
        fl = featurelake_side(work, meta, args)
        feast_out = work / "feast.json"
        subprocess.run(
            [str(PEERS_PY), str(HERE / "feast_side.py"), "--work", str(work), "--redis-port", str(redis_port),
             "--out", str(feast_out), "--requests", str(args.requests), "--seconds", str(args.seconds),
             "--seed", str(args.seed), "--concurrency-seconds", str(args.concurrency_seconds),
             "--workers", str(workers())],
            check=True,
        )  # fmt: skip
        fe = json.loads(feast_out.read_text())
        check = compare_training_sets(work)
        rows = lines(fl, fe)
        print_table(rows, fl, fe, check)
        results = {"machine": machine(), "meta": meta, "featurelake": fl, "feast": fe, "check": check,
                   "rows": rows, "args": vars(args), "load_end": os.getloadavg()}  # fmt: skip
        (HERE / "last-run.json").write_text(json.dumps(results, indent=1, default=str))
        if not args.no_docs:
            subprocess.run(
                [str(PEERS_PY), str(HERE / "chart.py"), str(HERE / "last-run.json"),
                 str(ROOT / "docs" / "img" / "bench-peers.png")],
                check=True,
            )  # fmt: skip
            last_scale = HERE / "last-scale.json"
            scale = json.loads(last_scale.read_text()) if last_scale.exists() else None
            write_page(results, ROOT / "docs" / "benchmarks.md", scale)
            print("wrote docs/benchmarks.md and docs/img/bench-peers.png", file=sys.stderr)
        bad = check["mismatched_rows"] or fl["training_set"]["rows_out"] != meta["entities"]
    finally:
        redis_proc.kill()
        redis_proc.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not args.no_scale:
        run_scale(args)
    return 1 if bad else 0


def run_scale(args: argparse.Namespace) -> int:
    """The scale section: both sides at --scale-sizes, then its chart and its part of docs/benchmarks.md."""
    work = Path(tempfile.mkdtemp(prefix="fl-bench-peers-scale-"))
    print(f"scale section: sizes {args.scale_sizes}; load average {os.getloadavg()}", file=sys.stderr)
    try:
        scale = scale_section.run(
            sizes=args.scale_sizes, work=work, peers_py=PEERS_PY, cap_gb=args.scale_cap_gb,
            timeout=args.scale_timeout, fl_json=args.scale_fl_json, fl_log=args.scale_fl_log, machine=machine(),
        )  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    page = ROOT / "docs" / "benchmarks.md"
    print("\n".join(line for line in scale_section_text(scale)), file=sys.stderr)
    if not args.no_docs:
        scale_section.chart(PEERS_PY, ROOT / "docs" / "img" / "scale-vs-feast.png")
        write_scale_section(scale, page)
        print(
            "wrote the scale section of docs/benchmarks.md and docs/img/scale-vs-feast.png", file=sys.stderr
        )
    return 0


def scale_section_text(scale: dict[str, Any]) -> list[str]:
    """One line per job and size, both systems, for the console."""
    out = ["", f"{'system':<12} {'job':<12} {'rows':>11} {'time s':>9} {'peak RSS MB':>12}  status / load"]
    for system, jobs in (("featurelake", scale["featurelake"]), ("Feast", scale["feast"]["feast"])):
        for job, pts in jobs.items():
            for p in pts:
                out.append(f"{system:<12} {job:<12} {p['rows']:>11,} {p['seconds']:>9.1f} "
                           f"{p['peak_rss_mb']:>12,.0f}  {p.get('status', 'finished')} {p.get('load', '')}")  # fmt: skip
    return out


if __name__ == "__main__":
    sys.exit(main())

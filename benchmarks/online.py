"""Benchmark: online sync into Redis and lookup latency, each beside raw redis-py doing the same work.

(a) **Sync**: ``fl.sync()`` of a feature table of ROWS rows x 20 double features (USERS entities x DAYS days,
    committed straight into the Iceberg table) into a fresh redis-server: read the data files, reduce to the
    latest row per entity, encode, write through the Lua script, set the watermark, move the tag. Reference:
    a raw redis-py pipelined ``HSET`` of the same latest rows (50k hashes x 20 fields), already in memory as
    Python dicts (so the reference does strictly less work). Ratio = reference time / sync time (target >= 0.6;
    Feast 0.67 materialized 1M rows x 10 features into 50k hashes in 4.95-6.61 s on this kind of machine).
(b) **Server**: ``featurelake serve`` started as a process; a load generator in another process sends
    sequential ``POST /get-online-features`` for 1 and for 100 random entities (all 20 features) on ONE
    reused ``http.client.HTTPConnection`` (the stdlib keep-alive client: what a Python user sees), timed from
    sending the request to the end of reading the response; p50/p99 beside the target. Also shown: the same
    with the client's own ``json.dumps`` of the request and ``json.loads`` of the response. Reference: raw
    redis-py ``HGETALL`` (1 key) and pipelined ``HGETALL`` (100 keys) of the same entities from the
    reference hashes, timed in that same load-generator process.
(c) **In-process lookup**: ``fl.online.get_online_features`` for 1 and 100 entities, and ``fl.online.get``
    of 1 entity, beside the same raw redis-py lookups, in this process.
(d) **Concurrent clients**: ``featurelake serve`` with its default workers (one per core) under 1, 8 and 32
    concurrent keep-alive clients (``wrk`` outside the server, benchmarks/peers/concurrency.py: one random
    entity per request, 2 s warm-up, then ``--concurrency-seconds``): requests/s and p50/p99. Reference: the
    same server with ``--workers 1``, measured right after it; ratio = requests/s of the default / of one
    worker. Feast under the same clients: ``make bench-peers`` (docs/benchmarks.md).
(e) **On-demand overhead**: in process, 1 entity, ``bench_ratio:amount_x_f00`` (an on-demand view multiplying
    a request field by a stored feature: ``pc.multiply(t["amount"], t["f00"])``, mode arrow) beside the plain
    lookup ``bench_features:f00`` of the same entity, interleaved; overhead = difference of the medians
    (target <= 0.2 ms), and the ratio of the medians. The on-demand lookup reads all 20 features of its source
    view (the udf sees them all, as in a training set), builds the input table and runs the udf.
(f) **Push -> online visibility**: ``featurelake serve --workers 1``; a load generator in another process sends
    sequential keep-alive ``POST /push`` (``"to": "online"``, one row of 20 features for a random entity, an
    event time newer than any before) and right after the 200 a ``POST /get-online-features`` of that entity,
    repeated until it returns the pushed value; visibility = from sending the push to that answer (p50/p99,
    target p99 <= 5 ms), and the push alone. Reference: raw redis-py ``HSET`` of the row plus ``HGETALL`` of it,
    timed in that same process; ratio = featurelake p99 / raw p99.

    .venv/bin/python benchmarks/online.py [--users 50000] [--days 20] [--requests 2000]
                                          [--concurrency-seconds 10] [--json PATH] [--on-demand-only]
                                          [--push-only] [--lookups-only [--rounds 3]]

``--lookups-only`` runs (b) and (c) alone, ``--rounds`` times, and prints each round and the best p99 of each.

Targets (feast-baseline.md, same machine): sync >= 2x faster than Feast's materialize; HTTP p99 with one
stdlib keep-alive client <= 1 ms at 1 entity and <= 3 ms at 100 (issue #23; before: 2 ms / 10 ms);
in-process 100-entity lookup p99 <= 3 ms; p99 <= 25 ms at 32 concurrent clients (one entity), and >= 2x
Feast's requests/s at every level (make bench-peers). Client, server and Redis share the 2 cores, so numbers
vary between runs; compare the ratios. Exits non-zero only on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis

import featurelake

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from concurrency import run_levels, wrk_binary

FEATURES = [f"f{i:02d}" for i in range(20)]
VIEW = "bench_features"
FEAST_MATERIALIZE_S = (4.95, 6.61)  # 1M rows x 10 features -> 50k hashes, feast-baseline.md
SERVER_TARGETS_MS = {1: 1.0, 100: 3.0}  # issue #23 item 4: p99 with one stdlib keep-alive client

FEATURES_PY = f'''
from datetime import timedelta
from featurelake import Entity, FeatureView, Source

user = Entity("user", join_key="user_id", dtype="long")

{VIEW} = FeatureView(
    name="{VIEW}",
    entity=user,
    source=Source.parquet("data/src/*.parquet", timestamp_field="event_ts"),
    query="SELECT * FROM source",
    fields={{{", ".join(f'"{f}": "double"' for f in FEATURES)}}},
    ttl=timedelta(days=3650),
)

import pyarrow.compute as pc
from featurelake import OnDemandFeatureView, RequestSource

txn = RequestSource({{"amount": "double"}}, name="txn")


def scaled(t):
    return {{"amount_x_f00": pc.multiply(t["amount"], t["f00"])}}


bench_ratio = OnDemandFeatureView(
    name="bench_ratio", sources=[{VIEW}, txn], fields={{"amount_x_f00": "double"}}, udf=scaled
)
'''
ON_DEMAND_TARGET_MS = 0.2
PUSH_TARGET_MS = 5.0

PUSH_LOADGEN = textwrap.dedent(
    """
    import http.client, json, random, sys, time
    from datetime import UTC, datetime, timedelta
    import redis

    port, redis_port, n, users, seed = (int(a) for a in sys.argv[1:6])
    view, features = sys.argv[6], json.loads(sys.argv[7])
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    raw = redis.Redis(host="127.0.0.1", port=redis_port, db=1)
    start = datetime.now(UTC)
    visible, pushed, ref, retries = [], [], [], 0
    for i in range(n + 200):  # the first 200 warm up
        uid = rng.randint(1, users)
        values = {f: rng.random() for f in features}
        ts = (start + timedelta(milliseconds=i)).isoformat()  # newer than every earlier event
        df = {"user_id": [uid], "event_ts": [ts], **{f: [v] for f, v in values.items()}}
        body = json.dumps({"push_source_name": view, "df": df, "to": "online"})
        lookup = json.dumps({"features": [f"{view}:f00"], "entities": {"user_id": [uid]}})
        t0 = time.perf_counter()
        conn.request("POST", "/push", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        t1 = time.perf_counter()
        if resp.status != 200:
            raise SystemExit(f"push: HTTP {resp.status}: {data[:300]!r}")
        while True:
            conn.request("POST", "/get-online-features", lookup)
            resp = conn.getresponse()
            got = json.loads(resp.read())
            if got["results"][1]["values"][0] == values["f00"]:
                break
            retries += 1
        t2 = time.perf_counter()
        raw.hset(f"push:{uid}", mapping=values)
        raw.hgetall(f"push:{uid}")
        t3 = time.perf_counter()
        if i >= 200:
            visible.append(t2 - t0)
            pushed.append(t1 - t0)
            ref.append(t3 - t2)
    print(json.dumps({"visible": visible, "push": pushed, "raw": ref, "retries": retries}))
    """
)

LOADGEN = textwrap.dedent(
    """
    import http.client, json, random, sys, time
    import redis

    port, redis_port, n, users, seed = (int(a) for a in sys.argv[1:6])
    features = json.loads(sys.argv[6])
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    raw = redis.Redis(host="127.0.0.1", port=redis_port, db=1)
    out = {}
    for width in (1, 100):
        lat, ref, full = [], [], []
        for i in range(n + 200):  # the first 200 warm up
            ids = [rng.randint(1, users) for _ in range(width)]
            tj = time.perf_counter()
            body = json.dumps({"features": features, "entities": {"user_id": ids}})
            t0 = time.perf_counter()
            conn.request("POST", "/get-online-features", body)  # no Content-Type, as curl -d sends it
            resp = conn.getresponse()
            data = resp.read()
            t1 = time.perf_counter()
            if resp.status != 200:
                raise SystemExit(f"HTTP {resp.status}: {data[:300]!r}")
            json.loads(data)
            t2 = time.perf_counter()
            if width == 1:
                raw.hgetall(f"ref:{ids[0]}")
            else:
                pipe = raw.pipeline(transaction=False)
                for u in ids:
                    pipe.hgetall(f"ref:{u}")
                pipe.execute()
            t3 = time.perf_counter()
            if i >= 200:
                lat.append(t1 - t0)
                ref.append(t3 - t2)
                full.append(t2 - tj)
        out[width] = {"server": lat, "raw": ref, "client_json": full}
    print(json.dumps(out))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(samples: list[float], q: float) -> float:
    xs = sorted(samples)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(500):
        try:
            if redis.Redis(port=port).ping():
                return proc, port
        except redis.RedisError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("redis-server did not start")


def make_rows(users: int, days: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = users * days
    start = datetime(2024, 1, 1, tzinfo=UTC)
    day_us = np.array(
        [int((start + timedelta(days=d)).timestamp() * 1e6) for d in range(days)], dtype=np.int64
    )
    cols: dict[str, Any] = {
        "user_id": np.tile(np.arange(1, users + 1, dtype=np.int64), days),
        "event_ts": pa.array(np.repeat(day_us, users)).cast(pa.timestamp("us", tz="UTC")),
    }
    for f in FEATURES:
        cols[f] = rng.random(n)
    return pa.table(cols)


def setup_project(root: Path, redis_url: str, rows: pa.Table) -> featurelake.Featurelake:
    root.mkdir(parents=True)
    (root / "featurelake.yaml").write_text(
        f"project: bench\nonline_store:\n  type: redis\n  url: {redis_url}\n"
    )
    (root / "features.py").write_text(FEATURES_PY)
    (root / "data/src").mkdir(parents=True)
    pq.write_table(rows.slice(0, 1), root / "data/src/part-0.parquet")
    fl = featurelake.open(root)
    fl.apply()
    tbl = fl.project.load_table(VIEW)
    tbl.append(rows.cast(tbl.schema().as_arrow()))
    return fl


def latest_rows(rows: pa.Table, days: int, users: int) -> list[tuple[int, dict[str, float]]]:
    last = rows.slice((days - 1) * users, users)
    ids = last.column("user_id").to_pylist()
    cols = [last.column(f).to_pylist() for f in FEATURES]
    return [(u, dict(zip(FEATURES, vals, strict=True))) for u, *vals in zip(ids, *cols, strict=True)]


def raw_hset(client: redis.Redis, latest: list[tuple[int, dict[Any, float]]]) -> float:
    client.flushdb()
    t0 = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i, (u, mapping) in enumerate(latest, 1):
        pipe.hset(f"ref:{u}", mapping=mapping)
        if i % 1000 == 0:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - t0


def bench_sync(args: argparse.Namespace, work: Path, redis_port: int) -> dict[str, Any]:
    rows = make_rows(args.users, args.days, args.seed)
    latest = latest_rows(rows, args.days, args.users)
    ref_client = redis.Redis(port=redis_port, db=1)
    samples: dict[str, list[float]] = {"sync": [], "raw": [], "incremental": []}
    fl = None
    for rep in range(args.repeats):
        if fl is not None:
            fl.close()
        redis.Redis(port=redis_port, db=0).flushdb()
        fl = setup_project(work / f"proj{rep}", f"redis://127.0.0.1:{redis_port}/0", rows)
        order = ["raw", "sync"] if rep % 2 else ["sync", "raw"]
        for side in order:
            if side == "raw":
                samples["raw"].append(raw_hset(ref_client, latest))
            else:
                t0 = time.perf_counter()
                (result,) = fl.sync()
                samples["sync"].append(time.perf_counter() - t0)
                assert result.mode == "full" and result.keys == args.users, result
        # One more day for every user: an incremental sync of users rows.
        extra = make_rows(args.users, 1, args.seed + rep + 1).set_column(
            1, "event_ts", pa.array([datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=args.days)] * args.users,
                                    pa.timestamp("us", tz="UTC"))
        )  # fmt: skip
        tbl = fl.project.load_table(VIEW)
        tbl.append(extra.cast(tbl.schema().as_arrow()))
        t0 = time.perf_counter()
        (inc,) = fl.sync()
        samples["incremental"].append(time.perf_counter() - t0)
        assert inc.mode == "incremental" and inc.keys == args.users, inc
    assert fl is not None
    # Restore the reference hashes (the lookups compare against them) and leave the project for (b) and (c).
    raw_hset(ref_client, latest)
    return {"fl": fl, "samples": samples, "rows": rows.num_rows}


#: The Redis database of (a)'s CLI runs (see bench_cli_sync).
CLI_DB = 2


def check_served(fl: featurelake.Featurelake, users: int) -> None:
    """Stop unless the synced features are there: lookups of missing keys would time misses."""
    ids = list(range(1, users + 1, max(1, users // 50)))
    got = fl.online.get_online_features([f"{VIEW}:{FEATURES[0]}"], {"user_id": ids})
    statuses = {s for r in got["results"][1:] for s in r["statuses"]}
    if statuses != {"PRESENT"}:
        raise SystemExit(f"the online store does not hold the synced features (statuses {sorted(statuses)})")


def bench_cli_sync(args: argparse.Namespace, work: Path, redis_port: int, rows: pa.Table) -> dict[str, Any]:
    """``featurelake sync VIEW`` as a real CLI process (interpreter start, imports, project open, sync, output)
    on a fresh project and an empty Redis each time, beside the raw reference (in this process: no start-up).

    Its store is database 2: database 0 holds the store of the project (b) to (f) look up, whose keys a
    flush here would remove (each project's keys carry its own scope), leaving those lookups to time misses.
    """
    latest = latest_rows(rows, args.days, args.users)
    ref_client, store = redis.Redis(port=redis_port, db=1), redis.Redis(port=redis_port, db=CLI_DB)
    exe = str(Path(sys.executable).parent / "featurelake")
    samples: dict[str, list[float]] = {"cli": [], "raw": []}
    for rep in range(args.repeats):
        store.flushdb()
        root = work / f"cli{rep}"
        setup_project(root, f"redis://127.0.0.1:{redis_port}/{CLI_DB}", rows).close()
        t0 = time.perf_counter()
        done = subprocess.run([exe, "-C", str(root), "sync", VIEW], capture_output=True, text=True)
        samples["cli"].append(time.perf_counter() - t0)
        if done.returncode != 0 or store.dbsize() < args.users:
            raise SystemExit(f"featurelake sync failed ({done.returncode}): {done.stderr[-500:]}")
        samples["raw"].append(raw_hset(ref_client, latest))
    raw_hset(ref_client, latest)  # the lookups compare against the reference hashes
    return samples


@contextlib.contextmanager
def running_server(project_dir: Path, *extra: str) -> Iterator[int]:
    """``featurelake serve`` (``--log-level warning`` plus ``extra``) on a free port, answering, until the end."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "featurelake", "-C", str(project_dir), "serve", "--port", str(port),
         "--log-level", "warning", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(1200):
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read().decode() if server.stderr else ''}")
            try:  # the socket is bound before the workers are ready: wait for an answer
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            time.sleep(0.1)
        yield port
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


def bench_concurrency(args: argparse.Namespace, project_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The default server and the one-worker reference under 1, 8 and 32 concurrent keep-alive clients."""
    refs = [f"{VIEW}:{f}" for f in FEATURES]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, extra in (("default", ()), ("one worker", ("--workers", "1"))):
        with running_server(project_dir, *extra) as port:
            out[name] = run_levels(port, args.users, refs, seconds=args.concurrency_seconds, seed=args.seed)
    return out


def bench_server(
    args: argparse.Namespace, project_dir: Path, redis_port: int
) -> dict[int, dict[str, list[float]]]:
    with running_server(project_dir) as port:
        features = json.dumps([f"{VIEW}:{f}" for f in FEATURES])
        out = subprocess.run(
            [sys.executable, "-c", LOADGEN, str(port), str(redis_port), str(args.requests), str(args.users),
             str(args.seed), features],
            capture_output=True,
            text=True,
            timeout=900,
        )  # fmt: skip
        if out.returncode != 0:
            raise SystemExit(f"load generator failed: {out.stderr}{out.stdout}")
        return {int(k): v for k, v in json.loads(out.stdout).items()}


def bench_inprocess(
    args: argparse.Namespace, fl: featurelake.Featurelake, redis_port: int
) -> dict[int, dict[str, list[float]]]:
    rng = np.random.default_rng(args.seed)
    raw = redis.Redis(port=redis_port, db=1)
    names = [f"{VIEW}:{f}" for f in FEATURES]
    out: dict[int, dict[str, list[float]]] = {}
    for width in (1, 100):
        fl_lat: list[float] = []
        raw_lat: list[float] = []
        for i in range(args.requests + 200):
            ids = [int(x) for x in rng.integers(1, args.users + 1, width)]
            t0 = time.perf_counter()
            fl.online.get_online_features(names, {"user_id": ids})
            t1 = time.perf_counter()
            pipe = raw.pipeline(transaction=False)
            for u in ids:
                pipe.hgetall(f"ref:{u}")
            pipe.execute()
            t2 = time.perf_counter()
            if i >= 200:
                fl_lat.append(t1 - t0)
                raw_lat.append(t2 - t1)
        out[width] = {"featurelake": fl_lat, "raw": raw_lat}
    get_lat: list[float] = []
    for i in range(args.requests + 200):
        uid = int(rng.integers(1, args.users + 1))
        t0 = time.perf_counter()
        fl.online.get(VIEW, [uid])
        t1 = time.perf_counter()
        if i >= 200:
            get_lat.append(t1 - t0)
    out[1]["get"] = get_lat
    return out


def print_server(server: dict[int, dict[str, list[float]]]) -> None:
    n = len(server[1]["server"])
    print(f"\n(b) HTTP server, {n} sequential requests per width on one stdlib keep-alive connection (ms)")
    print(
        f"  {'entities':>8s} {'http.client p50':>15s} {'p99':>6s}  {'target p99':>10s}"
        f" {'+client JSON p50':>16s} {'p99':>6s} {'raw p50':>8s} {'raw p99':>8s}"
    )
    for width, d in server.items():
        p99 = pct(d["server"], 0.99)
        met = "met" if p99 <= SERVER_TARGETS_MS[width] else "NOT met"
        print(
            f"  {width:>8d} {pct(d['server'], 0.5):15.2f} {p99:6.2f}  <= {SERVER_TARGETS_MS[width]:g} {met:>7s}"
            f" {pct(d['client_json'], 0.5):16.2f} {pct(d['client_json'], 0.99):6.2f}"
            f" {pct(d['raw'], 0.5):8.2f} {pct(d['raw'], 0.99):8.2f}"
        )


def print_inprocess(inproc: dict[int, dict[str, list[float]]]) -> None:
    n = len(inproc[1]["featurelake"])
    print(f"\n(c) in-process lookups, {n} calls per line (ms)")
    print(f"  {'':44s} {'p50':>7s} {'p99':>7s} {'raw p50':>8s} {'raw p99':>8s}  p99 ratio fl/raw")
    lines = [
        (f"get_online_features, {w} entit{'y' if w == 1 else 'ies'}", d["featurelake"], d["raw"])
        for w, d in inproc.items()
    ]
    lines.insert(1, ("get(view, [key]), 1 entity", inproc[1]["get"], inproc[1]["raw"]))
    for label, lat, raw in lines:
        print(
            f"  {label:44s} {pct(lat, 0.5):7.3f} {pct(lat, 0.99):7.3f} {pct(raw, 0.5):8.3f} {pct(raw, 0.99):8.3f}"
            f"  {pct(lat, 0.99) / pct(raw, 0.99):.2f}" + ("  (target p99 <= 3 ms)" if "100" in label else "")
        )


@contextlib.contextmanager
def synced_project(args: argparse.Namespace) -> Iterator[tuple[featurelake.Featurelake, pa.Table, int]]:
    """A redis-server of its own and a project of ``args``'s rows synced into it, for the ``--*-only``
    runs: (the project, its rows, the Redis port); everything is stopped and removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="fl-online-bench-"))
    redis_proc, redis_port = start_redis(work)
    try:
        rows = make_rows(args.users, args.days, args.seed)
        fl = setup_project(work / "proj", f"redis://127.0.0.1:{redis_port}/0", rows)
        try:
            fl.sync()
            yield fl, rows, redis_port
        finally:
            fl.close()
    finally:
        redis_proc.kill()
        redis_proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def lookups_only(args: argparse.Namespace) -> None:
    """(b) and (c) alone, ``args.rounds`` times, on a synced project (no wrk); best p99 of each line."""
    with synced_project(args) as (fl, rows, redis_port):
        raw_hset(redis.Redis(port=redis_port, db=1), latest_rows(rows, args.days, args.users))
        print(f"{args.users} users x {args.days} days x 20 features; {args.rounds} rounds")
        best: dict[str, float] = {}
        for r in range(args.rounds):
            load = os.getloadavg()[0]
            check_served(fl, args.users)
            server = bench_server(args, fl.project.root, redis_port)
            inproc = bench_inprocess(args, fl, redis_port)
            print(f"\n--- round {r + 1}: load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
            print_server(server)
            print_inprocess(inproc)
            figures = {
                "http 1": pct(server[1]["server"], 0.99),
                "http 100": pct(server[100]["server"], 0.99),
                "in-process get_online_features 1": pct(inproc[1]["featurelake"], 0.99),
                "in-process get 1": pct(inproc[1]["get"], 0.99),
                "in-process get_online_features 100": pct(inproc[100]["featurelake"], 0.99),
            }
            for k, v in figures.items():
                best[k] = min(best.get(k, v), v)
        print(f"\nbest p99 of {args.rounds} rounds (ms):")
        for k, v in best.items():
            target = {"http 1": SERVER_TARGETS_MS[1], "http 100": SERVER_TARGETS_MS[100]}.get(k)
            verdict = f"  target <= {target:g}: {'met' if v <= target else 'NOT met'}" if target else ""
            print(f"  {k:38s} {v:7.3f}{verdict}")
        print(f"load average at the end {os.getloadavg()[0]:.2f}")


def bench_on_demand(args: argparse.Namespace, fl: featurelake.Featurelake) -> dict[str, list[float]]:
    """Interleaved in-process lookups of 1 entity: the on-demand feature vs a plain stored one."""
    rng = np.random.default_rng(args.seed + 1)
    plain, odfv = [f"{VIEW}:f00"], ["bench_ratio:amount_x_f00"]
    out: dict[str, list[float]] = {"plain": [], "on_demand": []}
    for i in range(args.requests + 200):
        uid = int(rng.integers(1, args.users + 1))
        amount = float(rng.random())
        t0 = time.perf_counter()
        fl.online.get_online_features(plain, {"user_id": [uid]})
        t1 = time.perf_counter()
        got = fl.online.get_online_features(odfv, {"user_id": [uid], "amount": [amount]})
        t2 = time.perf_counter()
        if got["results"][1]["statuses"][0] != "PRESENT":
            raise SystemExit(f"on-demand lookup of user {uid} answered {got['results'][1]}")
        if i >= 200:
            out["plain"].append(t1 - t0)
            out["on_demand"].append(t2 - t1)
    return out


def print_on_demand(d: dict[str, list[float]]) -> None:
    plain, odfv = statistics.median(d["plain"]) * 1e3, statistics.median(d["on_demand"]) * 1e3
    print(f"\n(e) on-demand feature, 1 entity, {len(d['plain'])} interleaved in-process lookups each (ms)")
    print(f"  {'lookup':48s} {'p50':>7s} {'p99':>7s}")
    print(f"  {'plain bench_features:f00':48s} {plain:7.3f} {pct(d['plain'], 0.99):7.3f}")
    print(
        f"  {'on demand bench_ratio:amount_x_f00 (+request field)':48s} {odfv:7.3f} {pct(d['on_demand'], 0.99):7.3f}"
    )
    print(
        f"  overhead per lookup (p50 difference): {odfv - plain:.3f} ms (target <= {ON_DEMAND_TARGET_MS} ms); "
        f"ratio to the plain lookup: {odfv / plain:.2f}"
    )


def bench_push(args: argparse.Namespace, project_dir: Path, redis_port: int) -> dict[str, Any]:
    """(f): push -> online visibility over HTTP, beside raw redis-py HSET + HGETALL."""
    with running_server(project_dir, "--workers", "1") as port:
        out = subprocess.run(
            [sys.executable, "-c", PUSH_LOADGEN, str(port), str(redis_port), str(args.requests), str(args.users),
             str(args.seed), VIEW, json.dumps(FEATURES)],
            capture_output=True,
            text=True,
            timeout=900,
        )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"push load generator failed: {out.stderr}{out.stdout}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def print_push(d: dict[str, Any]) -> None:
    n = len(d["visible"])
    print(f"\n(f) push -> online visibility over HTTP, {n} sequential pushes of 1 row x 20 features (ms)")
    print(f"  {'':44s} {'p50':>7s} {'p99':>7s}")
    print(
        f"  {'POST /push, then lookups until it is visible':44s} {pct(d['visible'], 0.5):7.2f} {pct(d['visible'], 0.99):7.2f}"
    )
    print(f"  {'POST /push alone (200 received)':44s} {pct(d['push'], 0.5):7.2f} {pct(d['push'], 0.99):7.2f}")
    print(f"  {'raw redis-py HSET + HGETALL':44s} {pct(d['raw'], 0.5):7.2f} {pct(d['raw'], 0.99):7.2f}")
    p99 = pct(d["visible"], 0.99)
    met = "met" if p99 <= PUSH_TARGET_MS else "NOT met"
    print(
        f"  visibility p99 {p99:.2f} ms (target <= {PUSH_TARGET_MS:g} ms: {met}); ratio to raw p99: "
        f"{p99 / pct(d['raw'], 0.99):.1f}; lookups that did not see the push yet: {d['retries']}"
    )


def push_only(args: argparse.Namespace) -> None:
    """(f) alone, on a small synced project (no wrk)."""
    with synced_project(args) as (fl, _, redis_port):
        print(f"load average {os.getloadavg()[0]:.2f}; {args.users} users x {args.days} days x 20 features")
        result = bench_push(args, fl.project.root, redis_port)
        print_push(result)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
        if args.json:
            args.json.write_text(json.dumps({"push": result}, indent=1))


def on_demand_only(args: argparse.Namespace) -> None:
    """(e) alone, on a small synced project (no server, no wrk)."""
    with synced_project(args) as (fl, _, _):
        print(f"load average {os.getloadavg()[0]:.2f}; {args.users} users x {args.days} days x 20 features")
        print_on_demand(bench_on_demand(args, fl))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--requests", type=int, default=2000, help="timed requests per lookup width")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--concurrency-seconds", type=float, default=10.0, help="wrk run per level and server")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--on-demand-only", action="store_true", help="only (e), on a small synced project")
    ap.add_argument("--push-only", action="store_true", help="only (f), on a small synced project")
    ap.add_argument("--lookups-only", action="store_true", help="only (b) and (c), --rounds times")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --lookups-only")
    args = ap.parse_args()
    if args.on_demand_only:
        on_demand_only(args)
        return
    if args.push_only:
        push_only(args)
        return
    if args.lookups_only:
        lookups_only(args)
        return
    wrk_binary()  # fail now when wrk is missing, not after the sync

    work = Path(tempfile.mkdtemp(prefix="fl-online-bench-"))
    redis_proc, redis_port = start_redis(work)
    try:
        print(f"load average {os.getloadavg()[0]:.2f}; {args.users} users x {args.days} days x 20 features")
        synced = bench_sync(args, work, redis_port)
        fl = synced["fl"]
        s = synced["samples"]
        rows = synced["rows"]
        best_sync, best_raw = min(s["sync"]), min(s["raw"])
        print("\n(a) sync into Redis (best of", args.repeats, "runs; median in brackets)")
        print(
            f"  {'featurelake sync (full, first)':42s} {best_sync:7.2f} s [{statistics.median(s['sync']):.2f}]"
            f"  {rows / best_sync:>10,.0f} source rows/s  {args.users / best_sync:>9,.0f} keys/s"
        )
        print(
            f"  {'featurelake sync (incremental, +1 day)':42s} {min(s['incremental']):7.2f} s"
            f" [{statistics.median(s['incremental']):.2f}]  {args.users / min(s['incremental']):>10,.0f} rows/s"
        )
        print(
            f"  {'raw redis-py pipelined HSET of latest rows':42s} {best_raw:7.2f} s [{statistics.median(s['raw']):.2f}]"
            f"  {args.users / best_raw:>31,.0f} keys/s"
        )
        print(f"  ratio raw time / sync time: {best_raw / best_sync:.2f} (target >= 0.6)")
        cli = bench_cli_sync(args, work, redis_port, make_rows(args.users, args.days, args.seed))
        best_cli, best_raw_cli = min(cli["cli"]), min(cli["raw"])
        print(
            f"  {'featurelake sync VIEW (CLI process, start-up in)':42s} {best_cli:7.2f} s [{statistics.median(cli['cli']):.2f}]"
            f"  ratio raw / CLI {best_raw_cli / best_cli:.2f} (target >= 1.0; raw in memory, no process start;"
            f" load {os.getloadavg()[0]:.2f})"
        )
        print(
            f"  vs Feast materialize {FEAST_MATERIALIZE_S[0]}-{FEAST_MATERIALIZE_S[1]} s (10 features): "
            f"{FEAST_MATERIALIZE_S[0] / best_sync:.1f}-{FEAST_MATERIALIZE_S[1] / best_sync:.1f}x faster (target >= 2x)"
        )

        check_served(fl, args.users)
        server = bench_server(args, fl.project.root, redis_port)
        print_server(server)
        inproc = bench_inprocess(args, fl, redis_port)
        print_inprocess(inproc)
        conc = bench_concurrency(args, fl.project.root)
        workers = len(os.sched_getaffinity(0))
        print(
            f"\n(d) concurrent keep-alive clients, 1 entity x 20 features, wrk {args.concurrency_seconds:g} s per"
            f" level: `featurelake serve` (default: {workers} workers) vs --workers 1"
        )
        print(
            f"  {'clients':>7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'1 worker':>9} {'p50 ms':>7} {'p99 ms':>7}"
            f" {'ratio':>6}  load avg"
        )
        for c, d in conc["default"].items():
            r = conc["one worker"][c]
            print(
                f"  {c:>7} {d['rps']:>8,.0f} {d['p50']:>7.2f} {d['p99']:>7.2f} {r['rps']:>9,.0f} {r['p50']:>7.2f}"
                f" {r['p99']:>7.2f} {d['rps'] / r['rps']:>5.2f}x  {d['load'][0]:.2f}-{d['load'][1]:.2f}"
                + ("  (target p99 <= 25 ms)" if c == "32" else "")
            )
        errors = sum(x["errors"] for side in conc.values() for x in side.values())
        print(f"  errors (connect, read, write, timeout, non-2xx): {errors}")
        on_demand = bench_on_demand(args, fl)
        print_on_demand(on_demand)
        pushed = bench_push(args, fl.project.root, redis_port)
        print_push(pushed)
        print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "sync": s,
                        "server": server,
                        "inprocess": inproc,
                        "concurrency": conc,
                        "on_demand": on_demand,
                        "push": pushed,
                    },
                    indent=1,
                )
            )
        fl.close()
    finally:
        redis_proc.kill()
        redis_proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

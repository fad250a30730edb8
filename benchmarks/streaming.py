"""Benchmark: stream ingestion (``featurelake ingest``) from Redis Streams into Iceberg + the online store.

MESSAGES JSON messages (``user_features``: user_id over USERS users, a zoned event time, 3 features) are
XADDed to a stream of a fresh redis-server on a free loopback port (untimed). Then, in this process:

- **featurelake**: ``run_ingest`` (what ``featurelake ingest user_features --from redis://…/stream --until-idle``
  runs) with micro-batches of BATCH messages: XREADGROUP, decode and validate each message, per batch the
  (key, event time) anti-join against main, the view's audit of the rows in memory (null_rate, between and
  the implicit checks; the JSON and HTML report; the verdicts spooled durably), one append to main that
  lands only on the main the rows were checked against, the statistics spooled, the latest row per key
  into the Redis online store (Lua compare-and-set), XACK, the metrics flush; and every 10 batches (and at
  the end) the spooled audit-log and statistics rows appended to ``_audits`` / ``_stats``. Checked after
  each run (untimed): every batch's audit is in the audit log and its statistics in ``_stats``.
- **reference** (strictly less work): a plain loop over the same stream with its own consumer group —
  XREADGROUP COUNT BATCH, ``orjson.loads`` each message, ``pa.Table.from_pylist`` + cast, PyIceberg
  ``table.append`` straight to main of a second table of the same schema and partitioning, a pipelined
  redis-py ``SET`` of each key's latest row as JSON, XACK. No validation, dedup, audit or branch.

Printed: wall time, rows/s, rows per CPU second of this process (Redis runs in its own process: its CPU is not
counted; "per core"), and ratio = featurelake rows/s / reference rows/s. Target (issue 19): >= 50,000 rows/s
per core with micro-batches of 10k. Both sides share the machine with Redis; runs alternate sides and the
best of --repeats is reported beside the median.

    .venv/bin/python benchmarks/streaming.py [--messages 200000] [--batch 10000] [--users 50000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.online import start_redis  # the same throwaway redis-server as the online benchmark
from tests.helpers import make_project

import featurelake
from featurelake.jobs.ingest import run_ingest
from featurelake.streaming.ingest import IngestSettings

VIEW = "user_features"
BASE = datetime(2024, 1, 3, tzinfo=UTC)


def produce(client: redis.Redis, stream: str, n: int, users: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        msg = {
            "user_id": i % users,
            "event_ts": (BASE + timedelta(milliseconds=i)).isoformat(),
            "txn_count_1d": i % 1000,
            "amount_sum_1d": float(i % 997),
            "amount_avg_1d": (i % 991) / 7.0,
        }
        pipe.xadd(stream, {"data": orjson.dumps(msg)})
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()


def project(root: Path, port: int) -> featurelake.Featurelake:
    make_project(
        root, config=f"project: bench\nonline_store:\n  type: redis\n  url: redis://127.0.0.1:{port}/1\n"
    )
    fl = featurelake.open(root)
    fl.apply()
    return fl


def run_featurelake(fl: featurelake.Featurelake, url: str, batch: int) -> dict[str, Any]:
    settings = IngestSettings(batch_rows=batch, batch_seconds=30, poll_seconds=0.5, until_idle=True)
    c0, t0 = time.process_time(), time.perf_counter()
    result = run_ingest(fl.project, VIEW, url, settings=settings, store=fl.online.store)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = result.total("written")
    # Nothing skipped to be fast: every published batch was audited, logged and its statistics recorded.
    runs = {b.run_id for b in result.batches if b.status == "published"}
    logged = {a.run_id for a in fl.audits(VIEW) if a.passed}
    stats = set(fl.read("features._stats").column("run_id").to_pylist())
    assert runs and runs <= logged and runs <= stats, (len(runs), len(runs & logged), len(runs & stats))
    return {
        "rows": rows,
        "wall": wall,
        "cpu": cpu,
        "batches": len(result.batches),
        "batch_seconds": [b.seconds for b in result.batches],
    }


def run_reference(
    fl: featurelake.Featurelake, client: redis.Redis, stream: str, batch: int
) -> dict[str, Any]:
    tbl = fl.project.load_table(VIEW)  # a second project: same schema and partitioning, its own table
    schema = tbl.schema().as_arrow()
    group = "reference"
    client.xgroup_create(stream, group, id="0")
    rows = 0
    c0, t0 = time.process_time(), time.perf_counter()
    while True:
        reply: Any = client.xreadgroup(group, "ref", {stream: ">"}, count=batch)
        if not reply:
            break
        entries = reply[0][1]
        objs = [orjson.loads(fields[b"data"]) for _, fields in entries]
        table = pa.Table.from_pylist(objs).cast(schema)
        tbl.append(table)
        latest: dict[Any, dict[str, Any]] = {}
        for o in objs:
            latest[o["user_id"]] = o
        pipe = client.pipeline(transaction=False)
        for k, o in latest.items():
            pipe.set(f"ref:{k}", orjson.dumps(o))
        pipe.execute()
        client.xack(stream, group, *[i for i, _ in entries])
        rows += len(objs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"rows": rows, "wall": wall, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fl-bench-stream-"))
    proc, port = start_redis(work)
    client = redis.Redis(port=port)
    runs: dict[str, list[dict[str, Any]]] = {"featurelake": [], "reference": []}
    try:
        # Untimed warm-up: imports, catalog, first commit, Lua script load.
        warm = project(work / "warm", port)
        produce(client, "warm", 2_000, args.users)
        run_featurelake(warm, f"redis://127.0.0.1:{port}/0/warm", 1_000)
        warm.close()
        for r in range(args.repeats):
            order = ("featurelake", "reference") if r % 2 == 0 else ("reference", "featurelake")
            for side in order:
                stream = f"s-{side}-{r}"
                produce(client, stream, args.messages, args.users)
                fl = project(work / f"{side}-{r}", port)
                try:
                    if side == "featurelake":
                        out = run_featurelake(fl, f"redis://127.0.0.1:{port}/0/{stream}", args.batch)
                    else:
                        out = run_reference(fl, client, stream, args.batch)
                finally:
                    fl.close()
                assert out["rows"] == args.messages, (side, out["rows"])
                runs[side].append(out)
                client.delete(stream)
    finally:
        client.close()
        proc.kill()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)

    def rate(o: dict[str, Any], key: str) -> float:
        return float(o["rows"] / o[key])

    print(
        f"\nstream ingestion: {args.messages:,} messages, micro-batches of {args.batch:,}, {args.users:,} users, "
        f"{args.repeats} runs per side (load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores)"
    )
    print(f"  {'':52s} {'best rows/s':>12s} {'median':>10s} {'rows/CPU-s':>11s}")
    labels = {
        "featurelake": "featurelake ingest (WAP + audit + dedup + online)",
        "reference": "XREADGROUP + json + PyIceberg append + SET + XACK",
    }
    best: dict[str, float] = {}
    for side, label in labels.items():
        walls = [rate(o, "wall") for o in runs[side]]
        cpus = [rate(o, "cpu") for o in runs[side]]
        best[side] = max(walls)
        print(f"  {label:52s} {max(walls):12,.0f} {statistics.median(walls):10,.0f} {max(cpus):11,.0f}")
    per_batch = [s for o in runs["featurelake"] for s in o["batch_seconds"]]
    print(
        f"  featurelake per batch of {args.batch:,}: median {statistics.median(per_batch):.3f} s, "
        f"max {max(per_batch):.3f} s"
    )
    ratio = best["featurelake"] / best["reference"]
    per_core = max(rate(o, "cpu") for o in runs["featurelake"])
    print(f"  ratio featurelake / reference (best rows/s): {ratio:.2f}")
    for side in labels:
        each = ", ".join(f"{rate(o, 'cpu'):,.0f}" for o in runs[side])
        print(f"  {side} rows/CPU-s of each run: {each}")
    verdict = "met" if per_core >= 50_000 else "NOT met"
    print(
        f"  target >= 50,000 rows/s per core (rows per CPU second of the consumer): {per_core:,.0f} -> {verdict}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()

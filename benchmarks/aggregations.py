"""Benchmark: declared window aggregations compiled to DuckDB SQL vs a hand-written DuckDB window query.

Both compute the same thing over the same events (``--events``, default 10,000,000 seeded transactions over 60
days for ``--users`` users), for the last 30 days (a backfill window, whose source is read from its derived
lookback on): per user and day ``t``, over ``(t - window, t]``,

    amount_sum_1d, amount_sum_7d, count_7d, amount_mean_30d, amount_max_7d

with a row whenever the 30-day window holds a transaction, plus the closing row the day after it stops
holding any (``features/aggregations.py``).

- **compiled**: ``engines/aggregate_sql.compile_aggregations`` for a ``FeatureView(aggregations=...)`` (what
  the local engine runs in a backfill);
- **hand-written**: what one writes in DuckDB without featurelake: daily partial aggregates, a dense calendar
  per user (``generate_series``) left-joined to them, ``ROWS BETWEEN n PRECEDING`` frames, and a filter for the
  rows that exist.

The results are checked to be equal (floats to 1e-9) before anything is timed. Each query then runs
``--repeats`` times (default 3), alternating which goes first, each into an Arrow table. Prints best and median
wall and CPU seconds and the ratio compiled / hand-written (target <= 1.5).

    .venv/bin/python benchmarks/aggregations.py [--events N] [--users N] [--repeats K] [--threads T]

``--events 1000000`` makes a quick run. Exits non-zero only on errors or unequal results, never because a
result is slow.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa

from featurelake import Aggregation, Entity, FeatureView, Source
from featurelake.engines.aggregate_sql import compile_aggregations
from featurelake.features.aggregations import source_start

DAY = timedelta(days=1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 60
START, END = T0 + 30 * DAY, T0 + DAYS * DAY  # the backfill window: the last 30 days

VIEW = FeatureView(
    name="bench",
    entity=Entity("user", join_key="user_id"),
    source=Source.parquet("unused/*.parquet", timestamp_field="ts"),
    aggregations=[
        Aggregation("amount", "sum", window=DAY),
        Aggregation("amount", "sum", window=7 * DAY),
        Aggregation("*", "count", window=7 * DAY),
        Aggregation("amount", "mean", window=30 * DAY),
        Aggregation("amount", "max", window=7 * DAY),
    ],
    step=DAY,
)


def events(n: int, users: int, seed: int = 20260101) -> pa.Table:
    rng = np.random.default_rng(seed)
    # Some users are far more active than others, as in real transaction logs.
    weights = rng.pareto(1.2, users) + 0.02
    user = rng.choice(np.arange(1, users + 1), size=n, p=weights / weights.sum())
    micros = rng.integers(0, DAYS * 86_400_000_000, n)
    base = int(T0.timestamp()) * 1_000_000
    return pa.table(
        {
            "user_id": pa.array(user, pa.int64()),
            "ts": pa.array(base + np.sort(micros), pa.timestamp("us", tz="UTC")),
            "amount": pa.array(np.round(rng.lognormal(3.0, 0.9, n), 2), pa.float64()),
        }
    )


def hand_written() -> str:
    lo, hi = START.isoformat(), END.isoformat()
    return f"""
    WITH daily AS (  -- per user and day t: the transactions of (t - 1 day, t]
        SELECT user_id, date_trunc('day', ts - INTERVAL 1 MICROSECOND) + INTERVAL 1 DAY AS t,
               sum(amount) AS s, count(amount) AS n, count(*) AS c, max(amount) AS mx
        FROM events GROUP BY ALL
    ),
    calendar AS (  -- every day a frame of the output can reach, per user
        SELECT user_id,
               unnest(generate_series(greatest(min(t), TIMESTAMPTZ '{lo}' - INTERVAL 31 DAY),
                                      least(max(t) + INTERVAL 30 DAY, TIMESTAMPTZ '{hi}' - INTERVAL 1 DAY),
                                      INTERVAL 1 DAY)) AS t
        FROM daily GROUP BY user_id
    ),
    dense AS (
        SELECT c.user_id, c.t, d.s, d.n, d.c, d.mx FROM calendar c LEFT JOIN daily d USING (user_id, t)
    ),
    framed AS (
        SELECT user_id, t, s AS amount_sum_1d,
               sum(s) OVER w7 AS amount_sum_7d,
               coalesce(sum(c) OVER w7, 0) AS count_7d,
               sum(s) OVER w30 / sum(n) OVER w30 AS amount_mean_30d,
               max(mx) OVER w7 AS amount_max_7d,
               sum(c) OVER w31 AS held
        FROM dense
        WINDOW w7 AS (PARTITION BY user_id ORDER BY t ROWS BETWEEN 6 PRECEDING AND CURRENT ROW),
               w30 AS (PARTITION BY user_id ORDER BY t ROWS BETWEEN 29 PRECEDING AND CURRENT ROW),
               w31 AS (PARTITION BY user_id ORDER BY t ROWS BETWEEN 30 PRECEDING AND CURRENT ROW)
    )
    SELECT user_id, t AS event_ts, amount_sum_1d, amount_sum_7d, count_7d, amount_mean_30d, amount_max_7d
    FROM framed WHERE held > 0 AND t >= TIMESTAMPTZ '{lo}'
    """


def compiled(con: duckdb.DuckDBPyConnection) -> str:
    rel = con.table("events")
    columns = dict(zip(rel.columns, map(str, rel.types), strict=True))
    return compile_aggregations(VIEW, "events", columns, dialect="duckdb", start=START, end=END)


def same(a: pa.Table, b: pa.Table) -> str | None:
    """None when the two results hold the same rows (floats to 1e-9), else what differs."""
    key = [("user_id", "ascending"), ("event_ts", "ascending")]
    a, b = a.sort_by(key), b.sort_by(key)
    if a.num_rows != b.num_rows:
        return f"{a.num_rows} rows vs {b.num_rows}"
    for name in ("user_id", "event_ts", "count_7d"):
        if not a.column(name).cast(b.column(name).type).equals(b.column(name)):
            return f"column {name} differs"
    for name in ("amount_sum_1d", "amount_sum_7d", "amount_mean_30d", "amount_max_7d"):
        for x, y in zip(a.column(name).to_pylist(), b.column(name).to_pylist(), strict=True):
            if (x is None) != (y is None) or (x is not None and not math.isclose(x, y, rel_tol=1e-9)):
                return f"column {name}: {x} vs {y}"
    return None


def timed(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[float, float, pa.Table]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = con.sql(sql).to_arrow_table()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    data = events(args.events, args.users)
    lo = source_start(VIEW, START)
    data = data.filter(pa.compute.greater_equal(data["ts"], pa.scalar(lo, data["ts"].type)))
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    if args.threads:
        con.execute(f"SET threads={int(args.threads)}")
    con.register("events_arrow", data)
    con.execute("CREATE TABLE events AS SELECT * FROM events_arrow")
    con.unregister("events_arrow")
    print(
        f"{args.events:,} events for {args.users:,} users over {DAYS} days; the backfill window "
        f"[{START:%Y-%m-%d}, {END:%Y-%m-%d}) reads {data.num_rows:,} of them (from {lo:%Y-%m-%d}); "
        f"prepared in {time.perf_counter() - t0:.1f}s"
    )
    print(
        f"python {platform.python_version()}, duckdb {duckdb.__version__}, {os.cpu_count()} cores, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )

    queries = {"compiled": compiled(con), "hand-written": hand_written()}
    results = {name: timed(con, sql)[2] for name, sql in queries.items()}
    if (diff := same(results["compiled"], results["hand-written"])) is not None:
        raise SystemExit(f"the two queries disagree: {diff}")
    print(f"both give the same {results['compiled'].num_rows:,} rows; timing {args.repeats} runs each")

    wall: dict[str, list[float]] = {name: [] for name in queries}
    cpu: dict[str, list[float]] = {name: [] for name in queries}
    order = list(queries)
    for i in range(args.repeats):
        for name in order if i % 2 == 0 else reversed(order):
            w, c, _ = timed(con, queries[name])
            wall[name].append(w)
            cpu[name].append(c)

    print(f"{'query':<14}{'best s':>10}{'median s':>10}{'cpu best s':>12}")
    for name in queries:
        print(
            f"{name:<14}{min(wall[name]):>10.3f}{statistics.median(wall[name]):>10.3f}{min(cpu[name]):>12.3f}"
        )
    best = min(wall["compiled"]) / min(wall["hand-written"])
    median = statistics.median(wall["compiled"]) / statistics.median(wall["hand-written"])
    cpu_ratio = min(cpu["compiled"]) / min(cpu["hand-written"])
    print(
        f"ratio compiled / hand-written: {best:.2f} best, {median:.2f} median, {cpu_ratio:.2f} cpu "
        "(target <= 1.5)"
    )


if __name__ == "__main__":
    main()

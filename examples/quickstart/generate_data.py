"""Generate the quickstart's transactions: seeded, ~200k rows over 60 days for a few thousand users.

python generate_data.py            # data/transactions/day=YYYY-MM-DD.parquet, one file per day
python generate_data.py --corrupt  # adds 2 later days where most amounts are missing (for the demo)
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

START = datetime(2026, 8, 1, tzinfo=UTC)
DAYS = 60
USERS = 3_000
ROWS_PER_DAY = 3_400  # ~204k rows in all
HERE = Path(__file__).resolve().parent


def _day(rng: np.random.Generator, day: datetime, rows: int, null_share: float = 0.0) -> pa.Table:
    # Some users are far more active than others, as in real transaction logs.
    weights = rng.pareto(1.5, USERS) + 0.05
    users = rng.choice(np.arange(1, USERS + 1), size=rows, p=weights / weights.sum())
    seconds = np.sort(rng.integers(0, 86_400, size=rows))
    amount = np.round(rng.lognormal(mean=3.2, sigma=0.9, size=rows), 2)
    mask = None
    if null_share:
        # A broken upstream export: whole users lose their amounts, so their daily averages are null.
        broken = rng.random(USERS + 1) < null_share
        mask = broken[users]
    ts = pa.array([day + timedelta(seconds=int(s)) for s in seconds], pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            "txn_id": pa.array(rng.integers(10**12, 10**13, size=rows)),
            "user_id": pa.array(users, pa.int64()),
            "ts": ts,
            "amount": pa.array(amount, pa.float64(), mask=mask),
            "merchant_category": pa.array(
                rng.choice(["grocery", "travel", "fuel", "online", "dining"], rows)
            ),
            "country": pa.array(
                rng.choice(["DE", "FR", "NL", "US", "GB"], rows, p=[0.3, 0.2, 0.1, 0.25, 0.15])
            ),
        }
    )


def generate(out: Path, corrupt: bool = False, seed: int = 7) -> int:
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    if corrupt:
        rng = np.random.default_rng(seed + 1)
        for i in range(2):
            day = START + timedelta(days=DAYS + i)
            table = _day(rng, day, ROWS_PER_DAY, null_share=0.6)
            pq.write_table(table, out / f"day={day:%Y-%m-%d}.parquet")
            rows += table.num_rows
        return rows
    rng = np.random.default_rng(seed)
    for i in range(DAYS):
        day = START + timedelta(days=i)
        n = int(ROWS_PER_DAY * (1.0 + 0.25 * np.sin(i / 7 * 2 * np.pi)))  # weekly seasonality
        table = _day(rng, day, n)
        pq.write_table(table, out / f"day={day:%Y-%m-%d}.parquet")
        rows += table.num_rows
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corrupt", action="store_true", help="add two days of corrupted data")
    parser.add_argument("--out", type=Path, default=HERE / "data" / "transactions")
    args = parser.parse_args()
    n = generate(args.out, corrupt=args.corrupt)
    print(f"wrote {n} {'corrupted ' if args.corrupt else ''}transaction rows to {args.out}")

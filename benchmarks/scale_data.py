"""The data of the scale benchmarks: one generator shared by featurelake's and Feast's side.

``rows`` events over DAYS days (one Parquet file a day, generated a day at a time so the generator itself
never holds the window), 12 columns: the key ``user_id``, the event time ``event_ts``, 6 float64 features
``f0..f5`` and 4 int64 features ``n0..n3``; ``rows / 60`` entities (at least 50k, at most 1M). The entity
rows of a training set: ENTITY_ROWS random entities at random times in the window, in ``event_timestamp``.

Same seeds, same bytes as benchmarks/scale.py's own copy of these functions (same names and signatures, so
scale.py can import them from here). Needs only NumPy and PyArrow: it runs in featurelake's .venv and in the
peers virtualenv (benchmarks/.peers-venv) alike.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

DAYS = 30
START = datetime(2024, 1, 1, tzinfo=UTC)
END = START + timedelta(days=DAYS)
ENTITY_ROWS = 500_000
FLOATS, LONGS = 6, 4
FEATURES = [f"f{i}" for i in range(FLOATS)] + [f"n{i}" for i in range(LONGS)]
SEED = 23


def parse_size(text: str) -> int:
    """``"3M"`` -> 3,000,000; ``"500k"`` -> 500,000; a plain number as is."""
    text = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * mult)


def human(n: int) -> str:
    """3,000,000 -> ``"3M"``; 500,000 -> ``"500k"``."""
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def entities_for(rows: int) -> int:
    """The entities of a window of ``rows`` rows: rows / 60, at least 50k, at most 1M."""
    return min(1_000_000, max(50_000, rows // 60))


def featurelake_points(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """benchmarks/scale.py's ``--json`` as ``{job: [{"rows", "seconds", "peak_rss_mb"}, ...]}`` by rows.

    Reads both shapes: ``{"featurelake": {job: [{"rows", "seconds", "peak_rss_mb"}, ...]}}`` and the
    earlier ``{"<rows>": {job: {"seconds", "peak_rss" (bytes), ...}}}``.
    """
    if "featurelake" in data:
        return {job: sorted(pts, key=lambda p: p["rows"]) for job, pts in data["featurelake"].items()}
    out: dict[str, list[dict[str, Any]]] = {}
    for size, jobs in sorted(data.items(), key=lambda kv: int(kv[0])):
        for job, r in jobs.items():
            out.setdefault(job, []).append(
                {"rows": int(size), "seconds": r["seconds"], "peak_rss_mb": r["peak_rss"] / 1024**2}
            )
    return out


def write_source(root: Path, rows: int) -> None:
    """``rows`` events over DAYS days into ``root/data/events/<day>.parquet``, a day at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = root / "data" / "events"
    data.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    users = entities_for(rows)
    per_day = np.full(DAYS, rows // DAYS)
    per_day[: rows % DAYS] += 1
    base = int(START.timestamp()) * 1_000_000
    for d, n in enumerate(per_day):
        micros = base + d * 86_400_000_000 + np.sort(rng.integers(0, 86_400_000_000, n))
        cols: dict[str, Any] = {
            "user_id": pa.array(rng.integers(1, users + 1, n), pa.int64()),
            "event_ts": pa.array(micros, pa.timestamp("us", tz="UTC")),
        }
        for i in range(FLOATS):
            cols[f"f{i}"] = pa.array(rng.normal(0.0, 1.0, n))
        for i in range(LONGS):
            cols[f"n{i}"] = pa.array(rng.integers(0, 1000, n), pa.int64())
        pq.write_table(pa.table(cols), data / f"{(START + timedelta(days=d)).date()}.parquet")


def write_entities(root: Path, rows: int) -> Path:
    """ENTITY_ROWS entity rows (``user_id``, ``event_timestamp``) into ``root/entities.parquet``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(SEED + 1)
    span = DAYS * 86_400_000_000
    base = int(START.timestamp()) * 1_000_000
    table = pa.table(
        {
            "user_id": pa.array(rng.integers(1, entities_for(rows) + 1, ENTITY_ROWS), pa.int64()),
            "event_timestamp": pa.array(
                base + rng.integers(0, span, ENTITY_ROWS), pa.timestamp("us", tz="UTC")
            ),
        }
    )
    path = root / "entities.parquet"
    pq.write_table(table, path)
    return path

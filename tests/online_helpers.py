"""Builders for online serving tests: projects on either store, direct Iceberg commits, expected state."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

import featurelake
from tests.helpers import make_project, transactions

VIEW = "user_features"
FIELDS = ("txn_count_1d", "amount_sum_1d", "amount_avg_1d")
#: "now" for lookups: within the 7-day ttl of everything the tests write in early January 2024.
NOW = datetime(2024, 1, 12, tzinfo=UTC)


def d(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, tzinfo=UTC)


def config(backend: str, redis_url: str | None = None, extra: str = "") -> str:
    text = "project: online-test\nnamespace: features\n"
    if backend == "redis":
        text += f"online_store:\n  type: redis\n  url: {redis_url}\n"
    return text + extra


def project(
    root: Path, backend: str, redis_url: str | None = None, extra: str = ""
) -> featurelake.Featurelake:
    """An applied project (10 days of source transactions, nothing published yet) on ``backend``."""
    make_project(root, config=config(backend, redis_url, extra), data=transactions())
    fl = featurelake.open(root)
    fl.apply()
    return fl


def table(fl: featurelake.Featurelake) -> Table:
    return fl.project.load_table(VIEW)


def rows(items: Iterable[tuple[int, datetime, float]], tbl: Table) -> pa.Table:
    """Feature rows (user, event time, amount): txn_count = int(amount), sum = amount, avg = amount."""
    items = list(items)
    return pa.table(
        {
            "user_id": [i[0] for i in items],
            "event_ts": [i[1] for i in items],
            "txn_count_1d": [int(i[2]) for i in items],
            "amount_sum_1d": [float(i[2]) for i in items],
            "amount_avg_1d": [float(i[2]) for i in items],
        }
    ).cast(tbl.schema().as_arrow())


def append(fl: featurelake.Featurelake, items: Iterable[tuple[int, datetime, float]]) -> int:
    tbl = table(fl)
    tbl.append(rows(items, tbl))
    return tbl.metadata.current_snapshot_id  # type: ignore[return-value]


def overwrite(
    fl: featurelake.Featurelake, items: Iterable[tuple[int, datetime, float]], where: BooleanExpression
) -> int:
    """PyIceberg's overwrite: a delete (or rewrite) snapshot, then an append snapshot."""
    tbl = table(fl)
    tbl.overwrite(rows(items, tbl), overwrite_filter=where)
    return tbl.metadata.current_snapshot_id  # type: ignore[return-value]


def overwrite_files(
    fl: featurelake.Featurelake, items: Iterable[tuple[int, datetime, float]], day: int
) -> int:
    """ONE snapshot of operation OVERWRITE replacing every data file of ``day`` with ``items``
    (what Spark's INSERT OVERWRITE, or a compaction, commits)."""
    tbl = table(fl)
    start, end = d(day), d(day) + timedelta(days=1)
    old: list[DataFile] = [
        t.file
        for t in tbl.scan().plan_files()
        if any(start <= r["event_ts"] < end for r in _file_rows(tbl, t.file))
    ]
    data = rows(items, tbl)
    with tbl.transaction() as tx:
        new = list(
            _dataframe_to_data_files(
                table_metadata=tx.table_metadata, df=data, io=tbl.io, write_uuid=uuid.uuid4()
            )
        )
        with tx.update_snapshot().overwrite() as ow:
            for f in old:
                ow.delete_data_file(f)
            for f in new:
                ow.append_data_file(f)
    return table(fl).metadata.current_snapshot_id  # type: ignore[return-value]


def _file_rows(tbl: Table, f: DataFile) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(tbl.io.new_input(f.file_path).open()).select(["event_ts"]).to_pylist()


def expected_latest(fl: featurelake.Featurelake) -> dict[int, dict[str, Any]]:
    """Main's latest row per user, computed independently of the sync (DuckDB over a fresh scan).

    Two rows of a user with the same event time: the one committed later (the higher data sequence number of
    its file) is the latest, as the sync's rule says; without that tie-break the reference itself would pick
    either row (DuckDB's row_number over a tie is arbitrary)."""
    tbl = table(fl)
    snap = tbl.current_snapshot()
    seq: dict[str, int] = {}
    if snap is not None:
        for m in snap.manifests(tbl.io):
            for e in m.fetch_manifest_entry(tbl.io, discard_deleted=True):
                seq[e.data_file.file_path] = int(e.sequence_number or snap.sequence_number or 0)
    scan = tbl.scan()
    reader = ArrowScan(tbl.metadata, tbl.io, tbl.schema(), AlwaysTrue())
    parts = []
    for task in scan.plan_files():
        part = reader.to_table([task])
        parts.append(
            part.append_column("_seq", pa.array([seq[task.file.file_path]] * part.num_rows, pa.int64()))
        )
    data = (
        pa.concat_tables(parts) if parts else scan.to_arrow().append_column("_seq", pa.array([], pa.int64()))
    )
    con = duckdb.connect()
    con.register("t", data)
    out = con.sql(
        "SELECT * EXCLUDE (_seq) FROM t "
        "QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY event_ts DESC, _seq DESC) = 1"
    ).to_arrow_table()
    return {r["user_id"]: r for r in out.to_pylist()}


def assert_matches_main(fl: featurelake.Featurelake, extra_keys: Iterable[int] = ()) -> None:
    want = expected_latest(fl)
    keys = set(want) | set(extra_keys)
    assert online_state(fl, keys) == want


def online_state(fl: featurelake.Featurelake, keys: Iterable[int]) -> dict[int, dict[str, Any]]:
    """What the online store holds for ``keys`` (absent keys left out), each read as of its own event time
    so the view's ttl does not hide values."""
    out: dict[int, dict[str, Any]] = {}
    keys = sorted(keys)
    stored = fl.online.store.read([(VIEW, [str(k) for k in keys])])[0]
    for k, hit in zip(keys, stored, strict=True):
        if hit is None:
            continue
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=hit[0])
        (r,) = fl.online.get(VIEW, [k], now=at)
        out[k] = {"user_id": r.key, "event_ts": r.event_ts, **r.values}
    return out


class LinearModel:
    """A picklable estimator-like model for serving tests: ``predict(X) = X @ weights + bias``."""

    def __init__(self, weights: list[float], bias: float = 0.0) -> None:
        self.weights = weights
        self.bias = bias

    def predict(self, x: Any) -> Any:
        import numpy as np

        return np.asarray(x, dtype=float) @ np.asarray(self.weights) + self.bias

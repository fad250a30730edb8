"""lakehouse.write: the one-pass day split writes exactly what PyIceberg's own overwrite writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import DoubleType, LongType, NestedField, TimestamptzType

from featurelake.lakehouse.window import Window
from featurelake.lakehouse.write import day_slices, overwrite_days

START = datetime(2024, 1, 1, tzinfo=UTC)
SCHEMA = Schema(
    NestedField(1, "user_id", LongType(), required=True),
    NestedField(2, "event_ts", TimestamptzType(), required=True),
    NestedField(3, "x", DoubleType(), required=False),
)


def frame(rows: int, days: int, *, seed: int = 1, shuffle: bool = False, first_day: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    start = int((START + timedelta(days=first_day)).timestamp()) * 1_000_000
    micros = np.sort(rng.integers(0, days * 86_400_000_000, rows)) + start
    order = rng.permutation(rows) if shuffle else np.arange(rows)
    return pa.table(
        {
            "user_id": pa.array(np.arange(rows)[order], pa.int64()),
            "event_ts": pa.array(micros[order], pa.timestamp("us", tz="UTC")),
            "x": pa.array(rng.normal(size=rows)[order], mask=(rng.random(rows) < 0.1)),
        },
        schema=SCHEMA.as_arrow(),
    )


def tables(tmp_path: Path) -> tuple[Table, Table]:
    catalog = SqlCatalog(
        "t", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse"
    )
    catalog.create_namespace("ns")
    spec = PartitionSpec(PartitionField(2, 1000, DayTransform(), "event_ts_day"))
    return (
        catalog.create_table("ns.ours", SCHEMA, partition_spec=spec),
        catalog.create_table("ns.theirs", SCHEMA, partition_spec=spec),
    )


def contents(table: Table, branch: str = "main") -> pa.Table:
    sid = table.refs()[branch].snapshot_id
    return (
        table.scan(snapshot_id=sid).to_arrow().sort_by([("user_id", "ascending"), ("event_ts", "ascending")])
    )


def partitions(table: Table) -> list[tuple[int, int]]:
    """(day, rows) per data file of main, sorted."""
    return sorted((f.partition[0], f.record_count) for task in table.scan().plan_files() for f in [task.file])


@pytest.mark.parametrize("shuffle", [False, True])
def test_day_slices_group_rows_by_utc_day(shuffle: bool) -> None:
    data = frame(5_000, 7, shuffle=shuffle)
    slices = day_slices(data, "event_ts")
    assert slices is not None and len(slices) == 7
    assert sum(s.num_rows for s in slices) == data.num_rows
    for i, part in enumerate(slices):
        days = {(t - START).days for t in part.column("event_ts").to_pylist()}
        assert days == {i}
    merged = pa.concat_tables(slices).sort_by("user_id")
    assert merged.equals(data.sort_by("user_id"))


def test_day_slices_refuse_what_they_cannot_split() -> None:
    data = frame(10, 2)
    assert day_slices(data.slice(0, 0), "event_ts") is None
    naive = data.set_column(
        1, "event_ts", data.column("event_ts").cast(pa.timestamp("ms", tz="UTC"), safe=False)
    )
    assert day_slices(naive, "event_ts") is None  # not microseconds: PyIceberg's path


@pytest.mark.parametrize("shuffle", [False, True])
def test_overwrite_days_matches_pyiceberg_overwrite(tmp_path: Path, shuffle: bool) -> None:
    ours, theirs = tables(tmp_path)
    first = frame(3_000, 10, seed=1)
    second = frame(2_000, 4, seed=2, shuffle=shuffle, first_day=2)
    window = Window(START, START + timedelta(days=10))
    props = {"featurelake.run-id": "r1"}
    for tbl in (ours, theirs):
        tbl.append(first)
    # Replace days [2, 6) only: the rest of the first write must survive on both tables.
    part = Window(START + timedelta(days=2), START + timedelta(days=6))
    overwrite_days(ours, second, part.iceberg_filter("event_ts"), "event_ts", props, "main")
    theirs.overwrite(second, overwrite_filter=part.iceberg_filter("event_ts"), snapshot_properties=props)
    assert contents(ours).equals(contents(theirs))
    assert partitions(ours) == partitions(theirs)
    assert window.start <= min(contents(ours).column("event_ts").to_pylist())
    summary = ours.current_snapshot().summary  # type: ignore[union-attr]
    assert summary["featurelake.run-id"] == "r1"
    assert [s.summary.operation.value for s in ours.snapshots()] == [  # type: ignore[union-attr]
        s.summary.operation.value  # type: ignore[union-attr]
        for s in theirs.snapshots()
    ]


def test_overwrite_days_writes_to_a_branch_only(tmp_path: Path) -> None:
    ours, _ = tables(tmp_path)
    ours.append(frame(500, 3))
    main_before = ours.refs()["main"].snapshot_id
    ours.manage_snapshots().create_branch(main_before, "audit_x").commit()
    window = Window(START, START + timedelta(days=3))
    overwrite_days(ours, frame(800, 3, seed=5), window.iceberg_filter("event_ts"), "event_ts", {}, "audit_x")
    ours = ours.refresh()
    assert ours.refs()["main"].snapshot_id == main_before
    assert contents(ours, "audit_x").num_rows == 800
    assert contents(ours).num_rows == 500

"""lakehouse.write: the one-pass partition split writes exactly what PyIceberg's own overwrite writes, and a
window inside coarser partitions is replaced without touching the rest or multiplying files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform
from pyiceberg.types import DoubleType, LongType, NestedField, TimestamptzType

from featurelake.errors import UsageError
from featurelake.lakehouse import wap
from featurelake.lakehouse.schema import partition_spec
from featurelake.lakehouse.window import Window
from featurelake.lakehouse.write import Span, overwrite_window, partition_slices, rewrite_span

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
    slices = partition_slices(data, "event_ts", "day")
    assert slices is not None and len(slices) == 7
    assert sum(s.num_rows for s in slices) == data.num_rows
    for i, part in enumerate(slices):
        days = {(t - START).days for t in part.column("event_ts").to_pylist()}
        assert days == {i}
    merged = pa.concat_tables(slices).sort_by("user_id")
    assert merged.equals(data.sort_by("user_id"))


def test_day_slices_refuse_what_they_cannot_split() -> None:
    data = frame(10, 2)
    assert partition_slices(data.slice(0, 0), "event_ts", "day") is None
    naive = data.set_column(
        1, "event_ts", data.column("event_ts").cast(pa.timestamp("ms", tz="UTC"), safe=False)
    )
    assert partition_slices(naive, "event_ts", "month") is None  # not microseconds: PyIceberg's path


@pytest.mark.parametrize("shuffle", [False, True])
def test_overwrite_window_matches_pyiceberg_overwrite(tmp_path: Path, shuffle: bool) -> None:
    ours, theirs = tables(tmp_path)
    first = frame(3_000, 10, seed=1)
    second = frame(2_000, 4, seed=2, shuffle=shuffle, first_day=2)
    window = Window(START, START + timedelta(days=10))
    props = {"featurelake.run-id": "r1"}
    for tbl in (ours, theirs):
        tbl.append(first)
    # Replace days [2, 6) only: the rest of the first write must survive on both tables.
    part = Window(START + timedelta(days=2), START + timedelta(days=6))
    overwrite_window(ours, second, part, "event_ts", props, "main")
    theirs.overwrite(second, overwrite_filter=part.iceberg_filter("event_ts"), snapshot_properties=props)
    assert contents(ours).equals(contents(theirs))
    assert partitions(ours) == partitions(theirs)
    assert window.start <= min(contents(ours).column("event_ts").to_pylist())
    current = ours.current_snapshot()
    assert current is not None and current.summary is not None
    assert current.summary["featurelake.run-id"] == "r1"
    assert [s.summary.operation.value for s in ours.snapshots()] == [  # type: ignore[union-attr]
        s.summary.operation.value  # type: ignore[union-attr]
        for s in theirs.snapshots()
    ]


def test_overwrite_window_writes_to_a_branch_only(tmp_path: Path) -> None:
    ours, _ = tables(tmp_path)
    ours.append(frame(500, 3))
    main_before = ours.refs()["main"].snapshot_id
    ours.manage_snapshots().create_branch(main_before, "audit_x").commit()
    window = Window(START, START + timedelta(days=3))
    overwrite_window(ours, frame(800, 3, seed=5), window, "event_ts", {}, "audit_x")
    ours = ours.refresh()
    assert ours.refs()["main"].snapshot_id == main_before
    assert contents(ours, "audit_x").num_rows == 800
    assert contents(ours).num_rows == 500


# --- coarser partitions: month, year, none ---------------------------------------------------------------

PARTITIONS = ["day", "month", "year", "none"]
#: Writing a window into an empty table deletes nothing; PyIceberg says so (the engines silence it too).
EMPTY_DELETE = pytest.mark.filterwarnings("ignore:Delete operation did not match any records")


def table_partitioned(tmp_path: Path, partition: str, name: str = "t") -> Table:
    catalog = SqlCatalog(
        "t", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse"
    )
    if ("ns",) not in catalog.list_namespaces():
        catalog.create_namespace("ns")
    return catalog.create_table(
        f"ns.{name}", SCHEMA, partition_spec=partition_spec(SCHEMA, "event_ts", partition)
    )


def live_files(table: Table, branch: str = "main") -> int:
    return len(list(table.scan(snapshot_id=table.refs()[branch].snapshot_id).plan_files()))


def window(first_day: int, days: int) -> Window:
    return Window(START + timedelta(days=first_day), START + timedelta(days=first_day + days))


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "time-ordered"])
@pytest.mark.parametrize(("partition", "groups"), [("day", 70), ("month", 3), ("year", 2), ("none", 1)])
def test_partition_slices_group_rows_by_partition(partition: str, groups: int, shuffle: bool) -> None:
    # Time-ordered rows are cut by binary search at the partitions' first instants; others are grouped.
    data = frame(4_000, 70, first_day=-31, shuffle=shuffle)  # 2023-12-01 .. 2024-02-08
    slices = partition_slices(data, "event_ts", partition)
    assert slices is not None and len(slices) == groups
    assert pa.concat_tables(slices).sort_by("user_id").equals(data.sort_by("user_id"))
    if partition in ("month", "year"):
        width = 7 if partition == "month" else 4  # "2023-12" / "2023"
        keys = [{t.isoformat()[:width] for t in s.column("event_ts").to_pylist()} for s in slices]
        assert all(len(k) == 1 for k in keys)
        assert [min(k) for k in keys] == sorted({min(k) for k in keys})  # one partition each, in order
    if partition == "day":
        days = [{(t - START).days for t in s.column("event_ts").to_pylist()} for s in slices]
        assert days == [{d} for d in range(-31, 39)]


def test_time_ordered_slices_cut_exactly_at_partition_edges() -> None:
    """Rows on the first and last microsecond of a day, of a month and of a year, and days with no rows."""
    edges = [datetime(2023, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)]
    edges += [datetime(2024, 1, 3, 12, tzinfo=UTC), datetime(2024, 1, 31, 23, 59, 59, 999_999, tzinfo=UTC)]
    edges += [datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)]  # a tie
    ts = pa.array(edges, pa.timestamp("us", tz="UTC"))
    data = pa.table({"user_id": pa.array(range(len(edges)), pa.int64()), "event_ts": ts})
    expected = {
        "day": [[0], [1], [2], [3], [4, 5]],
        "month": [[0], [1, 2, 3], [4, 5]],
        "year": [[0], [1, 2, 3, 4, 5]],
    }
    for partition, groups in expected.items():
        slices = partition_slices(data, "event_ts", partition)
        assert slices is not None
        assert [s.column("user_id").to_pylist() for s in slices] == groups, partition


@pytest.mark.parametrize("partition", ["day", "month"])
def test_overwrite_window_creates_a_missing_branch_in_the_same_commit(tmp_path: Path, partition: str) -> None:
    """A run's branch created with its write: one metadata commit, the rows a separate creation gives."""
    ours = table_partitioned(tmp_path, partition, "ours")
    theirs = table_partitioned(tmp_path, partition, "theirs")  # the branch created on its own first
    for tbl in (ours, theirs):
        tbl.append(frame(1_500, 10, seed=3))
    main_before = ours.refs()["main"].snapshot_id
    commits_before = len(ours.metadata.metadata_log)
    part = Window(
        START + timedelta(days=2, hours=6), START + timedelta(days=6)
    )  # straddles day 2 (and months)
    new_rows = frame(700, 4, seed=4, first_day=2).filter(
        pc.field("event_ts") >= pa.scalar(part.start, pa.timestamp("us", "UTC"))
    )
    props = {"featurelake.run-id": "r2"}
    overwrite_window(ours, new_rows, part, "event_ts", props, "audit_r2")
    theirs.manage_snapshots().create_branch(theirs.refs()["main"].snapshot_id, "audit_r2").commit()
    overwrite_window(theirs, new_rows, part, "event_ts", props, "audit_r2")
    ours = ours.refresh()
    assert len(ours.metadata.metadata_log) == commits_before + 1  # create + delete + append: one commit
    assert ours.refs()["main"].snapshot_id == main_before
    assert contents(ours, "audit_r2").equals(contents(theirs.refresh(), "audit_r2"))
    assert contents(ours).num_rows == 1_500
    with pytest.raises(UsageError, match="already exists"), ours.transaction() as tx:  # never created twice
        wap.stage_branch(tx, ours, "audit_r2")


@EMPTY_DELETE
@pytest.mark.parametrize("partition", PARTITIONS)
def test_rebackfilling_a_window_inside_coarser_partitions_keeps_the_rest_and_the_file_count(
    tmp_path: Path, partition: str
) -> None:
    ours = table_partitioned(tmp_path, partition, "ours")
    theirs = table_partitioned(tmp_path, partition, "theirs")  # PyIceberg's own overwrite: the oracle
    full, part = window(-31, 70), window(-11, 21)  # the re-run window crosses a month and a year boundary
    first = frame(3_000, 70, first_day=-31, seed=1)
    overwrite_window(ours, first, full, "event_ts", {}, "main")
    theirs.overwrite(first, overwrite_filter=full.iceberg_filter("event_ts"))
    assert contents(ours).equals(contents(theirs))
    counts = []
    for seed in (2, 3, 4):
        again = frame(1_000, 21, first_day=-11, seed=seed, shuffle=True)
        overwrite_window(ours, again, part, "event_ts", {"run": str(seed)}, "main")
        theirs.overwrite(again, overwrite_filter=part.iceberg_filter("event_ts"))
        assert contents(ours).equals(contents(theirs))  # the window replaced, every other row kept
        counts.append(live_files(ours))
    expected = {"day": 70, "month": 3, "year": 2, "none": 1}[partition]
    assert counts == [expected] * 3  # one file per partition, however often the window is re-run
    current = ours.current_snapshot()
    assert current is not None and current.summary is not None
    assert current.summary["run"] == "4"


@EMPTY_DELETE
def test_rewrite_span_is_the_window_on_day_partitions_and_the_straddling_files_otherwise(
    tmp_path: Path,
) -> None:
    by_day = table_partitioned(tmp_path, "day", "d")
    by_month = table_partitioned(tmp_path, "month", "m")
    for tbl in (by_day, by_month):
        overwrite_window(tbl, frame(2_000, 70, first_day=-31), window(-31, 70), "event_ts", {}, "main")
    part = window(-11, 21)
    assert rewrite_span(by_day, "main", part, "event_ts") == Span.of(part)
    span = rewrite_span(by_month, "main", part, "event_ts")
    stamps = contents(by_month).column("event_ts").to_pylist()
    dec = [t for t in stamps if t.month == 12]
    jan = [t for t in stamps if t.month == 1]
    assert span.start == min(dec) and span.end == max(jan) + timedelta(microseconds=1)
    assert rewrite_span(by_month, "no-such-branch", part, "event_ts") == Span.of(part)


@EMPTY_DELETE
def test_files_without_bounds_are_spanned_by_their_partition(tmp_path: Path) -> None:
    tbl = table_partitioned(tmp_path, "month")
    with tbl.transaction() as tx:
        tx.set_properties({"write.metadata.metrics.default": "none"})
    tbl = tbl.refresh()
    overwrite_window(tbl, frame(500, 20, first_day=5), window(5, 20), "event_ts", {}, "main")
    (task,) = tbl.scan().plan_files()
    assert not task.file.lower_bounds  # no column metrics: only the partition says where the rows are
    span = rewrite_span(tbl, "main", window(10, 2), "event_ts")
    assert (span.start, span.end) == (START, START + timedelta(days=31))

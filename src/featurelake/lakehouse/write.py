"""Replace a window of a feature table in one commit, whatever its partitioning, without multiplying files.

**What is replaced.** A backfill window ``[start, end)`` is whole UTC days, but a table partitioned by month,
by year or not at all keeps a window's rows in files that may also hold rows outside it. ``rewrite_span``
widens the window to the smallest time span that every live data file of the branch lies either wholly
inside or wholly outside of (by the file's timestamp bounds, else its partition's). The write then deletes
that span (whole files only: metadata, no row-level rewrite) and adds the new rows *plus* the span's rows
outside the window, read back from the branch. So a month written as one file and re-backfilled a week at a
time stays one file per partition, and on a day-partitioned table the span is the window itself (nothing is
read back). Both engines use the same span (``engines.spark`` writes it with Spark).

**How it is written.** PyIceberg 0.12's ``Table.overwrite``/``append`` split a table into partitions by
filtering the *whole* table once per partition value (``_determine_partitions``): a 30-day window of 1M rows is
filtered 30 times, which costs more than writing the Parquet files. Here the rows are grouped by partition of
the table's current spec first (day, month or year of the timestamp, or one group when unpartitioned; a slice
per group when they come in time order, one stable radix sort and a take otherwise), each group is handed to
PyIceberg's own file writer on its own (one partition value: one filter of its rows) with the groups written
in parallel, and the commit is the one ``Transaction.overwrite`` makes: the span's delete and the new files
in one transaction, with the same snapshot properties and branch.

The schema check, the file writer, the overwrite's delete and the append producer are PyIceberg internals
(pinned to 0.12 in pyproject.toml), reached through ``lakehouse.compat``; if they are missing, or the spec is
not one of featurelake's layouts, ``Table.overwrite`` does the work (slower, same result).
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from pyiceberg.conversions import from_bytes
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    GreaterThanOrEqual,
    LessThan,
    Not,
)
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform, HourTransform, MonthTransform, YearTransform
from pyiceberg.types import NestedField, PrimitiveType

from featurelake.lakehouse import compat, wap
from featurelake.lakehouse.schema import partition_of
from featurelake.lakehouse.window import Window

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile

DAY_US = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Partition groups written at once (Parquet encoding releases the GIL; PyIceberg's own pool does the I/O).
WRITERS = 4


# --- what a window write replaces -------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """``[lo, hi)`` in microseconds since the epoch (UTC); None is unbounded on that side."""

    lo: int | None
    hi: int | None

    @classmethod
    def of(cls, window: Window) -> Span:
        return cls(_micros(window.start), _micros(window.end))

    def iceberg_filter(self, column: str) -> BooleanExpression:
        parts: list[BooleanExpression] = []
        # PyIceberg's predicates are pydantic models whose generated signature mypy misreads.
        if self.lo is not None:
            parts.append(GreaterThanOrEqual(column, _iso(self.lo)))  # type: ignore[call-arg, arg-type]
        if self.hi is not None:
            parts.append(LessThan(column, _iso(self.hi)))  # type: ignore[call-arg, arg-type]
        if not parts:
            return AlwaysTrue()
        return parts[0] if len(parts) == 1 else And(parts[0], parts[1])

    @property
    def start(self) -> datetime | None:
        return None if self.lo is None else EPOCH + timedelta(microseconds=self.lo)

    @property
    def end(self) -> datetime | None:
        return None if self.hi is None else EPOCH + timedelta(microseconds=self.hi)

    def covers(self, lo: int | None, hi: int | None) -> bool:
        """Whether ``[lo, hi)`` (None: unbounded) lies inside this span."""
        low_ok = self.lo is None or (lo is not None and lo >= self.lo)
        high_ok = self.hi is None or (hi is not None and hi <= self.hi)
        return low_ok and high_ok

    def union(self, lo: int | None, hi: int | None) -> Span:
        return Span(
            None if self.lo is None or lo is None else min(self.lo, lo),
            None if self.hi is None or hi is None else max(self.hi, hi),
        )


def _micros(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


def _iso(micros: int) -> str:
    return (EPOCH + timedelta(microseconds=micros)).isoformat()


def _month_start(months: int) -> int:
    return _micros(datetime(1970 + months // 12, months % 12 + 1, 1, tzinfo=UTC))


def _file_span(table: Table, data_file: DataFile, field: NestedField) -> tuple[int | None, int | None]:
    """``[lo, hi)`` of ``data_file``'s timestamps: its column bounds, else its partition's, else unbounded."""
    lower = (data_file.lower_bounds or {}).get(field.field_id)
    upper = (data_file.upper_bounds or {}).get(field.field_id)
    ftype = field.field_type
    if lower is not None and upper is not None and isinstance(ftype, PrimitiveType):
        return int(from_bytes(ftype, lower)), int(from_bytes(ftype, upper)) + 1
    spec = table.metadata.specs().get(data_file.spec_id)
    for i, pf in enumerate(spec.fields if spec is not None else []):
        value = data_file.partition[i]
        if pf.source_id != field.field_id or value is None:
            continue
        v = int(value)
        if isinstance(pf.transform, HourTransform):
            return v * 3_600_000_000, (v + 1) * 3_600_000_000
        if isinstance(pf.transform, DayTransform):
            return v * DAY_US, (v + 1) * DAY_US
        if isinstance(pf.transform, MonthTransform):
            return _month_start(v), _month_start(v + 1)
        if isinstance(pf.transform, YearTransform):
            return _month_start(12 * v), _month_start(12 * (v + 1))
    return None, None


def rewrite_span(table: Table, branch: str, window: Window, timestamp_field: str) -> Span:
    """The smallest span holding ``window`` that no live data file on ``branch`` straddles.

    Deleting it removes whole files only; its rows outside the window must be written back with the window's
    new rows. Equal to the window when every file that overlaps it lies inside it (day partitions, or files
    a backfill of the same window wrote).
    """
    span = Span.of(window)
    ref = table.metadata.refs.get(branch)
    if ref is None:
        return span
    field = table.schema().find_field(timestamp_field)
    while True:
        wider = span
        for task in table.scan(
            snapshot_id=ref.snapshot_id, row_filter=span.iceberg_filter(timestamp_field)
        ).plan_files():
            lo, hi = _file_span(table, task.file, field)
            if not wider.covers(lo, hi):
                wider = wider.union(lo, hi)
        if wider == span:
            return span
        span = wider


def rows_to_keep(
    table: Table, branch: str, span: Span, window: Window, timestamp_field: str
) -> pa.Table | None:
    """The rows on ``branch`` inside ``span`` but outside ``window`` (None when the span is the window)."""
    if span == Span.of(window):
        return None
    ref = table.metadata.refs[branch]
    keep = And(span.iceberg_filter(timestamp_field), Not(window.iceberg_filter(timestamp_field)))
    return table.scan(snapshot_id=ref.snapshot_id, row_filter=keep).to_arrow()


# --- writing it ---------------------------------------------------------------------------------------


def _partition_keys(micros: np.ndarray, partition: str) -> np.ndarray:
    days = micros // DAY_US
    if partition == "day":
        return days
    unit = "M" if partition == "month" else "Y"
    return days.astype("datetime64[D]").astype(f"datetime64[{unit}]").astype(np.int64)


def _partition_starts(first: int, stop: int, partition: str) -> np.ndarray:
    """The first microsecond of partitions ``first`` to ``stop - 1`` (as :func:`_partition_keys` numbers them)."""
    keys = np.arange(first, stop, dtype=np.int64)
    if partition == "day":
        return keys * DAY_US
    unit = "M" if partition == "month" else "Y"
    return keys.astype(f"datetime64[{unit}]").astype("datetime64[D]").astype(np.int64) * DAY_US


def partition_slices(frame: pa.Table, timestamp_field: str, partition: str) -> list[pa.Table] | None:
    """``frame``'s rows grouped by UTC ``partition`` (``day``/``month``/``year``) of ``timestamp_field``, in
    time order; ``[frame]`` for ``none``; None if it cannot tell (PyIceberg's own split is used then)."""
    if frame.num_rows == 0:
        return None
    if partition == "none":
        return [frame]
    col = frame.column(timestamp_field)
    t = col.type
    if not pa.types.is_timestamp(t) or t.unit != "us" or col.null_count:
        return None
    micros = pa.chunked_array([c.view(pa.int64()) for c in col.chunks], pa.int64()).to_numpy()
    if micros.size > 1 and bool(np.all(micros[1:] >= micros[:-1])):
        # Time-ordered rows (a backfill's usual frame): cut at the partitions' first instants by binary
        # search instead of computing every row's partition (a third of the time at 1M rows).
        first, last = (int(k) for k in _partition_keys(micros[[0, -1]], partition))
        cuts = np.searchsorted(micros, _partition_starts(first + 1, last + 1, partition))
        bounds = np.concatenate([[0], cuts, [micros.size]])
        return [frame.slice(int(a), int(b - a)) for a, b in itertools.pairwise(bounds) if b > a]
    keys = _partition_keys(micros, partition)
    if keys.size > 1 and not bool(np.all(keys[1:] >= keys[:-1])):
        lo = int(keys.min())
        if int(keys.max()) - lo >= 2**16:
            return None  # a radix sort needs 16-bit keys; such a window is better left to PyIceberg
        order = np.argsort((keys - lo).astype(np.uint16), kind="stable")
        frame, keys = frame.take(pa.array(order)), keys[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [keys.size]])
    return [frame.slice(int(a), int(b - a)) for a, b in zip(starts, stops, strict=True)]


def branch_base(table: Table, branch: str) -> tuple[bool, str]:
    """``(create, base)`` for a write to ``branch``: whether the write's commit must create it (it does not
    exist yet; main is made by its first write) and the ref whose rows it holds before the write (main's,
    where the branch will fork, when it is created)."""
    create = branch != wap.MAIN and branch not in table.metadata.refs
    return create, wap.MAIN if create else branch


def overwrite_window(
    table: Table,
    frame: pa.Table,
    window: Window,
    timestamp_field: str,
    properties: dict[str, str],
    branch: str,
) -> None:
    """Replace ``window`` on ``branch`` with ``frame`` in one commit (see the module docstring). A ``branch``
    that does not exist yet is created at main's snapshot in that same commit (:func:`wap.stage_branch`)."""
    create, base = branch_base(table, branch)
    span = rewrite_span(table, base, window, timestamp_field)
    kept = rows_to_keep(table, base, span, window, timestamp_field)
    if kept is not None and kept.num_rows:
        frame = pa.concat_tables([frame, kept.select(frame.column_names).cast(frame.schema)])
    overwrite_filter = span.iceberg_filter(timestamp_field)
    partition = partition_of(table.spec(), table.schema(), timestamp_field)
    fast = compat.fast_overwrite_available() and partition is not None
    slices = partition_slices(frame, timestamp_field, partition) if fast and partition else None
    if slices is None:
        if create:  # PyIceberg's overwrite commits on its own: the branch must exist first
            wap.create_branch(table, branch)
        table.overwrite(
            frame, overwrite_filter=overwrite_filter, snapshot_properties=properties, branch=branch
        )
        return
    with table.transaction() as tx:
        compat.check_write_schema(tx.table_metadata, frame.schema)
        if create:
            wap.stage_branch(tx, table, branch)
        compat.delete_for_overwrite(tx, overwrite_filter, properties, branch)
        with compat.append_data_files(tx, properties, branch) as append_files:
            metadata, io, counter = tx.table_metadata, table.io, itertools.count(0)

            def write(part: pa.Table) -> list[DataFile]:
                return compat.write_data_files(metadata, part, io, append_files.commit_uuid, counter)

            with ThreadPoolExecutor(max_workers=min(WRITERS, len(slices))) as pool:
                for files in pool.map(write, slices):
                    for data_file in files:
                        append_files.append_data_file(data_file)


__all__ = ["Span", "branch_base", "overwrite_window", "partition_slices", "rewrite_span", "rows_to_keep"]

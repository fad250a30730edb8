"""Replace a window of a day-partitioned table in one commit, splitting the rows by day in one pass.

PyIceberg 0.12's ``Table.overwrite``/``append`` split a table into partitions by filtering the *whole*
table once per partition value (``_determine_partitions``): a 30-day window of 1M rows is filtered 30
times, which costs more than writing the Parquet files. Here the rows are grouped by day first (a slice
per day when they already come in time order, one stable radix sort and a take otherwise), each day is
handed to PyIceberg's own file writer on its own (one partition value: one filter of that day's rows)
with the days written in parallel, and the commit is the one ``Transaction.overwrite`` makes: the
window's delete and the new files in one transaction, with the same snapshot properties and branch.

The schema check, the file writer, the overwrite's delete and the append producer are PyIceberg internals
(pinned to 0.12 in pyproject.toml), reached through ``lakehouse.compat``; if they are missing, or the table
is not partitioned, ``Table.overwrite`` does the work as before.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import Table

from featurelake.lakehouse import compat

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile

DAY_US = 86_400_000_000
#: Day groups written at once (Parquet encoding releases the GIL; PyIceberg's own pool does the I/O).
WRITERS = 4


def day_slices(frame: pa.Table, timestamp_field: str) -> list[pa.Table] | None:
    """``frame``'s rows grouped by UTC day of ``timestamp_field`` (day order), or None if it cannot tell."""
    col = frame.column(timestamp_field)
    t = col.type
    if not pa.types.is_timestamp(t) or t.unit != "us" or col.null_count or frame.num_rows == 0:
        return None
    micros = pa.chunked_array([c.view(pa.int64()) for c in col.chunks], pa.int64()).to_numpy()
    days = micros // DAY_US
    if days.size > 1 and not bool(np.all(days[1:] >= days[:-1])):
        lo = int(days.min())
        if int(days.max()) - lo >= 2**16:
            return None  # a radix sort needs 16-bit keys; such a window is better left to PyIceberg
        order = np.argsort((days - lo).astype(np.uint16), kind="stable")
        frame, days = frame.take(pa.array(order)), days[order]
    bounds = np.flatnonzero(np.diff(days)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [days.size]])
    return [frame.slice(int(a), int(b - a)) for a, b in zip(starts, stops, strict=True)]


def overwrite_days(
    table: Table,
    frame: pa.Table,
    overwrite_filter: BooleanExpression,
    timestamp_field: str,
    properties: dict[str, str],
    branch: str,
) -> None:
    """``table.overwrite(frame, overwrite_filter, properties, branch=branch)``, O(rows) in the day split."""
    fast = compat.fast_overwrite_available()
    slices = day_slices(frame, timestamp_field) if fast else None
    if not fast or slices is None or table.metadata.spec().is_unpartitioned():
        table.overwrite(
            frame, overwrite_filter=overwrite_filter, snapshot_properties=properties, branch=branch
        )
        return
    with table.transaction() as tx:
        compat.check_write_schema(tx.table_metadata, frame.schema)
        compat.delete_for_overwrite(tx, overwrite_filter, properties, branch)
        with compat.append_data_files(tx, properties, branch) as append_files:
            metadata, io, counter = tx.table_metadata, table.io, itertools.count(0)

            def write(part: pa.Table) -> list[DataFile]:
                return compat.write_data_files(metadata, part, io, append_files.commit_uuid, counter)

            with ThreadPoolExecutor(max_workers=min(WRITERS, len(slices))) as pool:
                for files in pool.map(write, slices):
                    for data_file in files:
                        append_files.append_data_file(data_file)


__all__ = ["day_slices", "overwrite_days"]

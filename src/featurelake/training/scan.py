"""An Iceberg scan read one data file at a time, as a stream of Arrow record batches.

PyIceberg 0.12's ``DataScan.to_arrow_batch_reader`` hands every file of the scan to a thread pool at once
(``executor.map`` submits them all) and each task reads its whole file: the reader's consumer sees batches
one at a time, but the files are read into memory as fast as the pool can, whatever the consumer keeps. A
training set or a prediction over a long table would then hold the table. :func:`stream_scan` reads the
planned files in order, one file in memory at a time, with the same projection, filter and types.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
from pyiceberg.io.pyarrow import ArrowScan, schema_to_pyarrow

if TYPE_CHECKING:
    from pyiceberg.table import DataScan, FileScanTask


def stream_scan(scan: DataScan, tasks: list[FileScanTask] | None = None) -> pa.RecordBatchReader:
    """``scan``'s rows (of ``tasks``, default its planned files) as a reader that reads one file at a time."""
    projected = scan.projection()
    target = schema_to_pyarrow(projected)
    reader = ArrowScan(scan.table_metadata, scan.io, projected, scan.row_filter, scan.case_sensitive)
    planned = list(scan.plan_files()) if tasks is None else tasks

    def batches() -> Iterator[pa.RecordBatch]:
        for task in planned:
            yield from reader.to_record_batches([task])

    return pa.RecordBatchReader.from_batches(target, batches()).cast(target)


def read_scan(scan: DataScan, tasks: list[FileScanTask]) -> pa.Table:
    """``scan.to_arrow()`` of files already planned (what ``DataScan.to_arrow`` does, without planning again)."""
    return ArrowScan(
        scan.table_metadata, scan.io, scan.projection(), scan.row_filter, scan.case_sensitive, scan.limit
    ).to_table(tasks)


__all__ = ["read_scan", "stream_scan"]

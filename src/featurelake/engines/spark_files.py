"""Reading chosen data files of one snapshot with Spark's Iceberg reader (online sync and compaction).

Spark has no "read these files" API for Iceberg tables; the snapshot is read with its ``_file`` metadata
column, pruned by the files' own column bounds (so Iceberg skips partitions and files none of them overlaps),
and joined with the chosen paths, each tagged with its data sequence number.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyiceberg.conversions import from_bytes
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.types import DateType, IcebergType, IntegerType, LongType, TimestamptzType

from featurelake.engines.spark_session import quote_ident

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from featurelake.engines.spark import SparkEngine

_FILE = "__featurelake_file"
#: At most this many timestamp ranges prune a scan of chosen files (the closest ones are merged).
_MAX_RANGES = 32


def _merge(ranges: list[tuple[Any, Any]], cap: int) -> list[tuple[Any, Any]]:
    """Overlapping ranges merged, then the closest neighbours merged until at most ``cap`` remain."""
    merged: list[tuple[Any, Any]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    while len(merged) > cap:
        i = min(range(len(merged) - 1), key=lambda j: merged[j + 1][0] - merged[j][1])
        merged[i : i + 2] = [(merged[i][0], max(merged[i][1], merged[i + 1][1]))]
    return merged


def _literal(ftype: IcebergType, raw: bytes) -> Any:
    value = from_bytes(ftype, raw)  # type: ignore[arg-type]
    if isinstance(ftype, TimestamptzType):
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(value))
    if isinstance(ftype, DateType):
        return date(1970, 1, 1) + timedelta(days=int(value))
    return int(value)


def bounds_filter(tbl: Table, files: list[DataFile], column: str) -> Column | None:
    """A filter on ``column`` covering the value ranges of ``files`` (from their column statistics), so
    Iceberg prunes partitions and files no chosen file overlaps; None when a file has no bounds."""
    from pyspark.sql import functions as F

    field = tbl.schema().find_field(column)
    if not files or not isinstance(field.field_type, TimestamptzType | DateType | IntegerType | LongType):
        return None
    ranges = []
    for f in files:
        lo, hi = (f.lower_bounds or {}).get(field.field_id), (f.upper_bounds or {}).get(field.field_id)
        if lo is None or hi is None:
            return None
        ranges.append((_literal(field.field_type, lo), _literal(field.field_type, hi)))
    col = F.col(quote_ident(column))
    parts = [(col >= F.lit(lo)) & (col <= F.lit(hi)) for lo, hi in _merge(ranges, _MAX_RANGES)]
    return functools.reduce(lambda a, b: a | b, parts)


def read_files(
    engine: SparkEngine,
    tbl: Table,
    snapshot_id: int,
    files: list[tuple[DataFile, int]],
    columns: list[str],
    *,
    prune_on: str | None = None,
    seq_column: str = "",
) -> DataFrame:
    """Rows of exactly ``files`` (live in ``snapshot_id``), projected to ``columns`` by Spark's Iceberg
    reader; with ``seq_column``, each row also carries its file's data sequence number there."""
    from pyspark.sql import functions as F

    spark = engine.spark
    select = ", ".join(quote_ident(c) for c in columns)
    df = spark.sql(
        f"SELECT {select}, _file AS {quote_ident(_FILE)} FROM {engine.table_ident(tbl)} VERSION AS OF {int(snapshot_id)}"
    )
    if not files:
        empty = df.where(F.lit(False)).drop(_FILE)
        return empty.withColumn(seq_column, F.lit(0).cast("long")) if seq_column else empty
    narrow = bounds_filter(tbl, [f for f, _ in files], prune_on) if prune_on else None
    if narrow is not None:
        df = df.where(narrow)
    seq = seq_column or "__featurelake_unused_seq"
    seqs = spark.createDataFrame(
        [(f.file_path, int(n)) for f, n in files], f"{quote_ident(_FILE)} string, {quote_ident(seq)} long"
    )
    out = df.join(F.broadcast(seqs), _FILE).drop(_FILE)
    return out if seq_column else out.drop(seq)

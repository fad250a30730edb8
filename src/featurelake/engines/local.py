"""The embedded engine: DuckDB runs view SQL over Arrow, PyIceberg reads and writes the tables."""

from __future__ import annotations

import warnings
from datetime import UTC
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.table import Table

from featurelake import duck
from featurelake.engines.aggregate_sql import compile_aggregations
from featurelake.engines.base import Engine, source_files
from featurelake.engines.conform import conform, drop_before_window
from featurelake.errors import ConfigError, SchemaError
from featurelake.features.aggregations import reads_history, source_window
from featurelake.features.definitions import FeatureView
from featurelake.lakehouse.storage import Storage, is_remote, is_storage_failure, storage_error
from featurelake.lakehouse.wap import ref_snapshot_id
from featurelake.lakehouse.window import Window
from featurelake.lakehouse.write import overwrite_window
from featurelake.validation import audit as audit_mod
from featurelake.validation.checks import Check, CheckResult


class LocalEngine(Engine):
    """DuckDB + PyIceberg on one machine."""

    name = "local"

    # --- sources ------------------------------------------------------------------------------------
    def _source(
        self, con: duckdb.DuckDBPyConnection, view: FeatureView, window: Window | None
    ) -> duckdb.DuckDBPyRelation:
        """The view's source restricted to ``window`` (None: no rows, the schema only), as a relation."""
        src = view.source
        if src.kind == "parquet":
            files = source_files(src, self.project_dir, view.name, storage=self.storage)
            if is_remote(files[0]):  # object storage: Arrow lists, prunes and reads; DuckDB never sees a URL
                return con.from_arrow(
                    read_remote_parquet(files, src.timestamp_field, window, self.storage, view.name)
                )
            if (
                window is not None
                and (data := read_parquet_window(files, src.timestamp_field, window)) is not None
            ):
                return con.from_arrow(data)
            rel = con.read_parquet(files)
            if src.timestamp_field not in rel.columns:
                raise ConfigError(
                    f"view {view.name!r}: source has no timestamp field {src.timestamp_field!r}; "
                    f"its columns are {', '.join(rel.columns)}"
                )
            # A relation, not a view: views live in the process-wide database that cursors share.
            return rel.limit(0) if window is None else rel.filter(window.sql_filter(src.timestamp_field))
        try:
            tbl = self.catalog.load_table(src.location)
        except Exception as exc:
            raise ConfigError(
                f"view {view.name!r}: source table {src.location!r} cannot be loaded: {exc}"
            ) from exc
        if src.timestamp_field not in tbl.schema().column_names:
            raise ConfigError(
                f"view {view.name!r}: source table {src.location} has no column {src.timestamp_field!r}"
            )
        if window is None:
            data = tbl.schema().as_arrow().empty_table()
        else:
            data = tbl.scan(row_filter=window.iceberg_filter(src.timestamp_field)).to_arrow()
        return con.from_arrow(data)

    def _run(self, view: FeatureView, window: Window | None) -> pa.Table:
        """The query (then the aggregations, if declared) over the source rows ``window`` needs: from
        ``window.start`` minus the view's lookback. Rows before ``window.start`` may come back."""
        with duck.cursor() as con:
            source = self._source(con, view, None if window is None else source_window(view, window))
            stage = "the query"
            try:
                result = source.query("source", view.query) if view.query.strip() else source
                if result is None:
                    raise SchemaError(f"view {view.name!r}: the query must be a SELECT that returns rows")
                if view.aggregations:
                    stage = "the aggregations"
                    columns = dict(zip(result.columns, map(str, result.types), strict=True))
                    bounds = (window.start, window.end) if window is not None else (None, None)
                    sql = compile_aggregations(
                        view, "prepared", columns, dialect="duckdb", start=bounds[0], end=bounds[1]
                    )
                    aggregated = result.query("prepared", sql)
                    assert aggregated is not None  # a SELECT always gives a relation
                    result = aggregated
                return result.to_arrow_table()
            except duckdb.Error as exc:
                first = str(exc).strip().splitlines()[0]
                raise SchemaError(f"view {view.name!r}: {stage} failed in DuckDB: {first}") from exc

    def source_schema(self, view: FeatureView) -> pa.Schema:
        return self._run(view, None).schema

    def compute(self, view: FeatureView, window: Window, table: Table) -> pa.Table:
        result = self._run(view, window)
        if reads_history(view):
            result = drop_before_window(result, view, window)  # the lookback's rows: read, never written
        return conform(result, view, table.schema().as_arrow(), window)

    # --- tables -------------------------------------------------------------------------------------
    def write_window(
        self,
        table: Table,
        frame: pa.Table,
        window: Window,
        timestamp_field: str,
        branch: str,
        properties: dict[str, str],
    ) -> int:
        with warnings.catch_warnings():
            # An empty window on the branch is the normal first backfill, not something to warn about.
            warnings.filterwarnings("ignore", message="Delete operation did not match any records")
            overwrite_window(table, frame, window, timestamp_field, properties, branch)
        tip = ref_snapshot_id(table, branch)
        assert tip is not None
        return tip

    def read(self, table: Table, *, snapshot_id: int | None = None, row_filter: Any = None) -> pa.Table:
        return table.scan(
            row_filter=row_filter if row_filter is not None else AlwaysTrue(), snapshot_id=snapshot_id
        ).to_arrow()

    def audit(self, frame: pa.Table, checks: list[Check]) -> tuple[int, list[CheckResult]]:
        return audit_mod.evaluate(frame, checks)

    def to_arrow(self, frame: pa.Table) -> pa.Table:
        return frame


def _plain(t: pa.DataType) -> bool:
    """Types that Arrow and DuckDB read from Parquet alike (what DuckDB then sees is the same)."""
    if pa.types.is_timestamp(t):
        return t.unit == "us"
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_date32(t)
        or pa.types.is_decimal128(t)
    )


def read_parquet_window(files: list[str], timestamp_field: str, window: Window) -> pa.Table | None:
    """The source rows of ``window`` read by Arrow's multithreaded Parquet reader, or None to let DuckDB.

    About twice as fast as DuckDB's ``read_parquet`` for the same rows (it then runs the view's query over
    the Arrow table). Only used where both read the same thing: every file with one schema of plain types,
    a timezone-aware microsecond timestamp, no hive-style ``key=value`` directories (DuckDB would add
    those as columns).
    """
    if any("=" in part for f in files for part in Path(f).parent.parts):
        return None
    try:
        schemas = [pq.read_schema(f) for f in files]
        first = schemas[0]
        if any(not s.equals(first) for s in schemas[1:]) or not all(_plain(f.type) for f in first):
            return None
        ts = first.field(timestamp_field).type
        if not pa.types.is_timestamp(ts) or ts.tz is None:
            return None
        lo, hi = pa.scalar(window.start, ts), pa.scalar(window.end, ts)
        field = pc.field(timestamp_field)
        table = ds.dataset(files, schema=first, format="parquet").to_table(
            filter=(field >= lo) & (field < hi)
        )
    except (OSError, KeyError, pa.ArrowException):
        return None
    return table.replace_schema_metadata(None)


def _hive_base(paths: list[str]) -> str | None:
    """The directory above the first ``key=value`` directory of the files, when they are hive-partitioned."""
    bases = set()
    for p in paths:
        parts = p.split("/")[:-1]
        i = next((i for i, part in enumerate(parts) if "=" in part), None)
        if i is None:
            return None
        bases.add("/".join(parts[:i]))
    return bases.pop() if len(bases) == 1 else None


def _bound(value: Any, t: pa.DataType) -> pa.Scalar:
    if pa.types.is_timestamp(t) and t.tz is None:
        # Naive source times are UTC (DuckDB compares them so too).
        return pa.scalar(value.astimezone(UTC).replace(tzinfo=None), t)
    if pa.types.is_date(t):
        return pa.scalar(value.date(), t)
    return pa.scalar(value, t)


def read_remote_parquet(
    files: list[str], timestamp_field: str, window: Window | None, storage: Storage, view: str
) -> pa.Table:
    """The source rows of ``window`` from Parquet objects (None: no rows, the schema only).

    One Arrow dataset over the objects: hive-style ``key=value`` directories become columns (as DuckDB's
    ``read_parquet`` makes them for local files), the window is pushed down as a filter on the timestamp
    (row groups whose statistics fall outside it are skipped), and the objects are read by Arrow's threaded
    S3 reader with pre-buffering.
    """
    fs, _ = storage.filesystem(files[0])
    paths = [storage.filesystem(f)[1] for f in files]
    base = _hive_base(paths)
    try:
        dataset = ds.dataset(
            paths,
            filesystem=fs,
            format="parquet",
            partitioning="hive" if base is not None else None,
            partition_base_dir=base,
        )
        if timestamp_field not in dataset.schema.names:
            raise ConfigError(
                f"view {view!r}: source has no timestamp field {timestamp_field!r}; its columns are "
                f"{', '.join(dataset.schema.names)}"
            )
        if window is None:
            return dataset.schema.empty_table().replace_schema_metadata(None)
        t = dataset.schema.field(timestamp_field).type
        if not (pa.types.is_timestamp(t) or pa.types.is_date(t)):
            raise ConfigError(
                f"view {view!r}: source timestamp field {timestamp_field!r} is {t}, not a timestamp or date"
            )
        field = pc.field(timestamp_field)
        table = dataset.to_table(
            filter=(field >= _bound(window.start, t)) & (field < _bound(window.end, t)), use_threads=True
        )
    except OSError as exc:
        if is_storage_failure(exc):
            raise storage_error(exc, f"read the source of view {view!r}") from exc
        raise ConfigError(f"view {view!r}: source objects cannot be read as Parquet: {exc}") from exc
    except pa.ArrowException as exc:
        raise ConfigError(f"view {view!r}: source objects cannot be read as Parquet: {exc}") from exc
    return table.replace_schema_metadata(None)


__all__ = ["LocalEngine", "read_parquet_window", "read_remote_parquet"]

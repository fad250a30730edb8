"""The embedded engine: DuckDB runs view SQL over Arrow, PyIceberg reads and writes the tables."""

from __future__ import annotations

import itertools
import os
import re
import threading
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyiceberg.conversions import from_bytes
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.manifest import FileFormat
from pyiceberg.table import Table
from pyiceberg.types import TimestampType, TimestamptzType

from featurelake import duck
from featurelake.config import BackfillConfig
from featurelake.engines.aggregate_sql import compile_aggregations
from featurelake.engines.base import Engine, source_files
from featurelake.engines.conform import conform, drop_before_window
from featurelake.errors import ConfigError, SchemaError
from featurelake.features.aggregations import reads_history, source_window
from featurelake.features.definitions import FeatureView
from featurelake.features.lint import lookback_warnings, parse_statements, statement_problem, walk
from featurelake.lakehouse import compat, wap
from featurelake.lakehouse.schema import partition_of
from featurelake.lakehouse.storage import Storage, is_remote, is_storage_failure, storage_error
from featurelake.lakehouse.wap import ref_snapshot_id
from featurelake.lakehouse.window import Window
from featurelake.lakehouse.write import (
    DAY_US,
    EPOCH,
    WRITERS,
    branch_base,
    overwrite_window,
    partition_slices,
    rewrite_span,
    rows_to_keep,
)
from featurelake.memory import is_out_of_memory
from featurelake.validation import audit as audit_mod
from featurelake.validation.checks import Check, CheckResult
from featurelake.validation.core import Agg
from featurelake.validation.fast import distinct_rows
from featurelake.validation.stats import sample_positions

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile

#: The settings a backfill that runs out of memory should lower (named in its error).
BATCH_SETTING = "backfill.batch_days (FEATURELAKE_BACKFILL__BATCH_DAYS)"
ROWS_SETTING = "backfill.batch_rows (FEATURELAKE_BACKFILL__BATCH_ROWS)"
#: Rows per record batch of a streamed source read (whole chunks are cut from these).
_READ_BATCH = 65_536


class LocalEngine(Engine):
    """DuckDB + PyIceberg on one machine."""

    name = "local"
    creates_branch = True  # overwrite_window and commit_batches stage it in their own commit

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
            try:
                rel = con.read_parquet(files)  # reads the first file's footer
            except duckdb.Error as exc:
                raise _unreadable_source(view, exc) from exc
            if src.timestamp_field not in rel.columns:
                raise ConfigError(
                    f"view {view.name!r}: source has no timestamp field {src.timestamp_field!r}; "
                    f"its columns are {', '.join(rel.columns)}: set timestamp_field= of the Source in features.py "
                    "to one of them"
                )
            ts_type = str(rel.types[rel.columns.index(src.timestamp_field)])
            if not (ts_type.startswith("TIMESTAMP") or ts_type == "DATE"):
                # The window's filter would compare text with timestamps: refused, as on object storage.
                raise _not_a_timestamp(view.name, src.timestamp_field, ts_type)
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

    def _source_arrow(self, view: FeatureView, window: Window) -> pa.Table | None:
        """The source rows of ``window`` as Arrow when a reader gives them without DuckDB (Parquet of plain
        types, local or on object storage); None otherwise."""
        src = view.source
        if src.kind != "parquet":
            return None
        files = source_files(src, self.project_dir, view.name, storage=self.storage)
        if is_remote(files[0]):
            return read_remote_parquet(files, src.timestamp_field, window, self.storage, view.name)
        return read_parquet_window(files, src.timestamp_field, window)

    def _run(self, view: FeatureView, window: Window | None, rows: pa.Table | None = None) -> pa.Table:
        """The query (then the aggregations, if declared) over the source rows ``window`` needs: from
        ``window.start`` minus the view's lookback (or over ``rows``, some of them, already read). Rows before
        ``window.start`` may come back."""
        if window is not None and passthrough(view):
            # `SELECT * FROM source`: the rows are the source's own, and conform() checks and casts them; a
            # round trip through DuckDB would only copy them (a third of a 1M-row backfill's compute).
            data = rows if rows is not None else self._source_arrow(view, source_window(view, window))
            if data is not None:
                return data
        with duck.cursor() as con:
            if rows is not None:
                source = con.from_arrow(rows)
            else:
                source = self._source(con, view, None if window is None else source_window(view, window))
            stage = "the query"
            if view.query.strip() and (problem := statement_problem(view.query)) is not None:
                raise SchemaError(f"view {view.name!r}: the query must be one SELECT over source: {problem}")
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
            except duckdb.OutOfMemoryException:
                raise  # not the query's fault: the callers say which setting to lower
            except duckdb.Error as exc:
                if _BAD_PARQUET.search(str(exc)):  # a source file, not the query
                    raise _unreadable_source(view, exc) from exc
                first = str(exc).strip().splitlines()[0]
                raise SchemaError(f"view {view.name!r}: {stage} failed in DuckDB: {first}") from exc

    def source_schema(self, view: FeatureView) -> pa.Schema:
        return self._run(view, None).schema

    def compute(
        self, view: FeatureView, window: Window, table: Table, source: pa.Table | None = None
    ) -> pa.Table:
        """The view's rows for ``window``, conformed to ``table``; ``source``: compute them from these source
        rows of the window (a chunk of :meth:`source_chunks`) instead of reading the source."""
        result = self._run(view, window, source)
        if reads_history(view):
            result = drop_before_window(result, view, window)  # the lookback's rows: read, never written
        return conform(result, view, table.schema().as_arrow(), window)

    # --- tables -------------------------------------------------------------------------------------
    def write_window(
        self,
        table: Table,
        frame: pa.Table | WrittenWindow,
        window: Window,
        timestamp_field: str,
        branch: str,
        properties: dict[str, str],
    ) -> int:
        if isinstance(frame, WrittenWindow):  # computed batch by batch: its files are already written
            return self.commit_batches(table, frame, window, branch, properties)
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

    def audit(self, frame: Any, checks: list[Check]) -> tuple[int, list[CheckResult]]:
        if isinstance(frame, WrittenWindow):
            return frame.audit(checks)
        return audit_mod.evaluate(frame, checks)

    # --- bounded memory: a window computed and written a batch of days at a time ---------------------
    def compute_backfill(
        self,
        view: FeatureView,
        window: Window,
        table: Table,
        settings: BackfillConfig,
        progress: Callable[[str], None] | None = None,
    ) -> pa.Table | WrittenWindow:
        """Batch by batch when :meth:`can_batch` (:meth:`write_batches`: each batch's files written, one commit
        later), else the whole window at once (:meth:`compute_whole`)."""
        batch_days = settings.batch_days
        if self.can_batch(table, view, window, batch_days, settings.batch_min_rows, settings.batch_rows):
            return self.write_batches(view, window, table, batch_days, progress, settings.batch_rows)
        if progress is not None:
            progress(f"computing {view.name} for {window}")
        return self.compute_whole(view, window, table, batch_days)

    def batched(self, frame: Any) -> bool:
        return isinstance(frame, WrittenWindow)

    def can_batch(
        self,
        table: Table,
        view: FeatureView,
        window: Window,
        batch_days: int,
        min_rows: int = 0,
        batch_rows: int = 0,
    ) -> bool:
        """Whether a backfill of ``window`` goes batch by batch (see :meth:`write_batches`): a window longer
        than ``batch_days`` (with a ``batch_rows`` budget, any window of a view computed row by row) of a
        batch-invariant view whose source holds more than ``min_rows`` rows for it (by the source's metadata;
        unknown counts as more)."""
        if not (
            batch_days > 0
            and (window.days > batch_days or (batch_rows > 0 and row_local(view)))
            and batch_invariant(view)
            and compat.fast_overwrite_available()
            and partition_of(table.spec(), table.schema(), view.timestamp_field) is not None
        ):
            return False
        if min_rows <= 0:
            return True
        rows = self.source_rows(view, source_window(view, window))
        return rows is None or rows > min_rows

    def source_rows(self, view: FeatureView, window: Window) -> int | None:
        """At least the source rows ``window`` reads, from metadata only (Parquet row groups whose timestamp
        statistics overlap it, local or on object storage, or the Iceberg files a scan of it plans); None when
        it cannot tell."""
        src = view.source
        try:
            if src.kind != "parquet":
                tbl = self.catalog.load_table(src.location)
                scan = tbl.scan(row_filter=window.iceberg_filter(src.timestamp_field))
                return sum(int(t.file.record_count) for t in scan.plan_files())
            files = source_files(src, self.project_dir, view.name, storage=self.storage)
            fs = self.storage.filesystem(files[0])[0] if is_remote(files[0]) else None
            paths = [self.storage.filesystem(f)[1] for f in files] if fs is not None else files
            if fs is None or len(paths) < 2:
                return sum(_parquet_rows(f, src.timestamp_field, window, fs) for f in paths)
            # Object storage: each footer is a round trip, so read them side by side (30 sequential reads
            # cost a 1M-row backfill to S3 a fifth of its time).
            with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
                return sum(pool.map(lambda f: _parquet_rows(f, src.timestamp_field, window, fs), paths))
        except Exception:  # an estimate only: the compute reports what is wrong with the source
            return None

    def source_chunks(self, view: FeatureView, window: Window, rows: int) -> Iterator[pa.Table]:
        """The source rows of ``window`` (no lookback) in tables of about ``rows`` rows, read once as a stream:
        only one chunk (plus the reader's buffers) is in memory at a time. Local Parquet files of plain types
        are streamed by Arrow's reader; any other source by DuckDB from the relation :meth:`_source` gives."""
        src = view.source
        files = (
            source_files(src, self.project_dir, view.name, storage=self.storage)
            if src.kind == "parquet"
            else []
        )
        if files and not is_remote(files[0]):
            scanner = parquet_window_scanner(files, src.timestamp_field, window)
            if scanner is not None:
                yield from _rechunk(scanner.to_batches(), scanner.projected_schema, rows)
                return
        with duck.cursor() as con:
            try:
                reader = self._source(con, view, window).to_arrow_reader(min(rows, _READ_BATCH))
                yield from _rechunk(reader, reader.schema, rows)
            except (
                duckdb.Error,
                pa.ArrowException,
                OSError,
            ) as exc:  # Arrow's reader passes DuckDB's on as OSError
                if _BAD_PARQUET.search(str(exc)):  # read as a stream, outside the query's own error handling
                    raise _unreadable_source(view, exc) from exc
                raise

    def write_batches(
        self,
        view: FeatureView,
        window: Window,
        table: Table,
        batch_days: int,
        progress: Callable[[str], None] | None = None,
        batch_rows: int = 0,
    ) -> WrittenWindow:
        """Compute ``window`` ``batch_days`` at a time and write each batch's rows as data files of ``table``
        (not committed: :meth:`commit_batches` adds them all in one snapshot). Only one batch is in memory.

        Each batch is a window of its own: its source is read from its start minus the view's lookback,
        its aggregations are computed over that, and only its own days are kept. A view computed row by row
        (:func:`row_local`) reads each batch's source as a stream and computes and writes it ``batch_rows``
        source rows at a time (``0``: the whole batch at once), so not even one day need be in memory.
        """
        target = table.schema().as_arrow()
        partition = partition_of(table.spec(), table.schema(), view.timestamp_field)
        assert partition is not None
        written = WrittenWindow(target, self.storage, view.timestamp_field)
        write_uuid, counter = uuid.uuid4(), itertools.count(0)
        chunked = batch_rows > 0 and row_local(view)
        pool = pa.default_memory_pool()
        for batch in split_window(window, batch_days):
            if progress is not None:
                progress(f"computing {view.name} for {batch} (batch of {window})")
            files: list[DataFile] = []
            rows = 0
            try:
                sources = self.source_chunks(view, batch, batch_rows) if chunked else iter([None])
                for source in sources:
                    frame = (
                        self.compute(view, batch, table, source)
                        if chunked
                        else self.compute(view, batch, table)
                    )
                    del source
                    if frame.num_rows == 0:
                        continue
                    compat.check_write_schema(table.metadata, frame.schema)
                    slices = partition_slices(frame, view.timestamp_field, partition) or [frame]
                    del frame
                    files += _write_files(table, slices, write_uuid, counter)
                    rows += sum(s.num_rows for s in slices)
                    del slices
                    # Hand the chunk's buffers back to the system: Arrow's allocator would keep them, and the
                    # next chunk (or the audit) would then add its own on top.
                    pool.release_unused()
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                what = f"lower {BATCH_SETTING} (now {batch_days}) so that fewer days are in memory at once"
                if chunked:
                    what = f"lower {ROWS_SETTING} (now {batch_rows}) so that fewer rows are in memory at once"
                raise ConfigError(
                    f"view {view.name!r}: out of memory computing {batch} of the backfill {window} "
                    f"({type(exc).__name__}: {exc}); {what}, or give the process more memory"
                ) from exc
            if files:  # a batch's files together: the audit proves uniqueness batch by batch
                written.add(files, rows)
        return written

    def compute_whole(self, view: FeatureView, window: Window, table: Table, batch_days: int) -> pa.Table:
        """:meth:`compute` of the whole window at once, running out of memory as a ConfigError that says
        what to change."""
        try:
            return self.compute(view, window, table)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if batch_days <= 0:
                advice = f"set {BATCH_SETTING} to 1 (now {batch_days}) to compute it a day at a time"
            elif window.days > batch_days and not batch_invariant(view):
                advice = (
                    "its query groups, aggregates, de-duplicates or limits rows over the whole window (or reads "
                    "earlier rows without a lookback), so it cannot be computed in batches: backfill shorter "
                    "windows one after another"
                )
            else:
                advice = f"backfill shorter windows, or lower {BATCH_SETTING} (now {batch_days})"
            raise ConfigError(
                f"view {view.name!r}: out of memory computing the backfill {window} in one piece "
                f"({type(exc).__name__}: {exc}); {advice}, or give the process more memory"
            ) from exc

    def commit_batches(
        self, table: Table, written: WrittenWindow, window: Window, branch: str, properties: dict[str, str]
    ) -> int:
        """Replace ``window`` on ``branch`` with the files of ``written`` in one snapshot; returns its id.

        As :func:`lakehouse.write.overwrite_window`: the span of files that straddle the window is deleted
        and its rows outside the window are written back (as files of their own) in the same commit, which
        also creates ``branch`` at main's snapshot if it does not exist yet.
        """
        ts = written.timestamp_field
        create, base = branch_base(table, branch)
        span = rewrite_span(table, base, window, ts)
        files = list(written.files)
        kept = rows_to_keep(table, base, span, window, ts)
        if kept is not None and kept.num_rows:
            kept = kept.select(written.schema.names).cast(written.schema)
            partition = partition_of(table.spec(), table.schema(), ts)
            slices = (partition_slices(kept, ts, partition) if partition else None) or [kept]
            files += _write_files(table, slices, uuid.uuid4(), itertools.count(0))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Delete operation did not match any records")
            with table.transaction() as tx:
                compat.check_write_schema(tx.table_metadata, written.schema)
                if create:
                    wap.stage_branch(tx, table, branch)
                compat.delete_for_overwrite(tx, span.iceberg_filter(ts), properties, branch)
                with compat.append_data_files(tx, properties, branch) as append_files:
                    for data_file in files:
                        append_files.append_data_file(data_file)
        tip = ref_snapshot_id(table, branch)
        assert tip is not None
        return tip

    def read_window(
        self, table: Table, snapshot_id: int, window: Window, timestamp_field: str
    ) -> pa.Table | WrittenWindow:
        """The branch's data files themselves when they hold exactly the window's rows
        (:meth:`branch_window`): the audit streams them file by file, in the memory a backfill's batch needs,
        and a rebase adds the same files to the reset branch. Otherwise the window read into memory."""
        files = self.branch_window(table, snapshot_id, window, timestamp_field)
        if files is not None:
            return files
        return super().read_window(table, snapshot_id, window, timestamp_field)

    def branch_window(
        self, table: Table, snapshot_id: int, window: Window, timestamp_field: str
    ) -> WrittenWindow | None:
        """The rows of ``window`` at ``snapshot_id`` (a kept branch's tip) as a :class:`WrittenWindow` over the
        data files that hold them: re-auditing a kept branch then streams its files as a backfill's audit does,
        instead of :meth:`read` loading the window as one table.

        None (the caller reads the window then) unless the files give exactly the rows the read gives:
        - the table has only ever had one schema (Arrow reads a file by column name, PyIceberg by field id: a
          file written before a rename or a type change would differ), of columns Arrow and DuckDB read alike;
        - Parquet files without delete files;
        - every file's ``timestamp_field`` bounds are known and inside the window, with no nulls (the read's
          filter drops rows outside it that a straddling file holds);
        - PyIceberg has the internals :meth:`commit_batches` uses: a publish that has to rebase adds the same
          files to the reset branch.

        Files stay in the order the scan plans them, the order in which the read concatenates them, so the
        audit's sample draws the same rows. The batches (each proven unique on its own, see
        ``WrittenWindow._per_batch``) are the files of one UTC day, ordered by lower bound then path; a file
        spanning several days joins them into one batch, so no two batches share an event time.
        """
        if len(table.metadata.schemas) != 1 or not compat.fast_overwrite_available():
            return None
        schema = table.schema().as_arrow()
        if not all(_arrow_plain(f.type) for f in schema):
            return None
        try:
            ts = table.schema().find_field(timestamp_field)
        except ValueError:
            return None  # the read reports the missing column
        if not isinstance(ts.field_type, TimestampType | TimestamptzType):
            return None
        start, end = _micros(window.start), _micros(window.end)
        spans: list[tuple[int, int, str, DataFile]] = []
        files: list[DataFile] = []
        plan = table.scan(row_filter=window.iceberg_filter(timestamp_field), snapshot_id=snapshot_id)
        for task in plan.plan_files():
            data_file = task.file
            if task.delete_files or data_file.file_format != FileFormat.PARQUET:
                return None
            lower = (data_file.lower_bounds or {}).get(ts.field_id)
            upper = (data_file.upper_bounds or {}).get(ts.field_id)
            nulls = (data_file.null_value_counts or {}).get(ts.field_id)
            if lower is None or upper is None or (not ts.required and nulls != 0):
                return None
            lo, hi = int(from_bytes(ts.field_type, lower)), int(from_bytes(ts.field_type, upper))
            if lo < start or hi >= end:
                return None
            spans.append((lo, hi, data_file.file_path, data_file))
            files.append(data_file)
        batches: list[list[DataFile]] = []
        last_day = 0  # the last UTC day the current batch holds
        for lo, hi, _, data_file in sorted(spans, key=lambda s: (s[0], s[2])):
            if not batches or lo // DAY_US > last_day:
                batches.append([])
                last_day = hi // DAY_US
            batches[-1].append(data_file)
            last_day = max(last_day, hi // DAY_US)
        return WrittenWindow(
            schema,
            self.storage,
            timestamp_field,
            files=files,
            num_rows=sum(int(f.record_count) for f in files),
            batches=batches,
        )

    def to_arrow(self, frame: pa.Table) -> pa.Table:
        return frame


@cache
def _aggregate_functions() -> frozenset[str]:
    with duck.cursor() as con:
        rows = con.execute(
            "SELECT DISTINCT lower(function_name) FROM duckdb_functions() WHERE function_type = 'aggregate'"
        ).fetchall()
    return frozenset(r[0] for r in rows) | {"count_star"}


def batch_invariant(view: FeatureView) -> bool:
    """Whether computing ``view`` a few days at a time gives the rows computing the whole window gives.

    True for a view whose query computes each output row from its own source row, or (with a lookback
    covering what they read) from earlier rows: declared aggregations, window functions and self-joins with
    a lookback. False when the query groups, aggregates, de-duplicates or limits rows of the window as a
    whole (GROUP BY, an aggregate function, DISTINCT, LIMIT, a subquery), when it reads earlier rows without
    a lookback, or when DuckDB cannot parse it: such views are computed in one piece as before.
    """
    if not view.query.strip():
        return True
    if lookback_warnings(view):
        return False
    statements = parse_statements(view.query)
    if statements is None:
        return False
    aggregates = _aggregate_functions()
    for node in walk(statements):
        if node.get("group_expressions") or node.get("class") == "SUBQUERY":
            return False
        if node.get("type") in ("DISTINCT_MODIFIER", "LIMIT_MODIFIER", "LIMIT_PERCENT_MODIFIER"):
            return False
        if node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() in aggregates:
            return False
    return True


_PASSTHROUGH = re.compile(r"\s*select\s+\*\s+from\s+source\s*;?\s*", re.IGNORECASE)


def passthrough(view: FeatureView) -> bool:
    """Whether the view's rows are its source's rows as they are: the query is ``SELECT * FROM source`` (or
    empty) and no aggregations are declared."""
    return not view.aggregations and (
        not view.query.strip() or _PASSTHROUGH.fullmatch(view.query) is not None
    )


def row_local(view: FeatureView) -> bool:
    """Whether each output row of ``view`` comes from its own source row alone, so that any partition of a
    window's source rows gives the window's rows chunk by chunk: a batch-invariant query (no grouping,
    aggregate, DISTINCT, LIMIT or subquery) that reads no earlier rows (no lookback, no aggregations)."""
    return not reads_history(view) and batch_invariant(view)


def _rechunk(batches: Iterable[pa.RecordBatch], schema: pa.Schema, rows: int) -> Iterator[pa.Table]:
    """``batches`` cut and gathered into tables of ``rows`` rows (the last one may be smaller); one empty
    table when there are no rows (the query still runs over it, so a broken query fails as in one piece)."""
    pending = schema.empty_table()
    given = False
    for batch in batches:
        if not batch.num_rows:
            continue
        pending = pa.concat_tables([pending, pa.Table.from_batches([batch], schema=schema)])
        while pending.num_rows >= rows:
            yield pending.slice(0, rows)
            pending, given = pending.slice(rows), True
    if pending.num_rows or not given:
        yield pending


#: Footers of local Parquet files read lately, by (path, size, modification time): a backfill reads a
#: source's footers to size it (``source_rows``) and again to read it (``_plain_dataset``).
_FOOTERS: OrderedDict[tuple[str, int, int], pq.FileMetaData] = OrderedDict()
_FOOTERS_LOCK = threading.Lock()
_FOOTERS_KEPT = 1024


def local_footer(path: str) -> pq.FileMetaData:
    """The footer of local Parquet file ``path``, read once while the file is unchanged."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    with _FOOTERS_LOCK:
        meta = _FOOTERS.get(key)
        if meta is not None:
            _FOOTERS.move_to_end(key)
            return meta
    meta = pq.read_metadata(path)
    with _FOOTERS_LOCK:
        _FOOTERS[key] = meta
        while len(_FOOTERS) > _FOOTERS_KEPT:
            _FOOTERS.popitem(last=False)
    return meta


def _group_spans(meta: pq.FileMetaData, timestamp_field: str) -> Iterator[tuple[int, Any, Any, int | None]]:
    """(rows, min, max, nulls) of each row group's ``timestamp_field`` (aware datetimes; None: unknown)."""
    index = meta.schema.to_arrow_schema().get_field_index(timestamp_field)
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        stats = group.column(index).statistics if index >= 0 else None
        lo = hi = nulls = None
        if stats is not None and stats.has_min_max:
            lo, hi = stats.min, stats.max
            if isinstance(lo, datetime) and isinstance(hi, datetime):
                lo, hi = (v if v.tzinfo else v.replace(tzinfo=UTC) for v in (lo, hi))
            else:
                lo = hi = None
        if stats is not None and stats.has_null_count:
            nulls = stats.null_count
        yield group.num_rows, lo, hi, nulls


def _parquet_rows(path: str, timestamp_field: str, window: Window, filesystem: Any = None) -> int:
    """Rows of the row groups of ``path`` (on ``filesystem``, default local) whose ``timestamp_field``
    statistics overlap ``window`` (all of a row group without usable statistics)."""
    meta = local_footer(path) if filesystem is None else pq.read_metadata(path, filesystem=filesystem)
    return sum(
        rows
        for rows, lo, hi, _ in _group_spans(meta, timestamp_field)
        if lo is None or not (hi < window.start or lo >= window.end)
    )


def split_window(window: Window, days: int) -> Iterator[Window]:
    """``window`` cut into consecutive windows of ``days`` days (the last one may be shorter)."""
    start = window.start
    while start < window.end:
        end = min(start + timedelta(days=days), window.end)
        yield Window(start, end)
        start = end


def _write_files(
    table: Table, slices: list[pa.Table], write_uuid: uuid.UUID, counter: itertools.count[int]
) -> list[DataFile]:
    """Write each slice (one partition's rows) as data files of ``table``, a few at once; nothing committed."""
    metadata, io = table.metadata, table.io

    def write(part: pa.Table) -> list[DataFile]:
        return compat.write_data_files(metadata, part, io, write_uuid, counter)

    with ThreadPoolExecutor(max_workers=max(1, min(WRITERS, len(slices)))) as pool:
        return [f for files in pool.map(write, slices) for f in files]


@dataclass
class WrittenWindow:
    """A window computed and written batch by batch: its data files (written, not yet committed) stand in
    for the in-memory frame. The audit reads them back with DuckDB one row group at a time."""

    schema: pa.Schema
    storage: Storage
    timestamp_field: str
    files: list[DataFile] = field(default_factory=list)
    num_rows: int = 0
    #: The files of each batch (batches are disjoint in time).
    batches: list[list[DataFile]] = field(default_factory=list)

    def add(self, files: list[DataFile], rows: int) -> None:
        self.files.extend(files)
        self.batches.append(files)
        self.num_rows += rows

    def dataset(self, files: list[DataFile] | None = None) -> ds.Dataset:
        """The written rows (of ``files``, default all) as one Arrow dataset, files in the order written."""
        files = self.files if files is None else files
        if not files:
            return ds.dataset(self.schema.empty_table())
        fs, _ = self.storage.filesystem(files[0].file_path)
        paths = [self.storage.filesystem(f.file_path)[1] for f in files]
        return ds.dataset(paths, schema=self.schema, format="parquet", filesystem=fs)

    def _per_batch(self, expr: Agg) -> int:
        """A ``distinct_rows`` aggregate over key columns that include the timestamp: the sum of its value
        over the batches (no row of one batch can equal a row of another), each batch's key columns read on
        their own, so uniqueness is proven in the memory of one batch instead of a hash table of the window."""
        cols = list(expr.args)
        total = 0
        with duck.cursor() as con:
            for files in self.batches:
                keys = self.dataset(files).to_table(columns=cols)
                proven = distinct_rows(keys, tuple(cols))
                if proven is None:
                    con.register("frame", keys)
                    (row,) = con.execute(f"SELECT {expr} FROM frame").fetchall()
                    con.unregister("frame")
                    proven = int(row[0] or 0)
                total += proven
                del keys
        return total

    def sample(self, columns: list[str], n: int, seed: int) -> pa.Table:
        """What ``validation.stats.sample_rows`` draws from the rows in written order, file by file."""
        dataset = self.dataset()
        if self.num_rows <= n:
            return dataset.to_table(columns=columns)
        idx = sample_positions(self.num_rows, n, seed)
        parts, offset = [], 0
        for fragment in dataset.get_fragments():
            for batch in fragment.to_batches(columns=columns):
                lo, hi = np.searchsorted(idx, [offset, offset + batch.num_rows])
                if hi > lo:
                    parts.append(batch.take(pa.array(idx[lo:hi] - offset)))
                offset += batch.num_rows
        return pa.Table.from_batches(parts, schema=pa.schema([self.schema.field(c) for c in columns]))

    def audit(self, checks: list[Check]) -> tuple[int, list[CheckResult]]:
        """Evaluate ``checks`` over the written rows: aggregates by DuckDB scanning the files as an Arrow dataset
        (streaming), the sample drawn as from the frame."""
        if not self.files:
            return audit_mod.evaluate(self.schema.empty_table(), checks)
        dataset = self.dataset()

        def sample(cols: list[str], n: int, seed: int) -> pa.Table:
            drawn = self.sample(cols, n, seed)
            for check in checks:
                if check.sample_request() is not None:
                    check.prepare_sample(drawn)
            return drawn

        with duck.cursor() as con:

            def query(exprs: list[str]) -> list[Any]:
                out: list[Any] = [None] * len(exprs)
                scan = []
                for i, e in enumerate(exprs):
                    if isinstance(e, Agg) and e.op == "distinct_rows" and self.timestamp_field in e.args:
                        out[i] = self._per_batch(e)
                    else:
                        scan.append(i)
                if scan:
                    # A scanner reading one file, a batch ahead: a dataset registered as such is scanned with
                    # Arrow's default read-ahead (several files at once).
                    con.register(
                        "frame", ds.Scanner.from_dataset(dataset, batch_readahead=1, fragment_readahead=1)
                    )
                    (row,) = con.execute(f"SELECT {', '.join(exprs[i] for i in scan)} FROM frame").fetchall()
                    con.unregister("frame")
                    for i, v in zip(scan, row, strict=True):
                        out[i] = v
                return out

            # Running out of memory propagates: the backfill or re-audit that asked says what to change.
            return audit_mod.evaluate_with(query, sample, checks)


def _not_a_timestamp(view: str, field: str, type_name: str) -> ConfigError:
    return ConfigError(
        f"view {view!r}: source timestamp field {field!r} is {type_name}, not a timestamp or date: "
        "write it as a timestamp in the source files, or name a timestamp column as timestamp_field"
    )


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


def _arrow_plain(t: pa.DataType) -> bool:
    """:func:`_plain`, with the large string and binary types Iceberg's Arrow schemas use (Arrow reads a
    Parquet string column as either, DuckDB sees the same values)."""
    return pa.types.is_large_string(t) or pa.types.is_large_binary(t) or _plain(t)


def _micros(dt: datetime) -> int:
    """``dt`` (aware) in microseconds since the epoch, as Iceberg stores timestamp bounds."""
    return (dt - EPOCH) // timedelta(microseconds=1)


def _plain_dataset(files: list[str], timestamp_field: str, window: Window) -> tuple[ds.Dataset, Any] | None:
    """The files as one Arrow dataset and the filter on ``window``, when Arrow reads what DuckDB's
    ``read_parquet`` would: every file with one schema of plain types, a timezone-aware microsecond timestamp,
    no hive-style ``key=value`` directories (DuckDB would add those as columns). None otherwise."""
    if any("=" in part for f in files for part in Path(f).parent.parts):
        return None
    footers = [local_footer(f) for f in files]
    schemas = [m.schema.to_arrow_schema() for m in footers]
    first = schemas[0]
    if any(not s.equals(first) for s in schemas[1:]) or not all(_plain(f.type) for f in first):
        return None
    ts = first.field(timestamp_field).type
    if not pa.types.is_timestamp(ts) or ts.tz is None:
        return None
    dataset = ds.dataset(files, schema=first.remove_metadata(), format="parquet")
    inside = all(
        nulls == 0 and lo is not None and lo >= window.start and hi < window.end
        for m in footers
        for _, lo, hi, nulls in _group_spans(m, timestamp_field)
    )
    if inside:  # the statistics prove every row is in the window (none null): a filter would only copy them
        return dataset, None
    lo, hi = pa.scalar(window.start, ts), pa.scalar(window.end, ts)
    field = pc.field(timestamp_field)
    return dataset, (field >= lo) & (field < hi)


def read_parquet_window(files: list[str], timestamp_field: str, window: Window) -> pa.Table | None:
    """The source rows of ``window`` read by Arrow's multithreaded Parquet reader, or None to let DuckDB.

    About twice as fast as DuckDB's ``read_parquet`` for the same rows (it then runs the view's query over
    the Arrow table). Only used where both read the same thing (see :func:`_plain_dataset`).
    """
    try:
        plain = _plain_dataset(files, timestamp_field, window)
        if plain is None:
            return None
        table = plain[0].to_table(filter=plain[1])
    except (OSError, KeyError, pa.ArrowException):
        return None
    return table.replace_schema_metadata(None)


#: DuckDB's words for a source file that is not Parquet (empty, truncated, another format), with its path.
_BAD_PARQUET = re.compile(
    r"No magic bytes found at end of file '([^']+)'|File '([^']+)' too small to be a Parquet"
)


def _unreadable_source(view: FeatureView, exc: Exception) -> ConfigError:
    """The error for source files DuckDB cannot read as Parquet: which file when DuckDB says, and the way out."""
    first = str(exc).strip().splitlines()[0]
    found = _BAD_PARQUET.search(first)
    what = (
        f"source file {found.group(1) or found.group(2)}"
        if found
        else f"a source file of {view.source.location!r}"
    )
    return ConfigError(
        f"view {view.name!r}: {what} cannot be read as Parquet ({first}); replace or remove it, or narrow the "
        "Source.parquet glob in features.py so that it matches only Parquet files"
    )


def _unreadable_objects(view: str, exc: Exception) -> ConfigError:
    return ConfigError(
        f"view {view!r}: source objects cannot be read as Parquet: {exc}; replace or remove the object named, or "
        "narrow the Source.parquet location in features.py so that it matches only Parquet objects"
    )


def parquet_window_scanner(files: list[str], timestamp_field: str, window: Window) -> ds.Scanner | None:
    """:func:`read_parquet_window`'s rows as a stream: a scanner reading one file at a time, each column chunk
    as it is decoded (no whole row group buffered ahead), a batch or two ahead; None to let DuckDB."""
    try:
        plain = _plain_dataset(files, timestamp_field, window)
        if plain is None:
            return None
        return plain[0].scanner(
            filter=plain[1],
            batch_size=_READ_BATCH,
            batch_readahead=2,
            fragment_readahead=1,
            fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),
        )
    except (OSError, KeyError, pa.ArrowException):
        return None


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
                f"{', '.join(dataset.schema.names)}: set timestamp_field= of the Source in features.py to one of them"
            )
        if window is None:
            return dataset.schema.empty_table().replace_schema_metadata(None)
        t = dataset.schema.field(timestamp_field).type
        if not (pa.types.is_timestamp(t) or pa.types.is_date(t)):
            raise _not_a_timestamp(view, timestamp_field, str(t))
        field = pc.field(timestamp_field)
        table = dataset.to_table(
            filter=(field >= _bound(window.start, t)) & (field < _bound(window.end, t)), use_threads=True
        )
    except OSError as exc:
        if is_storage_failure(exc):
            raise storage_error(exc, f"read the source of view {view!r}") from exc
        raise _unreadable_objects(view, exc) from exc
    except pa.ArrowException as exc:
        raise _unreadable_objects(view, exc) from exc
    return table.replace_schema_metadata(None)


__all__ = [
    "LocalEngine",
    "WrittenWindow",
    "batch_invariant",
    "parquet_window_scanner",
    "read_parquet_window",
    "read_remote_parquet",
    "row_local",
    "split_window",
]

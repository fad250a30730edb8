"""Micro-batches: rows that arrive over time (push, stream ingestion) appended to a view through WAP.

:class:`MicroBatchWriter` is the one writer shared by ``POST /push`` / ``fl.push`` (``streaming/push.py``)
and ``featurelake ingest``. One :meth:`MicroBatchWriter.write` is one micro-batch:

1. **Conform** the rows to the view's table (its join keys, its timestamp field and its fields, nothing
   else; values cast to the column types; timestamps must carry a zone). A bad shape is a RequestError
   naming the view and the column (HTTP 422, exit 2).
2. **Idempotency on (entity key, event timestamp).** Rows repeating a (key, timestamp) of the same batch
   are dropped (the first one is kept), and so are rows whose (key, timestamp) main already holds: an
   anti-join against main's rows in the batch's time range (the snapshot the batch is committed on: checked
   again whenever main moved before the commit). A batch delivered twice (a client retrying after a lost
   response, a consumer restarted before it acknowledged its offsets, a push buffer replayed after a crash
   between the publish and the buffer's cleanup) therefore never adds a row twice. The first value written
   for a (key, timestamp) wins; a correction of an event is a backfill, not a push. A batch whose rows are
   all published already commits nothing (status ``duplicate``).
3. **Write-Audit-Publish, audit first** (``auditing.wap_run``, shared with backfills): the rows, still in
   memory, are audited with the view's checks (a micro-batch has no window: the checks comparing a window
   with main's have no reference and pass), the report is saved and its verdicts are spooled for the audit
   log; only when the audit passes are the rows appended to main, in one commit that lands only if main is
   still the snapshot they were checked against. If another writer moved main, they are checked against the
   new main (the anti-join again) and audited again before the next try. So main never shows an unaudited
   row, as with a branch, but a batch costs one commit instead of four (create the branch, append, fast-
   forward main, remove the branch). The snapshot carries the lineage of every featurelake commit
   (``run-id``, ``pipeline-user``, ``code-version``: the writer's, taken when it was created),
   ``featurelake.view``, ``featurelake.operation`` (``push`` or the caller's), the audit report's paths and
   the caller's ``summary`` properties: a stream consumer stores its offsets there and reads them back with
   :func:`last_committed`.
4. **Refused rows are kept aside**: when the audit refuses the batch, nothing was written and main is
   unchanged; every row is appended to ``<namespace>._rejected`` (the view, the run id, the verdict, the
   audit report's path and the row as JSON); the result says ``refused`` with the report. Nothing is
   dropped silently; ``featurelake read <namespace>._rejected`` shows them.
5. **Online store** (optional): the published rows, latest per key, written with the store's
   (event_ts, sequence number) rule, so an older event never replaces a newer one.
6. **Logs**: the verdicts (before the commit) and, once published, the batch's statistics are spooled
   durably (``streaming/logspool.py``) and appended to ``<namespace>._audits`` / ``._stats`` every
   ``log_batches`` batches (1, the default: after every batch), and by :meth:`MicroBatchWriter.flush_logs`
   and :meth:`MicroBatchWriter.close`.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThanOrEqual
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
    TimestamptzType,
)

from featurelake.auditing import logtable, wap_run
from featurelake.auditing.runner import keep_earlier_reports, report_properties
from featurelake.errors import ConflictError, FeaturelakeError, RequestError, UsageError
from featurelake.features.keys import encode_key
from featurelake.lakehouse import lineage, wap
from featurelake.lakehouse.retry import is_commit_conflict
from featurelake.serving import codec
from featurelake.serving.base import Records
from featurelake.serving.codec import EPOCH
from featurelake.serving.sync import SEQ, Reducer
from featurelake.streaming.logspool import LogSpool
from featurelake.validation.audit import AuditReport

if TYPE_CHECKING:
    from featurelake.features.definitions import FeatureView
    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore

log = logging.getLogger("featurelake.microbatch")

#: Where refused micro-batch rows are kept: ``<namespace>._rejected``.
REJECTED_TABLE = "_rejected"
REJECTED_SCHEMA = Schema(
    NestedField(1, "view", StringType(), required=False),
    NestedField(2, "run_id", StringType(), required=False),
    NestedField(3, "rejected_at", TimestamptzType(), required=False),
    NestedField(4, "verdict", StringType(), required=False),
    NestedField(5, "report", StringType(), required=False),
    NestedField(6, "row", StringType(), required=False),
)
#: ``featurelake.operation`` of a micro-batch snapshot unless the caller names its own.
PUSH_OPERATION = "push"
_RESERVED = {
    lineage.CODE_VERSION,
    lineage.RUN_ID,
    lineage.PIPELINE_USER,
    lineage.VIEW,
    lineage.WINDOW_START,
    lineage.WINDOW_END,
}

Status = Literal["published", "refused", "duplicate", "empty"]


@dataclass
class MicroBatchResult:
    """What one micro-batch did.

    ``status``: ``published`` (main moved to ``snapshot_id``), ``refused`` (the audit failed: main is
    unchanged, the rows are in ``<namespace>._rejected``), ``duplicate`` (every row was published before:
    nothing committed) or ``empty`` (no rows given).
    """

    view: str
    run_id: str
    status: Status
    rows: int
    """Rows given."""
    written: int = 0
    """Rows appended to the table (given minus duplicates)."""
    duplicates: int = 0
    """Rows dropped because their (key, event timestamp) was already in the batch or in main."""
    snapshot_id: int | None = None
    sequence_number: int | None = None
    online_keys: int = 0
    """Keys the online store changed (0 when the batch was not written online)."""
    rejected: int = 0
    """Rows kept aside in ``<namespace>._rejected`` (a refused batch)."""
    report: AuditReport | None = None
    verdict: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "run_id": self.run_id,
            "status": self.status,
            "rows": self.rows,
            "written": self.written,
            "duplicates": self.duplicates,
            "snapshot_id": self.snapshot_id,
            "online_keys": self.online_keys,
            "rejected": self.rejected,
            "verdict": self.verdict,
            "report": self.report.report_path if self.report else None,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def to_arrow(rows: Any) -> pa.Table:
    """Rows as an Arrow table: an Arrow table, a pandas DataFrame, a list of dicts or a dict of columns."""
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    if isinstance(rows, list):
        if not all(isinstance(r, dict) for r in rows):
            raise RequestError("rows must be dicts mapping column names to values")
        return pa.Table.from_pylist(rows)
    if isinstance(rows, dict):
        try:
            return pa.table(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise RequestError(f"rows must be equally long lists of values per column: {exc}") from None
    if hasattr(rows, "to_arrow"):  # polars, DuckDB relations
        return rows.to_arrow()
    if type(rows).__module__.startswith("pandas"):
        return pa.Table.from_pandas(rows, preserve_index=False)
    raise UsageError(
        f"cannot read rows from a {type(rows).__name__}: give an Arrow table, a pandas DataFrame, a list of "
        "dicts or a dict of columns"
    )


class Conformer:
    """Casts rows to one view's table schema, refusing what does not fit (naming the view and column)."""

    def __init__(self, view: FeatureView, schema: pa.Schema) -> None:
        self.view = view
        self.schema = pa.schema([pa.field(f.name, f.type, nullable=f.nullable) for f in schema])
        self.keys = list(view.join_keys)
        self.ts = view.timestamp_field

    def __call__(self, rows: Any) -> pa.Table:
        table = to_arrow(rows)
        name = self.view.name
        expected = self.schema.names
        unknown = [c for c in table.column_names if c not in expected]
        if unknown:
            raise RequestError(
                f"view {name} has no column {', '.join(repr(c) for c in unknown)}: its columns are "
                f"{', '.join(expected)}"
            )
        missing = [c for c in expected if c not in table.column_names]
        if missing:
            raise RequestError(
                f"rows for view {name} lack column {', '.join(repr(c) for c in missing)}: give every one of "
                f"{', '.join(expected)}"
            )
        columns = []
        for target in self.schema:
            col = table.column(target.name)
            columns.append(self._cast(col, target))
            if target.name in (*self.keys, self.ts) and columns[-1].null_count:
                raise RequestError(
                    f"rows for view {name} have null {target.name!r}: the entity key and the event timestamp "
                    "are required"
                )
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _cast(self, col: pa.ChunkedArray, target: pa.Field) -> pa.ChunkedArray:
        name, ttype = self.view.name, target.type
        if col.type == ttype:
            return col
        if pa.types.is_null(col.type):
            return pa.chunked_array([pa.nulls(len(col), ttype)])
        if pa.types.is_timestamp(ttype):
            if pa.types.is_timestamp(col.type) and col.type.tz is None:
                raise RequestError(
                    f"column {target.name!r} of view {name}: timestamps need a time zone (UTC or an offset), "
                    "got naive ones"
                )
            if not (pa.types.is_timestamp(col.type) or pa.types.is_string(col.type)):
                raise RequestError(
                    f"column {target.name!r} of view {name}: give timestamps as ISO 8601 text with an offset "
                    f"(2024-01-05T10:00:00Z), not {col.type}"
                )
        try:
            return pc.cast(col, ttype)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise RequestError(
                f"column {target.name!r} of view {name} holds {ttype} values, and the given ones do not fit: "
                f"{exc}"
            ) from None


def first_per_event(rows: pa.Table, keys: list[str], ts: str) -> pa.Table:
    """``rows`` without repeats of a (keys, ts): the first row of each stays, in the original order."""
    if rows.num_rows < 2:
        return rows
    idx = "__featurelake_idx"
    with_idx = rows.append_column(idx, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    firsts = with_idx.group_by([*keys, ts], use_threads=False).aggregate([(idx, "min")])
    picked = np.sort(firsts.column(f"{idx}_min").to_numpy())
    if len(picked) == rows.num_rows:
        return rows
    return rows.take(pa.array(picked))


def unpublished(tbl: Table, rows: pa.Table, keys: list[str], ts: str, snapshot_id: int | None) -> pa.Table:
    """``rows`` whose (keys, ts) the table does not hold at ``snapshot_id`` (its rows in their time range)."""
    if rows.num_rows == 0 or snapshot_id is None:
        return rows
    lo, hi = pc.min_max(rows.column(ts)).values()
    span = And(
        GreaterThanOrEqual(ts, lo.as_py().isoformat()),  # type: ignore[call-arg, arg-type]
        LessThanOrEqual(ts, hi.as_py().isoformat()),  # type: ignore[call-arg, arg-type]
    )
    held = tbl.scan(row_filter=span, selected_fields=(*keys, ts), snapshot_id=snapshot_id).to_arrow()
    if held.num_rows == 0:
        return rows
    held = held.cast(rows.select([*keys, ts]).schema)
    idx = "__featurelake_idx"
    with_idx = rows.append_column(idx, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    fresh = with_idx.join(held, keys=[*keys, ts], join_type="left anti", use_threads=False)
    picked = np.sort(fresh.column(idx).to_numpy())
    if len(picked) == rows.num_rows:
        return rows
    return rows.take(pa.array(picked))


def last_committed(project: Project, view_name: str, key: str) -> str | None:
    """The newest value of snapshot summary property ``key`` on main's history of ``view_name`` (or None).

    A stream consumer passes its offsets in ``MicroBatchWriter.write(summary={key: offset})`` and asks this
    on start-up where to resume: the value is on main only once its batch was published.
    """
    tbl = project.load_table(view_name)
    for sid in wap.ancestors(tbl, wap.main_snapshot_id(tbl)):
        snap = tbl.metadata.snapshot_by_id(sid)
        if snap is not None and snap.summary is not None and key in snap.summary.additional_properties:
            return snap.summary.additional_properties[key]
    return None


#: Pushes of at most this many rows are encoded for the online store in Python (DuckDB costs ~10 ms a call).
SMALL_ROWS = 64
_SIMPLE = (
    BooleanType,
    IntegerType,
    LongType,
    FloatType,
    DoubleType,
    StringType,
    DateType,
    TimestampType,
    TimestamptzType,
    DecimalType,
    BinaryType,
)


def _micros(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // timedelta(microseconds=1)


def _float_text(value: float) -> str:
    """As ``codec.value_sql`` stores a float: a float32 too is its exact value's float64 ``repr``."""
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    return repr(value)


class SmallEncoder:
    """The store records of a few rows, built in Python as ``serving.codec`` stores them (the same JSON values
    per type: non-finite floats as strings, timestamps as epoch microseconds, decimals as text, binary as
    base64), for the push path where a DuckDB round trip would cost more than the rest of the push."""

    def __init__(self, view: FeatureView) -> None:
        self.keys = list(view.join_keys)
        self.ts = view.timestamp_field
        self.types = codec.field_types(view)
        self.usable = all(isinstance(t, _SIMPLE) for t in self.types.values())
        self.names = {n: json.dumps(n) for n in self.types}

    def _value(self, value: Any, ftype: Any) -> str:
        if value is None:
            return "null"
        if isinstance(ftype, DoubleType | FloatType):
            return _float_text(float(value))
        if isinstance(ftype, TimestampType | TimestamptzType):
            return str(_micros(value))
        if isinstance(ftype, DecimalType):
            return json.dumps(str(value))
        if isinstance(ftype, BinaryType):
            return json.dumps(base64.b64encode(value).decode())
        if isinstance(ftype, DateType):
            return json.dumps(value.isoformat())
        return json.dumps(value)

    def records(self, rows: pa.Table, seq: int) -> Records:
        latest: dict[str, tuple[int, dict[str, Any]]] = {}
        for row in rows.to_pylist():
            key = encode_key([row[k] for k in self.keys])
            ts = _micros(row[self.ts])
            if key not in latest or ts > latest[key][0]:
                latest[key] = (ts, row)
        payloads = [
            "{" + ",".join(f"{self.names[n]}:{self._value(row[n], t)}" for n, t in self.types.items()) + "}"
            for _, row in latest.values()
        ]
        return Records(list(latest), [ts for ts, _ in latest.values()], [seq] * len(latest), payloads)


def _json_default(value: Any) -> Any:
    """JSON of what ``to_pylist`` gives besides JSON types (timestamps ISO 8601, bytes base64)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    iso = getattr(value, "isoformat", None)
    return iso() if iso is not None else str(value)


class MicroBatchWriter:
    """Appends micro-batches of rows to one view through Write-Audit-Publish (see the module docstring).

    ``online``: a store to write each published batch's latest row per key to (None: offline only).
    ``operation``: the ``featurelake.operation`` recorded on the snapshots (``push``, ``ingest``, ...).
    ``log_batches``: append the spooled audit-log and statistics rows every this many batches (1: after
    each). Not thread-safe: one writer per thread (a process may hold many).
    """

    def __init__(
        self,
        project: Project,
        view_name: str,
        *,
        online: OnlineStore | None = None,
        operation: str = PUSH_OPERATION,
        log_batches: int = 1,
    ) -> None:
        if log_batches < 1:
            raise UsageError("log_batches must be >= 1")
        self.project = project
        self.view = project.view(view_name)
        self.table_name = project.table_name(self.view.name)
        self.online = online
        self.operation = operation
        self.keys = list(self.view.join_keys)
        self.ts = self.view.timestamp_field
        # Reused batch after batch: our own commits advance it; another writer's make a commit fail, and
        # then it is loaded again (append_to_main lands only on the main this table shows).
        self._tbl: Table | None = project.load_table(self.view.name)
        self.conform = Conformer(self.view, self._tbl.schema().as_arrow())
        self._reducer: Reducer | None = None
        self._encoder = SmallEncoder(self.view)
        # Code version and user once per writer: the code that defined its view is the code it runs
        # (reading them forks git up to twice, per batch a cost of its own).
        self._lineage = lineage.lineage_properties(project.root, "-")
        self.logs = LogSpool(project, log_batches)

    def close(self) -> None:
        """Append what the log spool holds and release the writer's resources. When the log tables cannot be
        written the rows stay spooled (the next writer of the project appends them) and a warning says so."""
        try:
            self.logs.close()
        except FeaturelakeError as exc:
            log.warning(
                "the audit log and statistics of %s's last micro-batches could not be appended (%s); they stay "
                "in %s for the next writer of the project",
                self.view.name,
                exc,
                self.logs.root,
            )
        finally:
            if self._reducer is not None:
                self._reducer.close()
                self._reducer = None

    def flush_logs(self) -> list[str]:
        """Append the spooled audit-log and statistics rows now; returns a note if they could not be (they
        stay spooled, for the next flush or the next writer of the project)."""
        try:
            self.logs.flush()
        except FeaturelakeError as exc:
            return [
                f"the audit log and statistics of recent micro-batches could not be appended yet ({exc}); they "
                "stay spooled and are appended by the next flush"
            ]
        return []

    def _table(self, reload: bool = False) -> Table:
        if reload or self._tbl is None:
            self._tbl = self.project.load_table(self.view.name)
        return self._tbl

    def write(
        self,
        rows: Any,
        *,
        run_id: str | None = None,
        summary: dict[str, str] | None = None,
        online: bool = True,
    ) -> MicroBatchResult:
        """Publish ``rows`` (anything :func:`to_arrow` reads) as one micro-batch; see the module docstring.

        ``run_id`` names the snapshot and the audit report (default: a new one); ``summary`` adds snapshot
        summary properties (strings; the lineage keys are featurelake's own). ``online=False`` leaves the
        writer's online store alone for this batch (a push to ``offline`` only). Raises RequestError for rows
        that do not fit the view, and CatalogUnavailableError / StorageUnavailableError / ConflictError when
        the batch could not be published (main is unchanged then; writing the same rows again is safe).
        """
        t0 = time.perf_counter()
        run_id = lineage.check_run_id(run_id or lineage.new_run_id())
        frame = self.conform(rows)
        result = MicroBatchResult(self.view.name, run_id, "empty", frame.num_rows)
        if frame.num_rows:
            self._write(frame, run_id, self._properties(run_id, summary), result, online)
            self.logs.batch_done()
            if self.logs.due:
                result.notes.extend(self.flush_logs())
        result.seconds = time.perf_counter() - t0
        return result

    def _properties(self, run_id: str, summary: dict[str, str] | None) -> dict[str, str]:
        extra = dict(summary or {})
        bad = sorted(k for k, v in extra.items() if not isinstance(k, str) or not isinstance(v, str))
        if bad:
            raise UsageError(
                f"summary properties must map strings to strings; {', '.join(map(str, bad))} do not"
            )
        clash = sorted(set(extra) & _RESERVED)
        if clash:
            raise UsageError(
                f"summary properties {', '.join(clash)} are featurelake's lineage: use other names"
            )
        return {
            **self._lineage,
            lineage.RUN_ID: run_id,
            lineage.OPERATION: self.operation,
            **extra,
            lineage.VIEW: self.view.name,
            **report_properties(self.project, self.view.name, run_id),
        }

    def _write(
        self, frame: pa.Table, run_id: str, props: dict[str, str], result: MicroBatchResult, online: bool
    ) -> None:
        project, view = self.project, self.view
        batch = first_per_event(frame, self.keys, self.ts)
        tbl = self._table()
        result.notes.extend(keep_earlier_reports(project, view.name, run_id))
        attempts = max(1, project.config.settings.backfill.publish_attempts)
        for attempt in range(attempts):
            # Checked on the table the commit requires: had another writer used the run id since the table
            # was loaded, main moved, the commit fails, and the reloaded table shows the run.
            if (where := wap.find_run(tbl, run_id)) is not None:
                raise UsageError(
                    f"run id {run_id} already exists for {view.name} ({where}): use a new run id"
                )
            base = wap.main_snapshot_id(tbl)
            rows = project.catalog_call(
                partial(unpublished, tbl, batch, self.keys, self.ts, base), f"read {self.table_name}"
            )
            if rows.num_rows == 0:
                result.status, result.duplicates = "duplicate", frame.num_rows
                return
            report = wap_run.audit_rows(project, view, run_id, rows, log=self.logs.audit)
            if not report.passed:
                self._reject(rows, run_id, report, result)
                result.duplicates = frame.num_rows - rows.num_rows
                return
            try:
                sid = project.catalog_call(
                    partial(wap_run.append_to_main, tbl, rows, props), f"publish to {self.table_name}"
                )
                break
            except (CommitFailedException, ValueError) as exc:
                if not is_commit_conflict(exc):
                    raise
                result.notes.append(
                    f"main moved while the batch was audited (attempt {attempt + 1}); checked against the new "
                    "main and audited again"
                )
                tbl = self._table(reload=True)
        else:
            raise ConflictError(
                f"could not publish micro-batch {run_id} to {self.table_name}: main kept moving during "
                f"{attempts} attempts (backfill.publish_attempts); main is unchanged: write the same rows "
                "again (they are written once)"
            )
        snap = tbl.metadata.snapshot_by_id(sid)
        result.status = "published"
        result.written, result.duplicates = rows.num_rows, frame.num_rows - rows.num_rows
        result.snapshot_id = sid
        result.sequence_number = int(snap.sequence_number or 0) if snap is not None else None
        result.report = report
        try:
            self.logs.published(report, sid)
        except FeaturelakeError as exc:  # published already: say so, do not fail the batch
            result.notes.append(
                f"published, but the feature statistics of run {run_id} could not be spooled ({exc}); drift "
                "checks will recompute them from the data"
            )
        if self.online is not None and online:
            try:
                result.online_keys = self.write_online(rows, result.sequence_number or 0)
            except FeaturelakeError as exc:
                result.notes.append(
                    f"published, but the online store was not updated ({exc}); `featurelake sync "
                    f"{view.name}` brings it up to date"
                )

    def write_online(self, rows: pa.Table, seq: int = 0) -> int:
        """Write the latest row per key of conformed ``rows`` to the online store; returns keys changed.

        ``seq`` orders rows of the same event time: 0 for rows not published yet (a push to ``online``),
        the snapshot's sequence number for published ones (what the sync writes too).
        """
        if self.online is None or rows.num_rows == 0:
            return 0
        if rows.num_rows <= SMALL_ROWS and self._encoder.usable:
            return self.online.write(self.view.name, self._encoder.records(rows, seq))
        if self._reducer is None:
            self._reducer = Reducer(self.view.join_keys, self.ts, codec.field_types(self.view))
        with_seq = rows.append_column(SEQ, pa.array(np.full(rows.num_rows, seq, dtype=np.int64)))
        records = self._reducer.records(with_seq)
        return self.online.write(self.view.name, records)

    def _reject(self, rows: pa.Table, run_id: str, report: AuditReport, result: MicroBatchResult) -> None:
        verdict = report.summary()
        # The refused audit's verdicts go to the audit log before its rows go aside.
        result.notes.extend(self.flush_logs())
        self._keep_aside(rows, run_id, verdict, report)
        result.status, result.rejected, result.report, result.verdict = (
            "refused",
            rows.num_rows,
            report,
            verdict,
        )
        result.notes.append(
            f"the audit refused {rows.num_rows} rows ({verdict}); main is unchanged; they are kept in "
            f"{self.project.namespace}.{REJECTED_TABLE} (`featurelake read {self.project.namespace}."
            f"{REJECTED_TABLE}`)"
        )

    def reject(self, rows: pa.Table, run_id: str, verdict: str) -> MicroBatchResult:
        """Keep ``rows`` aside in ``<namespace>._rejected`` with ``verdict`` without writing them (rows that
        can no longer be written, e.g. buffered before the view changed); returns a ``refused`` result."""
        self._keep_aside(rows, run_id, verdict, None)
        return MicroBatchResult(
            self.view.name,
            run_id,
            "refused",
            rows.num_rows,
            rejected=rows.num_rows,
            verdict=verdict,
            notes=[f"{rows.num_rows} rows kept in {self.project.namespace}.{REJECTED_TABLE}: {verdict}"],
        )

    def _keep_aside(self, rows: pa.Table, run_id: str, verdict: str, report: AuditReport | None) -> None:
        now = datetime.now(UTC)
        texts = [json.dumps(r, default=_json_default, sort_keys=True) for r in rows.to_pylist()]
        n = len(texts)
        kept = pa.table(
            {
                "view": pa.array([self.view.name] * n, pa.string()),
                "run_id": pa.array([run_id] * n, pa.string()),
                "rejected_at": pa.array([now] * n, pa.timestamp("us", "UTC")),
                "verdict": pa.array([verdict] * n, pa.string()),
                "report": pa.array([report.report_path if report is not None else None] * n, pa.string()),
                "row": pa.array(texts, pa.string()),
            }
        )
        try:
            logtable.append(self.project, REJECTED_TABLE, REJECTED_SCHEMA, kept, run_id, "rejected")
        except FeaturelakeError as exc:
            raise type(exc)(
                f"{exc}. Micro-batch {run_id} of {self.view.name} was refused ({verdict}) and its rows could not "
                f"be kept aside in {self.project.namespace}.{REJECTED_TABLE}: main is unchanged; the rows stay "
                "with the caller"
            ) from exc


__all__ = [
    "REJECTED_TABLE",
    "Conformer",
    "MicroBatchResult",
    "MicroBatchWriter",
    "first_per_event",
    "last_committed",
    "to_arrow",
    "unpublished",
]

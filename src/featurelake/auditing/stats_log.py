"""Feature statistics of published data, kept in ``<namespace>._stats`` so drift and monitoring need no rescans.

When a run is published, the statistics its audit computed for its window (one row per feature column:
counts, finite min/max/sum, 101 quantiles, top values; see ``validation.stats``) are appended, keyed by
view and run id. Statistics of any snapshot are then *assembled* rather than recomputed
(:func:`snapshot_stats`):

1. the snapshot's day partitions and their row counts come from Iceberg metadata (``inspect.partitions``);
2. each day belongs to the newest backfill in the snapshot's ancestry whose window covers it (backfills
   replace whole days, and compaction or schema changes do not move rows between days); where expired
   snapshots hide that, to the newest publish of the day recorded in ``_stats`` before the snapshot;
3. a run whose recorded row count equals the rows its days still hold contributes its recorded statistics;
4. only the remaining days (partly overwritten windows, history written before statistics existed or
   expired, writes by other tools) are read from the snapshot and profiled, in one scan.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyiceberg.expressions import And, BooleanExpression, EqualTo, In, Or
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import DoubleType, ListType, LongType, NestedField, StringType, TimestamptzType

from featurelake.auditing import logtable
from featurelake.lakehouse import lineage, wap
from featurelake.lakehouse.window import Window, parse_timestamp
from featurelake.validation.checks import ReferenceStats
from featurelake.validation.colstats import ColumnStats, merge_columns
from featurelake.validation.stats import Profiler

if TYPE_CHECKING:
    from featurelake.features.definitions import FeatureView
    from featurelake.project import Project
    from featurelake.validation.audit import AuditReport

TABLE = "_stats"

SCHEMA = Schema(
    NestedField(1, "view", StringType(), required=False),
    NestedField(2, "run_id", StringType(), required=False),
    NestedField(3, "snapshot_id", LongType(), required=False),
    NestedField(4, "window_start", StringType(), required=False),
    NestedField(5, "window_end", StringType(), required=False),
    NestedField(6, "column", StringType(), required=False),
    NestedField(7, "kind", StringType(), required=False),
    NestedField(8, "rows", LongType(), required=False),
    NestedField(9, "count", LongType(), required=False),
    NestedField(10, "nan", LongType(), required=False),
    NestedField(11, "pos_inf", LongType(), required=False),
    NestedField(12, "neg_inf", LongType(), required=False),
    NestedField(13, "min", DoubleType(), required=False),
    NestedField(14, "max", DoubleType(), required=False),
    NestedField(15, "sum", DoubleType(), required=False),
    NestedField(16, "quantiles", ListType(17, DoubleType(), element_required=False), required=False),
    NestedField(18, "top_values", ListType(19, StringType(), element_required=False), required=False),
    NestedField(20, "top_counts", ListType(21, LongType(), element_required=False), required=False),
    NestedField(22, "sample_rows", LongType(), required=False),
    NestedField(23, "recorded_at", TimestamptzType(), required=False),
)
_STAT_FIELDS = ("kind", "rows", "count", "nan", "pos_inf", "neg_inf", "min", "max", "sum", "quantiles")


def _finite_or_none(v: float | None) -> float | None:
    return v if v is None or math.isfinite(v) else None


def record_published(project: Project, report: AuditReport, snapshot_id: int) -> int:
    """Append the statistics of a published run's window; returns the stats table's new snapshot id."""
    return logtable.append(
        project, TABLE, SCHEMA, rows_of(report, snapshot_id), report.run_id, "feature-stats"
    )


def rows_of(report: AuditReport, snapshot_id: int) -> pa.Table:
    """The statistics rows of a run published as ``snapshot_id``: one per profiled column."""
    now = datetime.now(UTC)
    records: list[dict[str, Any]] = []
    for col, st in report.profile.items():
        d = st.to_dict()
        records.append(
            {
                "view": report.view,
                "run_id": report.run_id,
                "snapshot_id": snapshot_id,
                "window_start": report.window_start,
                "window_end": report.window_end,
                "column": col,
                **{k: d[k] for k in _STAT_FIELDS},
                "min": _finite_or_none(st.min),
                "max": _finite_or_none(st.max),
                "sum": _finite_or_none(st.sum),
                "top_values": st.top_values,
                "top_counts": st.top_counts,
                "sample_rows": st.sample_rows,
                "recorded_at": now,
            }
        )
    return pa.Table.from_pylist(records, schema=SCHEMA.as_arrow())


def logged_runs(project: Project, view: str, run_ids: set[str]) -> dict[str, dict[str, ColumnStats]]:
    """Recorded statistics of ``run_ids`` (the latest record per run and column)."""
    if not run_ids:
        return {}
    cond = And(EqualTo("view", view), In("run_id", run_ids))  # type: ignore[call-arg, arg-type]
    data = logtable.scan(project, TABLE, cond)
    if data is None or data.num_rows == 0:
        return {}
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in data.to_pylist():
        k = (row["run_id"], row["column"])
        if k not in latest or row["recorded_at"] > latest[k]["recorded_at"]:
            latest[k] = row
    out: dict[str, dict[str, ColumnStats]] = {}
    for (run, col), row in latest.items():
        out.setdefault(run, {})[col] = ColumnStats.from_dict(row)
    return out


# --- assembling a snapshot's statistics ----------------------------------------------------------------


def _day_counts(tbl: Table, snapshot_id: int, ts_field: str) -> dict[date, int] | None:
    """Rows per day partition of the snapshot, or None when the table is not partitioned by day(ts)."""
    parts = tbl.inspect.partitions(snapshot_id=snapshot_id)
    if parts.num_rows == 0:
        return {}
    if "partition" not in parts.column_names:
        return None
    struct = parts.schema.field("partition").type
    if struct.num_fields != 1 or struct.field(0).name != f"{ts_field}_day":
        return None
    counts: dict[date, int] = {}
    for row in parts.select(["partition", "record_count"]).to_pylist():
        d = row["partition"][f"{ts_field}_day"]
        if d is not None:
            counts[d] = counts.get(d, 0) + int(row["record_count"])
    return counts


def _day_owners(tbl: Table, snapshot_id: int, days: set[date]) -> dict[date, str]:
    """For each day, the run id of the newest backfill in the snapshot's ancestry whose window covers it."""
    owners: dict[date, str] = {}
    for sid in wap.ancestors(tbl, snapshot_id):
        if len(owners) == len(days):
            break
        snap = tbl.metadata.snapshot_by_id(sid)
        props = dict(snap.summary.additional_properties) if snap and snap.summary else {}
        run, start, end = (
            props.get(lineage.RUN_ID),
            props.get(lineage.WINDOW_START),
            props.get(lineage.WINDOW_END),
        )
        if not (run and start and end):
            continue
        first, stop = parse_timestamp(start).date(), parse_timestamp(end).date()
        d = first
        while d < stop:
            if d in days and d not in owners:
                owners[d] = run
            d += timedelta(days=1)
    return owners


def _recorded_owners(
    project: Project, view: str, tbl: Table, snapshot_id: int, days: set[date]
) -> dict[date, str]:
    """Owners of days the snapshot's visible ancestry does not explain (its older snapshots were expired).

    The newest publish recorded in ``_stats`` whose window covers the day, among publishes that are in the
    snapshot's ancestry or, when their snapshot is gone, were recorded before the snapshot reached main.
    """
    data = logtable.scan(project, TABLE, EqualTo("view", view))  # type: ignore[call-arg, arg-type]
    if data is None or data.num_rows == 0:
        return {}
    lineage_ids = set(wap.ancestors(tbl, snapshot_id))
    existing = {s.snapshot_id for s in tbl.metadata.snapshots}
    snap = tbl.metadata.snapshot_by_id(snapshot_id)
    on_main = [e.timestamp_ms for e in tbl.metadata.snapshot_log if e.snapshot_id == snapshot_id]
    reached_main_ms = max(on_main) if on_main else (snap.timestamp_ms if snap else 0)
    runs: dict[str, tuple[datetime, str, str]] = {}
    cols = ["run_id", "snapshot_id", "window_start", "window_end", "recorded_at"]
    for row in data.select(cols).to_pylist():
        sid, recorded = row["snapshot_id"], row["recorded_at"]
        if sid in existing and sid not in lineage_ids:
            continue  # published after this snapshot, or on another line of history
        if sid not in existing and recorded.timestamp() * 1000 > reached_main_ms:
            continue
        if row["run_id"] not in runs or recorded > runs[row["run_id"]][0]:
            runs[row["run_id"]] = (recorded, row["window_start"], row["window_end"])
    owners: dict[date, str] = {}
    for run, (_, start, end) in sorted(runs.items(), key=lambda kv: kv[1][0], reverse=True):
        if not (start and end):
            continue
        d, stop = parse_timestamp(start).date(), parse_timestamp(end).date()
        while d < stop:
            if d in days and d not in owners:
                owners[d] = run
            d += timedelta(days=1)
    return owners


def _ranges(days: list[date]) -> list[Window]:
    out: list[Window] = []
    for d in sorted(days):
        start = datetime(d.year, d.month, d.day, tzinfo=UTC)
        if out and out[-1].end == start:
            out[-1] = Window(out[-1].start, start + timedelta(days=1))
        else:
            out.append(Window(start, start + timedelta(days=1)))
    return out


def _profile_scan(
    project: Project, view: FeatureView, tbl: Table, snapshot_id: int, days: list[date] | None
) -> dict[str, ColumnStats]:
    row_filter: BooleanExpression | None = None
    if days is not None:
        filters = [w.iceberg_filter(view.timestamp_field) for w in _ranges(days)]
        row_filter = filters[0] if len(filters) == 1 else Or(*filters)
    engine = project.engine
    frame = engine.read(tbl, snapshot_id=snapshot_id, row_filter=row_filter)
    profiler = Profiler.for_view(
        view, project.config.settings.backfill.audit_sample_rows, seed=snapshot_id % 2**32
    )
    engine.audit(frame, [profiler])
    return profiler.result


def snapshot_stats(
    project: Project, view: FeatureView, tbl: Table, snapshot_id: int | None, label: str = "main"
) -> ReferenceStats:
    """Statistics of every row of ``snapshot_id``, from recorded run statistics plus a scan of the rest."""
    if snapshot_id is None:
        return ReferenceStats(None, label)
    day_counts = _day_counts(tbl, snapshot_id, view.timestamp_field)
    if day_counts is None:  # not the layout featurelake creates: profile everything
        cols = _profile_scan(project, view, tbl, snapshot_id, None)
        rows = next(iter(cols.values())).rows if cols else 0
        return ReferenceStats(snapshot_id, label, rows, cols, rescanned_days=-1)
    if not day_counts:
        return ReferenceStats(snapshot_id, label, day_rows={})
    owners = _day_owners(tbl, snapshot_id, set(day_counts))
    if len(owners) < len(day_counts):  # expired history: fall back on what the statistics log recorded
        owners.update(_recorded_owners(project, view.name, tbl, snapshot_id, set(day_counts) - set(owners)))
    by_run: dict[str, list[date]] = {}
    for d, run in owners.items():
        by_run.setdefault(run, []).append(d)
    logged = logged_runs(project, view.name, set(by_run))
    wanted = set(view.fields)
    parts: list[dict[str, ColumnStats]] = []
    rescan = [d for d in day_counts if d not in owners]
    for run, days in by_run.items():
        stats = {c: s for c, s in logged.get(run, {}).items() if c in wanted}
        live = sum(day_counts[d] for d in days)
        recorded = next(iter(stats.values())).rows if stats else None
        if stats and recorded == live and set(stats) == wanted:
            parts.append(stats)
        else:
            rescan.extend(days)
    if rescan:
        parts.append(_profile_scan(project, view, tbl, snapshot_id, rescan))
    columns = merge_columns(parts)
    rows = next(iter(columns.values())).rows if columns else sum(day_counts.values())
    return ReferenceStats(snapshot_id, label, rows, columns, rescanned_days=len(rescan), day_rows=day_counts)


def resolve_reference(tbl: Table, reference: str | int | None) -> tuple[int | None, str, str | None]:
    """``(snapshot id, label, problem)`` for main (None), a tag or branch name, or a snapshot id."""
    name = ".".join(tbl.name())
    if reference is None:
        return wap.main_snapshot_id(tbl), "main", None
    if isinstance(reference, str) and reference in tbl.metadata.refs:
        kind = str(tbl.metadata.refs[reference].snapshot_ref_type).lower().split(".")[-1]
        return tbl.metadata.refs[reference].snapshot_id, f"{kind} {reference}", None
    if isinstance(reference, int) or (isinstance(reference, str) and reference.isdigit()):
        sid = int(reference)
        if tbl.metadata.snapshot_by_id(sid) is not None:
            return sid, f"snapshot {sid}", None
        return (
            None,
            f"snapshot {sid}",
            f"reference snapshot {sid} does not exist in {name} (expired?); fix the check",
        )
    refs = ", ".join(sorted(r for r in tbl.metadata.refs if not r.startswith(wap.BRANCH_PREFIX))) or "none"
    return (
        None,
        f"ref {reference}",
        f"reference {reference!r} is no tag, branch or snapshot of {name} (refs: {refs}); create the tag or fix the check",
    )

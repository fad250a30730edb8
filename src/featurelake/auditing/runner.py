"""One audit of one run: bind the view's checks to the run and its reference, evaluate, report, log.

Called by the Write-Audit-Publish job (``jobs/backfill.py``) after every write to an audit branch, and by
``featurelake audit`` / ``featurelake publish`` for a kept branch. The reference (what main holds today)
is read lazily and at most once per audit: the window's published row count from Iceberg metadata, and
column statistics assembled from ``<namespace>._stats`` (see ``validation.stats_log``).

Reports are written to ``.featurelake/audits/<view>/<run_id>.json`` and ``.html``. These paths are known
before the branch is written, so the write puts them into the branch snapshot's summary
(``featurelake.audit-report``, ``featurelake.audit-report-html``, relative to the project directory); the
audit that follows the write creates the files. A re-audit (rebase, ``featurelake audit``) rewrites them,
so they always hold the run's latest verdict; every earlier verdict stays in the audit log.

A run id can be used again once nothing on the table remembers it (its branch discarded, its snapshots
expired): the new run then first moves the earlier run's files to ``<run_id>.<snapshot id>.json``/``.html``
(:func:`keep_earlier_reports`), so a report is never overwritten by another run's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from featurelake.auditing import audit_log, logtable, stats_log
from featurelake.errors import CatalogUnavailableError, ConflictError, FeaturelakeError
from featurelake.lakehouse import wap
from featurelake.validation.audit import AuditReport, checks_for
from featurelake.validation.checks import AuditContext, Check, CheckResult, ReferenceStats
from featurelake.validation.drift import Drift
from featurelake.validation.fast import process_pool
from featurelake.validation.report_html import keep_earlier_report, save_report
from featurelake.validation.stats import ColumnStats, Profiler, run_seed

if TYPE_CHECKING:
    from featurelake.features.definitions import FeatureView
    from featurelake.lakehouse.window import Window
    from featurelake.project import Project

AUDIT_REPORT = "featurelake.audit-report"
AUDIT_REPORT_HTML = "featurelake.audit-report-html"


def report_paths(project: Project, view: str, run_id: str) -> tuple[str, str]:
    """The run's JSON and HTML report paths, relative to the project directory."""
    base = (project.audit_dir / view / run_id).relative_to(project.root)
    return str(base.with_suffix(".json")), str(base.with_suffix(".html"))


def keep_earlier_reports(project: Project, table: str, run_id: str) -> list[str]:
    """A new run of ``table`` (a view, or a predictions table) is starting with ``run_id``: move an earlier
    run's reports out of its way; returns a note saying where they went (none when there were none)."""
    moved = keep_earlier_report(project.audit_dir / table, run_id)
    if moved is None:
        return []
    return [
        f"an earlier run with id {run_id} left an audit report; it is kept as {moved.relative_to(project.root)}"
    ]


def report_properties(project: Project, view: str, run_id: str) -> dict[str, str]:
    """Snapshot summary properties naming the run's audit reports (deterministic, known before the write)."""
    json_path, html_path = report_paths(project, view, run_id)
    return {AUDIT_REPORT: json_path, AUDIT_REPORT_HTML: html_path}


class IcebergReference:
    """What main (or a named tag/snapshot) holds, read lazily and cached for one audit."""

    def __init__(self, project: Project, view: FeatureView, window: Window | None) -> None:
        self.project, self.view, self.window = project, view, window
        self._table: Any = None
        self._window_rows: int | None = None
        self._window_read = False
        self._stats: dict[str | int | None, ReferenceStats] = {}

    def _tbl(self) -> Any:
        if self._table is None:
            self._table = self.project.load_table(self.view.name)
        return self._table

    def window_rows(self) -> int | None:
        if not self._window_read and self.window is not None:
            self._window_read = True
            main = self.stats(None)
            if main.day_rows is not None:  # the partition row counts main's statistics were assembled from
                first, stop = self.window.start.date(), self.window.end.date()
                self._window_rows = sum(n for d, n in main.day_rows.items() if first <= d < stop) or None
            elif main.snapshot_id is not None:
                scan = self._tbl().scan(
                    row_filter=self.window.iceberg_filter(self.view.timestamp_field),
                    snapshot_id=main.snapshot_id,
                )
                self._window_rows = self.project.catalog_call(scan.count, f"count {self.view.name}") or None
        return self._window_rows

    def loaded(self, reference: str | int | None = None) -> ReferenceStats:
        """The statistics of ``reference`` if a check read them already, else an empty reference (no read)."""
        key = str(reference) if reference is not None else None
        return self._stats.get(key) or ReferenceStats(None, "main" if reference is None else str(reference))

    def stats(self, reference: str | int | None = None) -> ReferenceStats:
        key = str(reference) if reference is not None else None
        if key not in self._stats:
            tbl = self._tbl()
            sid, label, problem = stats_log.resolve_reference(tbl, reference)
            if problem:
                self._stats[key] = ReferenceStats(sid, label, problem=problem)
            else:
                self._stats[key] = self.project.catalog_call(
                    lambda: stats_log.snapshot_stats(self.project, self.view, tbl, sid, label),
                    f"read statistics of {self.view.name} {label}",
                )
        return self._stats[key]


def start_statistics(
    project: Project, view: FeatureView, run_id: str, frame: Any
) -> Future[dict[str, ColumnStats]]:
    """Begin the full statistics of ``frame``: exact min, max, sum and NaN/inf counts of every row, and
    every column's distribution from the run's sample.

    They are bookkeeping for ``<namespace>._stats`` and the report; no verdict needs more than the
    distributions drift checks read. A backfill starts them before writing the branch, so they are computed
    while the write waits on I/O, and hands the future to :func:`run_audit`, whose own pass then reads only
    what the checks need (the same sample seed: the drift columns' distributions are the same either way).
    """
    settings = project.config.settings.backfill
    full = Profiler.for_view(view, settings.audit_sample_rows, run_seed(run_id))
    engine = project.engine

    def compute() -> dict[str, ColumnStats]:
        engine.audit(frame, [full])
        return full.result

    return process_pool("fl-statistics", 1).submit(compute)


def audit_profiler(
    view: FeatureView, checks: list[Check], sample_rows: int, run_id: str, *, separate_statistics: bool
) -> Profiler:
    """The profile an audit pass collects: everything, or (``separate_statistics``) only the sampled
    distributions of the columns its drift checks compare."""
    if not separate_statistics:
        return Profiler.for_view(view, sample_rows, run_seed(run_id))
    drifting = [c.column for c in checks if isinstance(c, Drift)]
    return Profiler.for_view(view, sample_rows, run_seed(run_id), exact=False, sample=drifting)


@dataclass
class Evaluated:
    """An audit pass over a run's rows, not yet reported (:func:`start_audit`)."""

    reference: IcebergReference
    profiler: Profiler
    checks: list[Check]
    rows: int
    results: list[CheckResult]
    started: float


def _evaluate(
    project: Project,
    view: FeatureView,
    run_id: str,
    frame: Any,
    window: Window | None,
    separate_statistics: bool,
) -> Evaluated:
    t0 = time.perf_counter()
    settings = project.config.settings.backfill
    reference = IcebergReference(project, view, window)
    declared = checks_for(view, empty_window=settings.empty_window)
    profiler = audit_profiler(
        view, declared, settings.audit_sample_rows, run_id, separate_statistics=separate_statistics
    )
    ctx = AuditContext(view, window, datetime.now(UTC), reference, profiler)
    checks = [profiler, *(c.bind(ctx) for c in declared)]
    rows, results = project.engine.audit(frame, checks)
    return Evaluated(reference, profiler, checks, rows, results, t0)


def start_audit(
    project: Project,
    view: FeatureView,
    run_id: str,
    frame: Any,
    window: Window | None,
    statistics: Future[dict[str, ColumnStats]] | None,
) -> Future[Evaluated]:
    """Begin the audit pass over ``frame`` (the rows a backfill is writing) on a thread of its own, so that it
    runs while the branch is written; :func:`run_audit` given it (``evaluated=``) waits for it and reports.
    The verdicts depend only on the rows and main: the branch's snapshot id only names them in the report."""
    return process_pool("fl-audit-pass", 1).submit(
        _evaluate, project, view, run_id, frame, window, statistics is not None
    )


def run_audit(
    project: Project,
    view: FeatureView,
    run_id: str,
    frame: Any,
    snapshot_id: int | None,
    window: Window | None,
    statistics: Future[dict[str, ColumnStats]] | None = None,
    *,
    log: Callable[[AuditReport], object] | None = None,
    main_statistics: bool = True,
    evaluated: Future[Evaluated] | None = None,
) -> AuditReport:
    """Audit ``frame`` (the rows of ``run_id``'s window on its branch), save the reports, log the verdicts.

    ``statistics``: the exact column statistics from :func:`start_statistics`; without them they are
    computed in the audit's own pass. ``log`` records the verdicts (default: an append to
    ``<namespace>._audits``; micro-batches spool them and append several audits at once).
    ``main_statistics=False`` leaves main's statistics unread unless a check needs them (a micro-batch has
    no window to compare; assembling main's statistics would rescan its micro-batch days every batch): the
    report then shows no reference profile. ``evaluated``: the pass :func:`start_audit` began over ``frame``
    (same ``statistics``), instead of evaluating here.
    """
    done = (
        evaluated.result()
        if evaluated is not None
        else _evaluate(project, view, run_id, frame, window, statistics is not None)
    )
    reference, profiler, checks, rows, results = (
        done.reference,
        done.profiler,
        done.checks,
        done.rows,
        done.results,
    )
    if statistics is not None:
        profiler.merge_exact(statistics.result())
    main_ref = reference.stats(None) if main_statistics else reference.loaded(None)
    ref_profile = dict(main_ref.columns)
    for check in checks:  # a drift check with its own reference shows that reference in the report
        own = getattr(check, "_ref", None)
        col = getattr(check, "column", None)
        if isinstance(own, ReferenceStats) and col in own.columns and own is not main_ref:
            ref_profile[col] = own.columns[col]
    json_path, html_path = report_paths(project, view.name, run_id)
    report = AuditReport(
        view=view.name,
        run_id=run_id,
        branch=wap.branch_name(run_id),
        snapshot_id=snapshot_id,
        rows=rows,
        results=results[1:],
        window_start=window.start.isoformat() if window else None,
        window_end=window.end.isoformat() if window else None,
        reference_snapshot_id=main_ref.snapshot_id,
        reference_label=main_ref.label,
        profile=profiler.result,
        reference_profile=ref_profile,
        report_path=json_path,
        html_path=html_path,
    )
    report.seconds = time.perf_counter() - done.started
    try:
        save_report(report, project.audit_dir / view.name)
    except FeaturelakeError as exc:  # the report's file cannot be written (permissions, a full disk)
        raise type(exc)(
            f"{exc}. The audit of {view.name} run {run_id} ({report.status}) was not recorded, so nothing was "
            f"published: main is unchanged and branch {report.branch} is kept; once fixed, finish with "
            f"`featurelake publish {view.name} --run-id {run_id}`"
        ) from exc
    try:
        if log is None:
            audit_log.record(project, report)
        else:
            log(report)
    except (CatalogUnavailableError, ConflictError) as exc:
        raise type(exc)(
            f"{exc}. The audit of {view.name} run {run_id} ({report.status}) could not be logged, so nothing "
            f"was published: main is unchanged and branch {report.branch} is kept; its report is "
            f"{json_path}. Retry with `featurelake publish {view.name} --run-id {run_id}`"
        ) from exc
    return report


def create_log_tables(project: Project) -> None:
    """Create ``<namespace>._audits`` and ``<namespace>._stats`` if missing (``featurelake apply`` does), so
    that a project's first backfill does not pay two table creations on its way to publishing."""
    logtable.ensure(project, audit_log.TABLE, audit_log.SCHEMA)
    logtable.ensure(project, stats_log.TABLE, stats_log.SCHEMA)


def record_published(project: Project, report: AuditReport, snapshot_id: int) -> list[str]:
    """Keep the statistics of a published run; returns notes for the job's result (never raises)."""
    try:
        project.catalog_call(
            lambda: stats_log.record_published(project, report, snapshot_id),
            f"record statistics of {report.view} run {report.run_id}",
        )
    except Exception as exc:  # the publish already happened: report the gap, do not fail the run
        return [
            f"published, but the feature statistics of run {report.run_id} could not be recorded ({exc}); "
            "drift checks will recompute them from the data"
        ]
    return []

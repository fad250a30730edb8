"""Job: Write-Audit-Publish backfill of one view for a window, plus re-audit and publish of a kept branch.

Composition only: the engine computes and writes, ``validation`` judges, ``lakehouse.wap`` publishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pyiceberg.table import Table

from featurelake.auditing import wap_run
from featurelake.auditing.runner import (
    AUDIT_REPORT,
    AUDIT_REPORT_HTML,
    keep_earlier_reports,
    report_properties,
    run_audit,
)
from featurelake.engines.local import BATCH_SETTING
from featurelake.errors import ConfigError, SchemaError, StorageUnavailableError, UsageError
from featurelake.lakehouse import lineage, wap
from featurelake.lakehouse.window import Window
from featurelake.memory import is_out_of_memory
from featurelake.monitoring.jobs import monitored_job
from featurelake.validation.audit import AuditReport

if TYPE_CHECKING:
    from concurrent.futures import Future

    from featurelake.features.definitions import FeatureView
    from featurelake.project import Progress, Project
    from featurelake.validation.colstats import ColumnStats

T = TypeVar("T")


@dataclass
class BackfillResult:
    """A published backfill: where main points now and what it took."""

    view: str
    table: str
    run_id: str
    window: Window
    snapshot_id: int
    previous_snapshot_id: int | None
    rows: int
    report: AuditReport
    rebases: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "table": self.table,
            "run_id": self.run_id,
            "window_start": self.window.start.isoformat(),
            "window_end": self.window.end.isoformat(),
            "snapshot_id": self.snapshot_id,
            "previous_snapshot_id": self.previous_snapshot_id,
            "rows": self.rows,
            "rebases": self.rebases,
            "seconds": round(self.seconds, 3),
            "audit": self.report.to_dict(),
            "notes": self.notes,
        }


def _say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _retry_commit(project: Project, view: FeatureView, what: str, fn: Callable[[Table], T]) -> T:
    """Run a metadata commit against a fresh table, retrying when a concurrent commit won the race."""
    return wap_run.commit_on_view(project, view, what, fn)


def _audit(
    project: Project,
    view: FeatureView,
    run_id: str,
    frame: Any,
    snapshot_id: int | None,
    window: Window | None = None,
    statistics: Future[dict[str, ColumnStats]] | None = None,
) -> AuditReport:
    # Checks, reference data, statistics, reports and the audit log: validation.runner.
    return run_audit(project, view, run_id, frame, snapshot_id, window, statistics)


def _write_and_audit(
    project: Project, view: FeatureView, window: Window, run_id: str, frame: Any, props: dict[str, str]
) -> tuple[int, AuditReport]:
    branch = wap.branch_name(run_id)

    def write(tbl: Table) -> int:
        return project.engine.write_window(tbl, frame, window, view.timestamp_field, branch, props)

    return wap_run.write_and_audit(project, view, run_id, frame, write, window)


def _publish(
    project: Project,
    view: FeatureView,
    window: Window,
    run_id: str,
    frame: Any,
    props: dict[str, str],
    report: AuditReport,
) -> tuple[wap.PublishResult, AuditReport]:
    try:
        return wap_run.publish_branch(
            project,
            view,
            run_id,
            report,
            lambda: _write_and_audit(project, view, window, run_id, frame, props)[1],
            resume=f"finish with `featurelake publish {view.name} --run-id {run_id}`",
        )
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        # Only a rebase writes and audits again here: another run published to main meanwhile.
        raise ConfigError(
            f"view {view.name!r}: out of memory writing the backfill {window} again onto main after another run "
            f"published to it ({type(exc).__name__}: {exc}); {_memory_advice(project, frame)}, or give the "
            f"process more memory. main holds only the other run's publish. {_rerun(project, view, run_id)}"
        ) from exc


def _memory_advice(project: Project, frame: Any) -> str:
    """The setting to lower when writing and auditing ``frame`` ran out of memory."""
    batch_days = project.config.settings.backfill.batch_days
    if project.engine.batched(frame):
        return f"lower {BATCH_SETTING} (now {batch_days}) so that fewer days are audited at once"
    if batch_days <= 0:
        return f"set {BATCH_SETTING} to 1 (now {batch_days}) to compute and audit it a day at a time"
    return f"backfill shorter windows, or lower {BATCH_SETTING} (now {batch_days})"


def _backfill_again(view: FeatureView, window: Window) -> str:
    return f"`featurelake backfill {view.name} --start {window.start.date()} --end {window.end.date()}`"


def _discard(view: FeatureView, run_id: str) -> str:
    return f"`featurelake discard {view.name} --run-id {run_id}`"


def _rerun(project: Project, view: FeatureView, run_id: str) -> str:
    """How to run a window again after its branch write failed: the branch exists only if its commit landed
    (the local engine creates it in that commit; a failure after it, such as in the audit log, keeps it).
    A run id whose commit landed stays taken after its branch is discarded (its snapshot is in the history)."""
    branch = wap.branch_name(run_id)
    again = f"To run the window again: repeat the backfill under a new --run-id (or none) and drop branch {branch}"
    try:
        created = wap.ref_snapshot_id(project.load_table(view.name), branch) is not None
    except Exception:  # the catalog is failing too: say what to do either way
        return f"{again} with {_discard(view, run_id)} if it was created"
    if created:
        return f"{again} with {_discard(view, run_id)}"
    return f"Branch {branch} was not created: repeat the backfill (the same --run-id can be used)"


@monitored_job("backfill")
def run_backfill(
    project: Project,
    view_name: str,
    start: Any,
    end: Any,
    *,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> BackfillResult:
    """Compute ``view`` for ``[start, end)``, write it to ``audit_<run_id>``, audit it, publish it to main."""
    t0 = time.perf_counter()
    lineage.read_code_version_early(project.root)  # git runs while the window is computed
    view = project.view(view_name)
    window = Window.parse(start, end)
    run_id = lineage.check_run_id(run_id or lineage.new_run_id())
    tbl = project.load_table(view.name)
    if (where := wap.find_run(tbl, run_id)) is not None:
        raise UsageError(
            f"run id {run_id} already exists for {view.name} ({where}): pass a new --run-id or omit it"
        )
    earlier = keep_earlier_reports(project, view.name, run_id)

    settings = project.config.settings.backfill
    engine = project.engine
    # Bounded memory where the engine can: batch_days at a time (days cut to batch_rows), each batch written
    # as data files ahead of the one commit below.
    frame = engine.compute_backfill(view, window, tbl, settings, progress)
    props = lineage.lineage_properties(
        project.root,
        run_id,
        **{
            lineage.VIEW: view.name,
            lineage.WINDOW_START: window.start.isoformat(),
            lineage.WINDOW_END: window.end.isoformat(),
            **report_properties(project, view.name, run_id),
        },
    )
    branch = wap.branch_name(run_id)
    _say(progress, f"writing branch {branch}")
    try:
        if not engine.creates_branch:
            _retry_commit(project, view, f"create {branch}", lambda t: wap.create_branch(t, branch))
        _, report = _write_and_audit(project, view, window, run_id, frame, props)
    except StorageUnavailableError as exc:
        raise StorageUnavailableError(f"{exc}. main is unchanged. {_rerun(project, view, run_id)}") from exc
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        # The rows fitted but writing or auditing them did not (the audit holds a batch's keys and times).
        raise ConfigError(
            f"view {view.name!r}: out of memory writing and auditing the backfill {window} "
            f"({type(exc).__name__}: {exc}); {_memory_advice(project, frame)}, or give the process more memory. "
            f"main is unchanged. {_rerun(project, view, run_id)}"
        ) from exc
    _say(progress, f"audit passed ({len(report.results)} checks); publishing to main")
    result, report = _publish(project, view, window, run_id, frame, props, report)
    return BackfillResult(
        view=view.name,
        table=project.table_name(view.name),
        run_id=run_id,
        window=window,
        snapshot_id=result.snapshot_id,
        previous_snapshot_id=result.previous_main,
        rows=report.rows,
        report=report,
        rebases=result.rebases,
        seconds=time.perf_counter() - t0,
        notes=[*earlier, *result.notes],
    )


def _kept_branch(
    project: Project, view: FeatureView, run_id: str
) -> tuple[Table, int, Window, dict[str, str]]:
    tbl = project.load_table(view.name)
    branch = wap.branch_name(lineage.check_run_id(run_id))
    tip = wap.ref_snapshot_id(tbl, branch)
    if tip is None:
        raise UsageError(
            f"no branch {branch} in {project.table_name(view.name)}: the run was published (branches are removed "
            "after publishing) or never existed; see `featurelake history`"
        )
    snap = tbl.metadata.snapshot_by_id(tip)
    props = dict(snap.summary.additional_properties) if snap and snap.summary else {}
    if lineage.WINDOW_START not in props or lineage.WINDOW_END not in props:
        raise UsageError(
            f"branch {branch} of {project.table_name(view.name)} holds no backfill written by featurelake (its tip "
            f"records no window), so it cannot be audited or published: backfill the window with "
            f"`featurelake backfill {view.name} --start … --end …`; remove the branch with {_discard(view, run_id)}"
        )
    window = Window.parse(props[lineage.WINDOW_START], props[lineage.WINDOW_END])
    _check_branch_columns(project, view, tbl, snap, branch, run_id, window)
    keep = {
        k: props[k]
        for k in (
            lineage.CODE_VERSION,
            lineage.RUN_ID,
            lineage.PIPELINE_USER,
            lineage.VIEW,
            lineage.WINDOW_START,
            lineage.WINDOW_END,
            AUDIT_REPORT,
            AUDIT_REPORT_HTML,
        )
        if k in props
    }
    return tbl, tip, window, keep


def _check_branch_columns(
    project: Project, view: FeatureView, tbl: Table, snap: Any, branch: str, run_id: str, window: Window
) -> None:
    """Refuse a kept branch written before the view gained columns: its rows lack them, so neither its
    audit (the checks and statistics read every column of the view) nor a publish of it means anything
    under the current definition. The way out is a new run of the window."""
    if snap is None or snap.schema_id is None:
        return
    schema = tbl.metadata.schema_by_id(snap.schema_id)
    if schema is None:
        return
    have = {f.name for f in schema.fields}
    missing = [c for c in view.columns if c not in have]
    if not missing:
        return
    raise SchemaError(
        f"branch {branch} of {project.table_name(view.name)} was written before view {view.name!r} gained "
        f"column(s) {', '.join(missing)}: its rows cannot be audited or published under the current "
        f"definition. Backfill the window again ({_backfill_again(view, window)}), then drop the old branch "
        f"with {_discard(view, run_id)}"
    )


def _reaudit(
    project: Project, view: FeatureView, run_id: str, tbl: Table, tip: int, window: Window
) -> tuple[Any, AuditReport]:
    """The kept branch's rows (``Engine.read_window``: on the local engine its files themselves when they
    hold exactly the window) and their audit; running out of memory says what to do instead."""
    engine, frame = project.engine, None
    try:
        frame = engine.read_window(tbl, tip, window, view.timestamp_field)
        return frame, _audit(project, view, run_id, frame, tip, window)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        how = (
            "the audit streams the branch's files and holds one batch of days' keys at a time"
            if frame is not None and engine.batched(frame)
            else "a branch whose files do not hold exactly the window's rows is read into memory as one table"
        )
        raise ConfigError(
            f"view {view.name!r}: out of memory re-auditing branch {wap.branch_name(run_id)} {window} "
            f"({type(exc).__name__}: {exc}); {how}. Give the process more memory, or backfill the window again "
            f"under a new run id ({_backfill_again(view, window)}; {BATCH_SETTING} bounds its memory) and drop "
            f"this branch with {_discard(view, run_id)}. main and the branch are unchanged"
        ) from exc


@monitored_job("audit")
def audit_run(project: Project, view_name: str, run_id: str) -> AuditReport:
    """Re-audit the window kept on branch ``audit_<run_id>`` (reads the branch, changes nothing)."""
    view = project.view(view_name)
    tbl, tip, window, _ = _kept_branch(project, view, run_id)
    return _reaudit(project, view, run_id, tbl, tip, window)[1]


@monitored_job("publish")
def publish_run(
    project: Project, view_name: str, run_id: str, *, progress: Progress | None = None
) -> BackfillResult:
    """Audit the kept branch ``audit_<run_id>`` again and publish it if it passes (rebasing if needed)."""
    t0 = time.perf_counter()
    view = project.view(view_name)
    tbl, tip, window, props = _kept_branch(project, view, run_id)
    _say(progress, f"re-auditing branch {wap.branch_name(run_id)}")
    frame, report = _reaudit(project, view, run_id, tbl, tip, window)
    if not report.passed:
        raise wap_run.refusal(report)
    _say(progress, "publishing to main")
    result, report = _publish(project, view, window, run_id, frame, props, report)
    return BackfillResult(
        view.name,
        project.table_name(view.name),
        run_id,
        window,
        result.snapshot_id,
        result.previous_main,
        report.rows,
        report,
        result.rebases,
        time.perf_counter() - t0,
        result.notes,
    )

"""Write-Audit-Publish of one run of one view, whatever the run writes.

Two shapes, one audit (``auditing.runner.run_audit``: the view's checks, the report, the audit log):

- **A backfill** (``jobs/backfill.py``: replaces a window) passes its *write* step, a function that writes
  the run's rows on the run's branch ``audit_<run id>`` of a freshly loaded table and returns the branch's
  new tip; :func:`write_and_audit` audits what was written and :func:`publish_branch` publishes the branch to
  main with ``lakehouse.wap``, rebasing (reset the branch onto main's new head, write again, audit again)
  whenever another writer moved main in between. The branch is what a refused backfill leaves for review.
- **A micro-batch** of push or stream ingestion (``streaming/microbatch.py``: appends rows it holds in
  memory) is audited *before* anything is written (:func:`audit_rows`) and, when the audit passes, appended
  to main in one commit that lands only if main is still the snapshot the rows were checked against
  (:func:`append_to_main`); otherwise the caller checks them against the new main and audits again. Main
  never shows a row that was not audited, exactly as with a branch, without a branch's three extra commits
  (create, fast-forward, remove); a refused micro-batch is kept in ``<namespace>._rejected``, so it needs no
  branch either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
from pyiceberg.table import Table

from featurelake.auditing.runner import record_published, run_audit, start_audit, start_statistics
from featurelake.errors import AuditFailed, CatalogUnavailableError, ConflictError, StorageUnavailableError
from featurelake.lakehouse import wap
from featurelake.lakehouse.retry import retry_commit
from featurelake.validation.audit import AuditReport

if TYPE_CHECKING:
    from featurelake.features.definitions import FeatureView
    from featurelake.lakehouse.window import Window
    from featurelake.project import Project

T = TypeVar("T")
#: Writes the run's rows on its branch of the table it is given (freshly loaded); returns the branch tip.
Write = Callable[[Table], int]


def commit_on_view(project: Project, view: FeatureView, what: str, fn: Callable[[Table], T]) -> T:
    """Run a metadata commit against a fresh table, retrying when a concurrent commit won the race."""
    # Lost races are normal under many concurrent writers: allow as many tries as a publish gets.
    settings = project.config.settings
    return retry_commit(
        lambda: project.load_table(view.name),
        fn,
        table=project.table_name(view.name),
        what=what,
        attempts=max(settings.catalog.retries + 1, settings.backfill.publish_attempts),
        call=project.catalog_call,
    )


def refusal(report: AuditReport) -> AuditFailed:
    """The error of a run whose audit failed (main is unchanged, the branch is kept)."""
    return AuditFailed(
        f"{report.summary()}; main is unchanged; inspect branch {report.branch} "
        f"(`featurelake read {report.view} --snapshot {report.snapshot_id}`)",
        report,
    )


def write_and_audit(
    project: Project,
    view: FeatureView,
    run_id: str,
    frame: Any,
    write: Write,
    window: Window | None,
) -> tuple[int, AuditReport]:
    """``write`` the run on its branch and audit ``frame`` (the rows written); raises AuditFailed if refused."""
    branch = wap.branch_name(run_id)
    # The exact statistics need no branch: on the local engine they are computed while the write runs.
    stats = start_statistics(project, view, run_id, frame) if project.engine.name == "local" else None
    # So is the audit pass: it checks the rows being written (the tip's id only names them in the report).
    pending = start_audit(project, view, run_id, frame, window, stats) if stats is not None else None
    try:
        tip: int = commit_on_view(project, view, f"write {branch}", write)
    except BaseException:
        if pending is not None and not pending.cancel():
            pending.exception()  # the write failed: let the pass end (its result and errors unused)
        raise
    report = run_audit(project, view, run_id, frame, tip, window, stats, evaluated=pending)
    if not report.passed:
        raise refusal(report)
    return tip, report


def publish_branch(
    project: Project,
    view: FeatureView,
    run_id: str,
    report: AuditReport,
    redo: Callable[[], AuditReport],
    *,
    resume: str,
) -> tuple[wap.PublishResult, AuditReport]:
    """Publish the run's audited branch to main; returns what main points to and the latest audit.

    ``redo`` writes the run again on the branch (already reset onto main's new head) and audits it,
    returning the new report or raising AuditFailed. ``resume`` tells the user how to finish the run when the
    catalog or object storage fails during the publish (the branch is kept then).
    """
    branch = wap.branch_name(run_id)
    latest = [report]

    def rebase(tbl: Table, new_base: int) -> None:
        project.catalog_call(lambda: wap.reset_branch(tbl, branch, new_base), f"rebase {branch}")
        latest[0] = redo()

    drop = not project.config.settings.backfill.keep_published_branches
    try:
        result = project.catalog_call(
            lambda: wap.publish(
                project.catalog,
                project.table_name(view.name),
                branch,
                run_id,
                rebase=rebase,
                attempts=project.config.settings.backfill.publish_attempts,
                drop_branch=drop,  # one metadata commit moves main and removes the branch
            ),
            f"publish {branch}",
        )
    except (CatalogUnavailableError, StorageUnavailableError) as exc:
        raise type(exc)(
            f"{exc}. Nothing was lost: branch {branch} is kept and main is unchanged; {resume}"
        ) from exc
    if drop and not result.branch_removed:  # main already was the tip: a publish that stopped before removing
        try:
            commit_on_view(project, view, f"remove {branch}", lambda t: wap.remove_branch(t, branch))
        except (ConflictError, CatalogUnavailableError):
            result.notes.append(f"published, but branch {branch} could not be removed; remove it later")
    result.notes.extend(record_published(project, latest[0], result.snapshot_id))
    return result, latest[0]


def audit_rows(
    project: Project,
    view: FeatureView,
    run_id: str,
    rows: pa.Table,
    *,
    log: Callable[[AuditReport], object] | None = None,
) -> AuditReport:
    """Audit ``rows`` held in memory, before anything is written (a micro-batch): the view's checks, the
    report (no snapshot yet: ``snapshot_id`` is None) and its verdicts, logged by ``log`` (default: an append
    to the audit log). A micro-batch has no window: checks comparing a window with main's have no reference,
    and main's statistics are read only when a check compares with them (drift)."""
    return run_audit(project, view, run_id, rows, None, None, None, log=log, main_statistics=False)


#: The table property PyIceberg reads for how often a failed snapshot commit re-applies itself.
_COMMIT_RETRIES = "commit.retry.num-retries"


def append_to_main(tbl: Table, rows: pa.Table, props: dict[str, str]) -> int:
    """Append audited ``rows`` to main in one commit (snapshot summary ``props``) that lands only while main
    is the snapshot ``tbl`` shows; returns the new snapshot id and leaves ``tbl`` at the new metadata.

    Raises CommitFailedException (or PyIceberg's sequence-number ValueError, see
    ``lakehouse.retry.is_commit_conflict``) when another writer moved main since ``tbl`` was loaded: the rows
    were checked against that main (the (key, event time) anti-join), so the caller reloads, checks and
    audits again. PyIceberg would instead re-apply a failed append on the refreshed table by itself (table
    property ``commit.retry.num-retries``, default 4), skipping that check: the property is set to 0 on this
    in-memory Table only, for this commit (the commit carries no property change; the catalog's metadata is
    what ``tbl`` holds afterwards).
    """
    seen, base = tbl.metadata, wap.main_snapshot_id(tbl)
    tbl.metadata = seen.model_copy(update={"properties": {**seen.properties, _COMMIT_RETRIES: "0"}})
    try:
        tbl.append(rows, snapshot_properties=props, branch=wap.MAIN)
    except BaseException:
        tbl.metadata = seen
        raise
    sid = wap.main_snapshot_id(tbl)
    assert sid is not None and sid != base
    return sid


__all__ = [
    "Write",
    "append_to_main",
    "audit_rows",
    "commit_on_view",
    "publish_branch",
    "refusal",
    "write_and_audit",
]

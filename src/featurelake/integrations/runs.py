"""One orchestrated run of a job, through the public API (``featurelake.open``): backfill a window, score it,
sync, maintain; each returns the lineage an orchestrator records (snapshot id, code-version, rows, audit
report), and a refused audit's details (:func:`refusal`) for the failure it reports.

Snapshot ids are given as text: they are 64-bit and some orchestrators' UIs round large integers.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import featurelake
from featurelake.errors import AuditFailed, FeaturelakeError
from featurelake.lakehouse import lineage
from featurelake.serving.sync import SyncResult
from featurelake.validation.audit import AuditReport

Progress = Callable[[str], None]
MaintenanceKind = Literal["compaction", "expiry", "orphans"]
Window = date | datetime | str


def _when(value: Window) -> datetime | str:
    return value if isinstance(value, datetime) else str(value)


def _report_paths(root: Path, report: AuditReport) -> dict[str, str]:
    out = {}
    if report.report_path:
        out["audit_report"] = str(root / report.report_path)
    if report.html_path:
        out["audit_report_html"] = str(root / report.html_path)
    return out


def _code_version(fl: featurelake.Featurelake, table: str, snapshot_id: int) -> str:
    tbl = fl.project.load_any_table(table)
    snap = tbl.snapshot_by_id(snapshot_id)
    props = dict(snap.summary.additional_properties) if snap is not None and snap.summary else {}
    return str(props.get(lineage.CODE_VERSION, "unknown"))


def backfill(
    project_dir: str | Path,
    view: str,
    start: Window,
    end: Window,
    *,
    run_id: str,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], AuditReport]:
    """``fl.backfill`` of ``[start, end)``; returns its lineage and audit. Raises ``AuditFailed`` when refused."""
    with featurelake.open(project_dir) as fl:
        result = fl.backfill(view, start, end, run_id=run_id, progress=progress)
        return {
            "table": result.table,
            "run_id": result.run_id,
            "window_start": result.window.start.isoformat(),
            "window_end": result.window.end.isoformat(),
            "snapshot_id": str(result.snapshot_id),
            "previous_snapshot_id": str(result.previous_snapshot_id or ""),
            "code_version": _code_version(fl, result.table, result.snapshot_id),
            "rows": result.rows,
            "audit": result.report.status,
            **_report_paths(fl.project.root, result.report),
        }, result.report


def predict(
    project_dir: str | Path,
    model: str,
    view: str | None,
    start: Window,
    end: Window,
    *,
    run_id: str,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], AuditReport]:
    """``fl.predict`` of every row of ``view`` in ``[start, end)``; returns its lineage and audit."""
    with featurelake.open(project_dir) as fl:
        if progress is not None:
            progress(f"scoring {view or 'the view'} of {start} .. {end} with {model}")
        result = fl.predict(model, view, start=_when(start), end=_when(end), run_id=run_id)
        return {
            "table": result.table,
            "run_id": result.run_id,
            "model_version": f"{result.model} {result.model_version}",
            "feature_table": result.feature_table,
            "feature_snapshot_id": str(result.feature_snapshot_id),
            "snapshot_id": str(result.snapshot_id),
            "previous_snapshot_id": str(result.previous_snapshot_id or ""),
            "code_version": _code_version(fl, result.table, result.snapshot_id),
            "rows": result.rows,
            "audit": result.report.status,
            **_report_paths(fl.project.root, result.report),
        }, result.report


def _synced(result: SyncResult) -> dict[str, Any]:
    return {
        "view": result.view,
        "mode": result.mode,
        "snapshot_id": str(result.to_snapshot or ""),
        "rows": result.rows,
        "keys": result.keys,
    }


def sync(project_dir: str | Path, view: str) -> dict[str, Any]:
    """``fl.sync(view)``: the online store catches up with main (incrementally)."""
    with featurelake.open(project_dir) as fl:
        (result,) = fl.sync(view)
        return _synced(result)


def sync_all(project_dir: str | Path) -> list[dict[str, Any]]:
    """``fl.sync()``: every view."""
    with featurelake.open(project_dir) as fl:
        return [_synced(r) for r in fl.sync()]


def maintain(
    project_dir: str | Path, kind: MaintenanceKind, *, progress: Progress | None = None
) -> dict[str, Any]:
    """``fl.maintain(all_tables=True, ...)`` with one operation; raises when any table failed."""
    with featurelake.open(project_dir) as fl:
        reports = fl.maintain(
            all_tables=True,
            compact=kind == "compaction",
            expire=kind == "expiry",
            remove_orphans=kind == "orphans",
            progress=progress,
        )
    failed = [f"{r.table}: {r.error}" for r in reports if r.error]
    if failed:
        raise FeaturelakeError(f"{kind} failed for {len(failed)} table(s): " + "; ".join(failed))
    return {
        "tables": ", ".join(r.table for r in reports),
        "files_before": sum(r.files_before for r in reports),
        "files_after": sum(r.files_after for r in reports),
        "bytes_reclaimed": sum(r.bytes_reclaimed for r in reports),
    }


def refusal(project_dir: str | Path, exc: AuditFailed) -> dict[str, Any]:
    """What a refused audit leaves behind: the kept branch and its tip, the failures, the reports."""
    report = exc.report if isinstance(exc.report, AuditReport) else None
    if report is None:
        return {"error": str(exc)}
    root = Path(project_dir).resolve()
    return {
        "error": str(exc),
        "run_id": report.run_id,
        "branch": report.branch,
        "branch_snapshot_id": str(report.snapshot_id or ""),
        "rows": report.rows,
        "audit": report.status,
        "failures": "; ".join(r.message for r in report.failures),
        **_report_paths(root, report),
    }

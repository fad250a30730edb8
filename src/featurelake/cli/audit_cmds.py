"""``featurelake audits VIEW`` (the audit log) and ``featurelake stats VIEW`` (published feature statistics).

Also the re-render path of ``featurelake audit VIEW --run-id ID [--html F]`` (the command itself is in
``cli/main.py``): a run whose branch is gone (published) is shown from its recorded report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table as RichTable

from featurelake.cli import render
from featurelake.cli.app import Ctx, pass_ctx

if TYPE_CHECKING:
    import featurelake
    from featurelake.auditing.audit_log import LoggedAudit
    from featurelake.validation.audit import AuditReport
    from featurelake.validation.checks import ReferenceStats


def audit_or_recorded(
    fl: featurelake.Featurelake, view: str, run_id: str, html: str | Path | None = None
) -> tuple[AuditReport, str | None]:
    """Re-audit the kept branch of ``run_id``; without one, load the run's recorded report.

    Returns the report and a note when it was loaded rather than re-run. ``html`` also gets the HTML page.
    """
    from featurelake.auditing.runner import report_paths
    from featurelake.lakehouse import lineage, wap
    from featurelake.lakehouse.storage import writing
    from featurelake.validation.audit import AuditReport
    from featurelake.validation.report_html import render_html

    project = fl.project
    project.view(view)
    tbl = project.load_table(view)
    note = None
    if wap.ref_snapshot_id(tbl, wap.branch_name(lineage.check_run_id(run_id))) is not None:
        report = fl.audit(view, run_id)
    else:
        json_path, html_path = report_paths(project, view, run_id)
        recorded = project.root / json_path
        if not recorded.is_file():
            fl.audit(view, run_id)  # raises the usual "no branch audit_<run id>" error
            raise AssertionError("unreachable")
        report = AuditReport.load(recorded)
        # The recorded page stays as written (it is the record); only a page that was lost is drawn again.
        if not (project.root / html_path).is_file():
            with writing(project.root / html_path, "re-render the audit report"):
                project.storage.write_text(project.root / html_path, render_html(report))
        note = (
            f"run {run_id} has no kept branch (it was published or removed): showing its recorded audit of "
            f"{report.audited_at} from {json_path}"
        )
    if html is not None:
        with writing(html, "write the HTML report (--html)"):
            project.storage.write_text(html, render_html(report))
    return report, note


def _audits_table(view: str, audits: list[LoggedAudit]) -> RichTable:
    t = RichTable(title=f"audits of {view} (newest first)")
    for col in ("audited at (UTC)", "run-id", "status", "rows", "window", "failed", "warnings", "report"):
        t.add_column(col, overflow="fold")
    colours = {"passed": "green", "failed": "red"}
    for a in audits:
        window = f"{(a.window_start or '')[:10]} .. {(a.window_end or '')[:10]}" if a.window_start else ""
        t.add_row(
            a.audited_at.strftime("%Y-%m-%d %H:%M:%S"),
            a.run_id,
            f"[{colours.get(a.status, 'yellow')}]{a.status}[/]",
            str(a.rows),
            window,
            ", ".join(f"{c['check']}({c['column'] or ''})" for c in a.failures),
            ", ".join(f"{c['check']}({c['column'] or ''})" for c in a.warnings),
            a.report or "",
        )
    return t


def _checks_table(a: LoggedAudit) -> RichTable:
    t = RichTable(title=f"audit of {a.view} run {a.run_id} at {a.audited_at:%Y-%m-%d %H:%M:%S} ({a.status})")
    for col in ("check", "column", "severity", "status", "observed", "message"):
        t.add_column(col, overflow="fold")
    for c in a.checks:
        t.add_row(c["check"], c["column"] or "", c["severity"], c["status"], str(c["observed"]), c["message"])
    return t


@click.command()
@click.argument("view")
@click.option("--run-id", default=None, help="Only the audits of this run, with every verdict.")
@click.option("--failed", is_flag=True, help="Only audits that refused to publish.")
@click.option("--limit", type=int, default=20, show_default=True, help="Audits to show (newest first).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def audits(c: Ctx, view: str, run_id: str | None, failed: bool, limit: int, as_json: bool) -> None:
    """The audit log of VIEW: every audit's verdicts (from <namespace>._audits)."""
    logged = c.fl.audits(view, run_id=run_id)
    if failed:
        logged = [a for a in logged if not a.passed]
    if limit >= 0:
        logged = logged[:limit]
    if as_json:
        render.print_json([a.to_dict() for a in logged])
        return
    if not logged:
        which = f" for run {run_id}" if run_id else ""
        render.out.print(
            f"no audits recorded for {view}{which} yet (`featurelake backfill` records one per run)"
        )
        return
    if run_id is not None:
        for a in logged:
            render.out.print(_checks_table(a))
    else:
        render.out.print(_audits_table(view, logged))


def _stats_table(view: str, ref: ReferenceStats) -> RichTable:
    t = RichTable(title=f"statistics of {view} {ref.label} (snapshot {ref.snapshot_id}, {ref.rows} rows)")
    for col in ("column", "kind", "count", "nulls", "NaN/inf", "min", "p25", "median", "p75", "max", "mean"):
        t.add_column(col, justify="left" if col in ("column", "kind") else "right")

    def num(v: float | None) -> str:
        return "" if v is None else f"{v:.6g}"

    for name, s in ref.columns.items():
        t.add_row(
            name,
            s.kind,
            str(s.count),
            str(s.nulls),
            f"{s.nan}/{s.pos_inf + s.neg_inf}",
            num(s.min),
            num(s.quantile(0.25)),
            num(s.quantile(0.5)),
            num(s.quantile(0.75)),
            num(s.max),
            num(s.mean),
        )
    if ref.rescanned_days:
        t.caption = f"{ref.rescanned_days} day partition(s) had no recorded statistics and were read"
    return t


@click.command()
@click.argument("view")
@click.option("--snapshot", "snapshot", default=None, help="Snapshot id, tag or branch (default: main).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def stats(c: Ctx, view: str, snapshot: str | None, as_json: bool) -> None:
    """Feature statistics of VIEW's published data (assembled from <namespace>._stats)."""
    ref = c.fl.stats(view, snapshot=snapshot)
    if as_json:
        render.print_json(
            {
                "view": view,
                "snapshot_id": ref.snapshot_id,
                "label": ref.label,
                "rows": ref.rows,
                "rescanned_days": ref.rescanned_days,
                "columns": {n: s.to_dict(histogram=True) for n, s in ref.columns.items()},
            }
        )
        return
    render.out.print(_stats_table(view, ref))

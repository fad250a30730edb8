"""Commands on one feature table: ``init``, ``apply``, ``backfill``, ``audit``, ``publish``, ``discard``,
``history`` and ``read``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from featurelake.cli import render
from featurelake.cli.app import Ctx, pass_ctx, progress


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Scaffold a project in DIRECTORY."""
    from featurelake.cli.scaffold import scaffold

    for path in scaffold(directory):
        render.out.print(f"created {path}", markup=False, highlight=False, soft_wrap=True)
    render.out.print(
        f"next: put data under {directory / 'data'}, edit features.py, then "
        f"`featurelake -C {shlex.quote(str(directory))} apply`",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@click.command()
@click.option("--allow-breaking", is_flag=True, help="Apply dropping/retyping changes too.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print every planned change (breaking ones marked) without changing anything; exit 0.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def apply(c: Ctx, allow_breaking: bool, dry_run: bool, as_json: bool) -> None:
    """Create or evolve the feature tables to match features.py."""
    results = c.fl.apply(allow_breaking=allow_breaking, dry_run=dry_run)
    if as_json:
        render.print_json([r.to_dict() for r in results])
        return
    for r in results:
        for line in r.lines():
            render.out.print(line, markup=False, highlight=False, soft_wrap=True)
        for warning in r.warnings:
            render.err.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)


@click.command()
@click.argument("view")
@click.option("--start", required=True, help="First day of the window (inclusive), e.g. 2024-01-01.")
@click.option("--end", required=True, help="Day after the window (exclusive).")
@click.option("--run-id", default=None, help="Run id (default: generated); the branch is audit_<run id>.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def backfill(c: Ctx, view: str, start: str, end: str, run_id: str | None, as_json: bool) -> None:
    """Write-Audit-Publish VIEW for [START, END): exit 0 published, 1 refused, 2 usage error."""
    with progress(not as_json) as update:
        result = c.fl.backfill(view, start, end, run_id=run_id, progress=update)
    if as_json:
        render.print_json({"status": "published", **result.to_dict()})
        return
    render.out.print(render.audit_table(result.report))
    render.out.print(
        f"[green]published[/] {result.table} run {result.run_id} window {result.window}: {result.rows} rows, "
        f"main {result.previous_snapshot_id} -> {result.snapshot_id} in {result.seconds:.2f}s"
        + (f" ({result.rebases} rebase(s))" if result.rebases else "")
    )
    for note in result.notes:
        render.out.print(f"[dim]note: {note}[/]")


@click.command()
@click.argument("view")
@click.option("--run-id", required=True)
@click.option(
    "--html",
    default=None,
    help="Also write the HTML report here (a path or a URL such as s3://bucket/reports/run.html).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def audit(c: Ctx, view: str, run_id: str, html: str | None, as_json: bool) -> None:
    """Re-audit the kept branch audit_<RUN_ID> of VIEW, or re-render a published run's report (exit 1 if failed)."""
    from featurelake.cli.audit_cmds import audit_or_recorded

    report, note = audit_or_recorded(c.fl, view, run_id, html)
    if note:
        render.err.print(f"[dim]{note}[/]")
    if as_json:
        render.print_json(report.to_dict())
    else:
        render.out.print(render.audit_table(report))
        render.out.print(report.summary())
    if not report.passed:
        sys.exit(1)


@click.command()
@click.argument("view")
@click.option("--run-id", required=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def publish(c: Ctx, view: str, run_id: str, as_json: bool) -> None:
    """Re-audit and publish the kept branch audit_<RUN_ID> of VIEW."""
    with progress(not as_json) as update:
        result = c.fl.publish(view, run_id, progress=update)
    if as_json:
        render.print_json({"status": "published", **result.to_dict()})
    else:
        render.out.print(render.audit_table(result.report))
        render.out.print(f"[green]published[/] {result.table} run {run_id}: main -> {result.snapshot_id}")


@click.command()
@click.argument("view")
@click.option("--run-id", required=True)
@pass_ctx
def discard(c: Ctx, view: str, run_id: str) -> None:
    """Remove the kept branch audit_<RUN_ID> of VIEW (main is not touched)."""
    snapshot = c.fl.discard(view, run_id)
    render.out.print(
        f"removed branch audit_{run_id} (tip {snapshot}); its files go with `featurelake maintain --expire`"
    )


@click.command()
@click.argument("view")
@click.option("--all", "all_snapshots", is_flag=True, help="Include snapshots only on branches.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def history(c: Ctx, view: str, all_snapshots: bool, as_json: bool) -> None:
    """Snapshots of VIEW (a feature view, or a table as NAMESPACE.TABLE) with their lineage, newest first."""
    rows = c.fl.history(view, all_snapshots=all_snapshots)
    if as_json:
        render.print_json([r.to_dict() for r in rows])
    else:
        render.out.print(render.history_table(view, rows))


@click.command()
@click.argument("view")
@click.option("--as-of", default=None, help="Read main as it was at this time (ISO, UTC if no offset).")
@click.option("--snapshot", "snapshot_id", type=int, default=None, help="Read this snapshot id.")
@click.option(
    "--output",
    default=None,
    help="Write to a .parquet or .csv file (a path or a URL such as s3://bucket/out.parquet) instead of printing.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Rows to print (use --output for all of them).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def read(
    c: Ctx,
    view: str,
    as_of: str | None,
    snapshot_id: int | None,
    output: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Time-travel read of VIEW: a feature view's name, or any table of the project as NAMESPACE.TABLE
    (predictions.<model>, <namespace>._audits, <namespace>._stats)."""
    table = c.fl.read(view, as_of=as_of, snapshot_id=snapshot_id)
    if output is not None:
        from featurelake.cli.files import write_table

        write_table(table, output, c.fl.project.storage)
        render.out.print(f"wrote {table.num_rows} rows to {output}")
    elif as_json:
        render.print_json(table.slice(0, limit).to_pylist())
    else:
        render.out.print(render.arrow_table(table, view, limit))

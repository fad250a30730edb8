"""``featurelake monitor``: evaluate the alert rules now and notify; export them for Prometheus."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table as RichTable

from featurelake.cli import render
from featurelake.cli.app import Ctx, pass_ctx

_STATE_STYLE = {"ok": "green", "pending": "yellow", "firing": "red"}


def _rules_table(result: object) -> RichTable:
    from featurelake.monitoring.alerts import MonitorResult

    assert isinstance(result, MonitorResult)
    t = RichTable(title=f"alert rules (evaluated from {result.evaluated_by} state)")
    for col in ("rule", "severity", "state", "instances", "detail"):
        t.add_column(col, overflow="fold")
    for r in result.rules:
        style = _STATE_STYLE[r.state]
        detail = "; ".join(i.summary for i in r.instances[:3])
        if len(r.instances) > 3:
            detail += f"; ... and {len(r.instances) - 3} more (--json lists all)"
        t.add_row(
            r.rule.name, r.rule.severity, f"[{style}]{r.state}[/]", str(len(r.instances)), escape(detail)
        )
    return t


@click.command()
@click.option(
    "--export-prometheus-rules",
    "export",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the rules as a Prometheus alerting-rules file to F and exit.",
)
@click.option("--list-rules", is_flag=True, help="Show the rules in force (defaults + project) and exit.")
@click.option("--metrics", "show_metrics", is_flag=True, help="Show the local metrics state's latest values.")
@click.option(
    "--dry-run", is_flag=True, help="Evaluate and show, but notify nobody and change no alert state."
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def monitor(
    c: Ctx, export: Path | None, list_rules: bool, show_metrics: bool, dry_run: bool, as_json: bool
) -> None:
    """Evaluate the alert rules now and notify the channels (exit 1 if a channel failed)."""
    project = c.fl.project
    if export is not None:
        from featurelake.monitoring.alerts import export_prometheus_rules

        rules = export_prometheus_rules(project, export)
        if as_json:
            render.print_json({"path": str(export), "rules": [r.name for r in rules]})
        else:
            render.out.print(
                f"wrote {len(rules)} alerting rules to {export} (check: promtool check rules {export})"
            )
        return
    if list_rules:
        _print_rules(project, as_json)
        return
    if show_metrics:
        _print_metrics(project, as_json)
        return
    result = c.fl.monitor(notify=not dry_run)
    if as_json:
        render.print_json(result.to_dict())
    else:
        render.out.print(_rules_table(result))
        sent = "would send" if dry_run else "sent"
        render.out.print(f"{sent} {len(result.events)} notification(s); {len(result.firing)} alert(s) firing")
    for line in result.delivery_errors:
        render.err.print(f"[red]delivery failed[/]: {escape(line)}")
    if result.delivery_errors:
        sys.exit(1)


def _print_rules(project: object, as_json: bool) -> None:
    from featurelake.monitoring.alerts import project_rules
    from featurelake.monitoring.rules.promql import expr

    rules = project_rules(project)  # type: ignore[arg-type]
    if as_json:
        render.print_json(
            [{**r.model_dump(by_alias=True, exclude={"enabled"}), "promql": expr(r)} for r in rules]
        )
        return
    t = RichTable(title="alert rules in force")
    for col in ("rule", "severity", "condition", "for", "repeat", "defined at"):
        t.add_column(col, overflow="fold")
    for r in rules:
        t.add_row(r.name, r.severity, escape(expr(r)), r.for_, r.repeat_interval, r.source)
    render.out.print(t)


def _print_metrics(project: object, as_json: bool) -> None:
    from datetime import UTC, datetime

    from featurelake.monitoring.recorder import state_of

    state = state_of(project)  # type: ignore[arg-type]
    rows = state.latest()
    if as_json:
        render.print_json(
            [
                {
                    "sample": r.sample,
                    "labels": dict(r.labels),
                    "value": r.value,
                    "source": r.source,
                    "ts": r.ts,
                }
                for r in rows
                if not r.sample.endswith("_bucket")
            ]
        )
        return
    t = RichTable(title=f"metrics state {state.path} ({len(rows)} series; histogram buckets hidden)")
    for col in ("sample", "labels", "value", "recorded by", "at (UTC)"):
        t.add_column(col, overflow="fold")
    for r in rows:
        if r.sample.endswith("_bucket"):
            continue
        labels = ", ".join(f"{k}={v}" for k, v in r.labels)
        at = datetime.fromtimestamp(r.ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
        t.add_row(r.sample, escape(labels), f"{r.value:g}", r.source, at)
    render.out.print(t)

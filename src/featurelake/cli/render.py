"""Terminal rendering: rich tables for people, JSON for programs."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table as RichTable

if TYPE_CHECKING:  # types only: `featurelake get` must not load PyIceberg or Arrow to print a row
    import pyarrow as pa

    from featurelake.lakehouse.history import SnapshotInfo
    from featurelake.validation.audit import AuditReport

# Pipes and CI logs get a wide fixed width so tables with snapshot ids stay readable.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def print_json(data: Any) -> None:
    # Plain print: rich would wrap long lines and break the JSON for pipes.
    print(json.dumps(data, indent=2, default=str))


def audit_table(report: AuditReport) -> RichTable:
    t = RichTable(title=f"audit of {report.view} run {report.run_id} ({report.rows} rows)")
    for col in ("check", "column", "severity", "observed", "limit", "result"):
        t.add_column(col)
    styles = {"pass": "green", "FAIL": "red", "warn": "yellow"}  # "no reference" / "no data": dim
    for r in report.results:
        verdict = f"[{styles.get(r.verdict, 'dim')}]{r.verdict}[/]"
        observed = "" if r.observed is None else str(r.observed)
        t.add_row(r.check, r.column or "", r.severity, observed, r.limit, verdict)
    if report.html_path:
        t.caption = f"{report.status}; report: {report.html_path}"
    return t


def history_table(view: str, rows: list[SnapshotInfo]) -> RichTable:
    t = RichTable(title=f"history of {view} (newest first)")
    for col in (
        "snapshot",
        "committed (UTC)",
        "published (UTC)",
        "operation",
        "code-version",
        "run-id",
        "pipeline-user",
        "window",
        "rows added",
    ):
        t.add_column(col, overflow="fold")
    for s in rows:
        window = f"{(s.window_start or '')[:10]} .. {(s.window_end or '')[:10]}" if s.window_start else ""
        code = s.code_version or ""
        code = code[:12] + ("-dirty" if code.endswith("-dirty") else "") if len(code) > 20 else code
        t.add_row(
            str(s.snapshot_id) + ("" if s.on_main else " (branch)"),
            s.committed_at.strftime("%Y-%m-%d %H:%M:%S"),
            s.published_at.strftime("%Y-%m-%d %H:%M:%S") if s.published_at else "",
            s.featurelake_operation or s.operation,
            code,
            s.run_id or "",
            s.pipeline_user or "",
            window,
            str(s.added_records),
        )
    return t


def arrow_table(table: pa.Table, title: str, limit: int) -> RichTable:
    t = RichTable(
        title=f"{title} ({table.num_rows} rows{', first ' + str(limit) if table.num_rows > limit else ''})"
    )
    for name in table.column_names:
        t.add_column(name)
    for row in table.slice(0, limit).to_pylist():
        t.add_row(*("" if v is None else str(v) for v in row.values()))
    return t

"""The audit log: every audit's verdicts, one row per check, in the Iceberg table ``<namespace>._audits``.

Written by each audit (backfill, rebase, ``featurelake audit``, ``featurelake publish``), refused ones
included, as an append carrying the usual lineage properties. ``featurelake audits VIEW`` reads it; so can
any Iceberg reader (Spark, DuckDB's iceberg extension, PyIceberg).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyiceberg.expressions import And, EqualTo
from pyiceberg.schema import Schema
from pyiceberg.types import BooleanType, LongType, NestedField, StringType, TimestamptzType

from featurelake.auditing import logtable

if TYPE_CHECKING:
    from featurelake.project import Project
    from featurelake.validation.audit import AuditReport

TABLE = "_audits"

_COLUMNS: list[tuple[str, Any]] = [
    ("audit_id", StringType()),
    ("view", StringType()),
    ("run_id", StringType()),
    ("branch", StringType()),
    ("snapshot_id", LongType()),
    ("audited_at", TimestamptzType()),
    ("audit_passed", BooleanType()),
    ("audit_status", StringType()),
    ("rows", LongType()),
    ("window_start", StringType()),
    ("window_end", StringType()),
    ("reference_snapshot_id", LongType()),
    ("check", StringType()),
    ("column", StringType()),
    ("severity", StringType()),
    ("status", StringType()),
    ("passed", BooleanType()),
    ("observed", StringType()),
    ("limit", StringType()),
    ("message", StringType()),
    ("report", StringType()),
]
SCHEMA = Schema(*(NestedField(i, name, t, required=False) for i, (name, t) in enumerate(_COLUMNS, start=1)))


def rows_of(report: AuditReport) -> pa.Table:
    """The log rows of one audit: one per check verdict."""
    audited = datetime.fromisoformat(report.audited_at) if report.audited_at else datetime.now(UTC)
    common = {
        "audit_id": uuid.uuid4().hex,
        "view": report.view,
        "run_id": report.run_id,
        "branch": report.branch,
        "snapshot_id": report.snapshot_id,
        "audited_at": audited,
        "audit_passed": report.passed,
        "audit_status": report.status,
        "rows": report.rows,
        "window_start": report.window_start,
        "window_end": report.window_end,
        "reference_snapshot_id": report.reference_snapshot_id,
        "report": report.report_path,
    }
    records = [
        {
            **common,
            "check": r.check,
            "column": r.column,
            "severity": r.severity,
            "status": r.status,
            "passed": r.passed,
            "observed": json.dumps(r.observed, default=str),
            "limit": r.limit,
            "message": r.message,
        }
        for r in report.results
    ]
    return pa.Table.from_pylist(records, schema=SCHEMA.as_arrow())


def record(project: Project, report: AuditReport) -> int:
    """Append the audit's verdicts to ``<namespace>._audits``; returns the log's new snapshot id."""
    return logtable.append(project, TABLE, SCHEMA, rows_of(report), report.run_id, "audit-log")


@dataclass
class LoggedAudit:
    """One audit as read back from the log."""

    view: str
    run_id: str
    branch: str
    snapshot_id: int | None
    audited_at: datetime
    passed: bool
    status: str
    rows: int
    window_start: str | None
    window_end: str | None
    reference_snapshot_id: int | None
    report: str | None
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["passed"] and c["severity"] == "error"]

    @property
    def warnings(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["passed"] and c["severity"] == "warn"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "run_id": self.run_id,
            "branch": self.branch,
            "snapshot_id": self.snapshot_id,
            "audited_at": self.audited_at.isoformat(),
            "passed": self.passed,
            "status": self.status,
            "rows": self.rows,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "reference_snapshot_id": self.reference_snapshot_id,
            "report": self.report,
            "failures": len(self.failures),
            "warnings": len(self.warnings),
            "checks": self.checks,
        }


def read(project: Project, view: str, *, run_id: str | None = None) -> list[LoggedAudit]:
    """Audits of ``view`` (optionally of one run), newest first."""
    cond = EqualTo("view", view)  # type: ignore[call-arg, arg-type]
    if run_id is not None:
        cond = And(cond, EqualTo("run_id", run_id))  # type: ignore[call-arg, arg-type, assignment]
    data = logtable.scan(project, TABLE, cond)
    if data is None:
        return []
    audits: dict[str, LoggedAudit] = {}
    for row in data.to_pylist():
        key = row["audit_id"]
        entry = audits.get(key)
        if entry is None:
            entry = audits[key] = LoggedAudit(
                view=row["view"],
                run_id=row["run_id"],
                branch=row["branch"],
                snapshot_id=row["snapshot_id"],
                audited_at=row["audited_at"],
                passed=bool(row["audit_passed"]),
                status=row["audit_status"],
                rows=int(row["rows"] or 0),
                window_start=row["window_start"],
                window_end=row["window_end"],
                reference_snapshot_id=row["reference_snapshot_id"],
                report=row["report"],
            )
        entry.checks.append(
            {
                "check": row["check"],
                "column": row["column"],
                "severity": row["severity"],
                "status": row["status"],
                "passed": bool(row["passed"]),
                "observed": json.loads(row["observed"]) if row["observed"] else None,
                "limit": row["limit"],
                "message": row["message"],
            }
        )
    return sorted(audits.values(), key=lambda a: (a.audited_at, a.run_id), reverse=True)

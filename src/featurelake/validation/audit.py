"""Run a view's checks over the rows a backfill wrote and produce an audit report.

All checks of a view are evaluated in one DuckDB aggregate query over the Arrow data (one pass), plus the
implicit checks every feature table gets: at least one row, and no null join key or timestamp.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from featurelake.validation.checks import Check, CheckResult, NotNull, RowCount


@dataclass
class AuditReport:
    """The verdicts of one audit of one run's branch."""

    view: str
    run_id: str
    branch: str
    snapshot_id: int | None
    rows: int
    results: list[CheckResult]
    audited_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results if r.severity == "error")

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed and r.severity == "error"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed and r.severity == "warn"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "run_id": self.run_id,
            "branch": self.branch,
            "snapshot_id": self.snapshot_id,
            "rows": self.rows,
            "passed": self.passed,
            "audited_at": self.audited_at,
            "results": [r.to_dict() for r in self.results],
        }

    def summary(self) -> str:
        if self.passed:
            return f"audit passed for {self.view} run {self.run_id}: {len(self.results)} checks on {self.rows} rows"
        worst = "; ".join(r.message for r in self.failures)
        return f"audit failed for {self.view} run {self.run_id}: {worst}"

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.run_id}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        tmp.replace(path)
        return path


def implicit_checks(join_key: str, timestamp_field: str) -> list[Check]:
    return [RowCount(min=1), NotNull(join_key), NotNull(timestamp_field)]


def evaluate(frame: pa.Table, checks: list[Check]) -> tuple[int, list[CheckResult]]:
    """Evaluate ``checks`` over ``frame`` in a single aggregate query; returns (rows, results)."""
    exprs: list[str] = ["count(*)"]
    spans: list[tuple[Check, int, int]] = []
    for check in checks:
        aggs = check.aggregates()
        spans.append((check, len(exprs), len(exprs) + len(aggs)))
        exprs.extend(aggs)
    con = duckdb.connect()
    try:
        con.register("frame", frame)
        row = con.execute(f"SELECT {', '.join(exprs)} FROM frame").fetchone()
    finally:
        con.close()
    assert row is not None
    values = list(row)
    rows = int(values[0])
    return rows, [check.judge(values[a:b], rows) for check, a, b in spans]

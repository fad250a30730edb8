"""Data-quality checks declared per view (``checks.null_rate(...)``) and evaluated in one SQL pass.

Each check contributes SQL aggregate expressions over the relation ``frame`` (the rows being audited);
the audit runs all of them in a single query, then each check turns its values into a verdict.
Severity ``error`` blocks publishing; ``warn`` is recorded and reported but does not block.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warn"]


def quote(col: str) -> str:
    return '"' + col.replace('"', '""') + '"'


def _sql_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("bounds must be finite numbers")
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one check on one audited frame."""

    check: str
    column: str | None
    severity: Severity
    passed: bool
    observed: float | int | None
    limit: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "column": self.column,
            "severity": self.severity,
            "passed": self.passed,
            "observed": self.observed,
            "limit": self.limit,
            "message": self.message,
        }


class Check(ABC):
    """One data-quality rule. Subclasses name their SQL aggregates and judge the values."""

    name: str = "check"

    def __init__(self, severity: Severity = "error") -> None:
        if severity not in ("error", "warn"):
            raise ValueError(f"severity must be 'error' or 'warn', got {severity!r}")
        self.severity: Severity = severity

    @abstractmethod
    def columns(self) -> list[str]:
        """Columns the check reads (validated against the view's columns)."""

    @abstractmethod
    def aggregates(self) -> list[str]:
        """SQL aggregate expressions over ``frame``; their values come back to :meth:`judge` in order."""

    @abstractmethod
    def judge(self, values: list[Any], rows: int) -> CheckResult:
        """Turn the aggregate values into a verdict."""

    def _result(
        self, column: str | None, passed: bool, observed: Any, limit: str, message: str
    ) -> CheckResult:
        return CheckResult(self.name, column, self.severity, passed, observed, limit, message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class NullRate(Check):
    name = "null_rate"

    def __init__(self, column: str, max: float, severity: Severity = "error") -> None:
        super().__init__(severity)
        if not 0.0 <= float(max) <= 1.0:
            raise ValueError(f"null_rate({column!r}): max must be between 0 and 1, got {max}")
        self.column, self.max = column, float(max)

    def columns(self) -> list[str]:
        return [self.column]

    def aggregates(self) -> list[str]:
        return [f"count(*) - count({quote(self.column)})"]

    def judge(self, values: list[Any], rows: int) -> CheckResult:
        nulls = int(values[0] or 0)
        rate = nulls / rows if rows else 0.0
        passed = rate <= self.max
        msg = f"null rate of {self.column} is {rate:.4f} ({nulls} of {rows} rows; limit {self.max:.4f})"
        return self._result(self.column, passed, round(rate, 6), f"<= {self.max}", msg)


class NotNull(Check):
    name = "not_null"

    def __init__(self, column: str, severity: Severity = "error") -> None:
        super().__init__(severity)
        self.column = column

    def columns(self) -> list[str]:
        return [self.column]

    def aggregates(self) -> list[str]:
        return [f"count(*) - count({quote(self.column)})"]

    def judge(self, values: list[Any], rows: int) -> CheckResult:
        nulls = int(values[0] or 0)
        return self._result(
            self.column, nulls == 0, nulls, "0 nulls", f"{self.column} has {nulls} null values"
        )


class Between(Check):
    name = "between"

    def __init__(self, column: str, lo: float | int, hi: float | int, severity: Severity = "error") -> None:
        super().__init__(severity)
        if lo > hi:
            raise ValueError(f"between({column!r}, {lo}, {hi}): lo must be <= hi")
        self.column, self.lo, self.hi = column, lo, hi

    def columns(self) -> list[str]:
        return [self.column]

    def aggregates(self) -> list[str]:
        c = quote(self.column)
        return [
            f"count(*) FILTER (WHERE {c} < {_sql_literal(self.lo)} OR {c} > {_sql_literal(self.hi)})",
            f"min({c})",
            f"max({c})",
        ]

    def judge(self, values: list[Any], rows: int) -> CheckResult:
        outside = int(values[0] or 0)
        lo_seen, hi_seen = values[1], values[2]
        msg = (
            f"{outside} of {rows} values of {self.column} are outside [{self.lo}, {self.hi}] "
            f"(observed min {lo_seen}, max {hi_seen})"
        )
        return self._result(self.column, outside == 0, outside, f"[{self.lo}, {self.hi}]", msg)


class RowCount(Check):
    name = "row_count"

    def __init__(self, min: int = 1, max: int | None = None, severity: Severity = "error") -> None:
        super().__init__(severity)
        self.min, self.max = int(min), max

    def columns(self) -> list[str]:
        return []

    def aggregates(self) -> list[str]:
        return []

    def judge(self, values: list[Any], rows: int) -> CheckResult:
        passed = rows >= self.min and (self.max is None or rows <= self.max)
        limit = f">= {self.min}" + (f" and <= {self.max}" if self.max is not None else "")
        return self._result(None, passed, rows, limit, f"row count is {rows} (expected {limit})")


def null_rate(column: str, max: float, severity: Severity = "error") -> Check:
    """Fail when the share of nulls in ``column`` exceeds ``max`` (0..1)."""
    return NullRate(column, max, severity)


def not_null(column: str, severity: Severity = "error") -> Check:
    """Fail when ``column`` holds any null."""
    return NotNull(column, severity)


def between(column: str, lo: float | int, hi: float | int, severity: Severity = "error") -> Check:
    """Fail when any non-null value of ``column`` lies outside ``[lo, hi]``."""
    return Between(column, lo, hi, severity)


def row_count(min: int = 1, max: int | None = None, severity: Severity = "error") -> Check:
    """Fail when the audited window holds fewer than ``min`` (or more than ``max``) rows."""
    return RowCount(min, max, severity)

"""Backfill windows: ``[start, end)`` in whole UTC days (on a day-partitioned table, exactly a set of partitions)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, LessThan

from featurelake.errors import UsageError


def parse_timestamp(value: str | date | datetime, what: str = "timestamp") -> datetime:
    """Parse ``2024-01-31``, ``2024-01-31T10:00:00Z`` or a date/datetime into an aware UTC datetime.

    Naive values are taken as UTC (the CLI's documented convention).
    """
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime.combine(value, time(0))
    else:
        text = str(value).strip()
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(
                f"{what} {value!r} is not a date or ISO timestamp (use e.g. 2024-01-31 or 2024-01-31T10:00:00Z)"
            ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    """A half-open time window ``[start, end)`` aligned to UTC days."""

    start: datetime
    end: datetime

    @classmethod
    def parse(cls, start: str | date | datetime, end: str | date | datetime) -> Window:
        s, e = parse_timestamp(start, "--start"), parse_timestamp(end, "--end")
        for name, dt in (("--start", s), ("--end", e)):
            if dt.timetz().replace(tzinfo=None) != time(0):
                raise UsageError(
                    f"{name} {dt.isoformat()} is not midnight UTC: backfills replace whole UTC days, "
                    "so give dates (e.g. 2024-01-31)"
                )
        if s >= e:
            raise UsageError(f"empty window: --start {s.date()} must be before --end {e.date()}")
        return cls(s, e)

    @property
    def days(self) -> int:
        return (self.end - self.start) // timedelta(days=1)

    def iceberg_filter(self, column: str) -> BooleanExpression:
        # PyIceberg's predicates are pydantic models whose generated signature mypy misreads.
        lo = GreaterThanOrEqual(column, self.start.isoformat())  # type: ignore[call-arg, arg-type]
        hi = LessThan(column, self.end.isoformat())  # type: ignore[call-arg, arg-type]
        return And(lo, hi)

    def sql_filter(self, column: str) -> str:
        c = '"' + column.replace('"', '""') + '"'
        return f"{c} >= TIMESTAMPTZ '{self.start.isoformat()}' AND {c} < TIMESTAMPTZ '{self.end.isoformat()}'"

    def __str__(self) -> str:
        return f"[{self.start.date()}, {self.end.date()})"

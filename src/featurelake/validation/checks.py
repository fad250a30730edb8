"""The data-quality checks declared per view in ``features.py`` (``checks.null_rate(...)``).

Each is a :class:`~featurelake.validation.core.Check`: SQL aggregates over the audited rows and a verdict
(see ``validation.core`` for the interface and ``validation.audit`` for how they are evaluated together).
Severity ``error`` blocks publishing; ``warn`` is recorded, shown and reported but does not block.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from featurelake.errors import ConfigError
from featurelake.units import format_duration
from featurelake.validation.core import (
    NUMERIC_KINDS,
    STATUSES,
    Agg,
    AuditContext,
    Check,
    CheckResult,
    Observation,
    ReferenceData,
    ReferenceStats,
    Severity,
    Status,
    column_kind,
    quote,
    require_kind,
    sql_literal,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from featurelake.features.definitions import FeatureView

__all__ = [
    "NUMERIC_KINDS",
    "STATUSES",
    "AuditContext",
    "Check",
    "CheckResult",
    "Observation",
    "ReferenceData",
    "ReferenceStats",
    "Severity",
    "Status",
    "between",
    "column_kind",
    "freshness",
    "in_set",
    "no_nan_or_inf",
    "not_null",
    "null_rate",
    "quote",
    "row_count",
    "row_count_change",
    "sql",
    "sql_literal",
    "unique",
]


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


# --- the checks ---------------------------------------------------------------------------------------


class NullRate(Check):
    name = "null_rate"

    def __init__(self, column: str, max: float, severity: Severity = "error") -> None:
        super().__init__(severity)
        if not isinstance(max, int | float) or not 0.0 <= float(max) <= 1.0:
            raise ConfigError(
                f"null_rate({column!r}): max must be between 0 and 1 (a share of rows), got {max!r}"
            )
        self.column, self.max = column, float(max)

    def columns(self) -> list[str]:
        return [self.column]

    def aggregates(self) -> list[str]:
        return [Agg.of("count", self.column)]

    def judge(self, obs: Observation) -> CheckResult:
        rows = obs.rows
        nulls = rows - int(obs.values[0] or 0)
        rate = nulls / rows if rows else 0.0
        msg = f"null rate of {self.column} is {rate:.4f} ({nulls} of {rows} rows; limit {self.max:.4f})"
        return self._result(self.column, rate <= self.max, round(rate, 6), f"<= {self.max}", msg)


class NotNull(Check):
    name = "not_null"

    def __init__(self, column: str, severity: Severity = "error") -> None:
        super().__init__(severity)
        self.column = column

    def columns(self) -> list[str]:
        return [self.column]

    def aggregates(self) -> list[str]:
        return [Agg.of("count", self.column)]

    def judge(self, obs: Observation) -> CheckResult:
        nulls = obs.rows - int(obs.values[0] or 0)
        return self._result(
            self.column, nulls == 0, nulls, "0 nulls", f"{self.column} has {nulls} null values"
        )


class Between(Check):
    """Every non-null value within ``[lo, hi]``; NaN and infinities count as outside."""

    name = "between"

    def __init__(self, column: str, lo: float | int, hi: float | int, severity: Severity = "error") -> None:
        super().__init__(severity)
        for bound in (lo, hi):
            if isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound):
                raise ConfigError(f"between({column!r}, {lo!r}, {hi!r}): bounds must be finite numbers")
        if lo > hi:
            raise ConfigError(f"between({column!r}, {lo}, {hi}): lo must be <= hi (swap them?)")
        self.column, self.lo, self.hi = column, lo, hi

    def columns(self) -> list[str]:
        return [self.column]

    def validate(self, view: FeatureView) -> None:
        require_kind(self, view, self.column, NUMERIC_KINDS, "needs a numeric column")

    def aggregates(self) -> list[str]:
        return [Agg.of("min", self.column), Agg.of("max", self.column)]

    def _inside(self, lo_seen: Any, hi_seen: Any) -> bool:
        if lo_seen is None:  # no non-null values
            return True
        return not (_is_nan(lo_seen) or _is_nan(hi_seen)) and self.lo <= lo_seen and hi_seen <= self.hi

    def detail_aggregates(self, obs: Observation) -> list[str]:
        if self._inside(*obs.values):
            return []
        c = quote(self.column)
        return [f"count(*) FILTER (WHERE {c} < {sql_literal(self.lo)} OR {c} > {sql_literal(self.hi)})"]

    def judge(self, obs: Observation) -> CheckResult:
        lo_seen, hi_seen = obs.values
        outside = int(obs.detail[0] or 0) if obs.detail else 0
        seen = "all values are null" if lo_seen is None else f"observed min {lo_seen}, max {hi_seen}"
        msg = f"{outside} of {obs.rows} values of {self.column} are outside [{self.lo}, {self.hi}] ({seen})"
        return self._result(self.column, outside == 0, outside, f"[{self.lo}, {self.hi}]", msg)


class InSet(Check):
    """Every non-null value is one of ``values``."""

    name = "in_set"

    def __init__(
        self, column: str, values: list[Any] | tuple[Any, ...] | set[Any], severity: Severity = "error"
    ):
        super().__init__(severity)
        members = sorted(set(values), key=repr) if isinstance(values, set | frozenset) else list(values)
        if isinstance(values, str) or not members:
            raise ConfigError(f"in_set({column!r}): values must be a non-empty list, e.g. ['a', 'b']")
        for v in members:
            try:
                sql_literal(v)  # refuses NaN, None and odd types now, not at run time
            except ConfigError as exc:
                raise ConfigError(f"in_set({column!r}): {exc}; remove {v!r} from values") from None
        self.column, self.values = column, members

    def columns(self) -> list[str]:
        return [self.column]

    def validate(self, view: FeatureView) -> None:
        kind = column_kind(view, self.column)
        ok = {
            "string": lambda v: isinstance(v, str),
            "boolean": lambda v: isinstance(v, bool),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "decimal": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "key": lambda v: isinstance(v, int | str) and not isinstance(v, bool),
        }.get(kind)
        if ok is None:
            raise ConfigError(
                f"view {view.name!r}: in_set({self.column!r}) cannot check a {kind} column; use checks.sql(...) "
                "for it instead"
            )
        wrong = [v for v in self.values if not ok(v)]
        if wrong:
            raise ConfigError(
                f"view {view.name!r}: in_set({self.column!r}) lists {wrong[0]!r} but {self.column} is {kind}; "
                "list values of the column's type"
            )

    def _outside(self) -> str:
        c = quote(self.column)
        # A plain literal list: a subquery would be ~2x faster in DuckDB on long lists, but Spark does not
        # allow subqueries inside an aggregate's FILTER, and both engines evaluate these expressions.
        return f"{c} IS NOT NULL AND {c} NOT IN ({', '.join(sql_literal(v) for v in self.values)})"

    def aggregates(self) -> list[str]:
        sql = f"count(*) FILTER (WHERE {self._outside()})"
        return [Agg(sql, "count_not_in", self.column, tuple(self.values))]

    def detail_aggregates(self, obs: Observation) -> list[str]:
        if not obs.values[0]:
            return []
        return [f"list(DISTINCT CAST({quote(self.column)} AS VARCHAR)) FILTER (WHERE {self._outside()})"]

    def judge(self, obs: Observation) -> CheckResult:
        outside = int(obs.values[0] or 0)
        shown = ", ".join(repr(v) for v in self.values[:8]) + (", ..." if len(self.values) > 8 else "")
        msg = f"{outside} of {obs.rows} values of {self.column} are not in {{{shown}}}"
        if outside and obs.detail and obs.detail[0]:
            found = sorted(obs.detail[0])
            msg += f"; e.g. {', '.join(repr(v) for v in found[:5])}" + (" ..." if len(found) > 5 else "")
        return self._result(self.column, outside == 0, outside, f"{len(self.values)} allowed values", msg)


class Unique(Check):
    """No two rows share the same values of ``cols`` (default: the entity join key and the timestamp)."""

    name = "unique"

    def __init__(self, cols: list[str] | tuple[str, ...] | str | None = None, severity: Severity = "error"):
        super().__init__(severity)
        if isinstance(cols, str):
            cols = [cols]
        if cols is not None and (not cols or len(set(cols)) != len(cols)):
            raise ConfigError(f"unique({cols!r}): give one or more distinct column names, or nothing")
        self.cols: list[str] | None = list(cols) if cols is not None else None

    def columns(self) -> list[str]:
        return list(self.cols or [])

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        return (self.name, tuple(self.cols) if self.cols else ("<key>",))

    def bind(self, ctx: AuditContext) -> Check:
        if self.cols is not None:
            return self
        bound = self._copy()
        bound.cols = [*ctx.view.join_keys, ctx.view.timestamp_field]
        return bound

    def _cols(self) -> list[str]:
        if self.cols is None:
            raise RuntimeError("unique() without columns must be bound to a view before evaluation")
        return self.cols

    def aggregates(self) -> list[str]:
        # Distinct 64-bit hashes are cheaper than distinct row values: as many as rows proves uniqueness
        # (equal keys hash equally); fewer may be a collision, so the exact count is taken then.
        cols = self._cols()
        return [
            Agg(f"count(DISTINCT hash({', '.join(quote(c) for c in cols)}))", "distinct_rows", None, *cols)
        ]

    def detail_aggregates(self, obs: Observation) -> list[str]:
        if int(obs.values[0] or 0) == obs.rows:
            return []
        # A row value (struct), so rows whose key columns hold nulls still count as keys.
        return [f"count(DISTINCT row({', '.join(quote(c) for c in self._cols())}))"]

    def judge(self, obs: Observation) -> CheckResult:
        cols = self._cols()
        distinct = int(obs.detail[0] or 0) if obs.detail else int(obs.values[0] or 0)
        dupes = obs.rows - distinct
        what = ", ".join(cols)
        msg = f"{dupes} of {obs.rows} rows repeat an existing ({what}) value ({distinct} distinct)"
        return self._result(what, dupes == 0, dupes, "0 duplicates", msg)


class RowCount(Check):
    name = "row_count"

    def __init__(self, min: int = 1, max: int | None = None, severity: Severity = "error") -> None:
        super().__init__(severity)
        if isinstance(min, bool) or not isinstance(min, int) or min < 0:
            raise ConfigError(f"row_count(min={min!r}): min must be a non-negative integer")
        if max is not None and (isinstance(max, bool) or not isinstance(max, int) or max < min):
            raise ConfigError(f"row_count(min={min}, max={max!r}): max must be an integer >= min")
        self.min, self.max = min, max

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        return (self.name, (str(self.min), str(self.max)))

    def judge(self, obs: Observation) -> CheckResult:
        rows = obs.rows
        passed = rows >= self.min and (self.max is None or rows <= self.max)
        limit = f">= {self.min}" + (f" and <= {self.max}" if self.max is not None else "")
        msg = f"row count is {rows} (expected {limit})"
        if rows == 0:
            msg = f"the window holds no rows (expected {limit}): the query produced nothing for it"
        return self._result(None, passed, rows, limit, msg)


class RowCountChange(Check):
    """The window's row count differs from what main holds for the same window by at most ``max_ratio``.

    The change is ``|new - published| / published``; a window main does not hold yet has no reference.
    """

    name = "row_count_change"

    def __init__(self, max_ratio: float, severity: Severity = "error") -> None:
        super().__init__(severity)
        if isinstance(max_ratio, bool) or not isinstance(max_ratio, int | float) or not max_ratio >= 0:
            raise ConfigError(f"row_count_change(max_ratio={max_ratio!r}): give a ratio >= 0, e.g. 0.5")
        if not math.isfinite(max_ratio):
            raise ConfigError("row_count_change: max_ratio must be finite: give a ratio >= 0, e.g. 0.5")
        self.max_ratio = float(max_ratio)
        self._published: int | None = None

    def bind(self, ctx: AuditContext) -> Check:
        bound = self._copy()
        bound._published = ctx.reference.window_rows() if ctx.reference is not None else None
        return bound

    def judge(self, obs: Observation) -> CheckResult:
        limit = f"<= {self.max_ratio:g}"
        old = self._published
        if not old:
            return self._result(
                None,
                True,
                None,
                limit,
                f"main holds no rows for this window yet, so there is no row count to compare {obs.rows} rows with",
                status="no-reference",
            )
        change = abs(obs.rows - old) / old
        msg = f"row count changed by {change:.1%} ({old} published -> {obs.rows} new; limit {self.max_ratio:.1%})"
        return self._result(None, change <= self.max_ratio, round(change, 6), limit, msg)


class Freshness(Check):
    """The newest timestamp is at most ``max_age`` older than the window's end (or now, if that is earlier)."""

    name = "freshness"

    def __init__(self, max_age: timedelta, column: str | None = None, severity: Severity = "error") -> None:
        super().__init__(severity)
        if not isinstance(max_age, timedelta) or max_age < timedelta(0):
            raise ConfigError(
                f"freshness(max_age={max_age!r}): give a timedelta >= 0, e.g. timedelta(days=1)"
            )
        self.max_age, self.column = max_age, column
        self._as_of: datetime | None = None

    def columns(self) -> list[str]:
        return [self.column] if self.column else []

    def validate(self, view: FeatureView) -> None:
        if self.column:
            require_kind(self, view, self.column, ("timestamp",), "needs a timestamp column")

    def bind(self, ctx: AuditContext) -> Check:
        bound = self._copy()
        bound.column = self.column or ctx.view.timestamp_field
        end = ctx.window.end if ctx.window is not None else ctx.now
        bound._as_of = min(end, ctx.now)
        return bound

    def aggregates(self) -> list[str]:
        if self.column is None:
            raise RuntimeError("freshness() must be bound to a view before evaluation")
        return [Agg.of("max", self.column)]

    def judge(self, obs: Observation) -> CheckResult:
        newest, as_of = obs.values[0], self._as_of
        limit = f"age <= {_age(self.max_age)}"
        if newest is None or as_of is None:
            return self._result(
                self.column, True, None, limit, f"{self.column} has no values", status="no-data"
            )
        age = as_of - newest
        msg = (
            f"newest {self.column} is {newest.isoformat()}, {_age(age)} before {as_of.isoformat()} "
            f"(limit {_age(self.max_age)})"
        )
        return self._result(self.column, age <= self.max_age, _age(age), limit, msg)


def _age(age: timedelta) -> str:
    """``2d 3h``, ``45m``, ``-1h``: whole seconds (ages before the reference time are negative)."""
    return format_duration(int(age.total_seconds()), sep=" ")


class NoNanOrInf(Check):
    name = "no_nan_or_inf"

    def __init__(self, column: str, severity: Severity = "error") -> None:
        super().__init__(severity)
        self.column = column

    def columns(self) -> list[str]:
        return [self.column]

    def validate(self, view: FeatureView) -> None:
        require_kind(
            self, view, self.column, ("float",), "needs a float/double column (others cannot hold NaN)"
        )

    def aggregates(self) -> list[str]:
        # DuckDB orders NaN above +inf, so a finite min and max prove every value is finite.
        return [Agg.of("min", self.column), Agg.of("max", self.column)]

    @staticmethod
    def _finite(v: Any) -> bool:
        return v is None or (isinstance(v, int | float) and math.isfinite(v))

    def detail_aggregates(self, obs: Observation) -> list[str]:
        if all(self._finite(v) for v in obs.values):
            return []
        c = quote(self.column)
        return [
            f"count(*) FILTER (WHERE isnan({c}))",
            f"count(*) FILTER (WHERE {c} = 'inf'::DOUBLE)",
            f"count(*) FILTER (WHERE {c} = '-inf'::DOUBLE)",
        ]

    def judge(self, obs: Observation) -> CheckResult:
        nan, pos, neg = (int(v or 0) for v in obs.detail) if obs.detail else (0, 0, 0)
        bad = nan + pos + neg
        msg = f"{self.column} holds {nan} NaN, {pos} +inf and {neg} -inf values of {obs.rows} rows"
        return self._result(self.column, bad == 0, bad, "0 NaN/inf", msg)


class Sql(Check):
    """A custom predicate that must hold for every row: rows where ``expr`` is false are violations.

    Rows where ``expr`` is NULL are not counted (as in dbt's ``expression_is_true``); write
    ``coalesce(expr, false)`` to count them. ``expr`` is DuckDB SQL over the view's columns.
    """

    name = "sql"

    def __init__(self, expr: str, name: str, severity: Severity = "error") -> None:
        super().__init__(severity)
        from featurelake.features.definitions import validate_identifier

        if not isinstance(expr, str) or not expr.strip():
            raise ConfigError(f"sql(name={name!r}): expr must be a SQL boolean expression, e.g. 'a <= b'")
        if ";" in expr:
            raise ConfigError(f"sql({name!r}): expr must be one expression, without ';'")
        validate_identifier(name, "sql check name")
        self.expr, self.check_name = expr.strip(), name

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        return (self.name, (self.check_name,))

    def validate(self, view: FeatureView) -> None:
        _validate_sql(view, self.aggregates()[0], f"sql({self.check_name!r})")

    def aggregates(self) -> list[str]:
        return [Agg(f"count(*) FILTER (WHERE NOT ({self.expr}))", "count_false", None, self.expr)]

    def judge(self, obs: Observation) -> CheckResult:
        bad = int(obs.values[0] or 0)
        msg = f"{bad} of {obs.rows} rows violate {self.check_name}: {self.expr}"
        return self._result(self.check_name, bad == 0, bad, f"0 rows violate {self.expr}", msg)


def _empty_frame(view: FeatureView, undeclared_key_type: str) -> pa.Table:
    import pyarrow as pa

    from featurelake.lakehouse.schema import parse_type

    def arrow(t: str) -> pa.DataType:
        from pyiceberg.io.pyarrow import schema_to_pyarrow
        from pyiceberg.schema import Schema
        from pyiceberg.types import NestedField

        return schema_to_pyarrow(Schema(NestedField(1, "x", parse_type(t), required=False))).field("x").type

    cols = {k: arrow(view.entity.key_dtype(k) or undeclared_key_type) for k in view.join_keys}
    cols[view.timestamp_field] = pa.timestamp("us", tz="UTC")
    cols.update({name: arrow(t) for name, t in view.fields.items()})
    return pa.schema(list(cols.items())).empty_table()


def _validate_sql(view: FeatureView, aggregate: str, what: str) -> None:
    """Bind ``aggregate`` against an empty frame shaped like ``view``: unknown columns and syntax fail now."""
    import duckdb

    errors = []
    undeclared = any(view.entity.key_dtype(k) is None for k in view.join_keys)
    for key_type in ["long", "string"] if undeclared else ["long"]:
        con = duckdb.connect()
        try:
            con.register("frame", _empty_frame(view, key_type))
            con.execute(f"SELECT {aggregate} FROM frame").fetchall()
            return
        except duckdb.Error as exc:
            errors.append(str(exc).strip().splitlines()[0])
        finally:
            con.close()
    raise ConfigError(f"view {view.name!r}: {what} is not valid SQL over the view's columns: {errors[0]}")


# --- constructors used in features.py -----------------------------------------------------------------


def null_rate(column: str, max: float, severity: Severity = "error") -> Check:
    """Fail when the share of nulls in ``column`` exceeds ``max`` (0..1)."""
    return NullRate(column, max, severity)


def not_null(column: str, severity: Severity = "error") -> Check:
    """Fail when ``column`` holds any null."""
    return NotNull(column, severity)


def between(column: str, lo: float | int, hi: float | int, severity: Severity = "error") -> Check:
    """Fail when any non-null value of ``column`` lies outside ``[lo, hi]`` (NaN and infinities do)."""
    return Between(column, lo, hi, severity)


def in_set(
    column: str, values: list[Any] | tuple[Any, ...] | set[Any], severity: Severity = "error"
) -> Check:
    """Fail when a non-null value of ``column`` is not one of ``values``."""
    return InSet(column, values, severity)


def unique(cols: list[str] | tuple[str, ...] | str | None = None, severity: Severity = "error") -> Check:
    """Fail when two rows share ``cols`` (default: the entity join key and the event timestamp)."""
    return Unique(cols, severity)


def row_count(min: int = 1, max: int | None = None, severity: Severity = "error") -> Check:
    """Fail when the audited window holds fewer than ``min`` (or more than ``max``) rows."""
    return RowCount(min, max, severity)


def row_count_change(max_ratio: float, severity: Severity = "error") -> Check:
    """Fail when the window's row count differs from main's rows for the same window by more than ``max_ratio``."""
    return RowCountChange(max_ratio, severity)


def freshness(max_age: timedelta, column: str | None = None, severity: Severity = "error") -> Check:
    """Fail when the newest timestamp is more than ``max_age`` before the window's end (or now)."""
    return Freshness(max_age, column, severity)


def no_nan_or_inf(column: str, severity: Severity = "error") -> Check:
    """Fail when the float column ``column`` holds NaN or an infinity."""
    return NoNanOrInf(column, severity)


def sql(expr: str, name: str, severity: Severity = "error") -> Check:
    """Fail when ``expr`` (DuckDB SQL over the view's columns) is false for any row."""
    return Sql(expr, name, severity)

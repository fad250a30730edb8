"""DuckDB SQL (what ``features.py`` queries and check aggregates are written in) to Spark SQL.

sqlglot does the bulk of the translation (quoting, casts, intervals, ``QUALIFY``, ``GROUP BY ALL``, ...).
On top of it this module fixes the constructs where sqlglot's Spark output parses but means something else
on Spark 3.5, or does not run there, so that a view gives the same rows on both engines:

=========================================  ==================================================================
DuckDB                                     Spark 3.5
=========================================  ==================================================================
``TIMESTAMP`` (naive) / ``TIMESTAMPTZ``    ``TIMESTAMP_NTZ`` / ``TIMESTAMP`` (session time zone is UTC)
``date_trunc(u, naive)``                   ``CAST(DATE_TRUNC(u, x) AS TIMESTAMP_NTZ)`` (Spark's is always aware)
``timezone(zone, x)``                      ``TO_UTC_TIMESTAMP(x, zone)``; for an aware ``x``
                                           ``CAST(FROM_UTC_TIMESTAMP(x, zone) AS TIMESTAMP_NTZ)``
``CAST(double AS INT)`` / from decimal     ``CAST(BROUND(x) AS INT)`` / ``CAST(ROUND(x) AS INT)`` (DuckDB rounds)
``round(double, d)``                       rounds the exact binary value (Spark: its decimal string)
``dayofweek`` / ``dow`` / ``isodow``       ``DAYOFWEEK(x) - 1`` / ``WEEKDAY(x) + 1`` (Spark: Sunday = 1)
``extract(second ...)`` / ``epoch``        ``SECOND(x)`` (whole seconds) / ``UNIX_MICROS(x) / 1e6``
``quantile_cont(x, p)``                    ``PERCENTILE(x, p)`` (exact, linear interpolation)
``quantile_disc(x, p)`` / ``quantile``     ``PERCENTILE_DISC(p) WITHIN GROUP (ORDER BY x)``
``string_agg(x, sep)``                     ``ARRAY_JOIN(COLLECT_LIST(x), sep)``
``time_bucket(INTERVAL, ts)``              arithmetic on epoch microseconds from DuckDB's origin 2000-01-03
``epoch(ts)``                              ``UNIX_MICROS(ts) / 1e6`` (fractional seconds, as DuckDB)
``date_diff(unit, a, b)``                  boundaries crossed (DuckDB), not whole units elapsed (Spark)
``row(a, b)`` / ``isfinite(x)``            ``STRUCT(a, b)`` / ``NOT ISNAN(x) AND ABS(x) != 'Infinity'``
=========================================  ==================================================================

Anything sqlglot cannot express in Spark raises :class:`SqlTranslationError`; the engine reports it with the
view or check it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlglot
from pyiceberg.expressions import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    BoundEqualTo,
    BoundGreaterThan,
    BoundGreaterThanOrEqual,
    BoundIsNaN,
    BoundIsNull,
    BoundLessThan,
    BoundLessThanOrEqual,
    BoundLiteralPredicate,
    BoundNotEqualTo,
    BoundNotIn,
    BoundNotNaN,
    BoundNotNull,
    BoundNotStartsWith,
    BoundPredicate,
    BoundSetPredicate,
    BoundStartsWith,
    Not,
    Or,
)
from pyiceberg.expressions.visitors import bind
from pyiceberg.schema import Schema
from pyiceberg.types import DateType, DecimalType, IcebergType, TimestampType, TimestamptzType
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError

from featurelake.engines.spark_session import quote_ident

# DuckDB's default origin for time_bucket with sub-month widths: Monday 2000-01-03 00:00 UTC.
_BUCKET_ORIGIN_US = 946_857_600 * 1_000_000
_UNIT_US = {
    "microsecond": 1,
    "millisecond": 1_000,
    "second": 1_000_000,
    "minute": 60_000_000,
    "hour": 3_600_000_000,
    "day": 86_400_000_000,
    "week": 7 * 86_400_000_000,
}
_BOUNDARY_SECONDS = {"second": 1, "minute": 60, "hour": 3600}


class SqlTranslationError(ValueError):
    """DuckDB SQL that cannot be run on Spark as written."""


def _unit(node: Any) -> str:
    if node is None:
        return ""
    text = node.name if isinstance(node, exp.Literal | exp.Var | exp.Column) else node.sql()
    unit = text.strip().strip("'").lower()
    return unit[:-1] if unit.endswith("s") and unit[:-1] in (*_UNIT_US, "month", "year", "quarter") else unit


def _cast(node: exp.Expression, to: str) -> exp.Expression:
    return exp.cast(node, exp.DataType.build(to, dialect="spark"), dialect="spark")


def _fn(name: str, *args: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this=name, expressions=list(args))


def _interval_micros(node: exp.Expression) -> int:
    if not isinstance(node, exp.Interval):
        raise SqlTranslationError(f"time_bucket needs a literal INTERVAL width, got {node.sql('duckdb')}")
    value = node.this.name if node.this is not None else ""
    unit = _unit(node.unit)
    if not unit:  # INTERVAL '1 day' keeps its unit inside the string
        parts = value.split()
        value, unit = (parts[0], _unit(exp.Var(this=parts[1]))) if len(parts) == 2 else (value, "")
    if unit not in _UNIT_US:
        raise SqlTranslationError(
            f"time_bucket width {node.sql('duckdb')} is not supported on Spark: use widths in "
            "microseconds .. weeks (month and year buckets: use date_trunc)"
        )
    try:
        return int(float(value) * _UNIT_US[unit])
    except ValueError:
        raise SqlTranslationError(f"time_bucket width {node.sql('duckdb')} is not a number") from None


# --- operand types ------------------------------------------------------------------------------------
# Some DuckDB functions mean different things on Spark depending on their argument's type (a double cast
# to INT rounds in DuckDB and truncates in Spark). The types come from sqlglot's annotator over the source
# schema; when it cannot tell, a bare column is looked up in the schema, else the rewrite is skipped.

_FLOAT = {exp.DataType.Type.FLOAT, exp.DataType.Type.DOUBLE}
_NAIVE = {
    exp.DataType.Type.TIMESTAMP,
    exp.DataType.Type.DATETIME,
    exp.DataType.Type.TIMESTAMP_S,
    exp.DataType.Type.TIMESTAMP_MS,
    exp.DataType.Type.TIMESTAMP_NS,
    exp.DataType.Type.TIMESTAMPNTZ,
}
_INTEGER_TARGETS = {
    exp.DataType.Type.TINYINT,
    exp.DataType.Type.SMALLINT,
    exp.DataType.Type.INT,
    exp.DataType.Type.BIGINT,
}


def _kind(node: exp.Expression | None, types: Mapping[str, str]) -> str:
    """``float``, ``decimal``, ``naive``, ``aware``, ``other`` or ``unknown`` for an operand."""
    if node is None:
        return "unknown"
    dtype = node.type if isinstance(node.type, exp.DataType) else None
    if (dtype is None or dtype.this == exp.DataType.Type.UNKNOWN) and isinstance(node, exp.Column):
        name = node.name.lower()
        if name in types:
            dtype = exp.DataType.build(types[name], dialect="duckdb")
    if dtype is None or dtype.this == exp.DataType.Type.UNKNOWN:
        return "unknown"
    if dtype.this in _FLOAT:
        return "float"
    if dtype.this == exp.DataType.Type.DECIMAL:
        return "decimal"
    if dtype.this in _NAIVE:
        return "naive"
    if dtype.this == exp.DataType.Type.TIMESTAMPTZ:
        return "aware"
    return "other"


def _operand(node: exp.Expression) -> exp.Expression | None:
    if isinstance(node, exp.DateBin | exp.Extract):
        return node.expression
    if isinstance(node, exp.Anonymous):
        args = node.expressions
        return args[1] if len(args) == 2 else (args[0] if args else None)
    return node.this if isinstance(node.this, exp.Expression) else None


def _operand_kinds(tree: exp.Expression, types: Mapping[str, str]) -> dict[int, str]:
    """Operand kind of every node a rewrite depends on, read before any rewrite replaces a child."""
    kinds: dict[int, str] = {}
    for node in tree.walk():
        if isinstance(
            node,
            exp.Cast
            | exp.Round
            | exp.DateTrunc
            | exp.TimestampTrunc
            | exp.DateBin
            | exp.Anonymous
            | exp.Extract,
        ):
            kinds[id(node)] = _kind(_operand(node), types)
    return kinds


def _annotate(tree: exp.Expression, types: Mapping[str, str], relation: str) -> exp.Expression:
    """The tree with columns qualified and types annotated, or the tree as it was when that fails."""
    if not types:
        return tree
    from sqlglot.optimizer.annotate_types import annotate_types
    from sqlglot.optimizer.qualify import qualify

    schema: dict[str, object] = {relation: dict(types)}
    try:
        qualified = qualify(
            tree.copy(), schema=schema, dialect="duckdb", validate_qualify_columns=False, identify=False
        )
        return annotate_types(qualified, schema=schema, dialect="duckdb")
    except Exception:  # the annotator is an optimisation aid: fall back to per-column lookups
        return tree


# --- the rewrites -------------------------------------------------------------------------------------


def _dow(value: exp.Expression, iso: bool) -> exp.Expression:
    # DuckDB: Sunday = 0 (dow) or Monday = 1 .. Sunday = 7 (isodow); Spark's DAYOFWEEK: Sunday = 1.
    if iso:
        return exp.Paren(this=exp.Add(this=_fn("WEEKDAY", value), expression=exp.Literal.number(1)))
    return exp.Paren(this=exp.Sub(this=_fn("DAYOFWEEK", value), expression=exp.Literal.number(1)))


def _date_part(field: str, value: exp.Expression) -> exp.Expression | None:
    field = field.strip("'").lower()
    if field in ("dow", "dayofweek", "weekday"):
        return _dow(value, iso=False)
    if field == "isodow":
        return _dow(value, iso=True)
    if field in ("second", "seconds"):
        return _fn("SECOND", value)  # DuckDB: whole seconds; Spark's EXTRACT(SECOND) keeps the fraction
    if field == "epoch":
        return exp.Div(this=_fn("UNIX_MICROS", value), expression=exp.Literal.number("1e6"))
    return None


def _rewrite(node: exp.Expression, kinds: Mapping[int, str]) -> exp.Expression:
    """One node, bottom-up: replace the constructs Spark gets wrong (see the module table)."""
    kind = kinds.get(id(node), "unknown")
    if isinstance(node, exp.Cast) and node.to.this in _INTEGER_TARGETS and kind in ("float", "decimal"):
        # DuckDB rounds (half to even from floating point, half away from zero from decimals); Spark truncates.
        rounded = _fn("BROUND" if kind == "float" else "ROUND", node.this)
        return exp.Cast(this=rounded, to=node.to)
    if isinstance(node, exp.Round) and kind == "float" and node.args.get("decimals") is not None:
        return _round_double(node.this, node.args["decimals"])
    if isinstance(node, exp.DateTrunc | exp.TimestampTrunc) and kind == "naive":
        return _cast(node, "TIMESTAMP_NTZ")  # Spark's DATE_TRUNC always returns an aware TIMESTAMP
    if isinstance(node, exp.DayOfWeek):
        return _dow(node.this, iso=False)
    if isinstance(node, exp.DayOfWeekIso):
        return _dow(node.this, iso=True)
    if isinstance(node, exp.Extract):
        return _date_part(node.this.name, node.expression) or node
    if isinstance(node, exp.Anonymous):
        name, args = node.name.lower(), node.expressions
        if name == "date_part" and len(args) == 2 and isinstance(args[0], exp.Literal):
            return _date_part(args[0].name, args[1]) or node
        if name == "weekday" and len(args) == 1:
            return _dow(args[0], iso=False)
        if name == "timezone" and len(args) == 2:
            zone, value = args
            if kind == "aware":  # DuckDB: the wall-clock time in `zone`, naive
                return _cast(_fn("FROM_UTC_TIMESTAMP", value, zone), "TIMESTAMP_NTZ")
            return _fn("TO_UTC_TIMESTAMP", value, zone)  # a naive wall-clock time in `zone`, made an instant
        if name == "row":
            return _fn("STRUCT", *args)
        if name == "isfinite" and len(args) == 1:
            inf = _cast(exp.Literal.string("Infinity"), "DOUBLE")
            finite = exp.and_(
                exp.not_(_fn("ISNAN", args[0])), exp.NEQ(this=_fn("ABS", args[0]), expression=inf)
            )
            return exp.Paren(this=finite)
        return node
    if isinstance(node, exp.PercentileCont) and node.expression is not None:
        return _fn("PERCENTILE", node.this, node.expression)
    if isinstance(node, exp.PercentileDisc | exp.Quantile) and node.args.get("quantile", node.expression):
        q = node.args.get("quantile", node.expression)
        ordered = exp.Ordered(this=node.this, nulls_first=False)
        return exp.WithinGroup(this=_fn("PERCENTILE_DISC", q), expression=exp.Order(expressions=[ordered]))
    if isinstance(node, exp.GroupConcat):
        sep = node.args.get("separator") or exp.Literal.string(",")
        return _fn("ARRAY_JOIN", _fn("COLLECT_LIST", node.this), sep)
    if isinstance(node, exp.DateBin):
        width = _interval_micros(node.this)
        ts = node.expression
        naive = kind == "naive"
        micros = _fn("UNIX_MICROS", _cast(ts, "TIMESTAMP") if naive else ts)
        offset = exp.Sub(this=micros, expression=exp.Literal.number(_BUCKET_ORIGIN_US))
        start = exp.Sub(this=micros, expression=_fn("PMOD", offset, exp.Literal.number(width)))
        bucket = _fn("TIMESTAMP_MICROS", start)
        return _cast(bucket, "TIMESTAMP_NTZ") if naive else bucket
    if isinstance(node, exp.TimeToUnix):
        return exp.Div(this=_fn("UNIX_MICROS", node.this), expression=exp.Literal.number("1e6"))
    if isinstance(node, exp.DateDiff):
        return _date_diff(node)
    return node


def _split(v: str) -> tuple[str, str]:
    # Veltkamp's split of a double into two halves whose products are exact.
    c = f"(CAST(134217729 AS DOUBLE) * {v})"
    hi = f"({c} - ({c} - {v}))"
    return hi, f"({v} - {hi})"


_XH, _XL = _split(":x")
_SH, _SL = _split(":s")
_ERR = f"((({_XH} * {_SH} - (:x * :s)) + {_XH} * {_SL} + {_XL} * {_SH}) + {_XL} * {_SL})"
# Round x * s half away from zero as its exact value would be (Dekker's error term settles the ties the
# floating-point product creates), then divide by s: what DuckDB's round(double, d) computes.
_ROUND_DOUBLE = sqlglot.parse_one(
    f"""CASE
        WHEN ABS(:x * :s) < 4503599627370496 AND (:x * :s) - FLOOR(:x * :s) = 0.5 AND :x * :s > 0
             AND {_ERR} < 0 THEN FLOOR(:x * :s)
        WHEN ABS(:x * :s) < 4503599627370496 AND CEIL(:x * :s) - (:x * :s) = 0.5 AND :x * :s < 0
             AND {_ERR} > 0 THEN CEIL(:x * :s)
        ELSE ROUND(:x * :s) END / :s""",
    read="spark",
)


def _round_double(value: exp.Expression, decimals: exp.Expression) -> exp.Expression:
    # Spark's ROUND rounds the double's shortest decimal string (1.005 -> 1.01); DuckDB its binary value
    # (1.005 is 1.00499999... -> 1.0). Also exact where x * 10^d rounds up to a tie (2.675 -> 2.67).
    scale = _cast(_fn("POWER", exp.Literal.number(10), decimals), "DOUBLE")
    return exp.Paren(this=exp.replace_placeholders(_ROUND_DOUBLE.copy(), x=value, s=scale))


def _date_diff(node: exp.DateDiff) -> exp.Expression:
    # DuckDB counts unit boundaries crossed from start to end; Spark's 3-argument DATEDIFF counts whole
    # units elapsed (23:00 -> 01:00 next day is 1 day in DuckDB, 0 in Spark).
    unit = _unit(node.args.get("unit")) or "day"
    start, end = node.expression, node.this
    if unit == "day":
        return _fn("DATEDIFF", _cast(end, "DATE"), _cast(start, "DATE"))
    if unit in ("month", "year", "quarter"):

        def months(x: exp.Expression) -> exp.Expression:
            return exp.Paren(
                this=exp.Add(
                    this=exp.Mul(this=_fn("YEAR", x), expression=exp.Literal.number(12)),
                    expression=exp.Sub(this=_fn("MONTH", x), expression=exp.Literal.number(1)),
                )
            )

        if unit == "month":
            return _cast(exp.Sub(this=months(end), expression=months(start)), "BIGINT")
        per = 12 if unit == "year" else 3
        return _cast(
            exp.Sub(
                this=_fn("FLOOR", exp.Div(this=months(end), expression=exp.Literal.number(per))),
                expression=_fn("FLOOR", exp.Div(this=months(start), expression=exp.Literal.number(per))),
            ),
            "BIGINT",
        )
    if unit in _BOUNDARY_SECONDS:
        secs = exp.Literal.number(_BOUNDARY_SECONDS[unit])

        def ticks(x: exp.Expression) -> exp.Expression:
            return _fn("FLOOR", exp.Div(this=_fn("UNIX_SECONDS", _cast(x, "TIMESTAMP")), expression=secs))

        return _cast(exp.Sub(this=ticks(end), expression=ticks(start)), "BIGINT")
    raise SqlTranslationError(
        f"date_diff unit {unit!r} is not supported on Spark: use second, minute, hour, day, month, quarter "
        "or year"
    )


def _parse_one(sql: str, what: str) -> Any:
    try:
        trees = sqlglot.parse(sql, read="duckdb")
    except SqlglotError as exc:
        raise SqlTranslationError(f"{what} is not valid DuckDB SQL: {_first_line(exc)}") from exc
    statements = [t for t in trees if t is not None]
    if len(statements) != 1:
        raise SqlTranslationError(f"{what} must be exactly one SQL statement, found {len(statements)}")
    return statements[0]


def _generate(tree: exp.Expression, types: Mapping[str, str], what: str) -> str:
    kinds = _operand_kinds(tree, types)
    try:
        out = tree.transform(lambda n: _rewrite(n, kinds), copy=False)
        return out.sql(dialect="spark", unsupported_level=ErrorLevel.RAISE)
    except SqlglotError as exc:
        raise SqlTranslationError(f"{what} cannot be expressed in Spark SQL: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lower(types: Mapping[str, str] | None) -> dict[str, str]:
    return {k.lower(): v for k, v in (types or {}).items()}


def to_spark_sql(query: str, *, source_types: Mapping[str, str] | None = None) -> str:
    """Translate a view's DuckDB query over ``source`` to Spark SQL.

    ``source_types`` maps the source's columns to DuckDB type names (``DOUBLE``, ``TIMESTAMP``,
    ``TIMESTAMPTZ``...); with it, type-dependent constructs (casts to integers, ``round``, ``date_trunc`` of
    naive timestamps, ``timezone``) translate to what DuckDB computes.
    """
    types = _lower(source_types)
    tree = _annotate(_parse_one(query, "the query"), types, "source")
    return _generate(tree, types, "the query")


def to_spark_expression(expression: str, *, frame_types: Mapping[str, str] | None = None) -> str:
    """Translate one DuckDB expression over the relation ``frame`` (e.g. a check's aggregate) to Spark SQL."""
    what = f"expression {expression!r}"
    types = _lower(frame_types)
    _parse_one(expression, what)  # one expression, or a clear error
    select = _annotate(_parse_one(f"SELECT {expression} FROM frame", what), types, "frame")
    assert isinstance(select, exp.Select)
    node = select.expressions[0]
    if isinstance(node, exp.Alias) and not (expression.rstrip().lower().endswith(node.alias.lower())):
        node = node.this  # an alias the qualifier added
    for col in node.find_all(exp.Column):
        col.set("table", None)  # evaluated with selectExpr on the frame itself
    return _generate(node, types, what)


# --- PyIceberg row filters as Spark SQL ------------------------------------------------------------------


def _literal_sql(value: object, field_type: IcebergType) -> str:
    if isinstance(field_type, TimestamptzType | TimestampType):
        sql = f"TIMESTAMP_MICROS({int(value)})"  # type: ignore[call-overload]
        return f"CAST({sql} AS TIMESTAMP_NTZ)" if isinstance(field_type, TimestampType) else sql
    if isinstance(field_type, DateType):
        return f"DATE_FROM_UNIX_DATE({int(value)})"  # type: ignore[call-overload]
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(field_type, DecimalType):
        return f"CAST('{value}' AS DECIMAL({field_type.precision}, {field_type.scale}))"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, bytes):
        return "X'" + value.hex() + "'"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def iceberg_filter_sql(expression: BooleanExpression, schema: Schema) -> str:
    """A PyIceberg row filter (e.g. ``Window.iceberg_filter``) as a Spark SQL boolean expression.

    The filter is bound to ``schema`` first, so unknown columns raise ValueError and literals arrive in the
    column's own type (timestamps as epoch microseconds, which need no time-zone parsing on Spark).
    """
    return _bound_sql(bind(schema, expression, case_sensitive=True))


def _bound_sql(e: BooleanExpression) -> str:
    if isinstance(e, AlwaysTrue):
        return "TRUE"
    if isinstance(e, AlwaysFalse):
        return "FALSE"
    if isinstance(e, And):
        return f"({_bound_sql(e.left)} AND {_bound_sql(e.right)})"
    if isinstance(e, Or):
        return f"({_bound_sql(e.left)} OR {_bound_sql(e.right)})"
    if isinstance(e, Not):
        return f"(NOT {_bound_sql(e.child)})"
    if isinstance(e, BoundPredicate):
        field = e.term.ref().field
        col, ftype = quote_ident(field.name), field.field_type
        if isinstance(e, BoundIsNull):
            return f"{col} IS NULL"
        if isinstance(e, BoundNotNull):
            return f"{col} IS NOT NULL"
        if isinstance(e, BoundIsNaN):
            return f"isnan({col})"
        if isinstance(e, BoundNotNaN):
            return f"NOT isnan({col})"
        if isinstance(e, BoundSetPredicate):
            values = ", ".join(sorted(_literal_sql(lit.value, ftype) for lit in e.literals))
            return f"{col} {'NOT IN' if isinstance(e, BoundNotIn) else 'IN'} ({values})"
        if isinstance(e, BoundLiteralPredicate):
            value = _literal_sql(e.literal.value, ftype)
            if isinstance(e, BoundStartsWith | BoundNotStartsWith):
                neg = "NOT " if isinstance(e, BoundNotStartsWith) else ""
                return f"{neg}startswith({col}, {value})"
            ops = {
                BoundEqualTo: "=",
                BoundNotEqualTo: "!=",
                BoundLessThan: "<",
                BoundLessThanOrEqual: "<=",
                BoundGreaterThan: ">",
                BoundGreaterThanOrEqual: ">=",
            }
            for cls, op in ops.items():
                if isinstance(e, cls):
                    return f"{col} {op} {value}"
    raise ValueError(f"row filter {e!r} cannot be expressed in Spark SQL")


__all__ = ["SqlTranslationError", "iceberg_filter_sql", "to_spark_expression", "to_spark_sql"]

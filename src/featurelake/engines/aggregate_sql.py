"""Compile a view's declared ``aggregations`` to SQL, for DuckDB (local engine) or Spark.

The semantics are in ``features/aggregations.py``; this is how they run. Three passes, each a plain SQL
construct both engines execute well:

1. **Tiles**: the rows aggregated are grouped per entity and tile ``((i - 1) * tile, i * tile]`` (``tile`` is
   the gcd of the step and every window), keeping per tile only what the functions need: counts, sums,
   ``var_pop * n`` (for ``stddev``), min, max and the latest value.
2. **Grid**: the step timestamps each entity needs a row at. Tiles closer than the longest window plus one
   step form islands (gaps-and-islands); each island covers the steps from its first tile to one step past
   its last tile's longest window (the closing row), clipped to the backfill window.
3. **Windows**: tiles and grid points are stacked, and each aggregation is a window function over the
   entity's tile index with ``RANGE BETWEEN tiles(window) - 1 PRECEDING AND CURRENT ROW``; the grid points
   are kept. ``stddev`` merges the tiles' ``(n, sum, M2)`` with Chan et al.'s formula.

``approx_count_distinct`` is counted exactly: each distinct value of a tile is joined to the steps whose
window holds it and counted per step (on DuckDB this is several times faster than windowed HyperLogLog
sketches, and it is deterministic and identical on both engines). It costs one row per distinct value,
tile and step of its window.

Rows with a null timestamp are left out; a null join key aggregates as its own entity (and is then refused
by the output checks, like any null key). A composite key is carried through every pass as one struct of
its columns (``struct_pack`` / ``named_struct``) and unpacked into its columns at the end.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from featurelake.errors import SchemaError
from featurelake.features.aggregations import NUMERIC_FUNCTIONS, Aggregation, plan
from featurelake.features.definitions import FeatureView
from featurelake.lakehouse.schema import parse_type

Dialect = Literal["duckdb", "spark"]

_NUMERIC = re.compile(
    r"^(U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)|INT\d*|FLOAT|DOUBLE|REAL|DECIMAL\(.*\))$", re.IGNORECASE
)
_TIMESTAMP = re.compile(r"^TIMESTAMP( WITH TIME ZONE|TZ|_NS|_MS|_S)?$", re.IGNORECASE)


def _family(duck_type: str) -> str:
    """A coarse family of a DuckDB type name: numeric, string, boolean, date, timestamp or other."""
    t = duck_type.strip().upper()
    if _NUMERIC.match(t):
        return "numeric"
    if t in ("VARCHAR", "STRING", "TEXT"):
        return "string"
    if t == "BOOLEAN":
        return "boolean"
    if t == "DATE":
        return "date"
    if _TIMESTAMP.match(t):
        return "timestamp"
    return "other"


def _declared_family(type_name: str) -> str:
    t = str(parse_type(type_name)).lower()
    if t in ("boolean", "date", "string"):
        return t
    if t.startswith("timestamp"):
        return "timestamp"
    if t in ("int", "long", "float", "double") or t.startswith("decimal"):
        return "numeric"
    return "other"


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True)
class _Sql:
    """The few spellings that differ between DuckDB and Spark SQL."""

    dialect: Dialect

    def ident(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"' if self.dialect == "duckdb" else _q(name)

    def epoch_us(self, expr: str) -> str:
        return f"epoch_us({expr})" if self.dialect == "duckdb" else f"unix_micros(CAST({expr} AS TIMESTAMP))"

    def from_us(self, expr: str) -> str:
        return f"make_timestamptz({expr})" if self.dialect == "duckdb" else f"timestamp_micros({expr})"

    def key(self, columns: list[str]) -> str:
        """The entity key as one value: the column, or a struct of a composite key's columns."""
        if len(columns) == 1:
            return self.ident(columns[0])
        if self.dialect == "duckdb":
            return f"struct_pack({', '.join(f'{self.ident(c)} := {self.ident(c)}' for c in columns)})"
        return f"named_struct({', '.join(f'{chr(39)}{c}{chr(39)}, {self.ident(c)}' for c in columns)})"

    def unpack_key(self, value: str, columns: list[str]) -> str:
        """The key columns again, from :meth:`key`'s value ``value``."""
        if len(columns) == 1:
            return f"{value} AS {self.ident(columns[0])}"
        return ", ".join(f"{value}.{self.ident(c)} AS {self.ident(c)}" for c in columns)

    def div(self, a: str, b: int) -> str:
        """Floor division of a BIGINT by a positive constant (both engines' ``%`` truncates toward zero)."""
        exact = f"(({a}) - ((({a}) % {b}) + {b}) % {b})"
        return f"({exact} // {b})" if self.dialect == "duckdb" else f"({exact} div {b})"

    def ceil_div(self, a: str, b: int) -> str:
        return f"(-{self.div(f'-({a})', b)})"

    def latest(self, value: str, ts: str) -> str:
        # ties on the timestamp: the largest value, so the result never depends on the row order
        if self.dialect == "duckdb":
            return f"arg_max({value}, ({ts}, {value})) FILTER (WHERE {value} IS NOT NULL)"
        return f"max_by({value}, struct({ts}, {value})) FILTER (WHERE {value} IS NOT NULL)"

    def last_in_frame(self, value: str, frame: str) -> str:
        if self.dialect == "duckdb":
            return f"last_value({value} IGNORE NULLS) OVER {frame}"
        return f"last_value({value}, true) OVER {frame}"

    def series(self, lo: str, hi: str) -> str:
        if self.dialect == "duckdb":
            return f"unnest(generate_series({lo}, {hi}))"
        return f"explode(sequence({lo}, {hi}))"

    def double(self, expr: str) -> str:
        return f"CAST({expr} AS DOUBLE)"


def check_columns(view: FeatureView, columns: Mapping[str, str]) -> None:
    """SchemaError unless the rows to aggregate (``columns``: name -> DuckDB type name) carry the join key,
    the source's timestamp and every aggregated column, with types the functions and fields accept."""
    where = f"view {view.name!r}"
    have = ", ".join(columns) or "none"
    origin = "the query's output" if view.query.strip() else "the source"
    need = [*view.join_keys, view.source.timestamp_field]
    keys = ", ".join(map(repr, view.join_keys))
    for col in need:
        if col not in columns:
            raise SchemaError(
                f"{where}: the rows to aggregate ({origin}) have no column {col!r} (columns: {have}); "
                f"aggregations need the join key {keys}, the source timestamp "
                f"{view.source.timestamp_field!r} and the aggregated columns"
            )
    ts_type = columns[view.source.timestamp_field]
    if _family(ts_type) != "timestamp":
        raise SchemaError(
            f"{where}: {view.source.timestamp_field} of the rows to aggregate is {ts_type}, not a timestamp; "
            "cast it in the query"
        )
    for agg in view.aggregations:
        what = f"{where}: aggregation {agg.output!r} ({agg.function} of {agg.column})"
        if agg.column == "*":
            continue
        if agg.column not in columns:
            raise SchemaError(
                f"{what}: the rows to aggregate ({origin}) have no column {agg.column!r} (columns: {have}); "
                "fix the column name or keep it in the query's SELECT"
            )
        family = _family(columns[agg.column])
        if agg.function in NUMERIC_FUNCTIONS and family != "numeric":
            raise SchemaError(
                f"{what}: {agg.column} is {columns[agg.column]}, not a number; cast it in a query, "
                "or use count, min, max, last or approx_count_distinct"
            )
        if agg.function in ("min", "max", "last"):
            declared = view.fields[agg.output]
            if _declared_family(declared) != family:
                raise SchemaError(
                    f"{what}: {agg.column} is {columns[agg.column]} but the field is declared {declared}; "
                    f"declare the output's type, e.g. fields={{{agg.output!r}: ...}} with the column's type"
                )


def compile_aggregations(
    view: FeatureView,
    relation: str,
    columns: Mapping[str, str],
    *,
    dialect: Dialect,
    start: datetime | None = None,
    end: datetime | None = None,
) -> str:
    """SQL over ``relation`` (the rows to aggregate; ``columns``: name -> DuckDB type name) producing the
    view's table columns at the step timestamps in ``[start, end)`` (unbounded where None)."""
    check_columns(view, columns)
    sql = _Sql(dialect)
    p = plan(view)
    key, ts = sql.key(view.join_keys), sql.ident(view.source.timestamp_field)
    longest = p.longest // p.tile  # in tiles
    lo = p.first_step(start) if start is not None else None
    hi = p.first_step(end) - 1 if end is not None else None

    # 1. tiles: one row per entity and tile with the partial aggregates the functions need
    values: dict[str, str] = {}  # column -> its alias in __rows_in
    partials: dict[str, str] = {"__rows": "count(*)"}
    for agg in view.aggregations:
        if agg.column != "*":
            v = values.setdefault(agg.column, f"__v{len(values)}")
            partials.update(_partials(agg.function, v, sql))
    selected = "".join(f", {sql.ident(col)} AS {alias}" for col, alias in values.items())
    ctes = [
        f"__rows_in AS (SELECT {key} AS __k, {ts} AS __ts, {sql.ceil_div(sql.epoch_us(ts), p.tile)} AS __i"
        f"{selected} FROM {relation} WHERE {ts} IS NOT NULL)",
        f"__tiles AS (SELECT __k, __i, {', '.join(f'{e} AS {a}' for a, e in partials.items())} "
        "FROM __rows_in GROUP BY __k, __i)",
    ]
    # 2. grid: the steps each entity needs a row at. Tile i is in the longest window of steps a..b (none
    # when the window is shorter than a step and no step falls in it); the closing row adds b + 1. The
    # entity's ranges [a, b + 1] are merged into islands (gaps-and-islands; a and b grow with i).
    a = sql.ceil_div("__i", p.per_step)
    b = f"{sql.ceil_div(f'__i + {longest}', p.per_step)} - 1"
    ctes += [
        f"__held AS (SELECT __k, __i, {a} AS __a, {b} AS __b FROM __tiles)",
        "__marks AS (SELECT __k, __i, __a, __b, CASE WHEN __a - lag(__b) OVER (PARTITION BY __k ORDER BY __i) "
        "<= 2 THEN 0 ELSE 1 END AS __new FROM __held WHERE __a <= __b)",
        "__islands AS (SELECT __k, __a, __b, sum(__new) OVER (PARTITION BY __k ORDER BY __i "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __g FROM __marks)",
        f"__spans AS (SELECT __k, {_clip('greatest', 'min(__a)', lo)} AS __j0, "
        f"{_clip('least', 'max(__b) + 1', hi)} AS __j1 FROM __islands GROUP BY __k, __g)",
        f"__steps AS (SELECT __k, {sql.series('__j0', '__j1')} AS __j FROM __spans WHERE __j0 <= __j1)",
        f"__grid AS (SELECT __k, __j * {p.per_step} AS __i FROM __steps)",
    ]
    # 3. window functions over the tiles and grid points stacked, ordered by tile index; keep the grid
    cols = list(partials)
    nulls = ", ".join(f"NULL AS {c}" for c in cols)
    ctes.append(
        f"__stacked AS (SELECT __k, __i, false AS __out, {', '.join(cols)} FROM __tiles "
        f"UNION ALL SELECT __k, __i, true AS __out, {nulls} FROM __grid)"
    )
    frames: dict[int, str] = {}
    windowed: dict[str, str] = {}
    joins: list[str] = []
    finals: list[str] = []
    for agg in view.aggregations:
        v, k = values.get(agg.column, ""), p.tiles(agg.window)
        if agg.function == "approx_count_distinct":
            # exact distinct counts: each distinct value of a tile joins the steps whose window holds it
            name = f"__dc{len(joins)}"
            ctes += _distinct_counts(name, v, k, p.per_step, lo, hi, sql)
            joins.append(f"LEFT JOIN {name} ON {name}.__k = __out_rows.__k AND {name}.__i = __out_rows.__i")
            finals.append(f"CAST(coalesce({name}.__n, 0) AS BIGINT) AS {sql.ident(agg.output)}")
            continue
        frame = frames.setdefault(k, f"__w{len(frames)}")
        for part, expr in _window_parts(agg, v, frame, sql).items():
            windowed.setdefault(part, expr)
        finals.append(f"{_final(agg, v, frame, sql)} AS {sql.ident(agg.output)}")
    windows = ", ".join(
        f"{name} AS (PARTITION BY __k ORDER BY __i RANGE BETWEEN {k - 1} PRECEDING AND CURRENT ROW)"
        for k, name in frames.items()
    )
    listed = "".join(f", {e} AS {n}" for n, e in windowed.items())
    ctes.append(
        f"__out_rows AS (SELECT * FROM (SELECT __k, __i, __out{listed} FROM __stacked"
        f"{' WINDOW ' + windows if windows else ''}) __all WHERE __out)"
    )
    return (
        f"WITH {', '.join(ctes)} SELECT {sql.unpack_key('__out_rows.__k', view.join_keys)}, "
        f"{sql.from_us(f'__out_rows.__i * {p.tile}')} AS {sql.ident(view.timestamp_field)}, "
        f"{', '.join(finals)} FROM __out_rows {' '.join(joins)}"
    )


def _partials(fn: str, v: str, sql: _Sql) -> dict[str, str]:
    """Per-tile partial aggregates of column alias ``v`` that ``fn`` is computed from."""
    d = sql.double(v)
    out: dict[str, str] = {}
    if fn in ("count", "mean", "stddev"):
        out[f"{v}_n"] = f"count({v})"
    if fn in ("sum", "mean"):
        out[f"{v}_s"] = f"sum({v})"
    if fn == "stddev":
        out[f"{v}_ds"] = f"sum({d})"
        out[f"{v}_m2"] = f"var_pop({d}) * count({v})"
        out[f"{v}_sq"] = f"sum({d}) * sum({d}) / CASE WHEN count({v}) > 0 THEN count({v}) END"
    if fn in ("min", "max"):
        out[f"{v}_{fn}"] = f"{fn}({v})"
    if fn == "last":
        out[f"{v}_last"] = sql.latest(v, "__ts")
    return out


def _distinct_counts(
    name: str, v: str, k: int, per_step: int, lo: int | None, hi: int | None, sql: _Sql
) -> list[str]:
    """CTEs ending in ``name(__k, __i, __n)``: distinct values of ``v`` over ``k`` tiles at each step."""
    # a value in tile i is in the window of step j when j * per_step - k < i <= j * per_step
    first = _clip("greatest", sql.ceil_div("__i", per_step), lo)
    last = _clip("least", f"{sql.ceil_div(f'__i + {k}', per_step)} - 1", hi)
    return [
        f"{name}_v AS (SELECT DISTINCT __k, __i, {v} AS __v FROM __rows_in WHERE {v} IS NOT NULL)",
        f"{name}_b AS (SELECT __k, __v, {first} AS __j0, {last} AS __j1 FROM {name}_v)",
        f"{name}_x AS (SELECT __k, __v, {sql.series('__j0', '__j1')} AS __j FROM {name}_b "
        "WHERE __j0 <= __j1)",
        f"{name} AS (SELECT __k, __j * {per_step} AS __i, count(DISTINCT __v) AS __n FROM {name}_x "
        "GROUP BY __k, __j)",
    ]


def _clip(fn: str, expr: str, limit: int | None) -> str:
    return f"{fn}({expr}, {limit})" if limit is not None else expr


def _window_parts(agg: Aggregation, v: str, frame: str, sql: _Sql) -> dict[str, str]:
    """Named window expressions an aggregation's final value is computed from."""
    f, fn = frame, agg.function
    if agg.column == "*":
        return {f"__rows_{f}": f"sum(__rows) OVER {f}"}
    parts: dict[str, str] = {}
    if fn in ("count", "mean", "stddev"):
        parts[f"{v}_n_{f}"] = f"sum({v}_n) OVER {f}"
    if fn in ("sum", "mean"):
        parts[f"{v}_s_{f}"] = f"sum({v}_s) OVER {f}"
    if fn == "stddev":
        for part in ("ds", "m2", "sq"):
            parts[f"{v}_{part}_{f}"] = f"sum({v}_{part}) OVER {f}"
    if fn in ("min", "max"):
        parts[f"{v}_{fn}_{f}"] = f"{fn}({v}_{fn}) OVER {f}"
    if fn == "last":
        parts[f"{v}_last_{f}"] = sql.last_in_frame(f"{v}_last", f)
    return parts


def _final(agg: Aggregation, v: str, f: str, sql: _Sql) -> str:
    fn = agg.function
    if agg.column == "*":
        return f"CAST(coalesce(__rows_{f}, 0) AS BIGINT)"
    n = f"{v}_n_{f}"
    if fn == "count":
        return f"CAST(coalesce({n}, 0) AS BIGINT)"
    if fn == "sum":
        return f"{v}_s_{f}"
    if fn == "mean":
        return f"{sql.double(f'{v}_s_{f}')} / CASE WHEN {n} > 0 THEN {n} END"
    if fn == "stddev":
        # M2 of the union = sum of the tiles' M2 + sum(s_i^2 / n_i) - S^2 / N; clamped at 0 (rounding)
        m2 = f"{v}_m2_{f} + {v}_sq_{f} - {v}_ds_{f} * {v}_ds_{f} / {n}"
        return f"CASE WHEN {n} >= 2 THEN sqrt(greatest({m2}, 0.0) / ({n} - 1)) END"
    return f"{v}_{fn}_{f}"


__all__ = ["check_columns", "compile_aggregations"]

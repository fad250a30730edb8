"""Make a query's output fit a feature table exactly, or say precisely why it cannot.

The rules and messages are shared by every engine: :func:`plan_columns` checks names and types (schema-
only, before any row is read) and says per column whether a cast is needed and whether it can change
values; the engine evaluates that plan its own way (Arrow here, one Spark job in ``engines/spark.py``) and
reports what the rows broke with :func:`lossy_error`, :func:`null_error` and :func:`check_window`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from featurelake.errors import DataError, SchemaError
from featurelake.features.definitions import FeatureView
from featurelake.lakehouse.window import Window


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def castable(got: pa.DataType, want: pa.DataType) -> bool:
    """Whether a column of ``got`` may be stored as ``want`` at all (values are checked separately)."""
    if got == want:
        return True
    if _numeric(got) and _numeric(want):
        # Floats never become integers silently; everything else is checked value by value (safe cast).
        return not (pa.types.is_floating(got) and (pa.types.is_integer(want) or pa.types.is_decimal(want)))
    if (pa.types.is_string(got) or pa.types.is_large_string(got)) and (
        pa.types.is_string(want) or pa.types.is_large_string(want)
    ):
        return True
    if pa.types.is_timestamp(got) and pa.types.is_timestamp(want):
        return got.tz is not None
    if pa.types.is_date(got) and pa.types.is_date(want):
        return True
    return pa.types.is_null(got)


def lossy(got: pa.DataType, want: pa.DataType) -> bool:
    """Casts that can change values, so each row must be checked (Arrow's safe cast refuses those rows)."""
    if pa.types.is_integer(got) and pa.types.is_integer(want):
        return want.bit_width < got.bit_width or (
            pa.types.is_unsigned_integer(want) != pa.types.is_unsigned_integer(got)
        )
    if pa.types.is_decimal(want):
        return True
    return bool(pa.types.is_decimal(got) and pa.types.is_integer(want))


@dataclass(frozen=True)
class ColumnPlan:
    """How one table column is made from the query's column of the same name."""

    field: pa.Field
    produced: pa.DataType

    @property
    def name(self) -> str:
        return str(self.field.name)

    @property
    def cast(self) -> bool:
        return bool(self.produced != self.field.type)

    @property
    def lossy(self) -> bool:
        return self.cast and lossy(self.produced, self.field.type)


def plan_columns(view: FeatureView, produced: Sequence[pa.Field], target: pa.Schema) -> list[ColumnPlan]:
    """One plan per ``target`` column, in table order; SchemaError for missing, undeclared or uncastable
    columns and for a timestamp that is not timezone-aware."""
    where = f"view {view.name!r}"
    got = {f.name: f.type for f in produced}
    names = [f.name for f in produced]
    missing = [f.name for f in target if f.name not in got]
    if missing:
        raise SchemaError(
            f"{where}: the query does not produce column(s) {', '.join(missing)}; "
            f"it produced {', '.join(names)}. Fix the SELECT list in features.py"
        )
    declared = set(target.names)
    extra = [c for c in names if c not in declared]
    if extra:
        raise SchemaError(
            f"{where}: the query produces undeclared column(s) {', '.join(extra)}; "
            "add them to fields={...} (then `featurelake apply`) or drop them from the SELECT"
        )
    ts = view.timestamp_field
    if not pa.types.is_timestamp(got[ts]) or got[ts].tz is None:
        raise SchemaError(
            f"{where}: {ts} must be a timezone-aware timestamp (timestamptz) but the query produces {got[ts]}; "
            f"convert it, e.g. `CAST(x AS TIMESTAMPTZ)` or `timezone('UTC', x)`"
        )
    plans = []
    for field in target:
        if not castable(got[field.name], field.type):
            raise SchemaError(
                f"{where}: column {field.name} is {got[field.name]} in the query output but the table declares "
                f"{field.type}; cast it in the query or change its type in fields (then `featurelake apply`)"
            )
        plans.append(ColumnPlan(field, got[field.name]))
    return plans


def lossy_error(view: FeatureView, plan: ColumnPlan, detail: str) -> SchemaError:
    return SchemaError(
        f"view {view.name!r}: column {plan.name} cannot be stored as {plan.field.type} without losing "
        f"values ({detail}); cast or round it in the query"
    )


def null_error(view: FeatureView, column: str, nulls: int) -> DataError:
    if column not in view.join_keys:
        what = "the timestamp"
    elif view.composite:
        what = f"no column of the composite join key {', '.join(view.join_keys)}"
    else:
        what = "the join key"
    return DataError(
        f"view {view.name!r}: {nulls} rows have a null {column} ({what} may not be null); filter them out in "
        "the query"
    )


def check_window(view: FeatureView, lo: datetime | None, hi: datetime | None, window: Window | None) -> None:
    """DataError when the produced timestamps (``lo``..``hi``, None for no rows) leave ``window``."""
    if window is None or lo is None or hi is None:
        return
    if lo < window.start or hi >= window.end:
        raise DataError(
            f"view {view.name!r}: the query produced {view.timestamp_field} values from {lo.isoformat()} to "
            f"{hi.isoformat()}, outside the backfill window {window}; rows must fall in the window "
            "(the source is already restricted to it, plus the view's lookback before it: check the "
            "timestamp expression)"
        )


def drop_before_window(result: pa.Table, view: FeatureView, window: Window) -> pa.Table:
    """``result`` without the rows timestamped before ``window.start`` (a view with a lookback computes them
    from the rows before the window; they are not the window's to write). Rows with a null or unusable
    timestamp stay, for :func:`conform` to report."""
    ts = view.timestamp_field
    if ts not in result.column_names:
        return result
    col = result.column(ts)
    if not pa.types.is_timestamp(col.type) or col.type.tz is None:
        return result
    keep = pc.or_kleene(pc.is_null(col), pc.greater_equal(col, pa.scalar(window.start, col.type)))
    return result.filter(keep)


def conform(result: pa.Table, view: FeatureView, target: pa.Schema, window: Window | None) -> pa.Table:
    """Select, order and cast ``result`` to ``target``; validate keys and timestamps (the Arrow engine).

    Raises SchemaError (wrong columns or types) or DataError (null keys, naive or out-of-window times).
    """
    arrays = []
    for plan in plan_columns(view, list(result.schema), target):
        col = result.column(plan.name)
        if plan.cast:
            try:
                col = col.cast(plan.field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise lossy_error(view, plan, str(exc)) from exc
        if not plan.field.nullable and col.null_count:
            raise null_error(view, plan.name, col.null_count)
        arrays.append(col)
    out = pa.Table.from_arrays(arrays, schema=target)
    if out.num_rows:
        lo, hi = pc.min_max(out.column(view.timestamp_field)).values()
        check_window(view, lo.as_py(), hi.as_py(), window)
    return out

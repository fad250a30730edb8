"""Make a query's Arrow output fit a feature table exactly, or say precisely why it cannot."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from featurelake.errors import DataError, SchemaError
from featurelake.features.definitions import FeatureView
from featurelake.lakehouse.window import Window


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _castable(got: pa.DataType, want: pa.DataType) -> bool:
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


def conform(result: pa.Table, view: FeatureView, target: pa.Schema, window: Window | None) -> pa.Table:
    """Select, order and cast ``result`` to ``target``; validate keys and timestamps.

    Raises SchemaError (wrong columns or types) or DataError (null keys, naive or out-of-window times).
    """
    where = f"view {view.name!r}"
    produced = set(result.column_names)
    missing = [f.name for f in target if f.name not in produced]
    if missing:
        raise SchemaError(
            f"{where}: the query does not produce column(s) {', '.join(missing)}; "
            f"it produced {', '.join(result.column_names)}. Fix the SELECT list in features.py"
        )
    extra = [c for c in result.column_names if c not in {f.name for f in target}]
    if extra:
        raise SchemaError(
            f"{where}: the query produces undeclared column(s) {', '.join(extra)}; "
            "add them to fields={...} (then `featurelake apply`) or drop them from the SELECT"
        )
    ts = view.timestamp_field
    ts_type = result.schema.field(ts).type
    if not pa.types.is_timestamp(ts_type) or ts_type.tz is None:
        raise SchemaError(
            f"{where}: {ts} must be a timezone-aware timestamp (timestamptz) but the query produces {ts_type}; "
            f"convert it, e.g. `CAST(x AS TIMESTAMPTZ)` or `timezone('UTC', x)`"
        )
    arrays = []
    for field in target:
        col = result.column(field.name)
        if not _castable(col.type, field.type):
            raise SchemaError(
                f"{where}: column {field.name} is {col.type} in the query output but the table declares "
                f"{field.type}; cast it in the query or change its type in fields (then `featurelake apply`)"
            )
        if col.type != field.type:
            try:
                col = col.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"{where}: column {field.name} cannot be stored as {field.type} without losing values ({exc})"
                ) from exc
        if not field.nullable:
            nulls = col.null_count
            if nulls:
                raise DataError(
                    f"{where}: {nulls} rows have a null {field.name} (the "
                    f"{'join key' if field.name == view.join_key else 'timestamp'} may not be null); "
                    "filter them out in the query"
                )
        arrays.append(col)
    out = pa.Table.from_arrays(arrays, schema=target)
    if window is not None and out.num_rows:
        lo, hi = pc.min_max(out.column(ts)).values()
        if lo.as_py() < window.start or hi.as_py() >= window.end:
            raise DataError(
                f"{where}: the query produced {ts} values from {lo.as_py().isoformat()} to "
                f"{hi.as_py().isoformat()}, outside the backfill window {window}; rows must fall in the window "
                "(the source is already restricted to it: check the timestamp expression)"
            )
    return out

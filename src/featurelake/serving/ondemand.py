"""On-demand features in online lookups: the udf's input table built from the rows just read, then run.

A lookup that asks for an on-demand view's features also reads every feature of its source views (in the
same store round trip). Per entity, a source row that is ``NOT_FOUND`` or ``OUTSIDE_MAX_AGE`` gives null
inputs, exactly as a training set's point-in-time join gives nulls; request fields come from the request's
``entities`` (Feast's shape). The input columns are built in the declared Arrow types and handed to the same
``OnDemandFeatureView.transform`` a training set calls, so both paths compute the same values.

An output column's status is ``PRESENT`` where the udf gave a value and ``NULL_VALUE`` where it gave null;
its event timestamps are the epoch (Feast does the same: the value was computed now).
"""

from __future__ import annotations

import base64
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from featurelake.errors import RequestError
from featurelake.features.definitions import shown
from featurelake.features.ondemand import OnDemandFeatureView, arrow_type
from featurelake.lakehouse.schema import parse_type
from featurelake.serving import codec

PRESENT = "PRESENT"
NULL_VALUE = "NULL_VALUE"
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_DOUBLE = parse_type("double")


@dataclass(frozen=True)
class OnDemandInput:
    """One view input of the udf: where its values are in the lookup (group, field), how to decode them."""

    name: str
    group: int
    field: int
    decoder: codec.Decoder | None
    type: pa.DataType


@dataclass(frozen=True)
class OnDemandPlan:
    """One on-demand view of a lookup: its inputs, the requested outputs and their output names."""

    odfv: OnDemandFeatureView
    inputs: tuple[OnDemandInput, ...]
    request: tuple[tuple[str, pa.DataType], ...]
    fields: tuple[str, ...]
    out_names: tuple[str, ...]
    schema: pa.Schema
    row_type: pa.StructType
    """The input schema as one struct: all inputs are converted in one Arrow call (per-column calls cost more
    than the udf for a lookup of a few entities)."""

    @classmethod
    def build(
        cls,
        odfv: OnDemandFeatureView,
        fields: Sequence[str],
        positions: Mapping[tuple[str, str], tuple[int, int]],
        full_names: bool,
    ) -> OnDemandPlan:
        inputs = []
        for ref in odfv.input_refs:
            view, _, feat = ref.partition(":")
            gi, fi = positions[(view, feat)]
            type_name = odfv.inputs[feat]
            decoder = codec.python_decoder(parse_type(type_name))
            inputs.append(OnDemandInput(feat, gi, fi, decoder, arrow_type(type_name)))
        request = tuple((f, arrow_type(t)) for f, t in odfv.request_fields.items())
        return cls(
            odfv=odfv,
            inputs=tuple(inputs),
            request=request,
            fields=tuple(fields),
            out_names=tuple(f"{odfv.name}__{f}" if full_names else f for f in fields),
            schema=odfv.input_schema(),
            row_type=pa.struct(list(odfv.input_schema())),
        )

    def compute(
        self, datas: Sequence[Sequence[Mapping[str, Any]]], fields: Sequence[Sequence[str]],
        entities: Mapping[str, Sequence[Any]], n: int,
    ) -> pa.Table:  # fmt: skip
        """The udf's output for ``n`` entities: ``datas[group][row]`` holds each source row's stored values
        (empty where not PRESENT), ``fields[group][field]`` their names."""
        rows: list[dict[str, Any]] = [{} for _ in range(n)]
        for inp in self.inputs:
            name, dec = fields[inp.group][inp.field], inp.decoder
            if dec is codec.python_decoder(_DOUBLE):  # most inputs: only "NaN"/"Infinity" need decoding
                for row, d in zip(rows, datas[inp.group], strict=True):
                    v = d.get(name)
                    row[inp.name] = float(v) if type(v) is str else v
                continue
            for row, d in zip(rows, datas[inp.group], strict=True):
                v = d.get(name)
                row[inp.name] = v if v is None or dec is None else dec(v)
        for f, type_ in self.request:
            for row, v in zip(rows, _request_values(self.odfv.name, f, entities[f], type_), strict=True):
                row[f] = v
        try:
            table = pa.Table.from_struct_array(pa.array(rows, type=self.row_type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            for f, type_ in self.request:  # say which request field does not convert
                _request_column(self.odfv.name, f, entities[f], type_)
            raise
        return self.odfv.transform(table)

    def columns(self, out: pa.Table, n: int, json: bool, epoch: Any) -> list[dict[str, Any]]:
        """One result column per requested field (Feast's ``values``/``statuses``/``event_timestamps``)."""
        result = []
        stamps = [epoch] * n
        for f in self.fields:
            arr = out.column(f).combine_chunks()
            values = _json_values(arr) if json else arr.to_pylist()
            statuses = [PRESENT if v else NULL_VALUE for v in arr.is_valid().to_pylist()]
            result.append({"values": values, "statuses": statuses, "event_timestamps": stamps})
        return result


def _request_values(view: str, name: str, values: Any, type_: pa.DataType) -> list[Any]:
    """The request field's values checked against its declared type (``"NaN"``, ``"Infinity"`` read as floats);
    RequestError for a value of another type (Arrow would silently truncate 1.5 to an integer)."""
    if pa.types.is_floating(type_):
        values = [_NON_FINITE.get(v, v) if isinstance(v, str) else v for v in values]
    bad = next((v for v in values if v is not None and not _fits(v, type_)), _OK)
    if bad is not _OK:
        raise _wrong(view, name, type_, bad)
    return list(values)


def _request_column(view: str, name: str, values: Any, type_: pa.DataType) -> pa.Array:
    """The request field as an Arrow array of its type (RequestError naming the value that does not fit)."""
    values = _request_values(view, name, values, type_)
    try:
        return pa.array(values, type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        raise _wrong(
            view, name, type_, next((v for v in values if v is not None and not _converts(v, type_)), None)
        ) from None


def _wrong(view: str, name: str, type_: pa.DataType, bad: Any) -> RequestError:
    numeric = pa.types.is_integer(type_) or pa.types.is_floating(type_)
    return RequestError(
        f"request field {name!r} of on-demand feature view {view!r} is {type_}; got {shown(bad)}: send "
        f"{'numbers' if numeric else 'values of that type'} (null for a missing value)"
    )


_OK = object()


def _fits(value: Any, type_: pa.DataType) -> bool:
    """Whether ``value`` is a value of ``type_`` as JSON carries it (no truncation, no bool for a number)."""
    if isinstance(value, bool):
        return pa.types.is_boolean(type_)
    if pa.types.is_integer(type_):
        return isinstance(value, numbers.Integral)
    if pa.types.is_floating(type_):
        return isinstance(value, numbers.Real)
    if pa.types.is_boolean(type_):
        return False
    if pa.types.is_string(type_):
        return isinstance(value, str)
    return True  # dates, timestamps, decimals, binary: Arrow's own conversion decides


def _converts(value: Any, type_: pa.DataType) -> bool:
    try:
        pa.array([value], type_)
        return True
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return False


def _json_values(arr: pa.Array) -> list[Any]:
    """What the HTTP response carries for an output column (as stored features are answered)."""
    t = arr.type
    if pa.types.is_floating(t):
        return [None if v is None else (v if math.isfinite(v) else _non_finite(v)) for v in arr.to_pylist()]
    if pa.types.is_timestamp(t):
        micros = pc.cast(pc.cast(arr, pa.timestamp("us", tz="UTC")), pa.int64()).to_pylist()
        return [None if v is None else codec.iso_utc(v) for v in micros]
    if pa.types.is_date(t):
        return [None if v is None else v.isoformat() for v in arr.to_pylist()]
    if pa.types.is_decimal(t):
        return [None if v is None else float(v) for v in arr.to_pylist()]
    if pa.types.is_binary(t):
        return [None if v is None else base64.b64encode(v).decode() for v in arr.to_pylist()]
    return arr.to_pylist()


def _non_finite(v: float) -> str:
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def missing_request(plan: OnDemandPlan, entities: Mapping[str, Any]) -> RequestError | None:
    """The error for request fields the lookup's ``entities`` lack (None: all there)."""
    missing = [f for f, _ in plan.request if f not in entities]
    if not missing:
        return None
    return RequestError(
        f"entities lack {', '.join(map(repr, missing))}, request field(s) of on-demand feature view "
        f"{plan.odfv.name!r}: send them beside the join keys, one value per entity (e.g. "
        f'{{"{missing[0]}": [...]}})'
    )


__all__ = ["NULL_VALUE", "OnDemandPlan", "missing_request"]

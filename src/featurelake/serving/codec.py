"""How feature rows are stored online: a JSON object per entity, built vectorised by DuckDB, decoded by type.

JSON has no NaN, infinities, timestamps, decimals or bytes, so those are encoded by the field's declared type
and decoded by it again: non-finite floats as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (protobuf's
JSON convention, so the HTTP response can pass them through), timestamps as microseconds since the epoch,
decimals as strings, binary as base64. Fields are keyed by name, so a payload written before a column was
added simply lacks it (and reads as null).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from pyiceberg.types import (
    BinaryType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    TimestampType,
    TimestamptzType,
)

from featurelake.features.definitions import FeatureView
from featurelake.lakehouse.schema import parse_type

Decoder = Callable[[Any], Any]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _float_json(col: str, finite: str) -> str:
    return (
        f"CASE WHEN {col} IS NULL OR isfinite({col}) THEN {finite} "
        f"""WHEN isnan({col}) THEN '"NaN"'::JSON WHEN {col} > 0 THEN '"Infinity"'::JSON """
        """ELSE '"-Infinity"'::JSON END"""
    )


def value_sql(name: str, ftype: IcebergType) -> str:
    """DuckDB expression turning column ``name`` into its JSON-safe stored form."""
    col = quote(name)
    if isinstance(ftype, DoubleType):
        return _float_json(col, f"to_json({col})")
    if isinstance(ftype, FloatType):
        # A float32 is stored as its exact value's shortest float64 form (1.100000023841858 for 1.1f): what an
        # offline read of it gives, and what Python writes alike (streaming.microbatch.SmallEncoder). DuckDB's
        # own VARCHAR of a float32 is not reproducible there: mostly the shortest float32 digits, sometimes more.
        return _float_json(col, f"to_json({col}::DOUBLE)")
    if isinstance(ftype, TimestamptzType | TimestampType):
        return f"epoch_us({col})"
    if isinstance(ftype, DecimalType):
        return f"{col}::VARCHAR"
    if isinstance(ftype, BinaryType):
        return f"to_base64({col})"
    return col


def payload_sql(fields: dict[str, IcebergType]) -> str:
    """DuckDB expression building the JSON payload (a VARCHAR) of one row from the feature columns."""
    members = ", ".join(f"{quote(n)} := {value_sql(n, t)}" for n, t in fields.items())
    return f"to_json(struct_pack({members}))::VARCHAR"


# --- decoding -----------------------------------------------------------------------------------------
def _to_float(v: Any) -> Any:
    return float(v) if isinstance(v, str) else v


def _to_datetime(v: Any) -> Any:
    return None if v is None else EPOCH + timedelta(microseconds=v)


def _to_date(v: Any) -> Any:
    return None if v is None else date.fromisoformat(v)


def _to_decimal(v: Any) -> Any:
    return None if v is None else Decimal(v)


def _to_bytes(v: Any) -> Any:
    return None if v is None else base64.b64decode(v)


def iso_utc(micros: int) -> str:
    """``2024-01-10T00:00:00Z`` (with a fraction only when there is one), as protobuf renders Timestamps."""
    dt = EPOCH + timedelta(microseconds=micros)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{dt.microsecond:06d}Z" if dt.microsecond else text + "Z"


def _to_iso(v: Any) -> Any:
    return None if v is None else iso_utc(v)


def _decimal_to_number(v: Any) -> Any:
    return None if v is None else float(v)


def python_decoder(ftype: IcebergType) -> Decoder | None:
    """Turn a stored value into the Python value of its type (None: the JSON value already is)."""
    if isinstance(ftype, DoubleType | FloatType):
        return _to_float
    if isinstance(ftype, TimestamptzType | TimestampType):
        return _to_datetime
    if isinstance(ftype, DateType):
        return _to_date
    if isinstance(ftype, DecimalType):
        return _to_decimal
    if isinstance(ftype, BinaryType):
        return _to_bytes
    return None


def json_decoder(ftype: IcebergType) -> Decoder | None:
    """Turn a stored value into what the HTTP response carries (None: pass it through)."""
    if isinstance(ftype, TimestamptzType | TimestampType):
        return _to_iso
    if isinstance(ftype, DecimalType):
        return _decimal_to_number
    # Non-finite floats stay "NaN"/"Infinity" strings, dates ISO strings, binary base64.
    return None


def field_types(view: FeatureView) -> dict[str, IcebergType]:
    """The declared Iceberg type of each feature of ``view``."""
    return {name: parse_type(t) for name, t in view.fields.items()}


__all__ = [
    "EPOCH",
    "field_types",
    "iso_utc",
    "json_decoder",
    "payload_sql",
    "python_decoder",
    "quote",
    "value_sql",
]

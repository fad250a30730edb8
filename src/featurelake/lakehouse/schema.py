"""Feature field types, the Iceberg schema of a feature table, and schema-evolution rules.

Type names are Iceberg's primitive names (``long``, ``double``, ``string``, …) plus a few aliases.
``timestamp`` always means ``timestamptz`` (UTC): naive timestamps are refused everywhere, since Spark
reads them as ``timestamp_ntz`` and point-in-time joins silently shift by the local offset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
    PrimitiveType,
    StringType,
    TimestamptzType,
)

_SIMPLE: dict[str, PrimitiveType] = {
    "boolean": BooleanType(),
    "bool": BooleanType(),
    "int": IntegerType(),
    "integer": IntegerType(),
    "int32": IntegerType(),
    "long": LongType(),
    "int64": LongType(),
    "bigint": LongType(),
    "float": FloatType(),
    "float32": FloatType(),
    "double": DoubleType(),
    "float64": DoubleType(),
    "string": StringType(),
    "str": StringType(),
    "date": DateType(),
    "timestamp": TimestamptzType(),
    "timestamptz": TimestamptzType(),
    "binary": BinaryType(),
}
_DECIMAL = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


def parse_type(name: str) -> PrimitiveType:
    """Map a field type name from ``features.py`` to an Iceberg type (ValueError if unknown)."""
    key = str(name).strip().lower()
    if key in _SIMPLE:
        return _SIMPLE[key]
    if m := _DECIMAL.match(key):
        precision, scale = int(m.group(1)), int(m.group(2))
        if not 0 < precision <= 38 or scale > precision:
            raise ValueError(
                f"decimal({precision},{scale}) is out of range (precision 1..38, scale <= precision)"
            )
        return DecimalType(precision, scale)
    known = ", ".join(sorted({"boolean", "int", "long", "float", "double", "string", "date", "timestamp"}))
    raise ValueError(f"unknown type {name!r}; use one of {known}, binary or decimal(P,S)")


def type_name(t: IcebergType) -> str:
    return "timestamp" if isinstance(t, TimestamptzType) else str(t)


def is_widening(old: IcebergType, new: IcebergType) -> bool:
    """Iceberg's allowed type promotions, applied without rewriting data."""
    if isinstance(old, IntegerType) and isinstance(new, LongType):
        return True
    if isinstance(old, FloatType) and isinstance(new, DoubleType):
        return True
    return (
        isinstance(old, DecimalType)
        and isinstance(new, DecimalType)
        and new.scale == old.scale
        and new.precision > old.precision
    )


@dataclass(frozen=True)
class ViewSchema:
    """The desired table layout of one view: key, timestamp, fields (names and Iceberg types)."""

    join_key: str
    key_type: PrimitiveType
    timestamp_field: str
    fields: dict[str, PrimitiveType]

    def iceberg_schema(self) -> Schema:
        cols = [
            NestedField(1, self.join_key, self.key_type, required=True),
            NestedField(2, self.timestamp_field, TimestamptzType(), required=True),
        ]
        for i, (name, t) in enumerate(self.fields.items(), start=3):
            cols.append(NestedField(i, name, t, required=False))
        return Schema(*cols)

    def partition_spec(self, schema: Schema) -> PartitionSpec:
        source_id = schema.find_field(self.timestamp_field).field_id
        return PartitionSpec(
            PartitionField(
                source_id=source_id,
                field_id=1000,
                transform=DayTransform(),
                name=f"{self.timestamp_field}_day",
            )
        )


@dataclass(frozen=True)
class SchemaChange:
    """One difference between a table's schema and its definition."""

    kind: str  # add | widen | drop | retype | key
    column: str
    old: str | None
    new: str | None

    @property
    def breaking(self) -> bool:
        return self.kind in {"drop", "retype", "key"}

    def describe(self) -> str:
        if self.kind == "add":
            return f"add column {self.column} {self.new}"
        if self.kind == "widen":
            return f"widen {self.column} {self.old} -> {self.new}"
        if self.kind == "drop":
            return f"drop column {self.column} ({self.old})"
        if self.kind == "key":
            return f"change key/timestamp column {self.column}: {self.old} -> {self.new}"
        return f"change type of {self.column} {self.old} -> {self.new}"


def diff_schema(current: Schema, desired: ViewSchema) -> list[SchemaChange]:
    """What must change to make ``current`` match ``desired`` (in column order of the definition)."""
    changes: list[SchemaChange] = []
    cur = {f.name: f for f in current.fields}
    for name, t in ((desired.join_key, desired.key_type), (desired.timestamp_field, TimestamptzType())):
        f = cur.get(name)
        if f is None or f.field_type != t:
            changes.append(SchemaChange("key", name, type_name(f.field_type) if f else None, type_name(t)))
    for name, t in desired.fields.items():
        f = cur.get(name)
        if f is None:
            changes.append(SchemaChange("add", name, None, type_name(t)))
        elif f.field_type != t:
            kind = "widen" if is_widening(f.field_type, t) else "retype"
            changes.append(SchemaChange(kind, name, type_name(f.field_type), type_name(t)))
    wanted = {desired.join_key, desired.timestamp_field, *desired.fields}
    for name, f in cur.items():
        if name not in wanted:
            changes.append(SchemaChange("drop", name, type_name(f.field_type), None))
    return changes

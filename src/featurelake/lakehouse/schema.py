"""Feature field types, the Iceberg schema of a feature table, and schema-evolution rules.

Type names are Iceberg's primitive names (``long``, ``double``, ``string``, …) plus a few aliases.
``timestamp`` always means ``timestamptz`` (UTC): naive timestamps are refused everywhere, since Spark
reads them as ``timestamp_ntz`` and point-in-time joins silently shift by the local offset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform, MonthTransform, Transform, YearTransform
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

from featurelake.errors import SchemaError

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
    raise ValueError(f"unknown type {str(name)!r}; use one of {known}, binary or decimal(P,S)")


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


#: featurelake's partition layouts: a time transform of the timestamp field, or none.
_TRANSFORMS: dict[str, Transform[Any, Any]] = {
    "day": DayTransform(),
    "month": MonthTransform(),
    "year": YearTransform(),
}


def partition_spec(schema: Schema, timestamp_field: str, partition: str) -> PartitionSpec:
    """The spec of a table partitioned ``partition`` (``day``/``month``/``year``/``none``) on its timestamp."""
    if partition == "none":
        return PartitionSpec()
    source_id = schema.find_field(timestamp_field).field_id
    return PartitionSpec(
        PartitionField(
            source_id=source_id,
            field_id=1000,
            transform=_TRANSFORMS[partition],
            name=f"{timestamp_field}_{partition}",
        )
    )


def partition_of(spec: PartitionSpec, schema: Schema, timestamp_field: str) -> str | None:
    """``day``/``month``/``year``/``none`` when ``spec`` is one of featurelake's layouts, else None."""
    if not spec.fields:
        return "none"
    if len(spec.fields) != 1:
        return None
    (pf,) = spec.fields
    if schema.find_field(pf.source_id).name != timestamp_field:
        return None
    for name, transform in _TRANSFORMS.items():
        if pf.transform == transform:
            return name
    return None


def describe_spec(spec: PartitionSpec, schema: Schema) -> str:
    """``day(event_ts)``, ``bucket[16](user_id), day(event_ts)`` or ``none``, as the apply plan shows it."""
    if not spec.fields:
        return "none"
    return ", ".join(f"{pf.transform}({schema.find_field(pf.source_id).name})" for pf in spec.fields)


@dataclass(frozen=True)
class ViewSchema:
    """The desired table layout of one view: key columns, timestamp, fields (names and Iceberg types).

    ``keys`` maps each key column to its type, in key order (one entry, or several for a composite key);
    key columns and the timestamp are required (never null).
    """

    keys: dict[str, PrimitiveType]
    timestamp_field: str
    fields: dict[str, PrimitiveType]
    partition: str = "day"

    def iceberg_schema(self) -> Schema:
        cols = [
            NestedField(i, name, t, required=True) for i, (name, t) in enumerate(self.keys.items(), start=1)
        ]
        cols.append(NestedField(len(cols) + 1, self.timestamp_field, TimestamptzType(), required=True))
        for i, (name, t) in enumerate(self.fields.items(), start=len(cols) + 1):
            cols.append(NestedField(i, name, t, required=False))
        return Schema(*cols)

    def partition_spec(self, schema: Schema) -> PartitionSpec:
        return partition_spec(schema, self.timestamp_field, self.partition)


@dataclass(frozen=True)
class SchemaChange:
    """One difference between a table and its definition: a column, the partition spec or a property.

    ``kind``: ``create`` (the table; ``new`` describes it), ``add``, ``rename`` (``old`` -> ``new`` name),
    ``widen``, ``drop``, ``retype``, ``key`` (join key or timestamp: never evolved in place), ``partition``
    (``old``/``new`` describe the specs) or ``property`` (``column`` is the key; a None value is unset).
    """

    kind: str
    column: str
    old: str | None
    new: str | None

    @property
    def breaking(self) -> bool:
        """Readers of the old table would break (dropped or retyped columns lose their values)."""
        return self.kind in {"drop", "retype", "key"}

    def describe(self, *, marked: bool = True) -> str:
        """One line for the apply plan; breaking changes start with ``BREAKING:`` unless ``marked=False``."""
        text = self._describe()
        return f"BREAKING: {text}" if self.breaking and marked else text

    def _describe(self) -> str:
        if self.kind == "create":
            return f"create table {self.new}"
        if self.kind == "rename":
            return f"rename column {self.old} -> {self.new} (values kept)"
        if self.kind == "partition":
            return (
                f"partition by {self.new} (was {self.old}); new writes use it, existing files keep theirs until "
                "`featurelake maintain --compact`"
            )
        if self.kind == "property":
            if self.new is None:
                return f"remove property {self.column} (was {_short(self.old)})"
            if self.old is None:
                return f"set property {self.column} = {_short(self.new)}"
            return f"set property {self.column} {_short(self.old)} -> {_short(self.new)}"
        if self.kind == "add":
            return f"add column {self.column} {self.new}"
        if self.kind == "widen":
            return f"widen {self.column} {self.old} -> {self.new}"
        if self.kind == "drop":
            return f"drop column {self.column} ({self.old})"
        if self.kind == "key" and self.new is None:
            return f"drop key/timestamp column {self.column} ({self.old})"
        if self.kind == "key" and self.old is None:
            return f"add key/timestamp column {self.column} {self.new}"
        if self.kind == "key":
            return f"change key/timestamp column {self.column}: {self.old} -> {self.new}"
        return f"change type of {self.column} {self.old} -> {self.new}"


def _short(value: str | None) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}..."


def diff_schema(
    current: Schema, desired: ViewSchema, renames: dict[str, str] | None = None
) -> list[SchemaChange]:
    """What must change to make ``current`` match ``desired`` (in column order of the definition).

    ``renames`` (``{new name: old name}``) turns a missing column whose old name is in ``current`` into a
    ``rename`` (values kept), followed by a ``widen`` or ``retype`` if its type changes too. A rename whose
    old name is not a column either is a SchemaError: there is nothing to rename, and adding an empty column
    instead would hide a typo.
    """
    changes: list[SchemaChange] = []
    cur = {f.name: f for f in current.fields}
    for name, t in (*desired.keys.items(), (desired.timestamp_field, TimestamptzType())):
        f = cur.get(name)
        if f is None or f.field_type != t:
            changes.append(SchemaChange("key", name, type_name(f.field_type) if f else None, type_name(t)))
    renamed: set[str] = set()
    for name, t in desired.fields.items():
        f = cur.get(name)
        old_name = (renames or {}).get(name)
        if f is None and old_name is not None:
            f = cur.get(old_name)
            if f is None:
                raise SchemaError(
                    f"field {name!r} is declared renamed_from={old_name!r}, but the table has no column "
                    f"{old_name!r} (its columns: {', '.join(cur)}); fix renamed_from, or remove it to add "
                    f"{name!r} as a new, empty column"
                )
            renamed.add(old_name)
            changes.append(SchemaChange("rename", name, old_name, name))
        if f is None:
            changes.append(SchemaChange("add", name, None, type_name(t)))
        elif f.field_type != t:
            kind = "widen" if is_widening(f.field_type, t) else "retype"
            changes.append(SchemaChange(kind, name, type_name(f.field_type), type_name(t)))
    wanted = {*desired.keys, desired.timestamp_field, *desired.fields, *renamed}
    for name, f in cur.items():
        if name not in wanted:
            # Key columns and the timestamp are the table's only required columns: dropping one (a composite
            # key losing a column) would merge rows of different entities, so it is a key change.
            kind = "key" if f.required else "drop"
            changes.append(SchemaChange(kind, name, type_name(f.field_type), None))
    return changes

"""``apply``: create each view's Iceberg table, or evolve it safely to match the definitions."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
from pyiceberg.types import LongType, PrimitiveType, StringType

from featurelake.errors import SchemaError
from featurelake.features.definitions import FeatureView
from featurelake.lakehouse.lineage import OPERATION
from featurelake.lakehouse.schema import SchemaChange, ViewSchema, diff_schema, parse_type

VIEW_PROPERTY_PREFIX = "featurelake."


@dataclass
class ApplyResult:
    """What ``apply`` did (or would do) to one view's table."""

    view: str
    table: str
    action: str  # created | evolved | unchanged | refused
    changes: list[SchemaChange] = field(default_factory=list)

    def describe(self) -> str:
        if not self.changes:
            return f"{self.table}: {self.action}"
        return f"{self.table}: {self.action} ({'; '.join(c.describe() for c in self.changes)})"


def _key_type(view: FeatureView, produced: pa.Schema) -> PrimitiveType:
    if view.entity.dtype is not None:
        return parse_type(view.entity.dtype)
    if view.join_key not in produced.names:
        raise SchemaError(f"view {view.name!r}: the query does not produce the join key {view.join_key!r}")
    t = produced.field(view.join_key).type
    if pa.types.is_integer(t):
        return LongType()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return StringType()
    raise SchemaError(
        f"view {view.name!r}: join key {view.join_key} is {t}; entity keys must be strings or integers "
        "(cast it in the query or set Entity(..., dtype='string'|'long'))"
    )


def view_schema(view: FeatureView, produced: pa.Schema) -> ViewSchema:
    """The table layout for ``view``, checking the query's output columns against the declared fields."""
    missing = [c for c in view.columns if c not in produced.names]
    if missing:
        raise SchemaError(
            f"view {view.name!r}: the query does not produce declared column(s) {', '.join(missing)} "
            f"(it produces {', '.join(produced.names)}); fix the SELECT or the fields in features.py"
        )
    return ViewSchema(
        join_key=view.join_key,
        key_type=_key_type(view, produced),
        timestamp_field=view.timestamp_field,
        fields={name: parse_type(t) for name, t in view.fields.items()},
    )


def view_properties(view: FeatureView) -> dict[str, str]:
    props = {
        "featurelake.view": view.name,
        "featurelake.entity": view.entity.name,
        "featurelake.join-key": view.join_key,
        "featurelake.timestamp-field": view.timestamp_field,
        "featurelake.query-sha256": hashlib.sha256(view.query.encode()).hexdigest(),
    }
    if view.ttl is not None:
        props["featurelake.ttl-seconds"] = str(int(view.ttl.total_seconds()))
    return props


def apply_view(
    catalog: Catalog,
    namespace: str,
    view: FeatureView,
    produced: pa.Schema,
    *,
    lineage: dict[str, str],
    allow_breaking: bool = False,
    dry_run: bool = False,
) -> ApplyResult:
    """Create or evolve ``<namespace>.<view>`` for a query producing ``produced`` (the engine's
    ``source_schema``); breaking changes need ``allow_breaking``.

    A new table gets an empty first snapshot on main carrying ``lineage``: Iceberg only lets branches
    fork from an existing snapshot, and every backfill writes to a branch.
    """
    ident = f"{namespace}.{view.name}"
    desired = view_schema(view, produced)
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(namespace)
    try:
        tbl = catalog.load_table(ident)
    except NoSuchTableError:
        if not dry_run:
            schema = desired.iceberg_schema()
            tbl = catalog.create_table(
                ident,
                schema=schema,
                partition_spec=desired.partition_spec(schema),
                properties={**view_properties(view), "format-version": "2"},
            )
            tbl.append(
                tbl.schema().as_arrow().empty_table(), snapshot_properties={**lineage, OPERATION: "create"}
            )
        return ApplyResult(view.name, ident, "created")

    changes = diff_schema(tbl.schema(), desired)
    keys = [c for c in changes if c.kind == "key"]
    if keys:
        raise SchemaError(
            f"{ident}: {'; '.join(c.describe() for c in keys)} cannot be evolved in place; "
            "rename the view to create a new table, or drop this one"
        )
    breaking = [c for c in changes if c.breaking]
    if breaking and not allow_breaking:
        raise SchemaError(
            f"{ident}: refusing breaking schema change(s): {'; '.join(c.describe() for c in breaking)}. "
            "Readers and models of the old columns would break; re-run with --allow-breaking to apply anyway"
        )
    props = view_properties(view)
    props_changed = any(tbl.properties.get(k) != v for k, v in props.items())
    if not changes and not props_changed:
        return ApplyResult(view.name, ident, "unchanged", changes)
    if dry_run:
        return ApplyResult(view.name, ident, "planned", changes)

    with tbl.transaction() as tx:
        if changes:
            # Retyping is not an Iceberg promotion: drop and re-add (the old values are lost, hence breaking).
            retyped = [c.column for c in changes if c.kind in ("drop", "retype")]
            if retyped:
                with tx.update_schema() as upd:
                    for col in retyped:
                        upd.delete_column(col)
            with tx.update_schema() as upd:
                for c in changes:
                    if c.kind in ("add", "retype"):
                        upd.add_column(c.column, desired.fields[c.column])
                    elif c.kind == "widen":
                        upd.update_column(c.column, field_type=desired.fields[c.column])
        if props_changed:
            tx.set_properties(props)
    if changes:
        # Record the evolution in the snapshot log too, so `history` shows who changed the schema and when.
        tbl = catalog.load_table(ident)
        tbl.append(
            tbl.schema().as_arrow().empty_table(), snapshot_properties={**lineage, OPERATION: "evolve-schema"}
        )
    return ApplyResult(view.name, ident, "evolved", changes)


__all__ = ["ApplyResult", "apply_view", "view_schema"]

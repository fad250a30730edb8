"""``apply``: create each view's Iceberg table, or evolve it safely to match the definitions."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchNamespaceError, NoSuchTableError
from pyiceberg.table import Table, Transaction
from pyiceberg.types import LongType, PrimitiveType, StringType

from featurelake.errors import SchemaError
from featurelake.features.aggregations import table_properties
from featurelake.features.definitions import FeatureView
from featurelake.lakehouse.lineage import OPERATION
from featurelake.lakehouse.schema import (
    SchemaChange,
    ViewSchema,
    describe_spec,
    diff_schema,
    parse_type,
    partition_of,
    type_name,
)

#: Table properties under this prefix are the definition's: ``apply`` sets them and removes stale ones.
VIEW_PROPERTY_PREFIX = "featurelake."


@dataclass
class ApplyResult:
    """What ``apply`` did (or, with ``dry_run``, would do) to one view's table.

    ``action``: ``created``, ``evolved``, ``unchanged``, or ``planned`` for a dry run with changes;
    ``changes`` lists every change, breaking ones marked; ``blocked`` says why a real ``apply`` would refuse
    the plan (dry runs only: a real one raises instead). ``warnings``: what deserves a look but does not
    stop ``apply`` (e.g. a query reading across rows in time without a lookback: ``features.lint``).
    """

    view: str
    table: str
    action: str
    changes: list[SchemaChange] = field(default_factory=list)
    blocked: str | None = None
    warnings: list[str] = field(default_factory=list)

    def _shown(self) -> list[SchemaChange]:
        # "created" says it all; a planned create shows the columns and partitioning it would get.
        return [c for c in self.changes if not (self.action == "created" and c.kind == "create")]

    def describe(self) -> str:
        """One line: the action, then every change."""
        text = f"{self.table}: {self.action}"
        if shown := self._shown():
            text += f" ({'; '.join(c.describe() for c in shown)})"
        if self.blocked:
            text += f"; apply would refuse: {self.blocked}"
        return text

    def lines(self) -> list[str]:
        """The action, then one indented line per change (what the CLI prints)."""
        out = [f"{self.table}: {self.action}", *(f"  - {c.describe()}" for c in self._shown())]
        if self.blocked:
            out.append(f"  apply would refuse: {self.blocked}")
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "view": self.view,
            "table": self.table,
            "action": self.action,
            "changes": [c.describe() for c in self.changes],
            "plan": [
                {"kind": c.kind, "column": c.column, "old": c.old, "new": c.new, "breaking": c.breaking}
                for c in self.changes
            ],
            "blocked": self.blocked,
            "warnings": self.warnings,
        }


def _key_type(view: FeatureView, key: str, produced: pa.Schema) -> PrimitiveType:
    declared = view.entity.key_dtype(key)
    if declared is not None:
        return parse_type(declared)
    if key not in produced.names:
        raise SchemaError(f"view {view.name!r}: the query does not produce the join key {key!r}")
    t = produced.field(key).type
    if pa.types.is_integer(t):
        return LongType()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return StringType()
    hint = f"dtype={{{key!r}: 'string'|'long'}}" if view.composite else "dtype='string'|'long'"
    raise SchemaError(
        f"view {view.name!r}: join key {key} is {t}; entity keys must be strings or integers "
        f"(cast it in the query or set Entity(..., {hint}))"
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
        keys={key: _key_type(view, key, produced) for key in view.join_keys},
        timestamp_field=view.timestamp_field,
        fields={name: parse_type(t) for name, t in view.fields.items()},
        partition=view.partition,
    )


def view_properties(view: FeatureView) -> dict[str, str]:
    props = {
        "featurelake.view": view.name,
        "featurelake.entity": view.entity.name,
        "featurelake.timestamp-field": view.timestamp_field,
        "featurelake.query-sha256": hashlib.sha256(view.query.encode()).hexdigest(),
    }
    # One key column: featurelake.join-key as always; a composite key lists its columns in order instead.
    if view.composite:
        props["featurelake.join-keys"] = ",".join(view.join_keys)
    else:
        props["featurelake.join-key"] = view.join_key
    if view.ttl is not None:
        props["featurelake.ttl-seconds"] = str(int(view.ttl.total_seconds()))
    props.update(table_properties(view))  # lookback and aggregations
    return props


def _property_changes(current: dict[str, str], desired: dict[str, str]) -> list[SchemaChange]:
    """Set what differs and remove every other ``featurelake.*`` property (a ttl set to None, say)."""
    changes = [
        SchemaChange("property", k, current.get(k), v) for k, v in desired.items() if current.get(k) != v
    ]
    changes += [
        SchemaChange("property", k, v, None)
        for k, v in sorted(current.items())
        if k.startswith(VIEW_PROPERTY_PREFIX) and k not in desired
    ]
    return changes


def _describe_new_table(desired: ViewSchema) -> str:
    cols = [
        *(f"{k} {type_name(t)}" for k, t in desired.keys.items()),
        f"{desired.timestamp_field} timestamp",
        *(f"{n} {type_name(t)}" for n, t in desired.fields.items()),
    ]
    schema = desired.iceberg_schema()
    return f"({', '.join(cols)}) partitioned by {describe_spec(desired.partition_spec(schema), schema)}"


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
    fork from an existing snapshot, and every backfill writes to a branch. An existing one is evolved in
    one transaction: renames (through field ids, so old snapshots keep the old names), drops, adds and
    widenings, the partition spec, and the ``featurelake.*`` properties. ``dry_run`` changes nothing and
    reports the whole plan, breaking changes included (with why a real ``apply`` would refuse them).
    """
    ident = f"{namespace}.{view.name}"
    desired = view_schema(view, produced)
    if not dry_run:
        with contextlib.suppress(NamespaceAlreadyExistsError):
            catalog.create_namespace(namespace)
    try:
        tbl = catalog.load_table(ident)
    except (NoSuchTableError, NoSuchNamespaceError):
        create = [SchemaChange("create", ident, None, _describe_new_table(desired))]
        if dry_run:
            return ApplyResult(view.name, ident, "planned", create)
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
        return ApplyResult(view.name, ident, "created", create)

    try:
        columns = diff_schema(tbl.schema(), desired, view.renames)
    except SchemaError as exc:
        raise SchemaError(f"{ident}: {exc}") from None
    spec = _partition_change(tbl, desired)
    props = view_properties(view)
    properties = _property_changes(dict(tbl.properties), props)
    changes = columns + spec + properties
    blocked = _blocked(columns, allow_breaking)
    if not changes:
        return ApplyResult(view.name, ident, "unchanged", changes)
    if dry_run:
        return ApplyResult(view.name, ident, "planned", changes, blocked)
    if blocked:
        raise SchemaError(f"{ident}: {blocked}")

    with tbl.transaction() as tx:
        _evolve_schema(tx, columns, desired)
        if spec:
            with tx.update_spec() as upd_spec:
                for pf in tbl.spec().fields:
                    upd_spec.remove_field(pf.name)
                for pf in desired.partition_spec(desired.iceberg_schema()).fields:
                    upd_spec.add_field(desired.timestamp_field, pf.transform, pf.name)
        if removed := [c.column for c in properties if c.new is None]:
            tx.remove_properties(*removed)
        if any(c.new is not None for c in properties):
            tx.set_properties(props)
    if columns or spec:
        # Record the evolution in the snapshot log too, so `history` shows who changed the layout and when.
        tbl = catalog.load_table(ident)
        tbl.append(
            tbl.schema().as_arrow().empty_table(), snapshot_properties={**lineage, OPERATION: "evolve-schema"}
        )
    return ApplyResult(view.name, ident, "evolved", changes)


def _blocked(columns: list[SchemaChange], allow_breaking: bool) -> str | None:
    """Why ``apply`` refuses these column changes (None: it applies them)."""
    if keys := [c for c in columns if c.kind == "key"]:
        return (
            f"{'; '.join(c.describe(marked=False) for c in keys)} cannot be evolved in place; "
            "rename the view to create a new table, or drop this one"
        )
    breaking = [c for c in columns if c.breaking]
    if breaking and not allow_breaking:
        return (
            f"refusing breaking schema change(s): {'; '.join(c.describe(marked=False) for c in breaking)}. "
            "Readers and models of the old columns would break; re-run with --allow-breaking to apply anyway"
        )
    return None


def _partition_change(tbl: Table, desired: ViewSchema) -> list[SchemaChange]:
    schema = tbl.schema()
    if partition_of(tbl.spec(), schema, desired.timestamp_field) == desired.partition:
        return []
    wanted = describe_spec(desired.partition_spec(desired.iceberg_schema()), desired.iceberg_schema())
    return [SchemaChange("partition", desired.timestamp_field, describe_spec(tbl.spec(), schema), wanted)]


def _evolve_schema(tx: Transaction, columns: list[SchemaChange], desired: ViewSchema) -> None:
    """Renames first (by field id: old snapshots keep the old name), then drops, then adds and widenings."""
    if renames := [c for c in columns if c.kind == "rename"]:
        with tx.update_schema() as upd:
            for c in renames:
                assert c.old is not None
                upd.rename_column(c.old, c.column)
    # Retyping is not an Iceberg promotion: drop and re-add (the old values are lost, hence breaking).
    if dropped := [c.column for c in columns if c.kind in ("drop", "retype")]:
        with tx.update_schema() as upd:
            for col in dropped:
                upd.delete_column(col)
    if added := [c for c in columns if c.kind in ("add", "retype", "widen")]:
        with tx.update_schema() as upd:
            for c in added:
                if c.kind == "widen":
                    upd.update_column(c.column, field_type=desired.fields[c.column])
                else:
                    upd.add_column(c.column, desired.fields[c.column])


__all__ = ["ApplyResult", "apply_view", "view_schema"]

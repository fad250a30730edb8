"""Featurelake's own append-only Iceberg tables (``<namespace>._audits``, ``<namespace>._stats``).

They live in the feature namespace next to the views (view names may not start with ``_``), are written
through the same catalog with the same lineage properties as feature snapshots, and are read with any
Iceberg reader. Appends retry when a concurrent writer won the commit race.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pyarrow as pa
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.schema import Schema
from pyiceberg.table import Table

from featurelake.lakehouse import lineage, wap
from featurelake.lakehouse.retry import retry_commit

if TYPE_CHECKING:
    from featurelake.project import Project


def identifier(project: Project, name: str) -> str:
    return f"{project.namespace}.{name}"


def load(project: Project, name: str) -> Table | None:
    """The table, or None when nothing was ever written to it."""
    ident = identifier(project, name)

    def get() -> Table | None:
        try:
            return project.catalog.load_table(ident)
        except NoSuchTableError:
            return None

    return project.catalog_call(get, f"load {ident}")


def ensure(project: Project, name: str, schema: Schema) -> Table:
    """The table, created (empty, no snapshot) when it does not exist yet."""
    from pyiceberg.exceptions import TableAlreadyExistsError

    ident = identifier(project, name)

    def create() -> Table:
        try:  # the usual case, one query: it exists (the namespace is only created along with the table)
            return project.catalog.load_table(ident)
        except NoSuchTableError:
            pass
        with contextlib.suppress(NamespaceAlreadyExistsError):
            project.catalog.create_namespace(project.namespace)
        try:
            return project.catalog.create_table(
                ident, schema=schema, properties={"format-version": "2", "featurelake.internal": "true"}
            )
        except TableAlreadyExistsError:  # another process created it meanwhile
            return project.catalog.load_table(ident)

    return project.catalog_call(create, f"create {ident}")


def append(project: Project, name: str, schema: Schema, rows: pa.Table, run_id: str, operation: str) -> int:
    """Append ``rows`` with lineage properties; returns the new snapshot id."""
    ident = identifier(project, name)
    props = lineage.lineage_properties(project.root, run_id, **{lineage.OPERATION: operation})

    def write(t: Table) -> int:
        t.append(rows.cast(t.schema().as_arrow()), snapshot_properties=props)
        # The committed Table holds the catalog's new metadata: no second load to learn the snapshot id.
        sid = wap.main_snapshot_id(t)
        assert sid is not None
        return sid

    return retry_commit(
        lambda: ensure(project, name, schema),
        write,
        table=ident,
        what=f"append to {ident}",
        attempts=project.config.settings.catalog.retries + 1,
        call=project.catalog_call,
    )


def scan(project: Project, name: str, row_filter: BooleanExpression | None = None) -> pa.Table | None:
    tbl = load(project, name)
    if tbl is None:
        return None
    return project.catalog_call(
        lambda: tbl.scan(row_filter=row_filter if row_filter is not None else AlwaysTrue()).to_arrow(),
        f"read {identifier(project, name)}",
    )

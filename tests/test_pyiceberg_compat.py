"""lakehouse.compat: one test per PyIceberg private API featurelake relies on, against a real SQL catalog.

A PyIceberg upgrade that removes or changes one of them fails the test named after the compat function.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import Field
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.io.pyarrow import UnsupportedPyArrowTypeException
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import AssertTableUUID, TableRequirement, TableUpdate
from pyiceberg.transforms import DayTransform
from pyiceberg.typedef import IcebergBaseModel
from pyiceberg.types import DoubleType, LongType, NestedField, TimestamptzType
from sqlalchemy import create_engine, inspect

from featurelake.lakehouse import compat
from featurelake.lakehouse.catalog import open_catalog
from featurelake.lakehouse.window import Window

START = datetime(2024, 1, 1, tzinfo=UTC)
SCHEMA = Schema(
    NestedField(1, "user_id", LongType(), required=True),
    NestedField(2, "event_ts", TimestamptzType(), required=True),
    NestedField(3, "x", DoubleType(), required=False),
)
SPEC = PartitionSpec(PartitionField(2, 1000, DayTransform(), "event_ts_day"))


def frame(rows: int, days: int, *, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    start = int(START.timestamp()) * 1_000_000
    micros = np.sort(rng.integers(0, days * 86_400_000_000, rows)) + start
    return pa.table(
        {
            "user_id": pa.array(np.arange(rows), pa.int64()),
            "event_ts": pa.array(micros, pa.timestamp("us", tz="UTC")),
            "x": pa.array(rng.normal(size=rows)),
        },
        schema=SCHEMA.as_arrow(),
    )


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = open_catalog("t", f"sqlite:///{tmp_path}/catalog.db", f"file://{tmp_path}/warehouse")
    cat.create_namespace("ns")
    return cat


@pytest.fixture
def table(catalog: Catalog) -> Table:
    tbl = catalog.create_table("ns.t", SCHEMA, partition_spec=SPEC)
    tbl.append(frame(300, 3))
    return tbl


def rows(tbl: Table, ref: str = "main") -> int:
    return tbl.scan().use_ref(ref).to_arrow().num_rows


def test_sql_catalog_on_engine(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/own.db"
    engine = create_engine(uri)
    warehouse = f"file://{tmp_path}/warehouse"
    cat = compat.sql_catalog_on_engine("c", engine, uri=uri, warehouse=warehouse)
    assert isinstance(cat, SqlCatalog) and cat.engine is engine
    assert {"iceberg_tables", "iceberg_namespace_properties"} <= set(inspect(engine).get_table_names())
    cat.create_namespace("ns")
    cat.create_table("ns.t", SCHEMA).append(frame(10, 1))
    # A second catalog on the same (now initialised) database sees the table.
    again = compat.sql_catalog_on_engine("c", engine, uri=uri, warehouse=warehouse)
    assert rows(again.load_table("ns.t")) == 10


def test_close_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests
    from pyiceberg.catalog import load_catalog

    from tests.rest_catalog import RestCatalogProcess

    sql = open_catalog("c", f"sqlite:///{tmp_path}/c.db", f"file://{tmp_path}/warehouse")
    sql.list_namespaces()
    compat.close_catalog(sql)
    assert sql.engine.pool.checkedin() == 0  # type: ignore[attr-defined]
    closed: list[requests.Session] = []
    real_close = requests.Session.close

    def recorded_close(self: requests.Session) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(requests.Session, "close", recorded_close)
    server = RestCatalogProcess(f"sqlite:///{tmp_path}/rest.db", f"file://{tmp_path}/rest-warehouse").start()
    try:
        rest = load_catalog("r", type="rest", uri=server.url)
        rest.list_namespaces()
        closed.clear()  # load_catalog closes the session it fetched /v1/config with
        compat.close_catalog(rest)
        assert len(closed) == 1  # the catalog's own session, with its pooled keep-alive connections
    finally:
        server.stop()


def test_fast_overwrite_available() -> None:
    assert compat.fast_overwrite_available(), (
        "this PyIceberg lacks the internals lakehouse.write uses: writes fall back to Table.overwrite "
        "(slower); see lakehouse/compat.py"
    )


def test_check_write_schema(table: Table) -> None:
    compat.check_write_schema(table.metadata, SCHEMA.as_arrow())
    wrong = pa.schema([("user_id", pa.string()), ("event_ts", pa.timestamp("us", tz="UTC"))])
    with pytest.raises(ValueError):
        compat.check_write_schema(table.metadata, wrong)
    nanos = pa.schema(
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("event_ts", pa.timestamp("ns", tz="UTC"), nullable=False),
            pa.field("x", pa.float64()),
        ]
    )
    with pytest.raises(UnsupportedPyArrowTypeException):  # nanoseconds are refused, not downcast
        compat.check_write_schema(table.metadata, nanos)


def test_write_data_files(table: Table) -> None:
    data = frame(200, 2, seed=3)
    day = data.filter(pc.less(data["event_ts"], pa.scalar(START + timedelta(days=1))))
    files = compat.write_data_files(table.metadata, day, table.io, uuid.uuid4(), itertools.count(0))
    assert files and sum(f.record_count for f in files) == day.num_rows
    assert {f.partition[0] for f in files} == {(START.date() - datetime(1970, 1, 1).date()).days}
    for f in files:
        assert table.io.new_input(f.file_path).exists()
        assert f.file_path.startswith(table.metadata.location)
    assert rows(table.refresh()) == 300  # written, not committed


@pytest.mark.parametrize("branch", ["main", "audit_x"])
def test_delete_for_overwrite(table: Table, branch: str) -> None:
    if branch != "main":
        table.manage_snapshots().create_branch(table.refs()["main"].snapshot_id, branch).commit()
    first_day = Window(START, START + timedelta(days=1)).iceberg_filter("event_ts")
    before = table.scan(row_filter=first_day).to_arrow().num_rows
    with table.transaction() as tx:
        compat.delete_for_overwrite(tx, first_day, {"featurelake.run-id": "d1"}, branch)
    table = table.refresh()
    assert rows(table, branch) == 300 - before
    assert rows(table) == (300 - before if branch == "main" else 300)
    snap = table.snapshot_by_id(table.refs()[branch].snapshot_id)
    assert snap is not None and snap.summary is not None
    assert snap.summary["featurelake.run-id"] == "d1"


@pytest.mark.parametrize("merge", [False, True])
def test_append_data_files(table: Table, merge: bool) -> None:
    if merge:
        with table.transaction() as tx:
            tx.set_properties({"commit.manifest-merge.enabled": "true"})
        table = table.refresh()
    table.manage_snapshots().create_branch(table.refs()["main"].snapshot_id, "audit_y").commit()
    data = frame(50, 1, seed=9)
    with (
        table.transaction() as tx,
        compat.append_data_files(tx, {"featurelake.run-id": "a1"}, "audit_y") as app,
    ):
        assert isinstance(app.commit_uuid, uuid.UUID)
        for f in compat.write_data_files(
            tx.table_metadata, data, table.io, app.commit_uuid, itertools.count()
        ):
            assert str(app.commit_uuid) in f.file_path
            app.append_data_file(f)
    table = table.refresh()
    assert rows(table, "audit_y") == 350 and rows(table) == 300
    snap = table.snapshot_by_id(table.refs()["audit_y"].snapshot_id)
    assert snap is not None and snap.summary is not None
    assert snap.summary.operation.value == "append" and snap.summary["featurelake.run-id"] == "a1"


class SetMarker(IcebergBaseModel):
    """A test-only metadata update: sets one table property (PyIceberg has no such update type)."""

    action: Literal["featurelake-test-set-marker"] = Field(default="featurelake-test-set-marker")
    value: str


def test_metadata_update(table: Table) -> None:
    seen: list[str] = []

    @compat.metadata_update(SetMarker)
    def _apply(update: SetMarker, base: TableMetadata) -> TableMetadata:
        seen.append(update.value)
        return base.model_copy(update={"properties": {**base.properties, "test.marker": update.value}})

    requirements: tuple[TableRequirement, ...] = (AssertTableUUID(uuid=table.metadata.table_uuid),)
    updates: tuple[TableUpdate, ...] = (SetMarker(value="m1"),)  # type: ignore[assignment]
    table.catalog.commit_table(table, requirements, updates)
    assert seen == ["m1"]
    assert table.catalog.load_table("ns.t").properties["test.marker"] == "m1"


def test_memoize_transaction_metadata(table: Table) -> None:
    from pyiceberg.table import Transaction
    from pyiceberg.table.update import update_table_metadata

    assert compat.memoize_transaction_metadata()  # open_catalog installed it; installing again is a no-op
    assert compat.memoize_transaction_metadata()
    tx = table.transaction()
    first = tx.table_metadata
    assert tx.table_metadata is first  # computed once per staged state
    assert first == update_table_metadata(table.metadata, ())
    tx.set_properties({"test.memo": "1"})
    staged = tx.table_metadata
    assert staged is not first and staged.properties["test.memo"] == "1"
    assert tx.table_metadata is staged
    # What the memo gives equals what PyIceberg computes, but for the update time it stamps on each call.
    fresh = update_table_metadata(table.metadata, tx._updates)
    assert staged.model_copy(update={"last_updated_ms": 0}) == fresh.model_copy(update={"last_updated_ms": 0})
    with tx.update_snapshot().fast_append() as append:  # a snapshot producer reads it many times
        for data_file in compat.write_data_files(
            tx.table_metadata, frame(10, 1, seed=3), table.io, append.commit_uuid, itertools.count(0)
        ):
            append.append_data_file(data_file)
    tx.commit_transaction()
    assert rows(table) == 310 and table.properties["test.memo"] == "1"
    other = Transaction(table)  # a new transaction on the committed table: its own memo
    assert other.table_metadata.properties["test.memo"] == "1"
    assert other.table_metadata.current_snapshot_id == table.metadata.current_snapshot_id


def _pyiceberg_classes() -> tuple[type, ...]:
    """The PyIceberg classes featurelake handles (tables, transactions, catalogs, snapshot updates)."""
    from pyiceberg.io import FileIO
    from pyiceberg.table import Transaction
    from pyiceberg.table.metadata import TableMetadataV1, TableMetadataV2, TableMetadataV3
    from pyiceberg.table.update.snapshot import ManageSnapshots, UpdateSnapshot

    # TableMetadata is an Annotated union alias, not a class: its versions are the classes.
    return (
        Table,
        Transaction,
        Catalog,
        SqlCatalog,
        TableMetadataV1,
        TableMetadataV2,
        TableMetadataV3,
        UpdateSnapshot,
        ManageSnapshots,
        FileIO,
    )


def _is_pyiceberg_subclass(node: Any, classes: set[str]) -> bool:
    import ast

    return isinstance(node, ast.ClassDef) and any(
        (b.id if isinstance(b, ast.Name) else getattr(b, "attr", None)) in classes for b in node.bases
    )


def test_private_apis_are_used_only_in_compat() -> None:
    """No module but lakehouse/compat.py imports, calls or passes a PyIceberg private name."""
    import ast

    import featurelake

    classes = _pyiceberg_classes()
    private = {n for c in classes for n in dir(c) if n.startswith("_") and not n.startswith("__")}
    names = {c.__name__ for c in classes}
    root = Path(featurelake.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "lakehouse" / "compat.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        # Inside a subclass of a PyIceberg class, ``self._x`` is PyIceberg's private ``_x`` too.
        inherited = {id(n) for c in ast.walk(tree) if _is_pyiceberg_subclass(c, names) for n in ast.walk(c)}
        for node in ast.walk(tree):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyiceberg"):
                found += [f"{where} imports {a.name}" for a in node.names if a.name.startswith("_")]
            elif isinstance(node, ast.Attribute) and node.attr in private:
                own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                if not own or id(node) in inherited:
                    found.append(f"{where} uses .{node.attr}")
            elif isinstance(node, ast.Call):
                found += [
                    f"{where} passes {k.arg}="
                    for k in node.keywords
                    if k.arg and k.arg.startswith("_") and not k.arg.startswith("__")
                ]
    assert not found, "PyIceberg private APIs outside lakehouse/compat.py: " + "; ".join(found)

"""Every use of a PyIceberg private API in featurelake, in one place (PyIceberg is pinned to 0.12).

Nothing outside this module may import a ``pyiceberg`` name that starts with ``_``, call a method that does,
or pass a keyword argument that does. Each function below says why the private API is needed and what public
API would replace it; ``tests/test_pyiceberg_compat.py`` has one test per function against a real SQL catalog,
so a PyIceberg upgrade that breaks one fails a test named after it. When upgrading PyIceberg, run that file
first and read this module's docstrings against the new release's changelog.

- ``sql_catalog_on_engine``: ``SqlCatalog._init_catalog`` (and a ``SqlCatalog`` built without its own
  ``__init__``); used by ``lakehouse.catalog``.
- ``close_catalog``: ``RestCatalog._session``; used by ``project.Project.close``.
- ``check_write_schema``: ``pyiceberg.io.pyarrow._check_pyarrow_schema_compatible``; ``lakehouse.write``.
- ``write_data_files``: ``pyiceberg.io.pyarrow._dataframe_to_data_files``; ``lakehouse.write``.
- ``delete_for_overwrite``: ``Transaction.delete(_isolation_operation=...)``; ``lakehouse.write``.
- ``append_data_files``: ``Transaction._append_snapshot_producer``; ``lakehouse.write``.
- ``metadata_update``: ``pyiceberg.table.update._apply_table_update`` and its ``_TableMetadataUpdateContext``;
  ``maintenance.expiry``.
- ``memoize_transaction_metadata``: ``Transaction._table`` and ``Transaction._updates``; ``lakehouse.catalog``.

``fast_overwrite_available`` tells whether the four write internals are present; ``lakehouse.write`` falls
back to the public ``Table.overwrite`` (slower, same result) when they are not.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Transaction

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.io import FileIO
    from pyiceberg.manifest import DataFile
    from pyiceberg.table.metadata import TableMetadata
    from pyiceberg.typedef import IcebergBaseModel
    from sqlalchemy.engine import Engine

U = TypeVar("U", bound="IcebergBaseModel")


# --- catalog ------------------------------------------------------------------------------------------


class _EngineSqlCatalog(SqlCatalog):
    """A ``SqlCatalog`` on an engine we built, instead of the one its ``__init__`` would build."""

    def __init__(self, name: str, engine: Engine, **properties: str) -> None:
        Catalog.__init__(self, name, **properties)
        self.engine = engine
        self._init_catalog()


def sql_catalog_on_engine(name: str, engine: Engine, **properties: str) -> SqlCatalog:
    """A PyIceberg SQL catalog that runs on ``engine`` (creating the catalog tables if they are missing).

    Why private: ``SqlCatalog.__init__`` builds its own SQLAlchemy engine from ``uri`` and passes on only
    ``echo`` and ``pool_pre_ping``; featurelake needs a SQLite busy timeout and WAL mode on every connection
    (an ``connect`` event listener and ``connect_args``) and a PostgreSQL connect timeout. So the catalog is
    built with ``Catalog.__init__`` (properties only), given our engine as ``self.engine`` (the attribute every
    ``SqlCatalog`` method uses) and then ``_init_catalog()`` creates or checks the catalog tables exactly as
    ``SqlCatalog.__init__`` would.

    Public replacement: an ``engine=`` argument or ``engine_args``/``connect_args`` catalog properties on
    ``SqlCatalog`` (not in PyIceberg 0.12). Until then, this function is the only place that knows.
    """
    return _EngineSqlCatalog(name, engine, **properties)


def close_catalog(catalog: Catalog) -> None:
    """Release what a catalog holds open: a SQL catalog's connection pool, a REST catalog's HTTP session.

    Why private: ``RestCatalog`` keeps its ``requests.Session`` in ``_session`` and has no ``close()``; its
    pooled keep-alive connections would otherwise stay open until garbage collection.

    Public replacement: a ``Catalog.close()`` (not in PyIceberg 0.12).
    """
    if isinstance(catalog, SqlCatalog):
        catalog.engine.dispose()
        return
    session = getattr(catalog, "_session", None)
    if session is not None:
        session.close()


# --- writing data files ourselves (lakehouse.write) ---------------------------------------------------


class DataFileAppender(Protocol):
    """What ``append_data_files`` yields: PyIceberg's append snapshot producer, as far as we use it."""

    commit_uuid: uuid.UUID

    def append_data_file(self, data_file: DataFile) -> Any: ...


@cache
def fast_overwrite_available() -> bool:
    """Whether this PyIceberg has the internals that ``check_write_schema``, ``write_data_files``,
    ``delete_for_overwrite`` and ``append_data_files`` use (``lakehouse.write`` uses ``Table.overwrite`` if not).
    """
    try:
        from pyiceberg.io.pyarrow import (  # noqa: F401
            _check_pyarrow_schema_compatible,
            _dataframe_to_data_files,
        )
        from pyiceberg.table.snapshots import Operation  # noqa: F401
    except ImportError:
        return False
    return hasattr(Transaction, "_append_snapshot_producer") and (
        "_isolation_operation" in inspect.signature(Transaction.delete).parameters
    )


def check_write_schema(metadata: TableMetadata, schema: pa.Schema) -> None:
    """Raise unless Arrow ``schema`` can be written to a table with ``metadata``'s current schema.

    A mismatch raises ValueError (PyIceberg prints a field-by-field table first); a type Iceberg cannot hold
    (nanosecond timestamps on a v1/v2 table) raises ``pyiceberg.io.pyarrow.UnsupportedPyArrowTypeException``.

    Why private: ``pyiceberg.io.pyarrow._check_pyarrow_schema_compatible`` is the check ``Table.append`` and
    ``Table.overwrite`` run before writing; featurelake writes the files itself (see ``write_data_files``), so
    it runs the same check first, with nanosecond timestamps refused as ``Transaction.overwrite`` refuses
    them by default.

    Public replacement: ``Table.overwrite`` (which runs it) once PyIceberg splits partitions in one pass, or a
    public schema-compatibility check.
    """
    from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible

    _check_pyarrow_schema_compatible(
        metadata.schema(),
        provided_schema=schema,
        downcast_ns_timestamp_to_us=False,
        format_version=metadata.format_version,
    )


def write_data_files(
    metadata: TableMetadata,
    frame: pa.Table,
    io: FileIO,
    write_uuid: uuid.UUID,
    counter: itertools.count[int],
) -> list[DataFile]:
    """Write ``frame`` as Parquet data files of the table with ``metadata``; return them, not yet committed.

    Why private: ``pyiceberg.io.pyarrow._dataframe_to_data_files`` is PyIceberg's own writer (target file
    size, partition values, column metrics, field ids). ``Table.overwrite`` calls it on the whole frame, and in
    0.12 that splits a partitioned frame by filtering the whole frame once per partition value; calling it on
    one day's rows at a time (in parallel) makes a window write O(rows). ``write_uuid`` and ``counter`` are the
    append producer's, so file names are those PyIceberg would give them.

    Public replacement: a faster partition split in ``Table.overwrite``/``append`` (then ``lakehouse.write``
    can drop its own path), or a public data-file writer.
    """
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    return list(_dataframe_to_data_files(metadata, frame, io, write_uuid, counter))


def delete_for_overwrite(
    tx: Transaction, delete_filter: BooleanExpression, properties: dict[str, str], branch: str | None
) -> None:
    """Stage the delete half of an overwrite in ``tx``: rows matching ``delete_filter`` on ``branch``.

    Why private: ``Transaction.overwrite`` deletes with ``_isolation_operation=Operation.OVERWRITE`` so the
    conflict check treats the delete as part of an overwrite; the public ``Transaction.delete`` has no way to
    say so. Staging the delete ourselves, with the same argument, keeps the commit identical to
    ``Transaction.overwrite``'s (delete and append in one commit).

    Public replacement: ``Transaction.overwrite`` taking data files instead of a frame, or a public isolation
    argument on ``delete``.
    """
    from pyiceberg.table.snapshots import Operation

    tx.delete(
        delete_filter=delete_filter,
        snapshot_properties=properties,
        branch=branch,
        _isolation_operation=Operation.OVERWRITE,
    )


@contextlib.contextmanager
def append_data_files(
    tx: Transaction, properties: dict[str, str], branch: str | None
) -> Iterator[DataFileAppender]:
    """Stage a snapshot in ``tx`` that adds the data files appended to the yielded producer, on ``branch``.

    Why private: ``Transaction._append_snapshot_producer`` picks a fast append or a merge append from the
    table's ``commit.manifest-merge.enabled`` property, exactly as ``Table.append``/``overwrite`` do; its
    ``commit_uuid`` names the data files written for it.

    Public replacement: ``tx.update_snapshot(snapshot_properties=..., branch=...).fast_append()`` (or
    ``.merge_append()``) is public but undocumented; it would need the manifest-merge choice made here.
    """
    with tx._append_snapshot_producer(properties, branch=branch) as producer:
        yield producer


# --- staged metadata, computed once per staged state (lakehouse.catalog) --------------------------------


def _staged_metadata(tx: Transaction) -> TableMetadata:
    from pyiceberg.table.update import update_table_metadata

    base, updates = tx._table.metadata, tx._updates
    memo = tx.__dict__.get("_featurelake_staged")
    if memo is not None and memo[0] is base and memo[1] is updates:
        return memo[2]
    # Nothing staged: the table's own metadata (PyIceberg would hand out a deep copy of it).
    staged = update_table_metadata(base, updates) if updates else base
    # The memo holds base and updates themselves, so their identities cannot be reused by new objects.
    tx.__dict__["_featurelake_staged"] = (base, updates, staged)
    return staged


@cache
def memoize_transaction_metadata() -> bool:
    """Make ``Transaction.table_metadata`` compute a transaction's staged metadata once per staged state.

    PyIceberg 0.12's property re-applies every staged update to the table's metadata and deep-copies the
    result on every access, and a snapshot producer reads it dozens of times per commit: a backfill's five
    commits made ~70 such copies, most of the CPU the commits spend outside I/O. The staged state changes only
    when ``_updates`` is rebound (staging makes a new tuple) or the table's ``metadata`` is (a commit, a
    refresh), so the result is kept with both and computed again when either changes. ``TableMetadata`` is a
    frozen model that PyIceberg replaces rather than changes, so handing out one copy is safe. Idempotent;
    returns whether the patch is in place (False when this PyIceberg lacks the attributes it reads).

    Why private: the memo is keyed on ``Transaction._table`` and ``Transaction._updates``.

    Public replacement: a cached ``table_metadata`` in PyIceberg (then this function can go).
    """
    current = Transaction.__dict__.get("table_metadata")
    if isinstance(current, property) and current.fget is _staged_metadata:
        return True
    stored = Transaction.__init__.__code__.co_names  # the attributes __init__ sets
    if not isinstance(current, property) or "_updates" not in stored or "_table" not in stored:
        return False
    Transaction.table_metadata = property(_staged_metadata)  # type: ignore[method-assign, assignment]
    return True


# --- custom table-metadata updates (maintenance.expiry) -----------------------------------------------


def metadata_update(
    update_type: type[U],
) -> Callable[[Callable[[U, TableMetadata], TableMetadata]], Callable[[U, TableMetadata], TableMetadata]]:
    """Decorator: teach PyIceberg how to apply an update of ``update_type`` to table metadata.

    ``apply(update, base_metadata)`` returns the new metadata; the update is recorded in the commit's update
    context (so the catalog persists it) after ``apply`` returned. Use for updates PyIceberg has no type for;
    they must be committed through ``Catalog.commit_table`` (the SQL catalog applies them in this process).

    Why private: ``pyiceberg.table.update._apply_table_update`` is the ``functools.singledispatch`` function
    that applies each ``TableUpdate`` type, and its third argument is a ``_TableMetadataUpdateContext``.
    featurelake registers ``TruncateSnapshotLog`` (``maintenance.expiry``) on it.

    Public replacement: none planned; Iceberg's REST spec has a fixed set of update actions. If PyIceberg cuts
    the snapshot log as Iceberg Java does when snapshots are removed, expiry can drop its own update.
    """
    from pyiceberg.table.update import _apply_table_update

    def register(
        apply: Callable[[U, TableMetadata], TableMetadata],
    ) -> Callable[[U, TableMetadata], TableMetadata]:
        def dispatched(update: U, base_metadata: TableMetadata, context: Any) -> TableMetadata:
            new = apply(update, base_metadata)
            context.add_update(update)
            return new

        _apply_table_update.register(update_type)(dispatched)
        return apply

    return register


__all__ = [
    "DataFileAppender",
    "append_data_files",
    "check_write_schema",
    "close_catalog",
    "delete_for_overwrite",
    "fast_overwrite_available",
    "memoize_transaction_metadata",
    "metadata_update",
    "sql_catalog_on_engine",
    "write_data_files",
]

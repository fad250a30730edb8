"""A project: its config, catalog, definitions and engine, opened lazily; what every component receives."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from featurelake.config import ProjectConfig
from featurelake.errors import UsageError
from featurelake.features.definitions import shown
from featurelake.features.loader import Definitions, load_definitions

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from featurelake.engines import Engine
    from featurelake.features.definitions import FeatureView
    from featurelake.lakehouse.storage import Storage

T = TypeVar("T")
#: ``namespace.table`` of plain identifiers (what featurelake itself creates).
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\.[A-Za-z_][A-Za-z0-9_]{0,127}")
Progress = Callable[[str], None]


class Project:
    """Lazy handles on one project's pieces; components receive it instead of loose configs."""

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config

    @property
    def root(self) -> Path:
        return self.config.root

    @property
    def namespace(self) -> str:
        return self.config.settings.namespace

    @cached_property
    def storage(self) -> Storage:
        """How to reach object storage (``storage`` section): every file featurelake touches goes through it."""
        from featurelake.lakehouse.storage import Storage

        return Storage.from_config(self.config.settings.storage)

    @cached_property
    def catalog(self) -> Catalog:
        from featurelake.lakehouse.catalog import open_catalog
        from featurelake.lakehouse.storage import writing

        c = self.config.settings.catalog
        with writing(self.config.state_dir, "create the project's state directory"):
            self.config.state_dir.mkdir(parents=True, exist_ok=True)
        return open_catalog(
            c.name,
            self.config.catalog_uri,
            self.config.warehouse,
            catalog_type=c.type,
            # storage first: a catalog property (or a REST catalog's own config) may override it
            properties={**self.storage.iceberg_properties(), **self.config.catalog_properties},
            lock_timeout=c.lock_timeout_seconds,
            retries=c.retries,
        )

    @cached_property
    def definitions(self) -> Definitions:
        timeout = self.config.settings.features.load_timeout.total_seconds()
        return load_definitions(self.config.definitions_file, timeout=timeout or None)

    @cached_property
    def engine(self) -> Engine:
        from featurelake.engines import load_engine

        return load_engine(self.config.settings.engine.type, self.catalog, self.root)

    def view(self, name: str) -> FeatureView:
        return self.definitions.view(name)

    def table_name(self, view: str) -> str:
        return f"{self.namespace}.{view}"

    def catalog_call(self, fn: Callable[[], T], what: str) -> T:
        """Run a catalog operation with the configured transient-failure retries.

        A local warehouse that cannot be written (``catalog.warehouse: /proc``, a read-only disk) is a
        ConfigError naming the setting, not a bare ``OSError``.
        """
        from featurelake.lakehouse.catalog import retry_transient

        c = self.config.settings.catalog
        try:
            return retry_transient(fn, what=what, uri=self.config.catalog_uri, retries=c.retries)
        except OSError as exc:
            warehouse = self.config.warehouse.removeprefix("file://")
            if "://" in warehouse or warehouse not in f"{exc.filename or ''} {exc}":
                raise
            from featurelake.lakehouse.storage import io_failure

            raise io_failure(exc, warehouse, f"{what} in the warehouse", setting="catalog.warehouse") from exc

    def load_table(self, view: str) -> Table:
        from pyiceberg.exceptions import NoSuchTableError

        ident = self.table_name(view)

        def load() -> Table:
            try:
                return self.catalog.load_table(ident)
            except (NoSuchTableError, ValueError) as exc:
                # PyIceberg raises ValueError for a malformed identifier (e.g. "../x"): still an unknown view.
                if view not in self.definitions.views:
                    self.definitions.view(view)  # raises: unknown view, listing the defined ones
                if isinstance(exc, ValueError):
                    raise
                raise UsageError(f"table {ident} does not exist: run `featurelake apply` first") from None

        return self.catalog_call(load, f"load {ident}")

    def load_any_table(self, name: str) -> Table:
        """A feature view by its bare name (:meth:`load_table`), or any table of the catalog named
        ``namespace.table``: ``predictions.<model>``, ``<namespace>._audits``, ``<namespace>._stats``, ..."""
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        if "." not in name:
            return self.load_table(name)
        ns = self.namespace
        tables = f"a feature view by its name, or a table as namespace.table (predictions.<model>, {ns}._audits, {ns}._stats, {ns}._rejected)"
        if not _TABLE_NAME.fullmatch(name):
            raise UsageError(f"{shown(name)} is not a table name: give {tables}")

        def load() -> Table:
            try:
                return self.catalog.load_table(name)
            except (NoSuchTableError, NoSuchNamespaceError):
                raise UsageError(f"there is no table {name} in the catalog: give {tables}") from None

        return self.catalog_call(load, f"load {name}")

    @property
    def audit_dir(self) -> Path:
        return self.config.state_dir / "audits"

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.close()
        if "catalog" in self.__dict__:
            from featurelake.lakehouse.compat import close_catalog

            close_catalog(self.catalog)

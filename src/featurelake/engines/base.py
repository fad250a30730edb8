"""The data-plane interface: what a backfill needs from an execution engine.

Frames are opaque to callers (an Arrow table for the local engine, a DataFrame for Spark): a job only passes
them from ``compute`` to ``write_window`` and ``audit``. Catalog metadata (branches, publish, history) stays
in ``featurelake.lakehouse`` and is shared by every engine.
"""

from __future__ import annotations

import glob
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from featurelake.config import BackfillConfig
from featurelake.errors import ConfigError
from featurelake.features.definitions import FeatureView, Source
from featurelake.lakehouse.storage import Storage, is_remote, is_storage_failure, storage_error
from featurelake.lakehouse.window import Window
from featurelake.validation.checks import Check, CheckResult

Frame = Any


class Engine(ABC):
    """Computes, writes, reads and audits feature data."""

    name: str = "engine"
    #: Whether :meth:`write_window` creates a missing branch in the write's own commit (else a backfill
    #: creates the branch first, in a commit of its own).
    creates_branch: bool = False

    def __init__(self, catalog: Catalog, project_dir: Any) -> None:
        self.catalog = catalog
        self.project_dir = project_dir

    @property
    def storage(self) -> Storage:
        """Object storage as the catalog's FileIO properties describe it (the project's ``storage`` section)."""
        return Storage.from_properties(self.catalog.properties)

    @abstractmethod
    def source_schema(self, view: FeatureView) -> pa.Schema:
        """The Arrow schema the view's query produces (run over the source with no rows)."""

    @abstractmethod
    def compute(self, view: FeatureView, window: Window, table: Table) -> Frame:
        """Run the view's query over its source restricted to ``window`` and conform it to ``table``'s schema.

        Raises SchemaError when the output's columns or types do not match the definition and DataError when
        rows cannot be written (null keys, timestamps outside the window).
        """

    def compute_backfill(
        self,
        view: FeatureView,
        window: Window,
        table: Table,
        settings: BackfillConfig,
        progress: Callable[[str], None] | None = None,
    ) -> Frame:
        """The rows a backfill of ``window`` writes and audits. By default :meth:`compute` of the whole window;
        an engine may instead compute (and write ahead) bounded batches as ``settings`` allow, in a frame
        :meth:`write_window`, :meth:`audit` and :meth:`batched` know."""
        if progress is not None:
            progress(f"computing {view.name} for {window}")
        return self.compute(view, window, table)

    def batched(self, frame: Frame) -> bool:
        """Whether ``frame`` was computed (and its files written) a batch at a time."""
        return False

    @abstractmethod
    def write_window(
        self,
        table: Table,
        frame: Frame,
        window: Window,
        timestamp_field: str,
        branch: str,
        properties: dict[str, str],
    ) -> int:
        """Replace the window's day partitions on ``branch`` with ``frame``; returns the branch's new tip."""

    @abstractmethod
    def read(self, table: Table, *, snapshot_id: int | None = None, row_filter: Any = None) -> Frame:
        """Rows of ``table`` at ``snapshot_id`` (default: main), optionally filtered by an Iceberg expression."""

    def read_window(self, table: Table, snapshot_id: int, window: Window, timestamp_field: str) -> Frame:
        """The rows of ``window`` at ``snapshot_id`` (a kept branch's tip): what a re-audit audits and a
        publish that has to rebase writes again."""
        return self.read(table, snapshot_id=snapshot_id, row_filter=window.iceberg_filter(timestamp_field))

    @abstractmethod
    def audit(self, frame: Frame, checks: list[Check]) -> tuple[int, list[CheckResult]]:
        """Evaluate ``checks`` over ``frame`` in as few passes as possible; returns (rows, results)."""

    @abstractmethod
    def to_arrow(self, frame: Frame) -> pa.Table:
        """Materialise a frame as Arrow (for small results and tests)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources (sessions, connections)."""


def source_files(
    source: Source, project_dir: Any, view: str, *, urls: bool = False, storage: Storage | None = None
) -> list[str]:
    """The files a Parquet source names: its glob resolved against the project directory, sorted.

    ``urls``: the engine reads ``scheme://`` locations itself (Spark), so they are passed through as is.
    Otherwise a URL (``s3://bucket/prefix/*.parquet``, a directory of hive-style partitions) is listed through
    ``storage`` and the matching objects come back as URLs.
    """
    pattern = source.location
    if urls and "://" in pattern:
        return [pattern]
    if is_remote(pattern):
        store = storage or Storage()
        try:
            files = store.glob(pattern)
        except OSError as exc:
            if is_storage_failure(exc):
                raise storage_error(exc, f"list the source {pattern} of view {view!r}") from exc
            raise
        if not files:
            raise ConfigError(
                f"view {view!r}: source {pattern!r} matches no objects (listed with {store.describe()}); "
                "upload the data first, or fix the path in features.py"
            )
        return files
    full = pattern if Path(pattern).is_absolute() or "://" in pattern else str(Path(project_dir) / pattern)
    files = sorted(glob.glob(full, recursive=True))
    if not files:
        raise ConfigError(
            f"view {view!r}: source glob {pattern!r} matches no files (looked for {full}); "
            "generate or copy the data first, or fix the path in features.py"
        )
    return files

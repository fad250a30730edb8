"""Who does a maintenance run's work: one small interface with the three operations, picked once per run.

:class:`MaintenanceBackend` has a local implementation here (:class:`LocalMaintenance`: the PyIceberg code in
``compaction.py``, ``expiry.py``, ``orphans.py``) and a Spark one beside its code (``spark.SparkMaintenance``:
Iceberg's Spark actions under the same policies and report). :func:`backend_for` picks it from
``engine.type`` through a lazy name -> loader map.

Each operation takes the table as ``load``, a callable that returns it freshly loaded, and ``call(fn, what)``
wraps catalog commits (transient retries); both implementations refuse the same unsafe ages and report alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyiceberg.table import Table

from featurelake.engines import load_backend
from featurelake.maintenance.compaction import rewrite_data_files
from featurelake.maintenance.expiry import RetentionPolicy, expire_snapshots
from featurelake.maintenance.files import Progress
from featurelake.maintenance.orphans import remove_orphan_files
from featurelake.maintenance.report import CompactionResult, ExpiryResult, OrphanResult

if TYPE_CHECKING:
    from featurelake.project import Project

Load = Callable[[], Table]
Call = Callable[[Callable[[], Any], str], Any]


class MaintenanceBackend(ABC):
    """Compacts, expires snapshots of and removes orphans from one table at a time."""

    def __init__(self, project: Project) -> None:
        self.project = project

    @abstractmethod
    def compact(
        self,
        load: Load,
        *,
        target_file_size: int,
        properties: dict[str, str],
        min_input_files: int = 2,
        dry_run: bool = False,
        attempts: int = 5,
        call: Call | None = None,
        progress: Progress | None = None,
    ) -> CompactionResult:
        """Bin-pack main's small files per partition into files of up to ``target_file_size``; one commit with
        ``properties`` (lineage) on its snapshot."""

    @abstractmethod
    def expire(
        self,
        load: Load,
        policy: RetentionPolicy,
        *,
        dry_run: bool = False,
        force: bool = False,
        now: datetime | None = None,
        attempts: int = 5,
        call: Call | None = None,
        progress: Progress | None = None,
    ) -> ExpiryResult:
        """Expire the snapshots ``policy`` does not keep and delete the files only they reached."""

    @abstractmethod
    def remove_orphans(
        self,
        load: Load,
        *,
        min_age: timedelta,
        dry_run: bool = False,
        force: bool = False,
        now: datetime | None = None,
        other_locations: Iterable[str] = (),
        progress: Progress | None = None,
    ) -> OrphanResult:
        """Delete files under the table's location that no metadata reaches and that are older than ``min_age``
        (files under ``other_locations``, other tables' locations, are not the table's)."""


class LocalMaintenance(MaintenanceBackend):
    """PyIceberg and Arrow on this machine."""

    def compact(
        self,
        load: Load,
        *,
        target_file_size: int,
        properties: dict[str, str],
        min_input_files: int = 2,
        dry_run: bool = False,
        attempts: int = 5,
        call: Call | None = None,
        progress: Progress | None = None,
    ) -> CompactionResult:
        return rewrite_data_files(
            load,
            target_file_size=target_file_size,
            properties=properties,
            min_input_files=min_input_files,
            dry_run=dry_run,
            attempts=attempts,
            call=call,
            progress=progress,
        )

    def expire(
        self,
        load: Load,
        policy: RetentionPolicy,
        *,
        dry_run: bool = False,
        force: bool = False,
        now: datetime | None = None,
        attempts: int = 5,
        call: Call | None = None,
        progress: Progress | None = None,
    ) -> ExpiryResult:
        return expire_snapshots(
            load,
            policy,
            dry_run=dry_run,
            force=force,
            now=now,
            attempts=attempts,
            call=call,
            progress=progress,
        )

    def remove_orphans(
        self,
        load: Load,
        *,
        min_age: timedelta,
        dry_run: bool = False,
        force: bool = False,
        now: datetime | None = None,
        other_locations: Iterable[str] = (),
        progress: Progress | None = None,
    ) -> OrphanResult:
        return remove_orphan_files(
            load,
            min_age=min_age,
            dry_run=dry_run,
            force=force,
            now=now,
            other_locations=other_locations,
            progress=progress,
        )


# engine.type -> (module, class, extra that provides its dependencies)
AVAILABLE_MAINTENANCE: dict[str, tuple[str, str, str | None]] = {
    "local": ("featurelake.maintenance.backend", "LocalMaintenance", None),
    "spark": ("featurelake.maintenance.spark", "SparkMaintenance", "spark"),
}


def backend_for(project: Project) -> MaintenanceBackend:
    """The maintenance backend of ``project``'s engine; a missing extra gives an install hint."""
    engine_type = project.config.settings.engine.type
    cls: type[MaintenanceBackend] = load_backend(AVAILABLE_MAINTENANCE, engine_type, "maintenance")
    return cls(project)


__all__ = ["AVAILABLE_MAINTENANCE", "LocalMaintenance", "MaintenanceBackend", "backend_for"]

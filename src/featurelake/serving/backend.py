"""Where the online sync reads Iceberg and writes the store: one small interface, picked once per sync.

:class:`SyncBackend` has a local implementation here (:class:`LocalSync`: ``sync.sync_view``, on this machine)
and a Spark one beside its code (``sync_spark.SparkSync``: Spark reads the rows, its executors write Redis).
:func:`backend_for` picks it from ``engine.type`` through a lazy name -> loader map; a store that only this
machine can write (SQLite: one local file) is always synced locally.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from featurelake.engines import load_backend
from featurelake.serving.sync import SyncProgress, SyncResult, sync_view

if TYPE_CHECKING:
    from featurelake.features.definitions import FeatureView
    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore


class SyncBackend(ABC):
    """Brings one view's keys in a store up to main's current snapshot."""

    def __init__(self, project: Project) -> None:
        self.project = project

    @abstractmethod
    def sync_view(
        self,
        store: OnlineStore,
        view: FeatureView,
        *,
        full: bool = False,
        progress: SyncProgress | None = None,
    ) -> SyncResult:
        """Sync ``view`` into ``store`` incrementally from its watermark (``full``: every key, stale ones deleted)."""


class LocalSync(SyncBackend):
    """Read the changed files with PyIceberg and DuckDB and write the store from this process."""

    def sync_view(
        self,
        store: OnlineStore,
        view: FeatureView,
        *,
        full: bool = False,
        progress: SyncProgress | None = None,
    ) -> SyncResult:
        return sync_view(self.project, store, view, full=full, progress=progress)


# engine.type -> (module, class, extra that provides its dependencies)
AVAILABLE_SYNCS: dict[str, tuple[str, str, str | None]] = {
    "local": ("featurelake.serving.backend", "LocalSync", None),
    "spark": ("featurelake.serving.sync_spark", "SparkSync", "spark"),
}
#: Stores a non-local backend may write (from Spark executors); any other store is synced locally.
DISTRIBUTED_STORES = ("redis",)


def backend_for(project: Project, store: OnlineStore) -> SyncBackend:
    """The sync backend of ``project``'s engine for ``store``; a missing extra gives an install hint."""
    engine_type = project.config.settings.engine.type
    if store.type_name not in DISTRIBUTED_STORES:
        engine_type = "local"
    cls: type[SyncBackend] = load_backend(AVAILABLE_SYNCS, engine_type, "online sync")
    return cls(project)


__all__ = ["AVAILABLE_SYNCS", "DISTRIBUTED_STORES", "LocalSync", "SyncBackend", "backend_for"]

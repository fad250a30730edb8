"""Job: sync published feature views from Iceberg main to the online store (composition only).

The work is ``serving.backend``'s: with ``engine.type: spark`` and a Redis store the rows are read by Spark
and written by its executors (``serving/sync_spark.py``); the SQLite store is one local file, so it is always
synced locally (``serving/sync.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurelake.monitoring.jobs import monitored_job
from featurelake.serving import open_store
from featurelake.serving.backend import backend_for
from featurelake.serving.sync import SyncProgress, SyncResult

if TYPE_CHECKING:
    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore


@monitored_job("sync", per_view=False)
def run_sync(
    project: Project,
    views: list[str] | None = None,
    *,
    store: OnlineStore | None = None,
    full: bool = False,
    progress: SyncProgress | None = None,
) -> list[SyncResult]:
    """Sync ``views`` (default: every view in features.py) into ``store`` (default: the configured one).

    Stops at the first view that fails; views synced before it keep their new watermarks.
    """
    names = views if views else sorted(project.definitions.views)
    defs = [project.view(n) for n in names]  # unknown names fail before anything is written
    own = store is None
    target = store if store is not None else open_store(project.config)
    try:
        backend = backend_for(project, target)
        return [backend.sync_view(target, v, full=full, progress=progress) for v in defs]
    finally:
        if own:
            target.close()


__all__ = ["run_sync"]

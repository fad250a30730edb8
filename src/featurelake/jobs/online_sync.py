"""Job: sync published feature views from Iceberg main to the online store (composition only).

With ``engine.type: spark`` and a Redis store the rows are read by Spark and written by its executors
(``engines/spark_sync.py``); the SQLite store is one local file, so it is always synced locally.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from featurelake.monitoring.jobs import monitored_job
from featurelake.serving import open_store
from featurelake.serving.sync import SyncProgress, SyncResult, sync_view

if TYPE_CHECKING:
    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore


def _syncer(project: Project, store: OnlineStore) -> Callable[..., SyncResult]:
    """The sync to run: on Spark when the project's engine is Spark and the store is Redis."""
    if project.config.settings.engine.type == "spark" and store.type_name == "redis":
        from featurelake.engines.spark import SparkEngine
        from featurelake.serving.sync_spark import sync_view_spark

        engine = project.engine
        assert isinstance(engine, SparkEngine)
        return functools.partial(sync_view_spark, engine=engine)
    return sync_view


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
        sync = _syncer(project, target)
        return [sync(project, target, v, full=full, progress=progress) for v in defs]
    finally:
        if own:
            target.close()


__all__ = ["run_sync"]

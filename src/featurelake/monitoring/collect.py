"""Gauges of the world as it is now: online store keys and sync lag per view, model ages per stage.

They are measured rather than emitted by a job: sync lag grows while nobody runs a job (a backfill published,
no sync yet), so the sync job records them when it ends and ``featurelake monitor`` measures them again
before it evaluates (``monitoring.collect``). A component that is not set up (no registry database, a view
never synced) is skipped, never created; a component that fails to answer is logged and skipped, so
monitoring never stops on it. Whether a view was ever synced is known outside the store too: the sync's
keep-alive tag in the catalog. So a store that lost everything (Redis restarted without persistence or
flushed, the SQLite file deleted) reports 0 keys for each view synced before, instead of looking unused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC
from typing import TYPE_CHECKING

from featurelake.errors import FeaturelakeError
from featurelake.monitoring.recorder import Recorder

if TYPE_CHECKING:
    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore

log = logging.getLogger("featurelake.monitoring")

COLLECTORS = ("online", "models")


def _sqlite_file_missing(project: Project, uri: str) -> bool:
    prefix = "sqlite:///"
    resolved = project.config.sqlalchemy_uri(uri)
    return resolved.startswith(prefix) and not project.config.path(resolved[len(prefix) :]).exists()


def sync_lag(project: Project, view: str, synced_snapshot_id: int, now: float) -> tuple[int, float]:
    """(snapshots on main after ``synced_snapshot_id``, seconds since the oldest of them was committed)."""
    from pyiceberg.table.snapshots import ancestors_of

    from featurelake.lakehouse.wap import main_snapshot_id

    tbl = project.load_table(view)
    head = main_snapshot_id(tbl)
    if head is None or head == synced_snapshot_id:
        return 0, 0.0
    behind, oldest_ms = 0, None
    for snap in ancestors_of(tbl.metadata.snapshot_by_id(head), tbl.metadata):
        if snap.snapshot_id == synced_snapshot_id:
            break
        behind += 1
        oldest_ms = snap.timestamp_ms
    seconds = max(0.0, now - oldest_ms / 1000) if oldest_ms is not None else 0.0
    return behind, seconds


def _synced_before(project: Project, view: str, tag: str) -> int | None:
    """The snapshot ``view`` was last synced from according to the catalog (the sync's keep-alive tag
    ``online-sync-<store type>-<project>``), or None when this project never synced it to this kind of store.

    This is the record of "was synced" that lives outside the store: a Redis restarted without persistence,
    a flushed Redis or a deleted SQLite file loses the watermark together with the keys, the tag stays.
    """
    from pyiceberg.table.refs import SnapshotRefType

    try:
        tbl = project.load_table(view)
    except FeaturelakeError:
        return None  # a view not applied yet was never synced
    ref = tbl.metadata.refs.get(tag)
    if ref is None or ref.snapshot_ref_type != SnapshotRefType.TAG:
        return None
    return ref.snapshot_id


def online_gauges(
    project: Project,
    rec: Recorder,
    *,
    store: OnlineStore | None = None,
    views: Iterable[str] | None = None,
    now: float | None = None,
) -> int:
    """Keys and sync lag of every synced view (default: all views) into ``rec``; returns views measured.

    A view counts as synced when the store holds its watermark, or when the catalog says it was synced (the
    keep-alive tag) even though the store lost its watermark: then its keys are counted as the store has them
    (0 for a deleted SQLite file, which is not recreated), so ``online_store_empty`` fires.
    """
    cfg = project.config.settings.online_store
    file_missing = store is None and cfg.type == "sqlite" and not project.config.path(cfg.path).exists()
    if file_missing and _sqlite_file_missing(project, project.config.catalog_uri):
        return 0  # neither an online store nor a catalog: nothing was ever synced
    from featurelake.serving import open_store
    from featurelake.serving.sync import tag_name

    own = store is None
    target = open_store(project.config) if store is None else store  # SQLite opens its file lazily
    ts = time.time() if now is None else now
    measured = 0
    try:
        tag = tag_name(target)
        for view in sorted(views if views is not None else project.definitions.views):
            watermark = None if file_missing else target.get_watermark(view)
            synced = watermark.snapshot_id if watermark is not None else _synced_before(project, view, tag)
            if synced is None:
                continue  # never synced: an empty store here is expected, not an alert
            if watermark is None:
                log.warning(
                    "the online store %s has no sync watermark for %s, which was synced before (tag %s): "
                    "it lost its data (restarted without persistence, flushed or deleted?); run "
                    "`featurelake sync %s`",
                    target.location,
                    view,
                    tag,
                    view,
                )
            keys = 0 if file_missing else target.count(view)
            behind, seconds = sync_lag(project, view, synced, ts)
            rec.online_store(view, keys=keys, lag_snapshots=behind, lag_seconds=seconds)
            measured += 1
    finally:
        if own:
            target.close()
    return measured


def model_gauges(project: Project, rec: Recorder, *, now: float | None = None) -> int:
    """Age in hours of every model's Production and Staging versions into ``rec``; returns versions measured."""
    if _sqlite_file_missing(project, project.config.settings.registry.uri.get_secret_value()):
        return 0
    from featurelake.registry import ModelRegistry

    ts = time.time() if now is None else now
    registry = ModelRegistry.for_project(project)
    measured = 0
    try:
        for summary in registry.list_models():
            for stage, version in [
                ("production", summary.production),
                *(("staging", v) for v in summary.staging),
            ]:
                if version is None:
                    continue
                created = registry.get(summary.name, version).created_at
                if created.tzinfo is None:
                    created = created.replace(tzinfo=UTC)
                rec.model_age(summary.name, stage, max(0.0, ts - created.timestamp()) / 3600)
                measured += 1
    finally:
        registry.close()
    return measured


def collect_live(
    project: Project, names: Iterable[str] = COLLECTORS, *, now: float | None = None
) -> list[str]:
    """Measure the live gauges and record them (state, Pushgateway); returns the problems, which are logged."""
    rec = Recorder("monitor")
    problems = []
    for name in names:
        try:
            if name == "online":
                online_gauges(project, rec, now=now)
            elif name == "models":
                model_gauges(project, rec, now=now)
        except Exception as exc:
            problems.append(f"could not measure {name} gauges: {exc}")
            log.error("could not measure %s gauges for monitoring: %s", name, exc)
    rec.flush(project, ts=now)
    return problems


__all__ = ["COLLECTORS", "collect_live", "model_gauges", "online_gauges", "sync_lag"]

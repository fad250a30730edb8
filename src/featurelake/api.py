"""The Python API: ``fl = featurelake.open(".")``, a thin facade whose methods mirror the CLI.

Each method delegates to its component (jobs, registry, serving, monitoring); heavy modules are imported
where a method needs them, so opening a project stays cheap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurelake.config import ProjectConfig
from featurelake.errors import UsageError
from featurelake.project import Project

if TYPE_CHECKING:
    import pyarrow as pa

    from featurelake.auditing.audit_log import LoggedAudit
    from featurelake.features.apply import ApplyResult
    from featurelake.features.loader import Definitions
    from featurelake.features.service_log import ServiceRecord
    from featurelake.jobs.backfill import BackfillResult
    from featurelake.jobs.batch_predict import PredictionResult
    from featurelake.lakehouse.history import SnapshotInfo
    from featurelake.maintenance import TableMaintenance
    from featurelake.monitoring.alerts import MonitorResult
    from featurelake.prediction.scoring import PredictProgress
    from featurelake.registry import ModelRegistry
    from featurelake.serving.consistency import ConsistencyReport
    from featurelake.serving.lookup import OnlineService
    from featurelake.serving.sync import SyncProgress, SyncResult
    from featurelake.streaming.ingest import BatchOutcome, IngestResult
    from featurelake.streaming.push import PushResult, PushService
    from featurelake.training import Provenance
    from featurelake.validation.audit import AuditReport
    from featurelake.validation.checks import ReferenceStats

Progress = Callable[[str], None]


class Featurelake:
    """The Python API: ``fl = featurelake.open(".")``; each method delegates to its component."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def __enter__(self) -> Featurelake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if "pusher" in self.__dict__:
            self.pusher.close()
        if "online" in self.__dict__:
            self.online.close()
        if "models" in self.__dict__:
            self.models.close()
        self.project.close()

    @cached_property
    def models(self) -> ModelRegistry:
        """The model registry: ``fl.models.register(...)``, ``.promote(...)``, ``.resolve("fraud@production")``."""
        from featurelake.prediction.flavors.check import ArtifactChecker
        from featurelake.registry import ModelRegistry

        registry = ModelRegistry.for_project(self.project)
        # Registration checks each artifact with the flavors (which the registry layer cannot import).
        registry.artifact_check = ArtifactChecker(
            allow_pickle=self.project.config.settings.registry.allow_pickle
        )
        return registry

    def training_set(
        self,
        entities: Any,
        features: list[str] | str | None = None,
        *,
        service: str | None = None,
        as_of: datetime | str | Mapping[str, int | None] | None = None,
        provenance: Provenance | pa.Table | dict[str, Any] | str | Path | None = None,
        full_feature_names: bool = False,
    ) -> pa.Table:
        """Point-in-time correct features for each row of ``entities`` (Arrow, pandas, or a Parquet/CSV path).

        ``entities`` holds the views' join keys and an ``event_timestamp`` (timestamptz); each feature
        (``"view:feature"``) is the latest value with ``event_ts <= event_timestamp`` within the view's ttl,
        else null; one output row per entity row, in order. ``service`` takes the features of an applied
        feature service instead (recorded in the provenance with its version); on-demand features are computed
        after the join, their request fields read from the entity frame's columns. ``as_of`` reads each view at main as of a time,
        or at given snapshots (``{view: snapshot_id}``); default: main now. ``provenance`` (a previous
        training set, its Parquet path or its provenance) rebuilds exactly that set. The result carries its
        provenance as JSON in the schema metadata key ``featurelake.provenance``.
        """
        from featurelake.training import build_training_set

        return build_training_set(
            self.project,
            entities,
            features,
            service=service,
            as_of=as_of,
            provenance=provenance,
            full_feature_names=full_feature_names,
        ).table

    @cached_property
    def online(self) -> OnlineService:
        """Online lookups: ``fl.online.get("user_features", [1, 2])`` (see docs/serving.md)."""
        from featurelake.serving import open_store
        from featurelake.serving.lookup import OnlineService, table_key_types

        return OnlineService(
            self.project.definitions,
            open_store(self.project.config),
            key_types=table_key_types(self.project),
            max_entities=self.project.config.settings.server.max_entities,
        )

    @cached_property
    def pusher(self) -> PushService:
        """The push service behind :meth:`push` (its write-ahead buffer and micro-batch writers)."""
        from featurelake.streaming.push import PushService

        return PushService(self.project, self.online.store)

    def push(self, view: str, rows: Any, *, to: str = "online") -> PushResult:
        """Feast's push: write ``rows`` (Arrow, pandas, a list of dicts or a dict of columns; every column of
        ``view``'s table) to the online store (``to="online"``, visible to the next lookup), to the Iceberg
        table (``"offline"``: buffered durably, then published through Write-Audit-Publish before this returns)
        or both (``"online_and_offline"``). See docs/streaming.md."""
        result = self.pusher.push(view, rows, to)
        if result.buffered:
            result.published = self.pusher.flush(force=True, view=view)
        return result

    def ingest(
        self,
        view: str,
        url: str,
        *,
        max_batches: int | None = None,
        until_idle: bool = False,
        on_batch: Callable[[BatchOutcome], None] | None = None,
        stop: threading.Event | None = None,
        **settings: Any,
    ) -> IngestResult:
        """``featurelake ingest VIEW --from URL``: consume a Redis stream (``redis://HOST:PORT[/DB]/STREAM``) or
        a NATS JetStream subject (``nats://HOST:PORT/SUBJECT``) into ``view`` in audited micro-batches until
        ``max_batches``, an idle poll (``until_idle``) or ``stop`` is set; other keywords override ``ingest.*``
        (``batch_rows``, ``batch_seconds``, ``poll_seconds``, ``online``, ``on_refused``). See docs/streaming.md."""
        from featurelake.jobs.ingest import run_ingest
        from featurelake.streaming.ingest import IngestSettings

        cfg = IngestSettings.from_config(
            self.project.config.settings.ingest, max_batches=max_batches, until_idle=until_idle, **settings
        )
        store = self.online.store if cfg.online else None
        return run_ingest(self.project, view, url, settings=cfg, store=store, on_batch=on_batch, stop=stop)

    def sync(
        self, view: str | None = None, *, full: bool = False, progress: SyncProgress | None = None
    ) -> list[SyncResult]:
        """Sync ``view`` (default: every view) from Iceberg main to the online store, incrementally."""
        from featurelake.jobs.online_sync import run_sync

        return run_sync(
            self.project, [view] if view else None, store=self.online.store, full=full, progress=progress
        )

    def consistency(
        self, view: str, *, sample: int = 1000, seed: int = 0, now: datetime | None = None
    ) -> ConsistencyReport:
        """Compare ``view``'s online store with Iceberg main's latest value per key, on ``sample`` keys drawn
        with ``seed`` (0: every key); records ``featurelake_online_consistency_mismatch_ratio`` (see
        docs/streaming.md#consistency)."""
        from featurelake.jobs.consistency import run_consistency

        return run_consistency(self.project, view, store=self.online.store, sample=sample, seed=seed, now=now)

    @property
    def definitions(self) -> Definitions:
        return self.project.definitions

    def services(self, *, history: bool = False) -> list[ServiceRecord]:
        """The feature services applied to the catalog (name, version, features, description), each with how
        features.py compares (``state``); ``history``: every recorded version and removal, oldest first."""
        from featurelake.features.service_log import listing, read_records

        project = self.project
        records = read_records(project.catalog, project.namespace, project.catalog_call)
        return listing(records, project.definitions.service_features, history=history)

    def apply(self, *, allow_breaking: bool = False, dry_run: bool = False) -> list[ApplyResult]:
        from featurelake.jobs.apply import run_apply

        return run_apply(self.project, allow_breaking=allow_breaking, dry_run=dry_run)

    def backfill(
        self, view: str, start: Any, end: Any, *, run_id: str | None = None, progress: Progress | None = None
    ) -> BackfillResult:
        from featurelake.jobs.backfill import run_backfill

        return run_backfill(self.project, view, start, end, run_id=run_id, progress=progress)

    def audit(self, view: str, run_id: str) -> AuditReport:
        from featurelake.jobs.backfill import audit_run

        return audit_run(self.project, view, run_id)

    def publish(self, view: str, run_id: str, *, progress: Progress | None = None) -> BackfillResult:
        from featurelake.jobs.backfill import publish_run

        return publish_run(self.project, view, run_id, progress=progress)

    def audits(self, view: str, *, run_id: str | None = None) -> list[LoggedAudit]:
        """The audit log of ``view`` (every audit's verdicts, newest first), from ``<namespace>._audits``."""
        from featurelake.auditing import audit_log

        self.project.view(view)
        return audit_log.read(self.project, view, run_id=run_id)

    def stats(self, view: str, *, snapshot: str | int | None = None) -> ReferenceStats:
        """Feature statistics of ``view`` at main (or a snapshot id, tag or branch), from ``<namespace>._stats``."""
        from featurelake.auditing import stats_log

        definition = self.project.view(view)
        tbl = self.project.load_table(view)
        sid, label, problem = stats_log.resolve_reference(tbl, snapshot)
        if problem:
            raise UsageError(problem.replace("; fix the check", "; see `featurelake history`"))
        return stats_log.snapshot_stats(self.project, definition, tbl, sid, label)

    def discard(self, view: str, run_id: str) -> int:
        """Remove the kept branch ``audit_<run_id>`` (a refused or unpublished run); returns its tip."""
        from featurelake.errors import UsageError
        from featurelake.lakehouse import lineage, wap

        branch = wap.branch_name(lineage.check_run_id(run_id))
        tbl = self.project.load_table(view)
        tip = wap.ref_snapshot_id(tbl, branch)
        if tip is None:
            raise UsageError(f"no branch {branch} in {self.project.table_name(view)}: nothing to discard")
        self.project.catalog_call(lambda: wap.remove_branch(tbl, branch), f"remove {branch}")
        return tip

    def history(self, view: str, *, all_snapshots: bool = False) -> list[SnapshotInfo]:
        from featurelake.lakehouse.history import history

        return history(self.project.load_any_table(view), all_snapshots=all_snapshots)

    def read(
        self, view: str, *, as_of: datetime | str | None = None, snapshot_id: int | None = None
    ) -> pa.Table:
        """Time travel: the rows at ``snapshot_id``, at main as of ``as_of``, or now, of a feature view (its
        bare name) or of any table of the project as ``namespace.table`` (``predictions.<model>``,
        ``<namespace>._audits``, ``<namespace>._stats``)."""
        from featurelake.lakehouse.history import resolve_snapshot
        from featurelake.lakehouse.window import parse_timestamp

        tbl = self.project.load_any_table(view)
        ts = parse_timestamp(as_of, "--as-of") if as_of is not None else None
        sid = resolve_snapshot(tbl, as_of=ts, snapshot_id=snapshot_id)
        if sid is None:
            return tbl.schema().as_arrow().empty_table()
        return self.project.engine.to_arrow(self.project.engine.read(tbl, snapshot_id=sid))

    def maintain(
        self,
        view: str | None = None,
        *,
        all_tables: bool = False,
        compact: bool = False,
        expire: bool = False,
        remove_orphans: bool = False,
        expire_older_than: str | timedelta | None = None,
        retain_last: int | None = None,
        orphan_min_age: str | timedelta | None = None,
        target_file_size: str | int | None = None,
        dry_run: bool = False,
        force: bool = False,
        now: datetime | None = None,
        progress: Progress | None = None,
    ) -> list[TableMaintenance]:
        """Compact, expire snapshots and remove orphans of ``view`` (or ``all_tables``); none chosen = all.

        Defaults come from the config's ``maintenance`` section; ``now`` evaluates ages as of another time.
        """
        from featurelake.jobs.maintain import run_maintain
        from featurelake.maintenance.request import MaintenanceRequest

        request = MaintenanceRequest(
            view, all_tables=all_tables, compact=compact, expire=expire, remove_orphans=remove_orphans,
            expire_older_than=expire_older_than, retain_last=retain_last, orphan_min_age=orphan_min_age,
            target_file_size=target_file_size, dry_run=dry_run, force=force, now=now,
        )  # fmt: skip
        return run_maintain(self.project, request, progress=progress)

    def monitor(self, *, now: datetime | float | None = None, notify: bool = True) -> MonitorResult:
        """Evaluate the alert rules now and notify the channels (see docs/monitoring.md)."""
        from featurelake.monitoring.alerts import monitor

        return monitor(self.project, now=now, notify=notify)

    def predict(
        self,
        model: str,
        view: str | None = None,
        *,
        as_of: datetime | str | None = None,
        snapshot_id: int | None = None,
        where: str | None = None,
        output: str | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        max_age: str | timedelta | None = None,
        run_id: str | None = None,
        nan_policy: str | None = None,
        progress: PredictProgress | None = None,
    ) -> PredictionResult:
        """Score ``view`` with ``model`` (``NAME`` = Production, ``NAME@1.2.0``, ``@staging``, ``@alias``) into
        ``predictions.<model>`` through Write-Audit-Publish (see docs/prediction.md)."""
        from featurelake.jobs.batch_predict import run_predict
        from featurelake.prediction.request import PredictRequest

        request = PredictRequest(
            model, view, as_of=as_of, snapshot_id=snapshot_id, where=where, output=output, start=start,
            end=end, max_age=max_age, run_id=run_id, nan_policy=nan_policy,
        )  # fmt: skip
        return run_predict(self.project, self.models, request, progress=progress)


def open(project_dir: str | Path = ".") -> Featurelake:
    """Open the project in ``project_dir`` (it must hold ``featurelake.yaml``)."""
    return Featurelake(Project(ProjectConfig.load(project_dir)))

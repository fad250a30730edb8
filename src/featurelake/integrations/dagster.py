"""Dagster: ``definitions(project_dir)`` returns a ``dagster.Definitions`` for a featurelake project.

- One **daily-partitioned asset per feature view** (key ``[<namespace>, <view>]``): materializing a
  partition (or a range, in one run: ``BackfillPolicy.single_run``) is ``fl.backfill`` of those UTC days
  through Write-Audit-Publish, with a run id derived from the days and the Dagster run
  (``20240103_3fa9c1d2``). A view whose ``Source.table`` is another view depends on it (over its
  ``lookback``, too); any other source table is an external asset.
- The view's **checks are asset checks** (``null_rate_amount_avg_1d``, ``row_count``...), each with its audit
  verdict (observed value, limit, message). A **refused audit fails the materialization**: the failure
  carries the report paths and the kept branch, and ``main`` is unchanged (featurelake never published).
- Every materialization carries its **lineage** as metadata: snapshot id, code-version, rows, window,
  run id, audit report path.
- One daily asset per **scheduled model** (key ``[predictions, <model>]``) after its view: the day's rows
  scored by ``fl.predict`` into ``predictions.<model>``.
- ``online/<view>`` assets, materialized by the **sensor** ``featurelake_sync_after_publish`` after each
  new publish of their view (``fl.sync``, incremental).
- **Schedules** from ``orchestration.schedules`` (UTC): ``featurelake_daily_schedule`` (views and
  predictions of the day that ended), ``featurelake_compaction_schedule`` (weekly),
  ``featurelake_expiry_schedule`` (daily) and ``featurelake_orphans_schedule`` (weekly), running
  ``fl.maintain(all_tables=True, ...)``. Schedules and the sensor start RUNNING once deployed.
"""

import json
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurelake.errors import AuditFailed, ConfigError

try:
    import dagster as dg
    from dagster import AssetExecutionContext, OpExecutionContext
except ImportError as exc:  # tests/test_dagster.py: test_missing_extras_name_their_install
    raise ConfigError(
        f"featurelake.integrations.dagster needs Dagster ({exc}): pip install 'featurelake[dagster]'"
    ) from exc

from featurelake.integrations import runs
from featurelake.integrations.shape import (
    CheckSpec,
    PredictionTask,
    ProjectShape,
    ViewTask,
    project_shape,
    run_id_for,
    verdicts,
)
from featurelake.validation.audit import AuditReport

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

DAILY_JOB = "featurelake_daily"
SYNC_JOB = "featurelake_sync"
SYNC_SENSOR = "featurelake_sync_after_publish"
MAINTENANCE: tuple[runs.MaintenanceKind, ...] = ("compaction", "expiry", "orphans")


def view_key(shape: ProjectShape, view: str) -> dg.AssetKey:
    return dg.AssetKey([shape.namespace, view])


def prediction_key(task: PredictionTask) -> dg.AssetKey:
    return dg.AssetKey(["predictions", task.name])


def online_key(view: str) -> dg.AssetKey:
    return dg.AssetKey(["online", view])


def _metadata(values: dict[str, Any]) -> dict[str, dg.MetadataValue]:
    out: dict[str, dg.MetadataValue] = {}
    for k, v in values.items():
        if k.startswith("audit_report"):
            out[k] = dg.MetadataValue.path(str(v))
        elif isinstance(v, bool):
            out[k] = dg.MetadataValue.bool(v)
        elif isinstance(v, int):
            out[k] = dg.MetadataValue.int(v)
        else:
            out[k] = dg.MetadataValue.text(str(v))
    return out


def _check_results(specs: tuple[CheckSpec, ...], report: AuditReport) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            check_name=spec.name,
            passed=result.passed,
            severity=dg.AssetCheckSeverity.ERROR
            if result.severity == "error"
            else dg.AssetCheckSeverity.WARN,
            description=result.message,
            metadata={
                "status": dg.MetadataValue.text(result.status),
                "observed": dg.MetadataValue.text(str(result.observed)),
                "limit": dg.MetadataValue.text(result.limit),
                "run_id": dg.MetadataValue.text(report.run_id),
            },
        )
        for spec, result in verdicts(specs, report)
    ]


def _window(context: AssetExecutionContext) -> tuple[datetime, datetime, str]:
    window = context.partition_time_window
    start, end = window.start.astimezone(UTC), window.end.astimezone(UTC)
    return start, end, run_id_for(start, end, context.run.run_id, context.retry_number)


def _single_run() -> dg.BackfillPolicy:
    """A range of days is one backfill (one WAP run)."""
    return dg.BackfillPolicy.single_run()


@contextmanager
def _beta_backfill_policy() -> Iterator[None]:
    """``asset(backfill_policy=...)`` is still marked beta by Dagster: we rely on it knowingly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
        yield


def _view_asset(
    shape: ProjectShape, view: ViewTask, daily: dg.DailyPartitionsDefinition
) -> dg.AssetsDefinition:
    key = view_key(shape, view.name)
    deps = [
        dg.AssetDep(
            view_key(shape, up),
            partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-view.lookback_days)
            if view.lookback_days
            else None,
        )
        for up in view.upstream
    ] + [dg.AssetDep(dg.AssetKey(table.split("."))) for table in view.external]
    root = str(shape.root)

    @dg.asset(
        key=key,
        partitions_def=daily,
        deps=deps,
        check_specs=[
            dg.AssetCheckSpec(c.name, asset=key, description=c.description, blocking=c.severity == "error")
            for c in view.checks
        ],
        backfill_policy=_single_run(),
        group_name=_group(shape),
        code_version=shape.code_version,
        description=view.description
        or f"Feature view {view.name}: Iceberg table {view.table}, one WAP backfill per day",
        kinds={"iceberg"},
        metadata={"table": view.table},
    )
    def _asset(context: AssetExecutionContext) -> Iterator[Any]:
        start, end, run_id = _window(context)
        try:
            lineage, report = runs.backfill(
                root, view.name, start, end, run_id=run_id, progress=context.log.info
            )
        except AuditFailed as exc:
            if isinstance(exc.report, AuditReport):
                yield from _check_results(view.checks, exc.report)
            raise dg.Failure(description=str(exc), metadata=_metadata(runs.refusal(root, exc))) from exc
        yield dg.MaterializeResult(
            metadata=_metadata(lineage), check_results=_check_results(view.checks, report)
        )

    return _asset


def _prediction_asset(
    shape: ProjectShape, task: PredictionTask, daily: dg.DailyPartitionsDefinition
) -> dg.AssetsDefinition:
    root = str(shape.root)

    @dg.asset(
        key=prediction_key(task),
        partitions_def=daily,
        deps=[view_key(shape, task.view)],
        backfill_policy=_single_run(),
        group_name=_group(shape),
        description=f"Batch predictions of {task.model} over each day of {task.view}, into {task.table} (WAP)",
        kinds={"iceberg"},
        metadata={"table": task.table, "model": task.model},
    )
    def _asset(context: AssetExecutionContext) -> dg.MaterializeResult[None]:
        start, end, run_id = _window(context)
        try:
            lineage, _ = runs.predict(
                root, task.model, task.view, start, end, run_id=run_id, progress=context.log.info
            )
        except AuditFailed as exc:
            raise dg.Failure(description=str(exc), metadata=_metadata(runs.refusal(root, exc))) from exc
        return dg.MaterializeResult(metadata=_metadata(lineage))

    return _asset


def _online_asset(
    shape: ProjectShape, view: ViewTask, daily: dg.DailyPartitionsDefinition
) -> dg.AssetsDefinition:
    root = str(shape.root)

    @dg.asset(
        key=online_key(view.name),
        partitions_def=daily,
        deps=[view_key(shape, view.name)],
        group_name=_group(shape),
        description=f"The online store caught up with main of {view.table} (incremental sync)",
    )
    def _asset(context: AssetExecutionContext) -> dg.MaterializeResult[None]:
        return dg.MaterializeResult(metadata=_metadata(runs.sync(root, view.name)))

    return _asset


def _group(shape: ProjectShape) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", shape.project).strip("_") or "featurelake"


def last_complete_day(tick: datetime) -> date:
    """The partition a tick of the daily schedule materializes: the last UTC day that has ended."""
    return tick.astimezone(UTC).date() - timedelta(days=1)


def _daily_schedule(shape: ProjectShape, job: "UnresolvedAssetJobDefinition") -> dg.ScheduleDefinition:
    @dg.schedule(
        name=f"{DAILY_JOB}_schedule",
        cron_schedule=shape.schedules.features,
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        tick = context.scheduled_execution_time or datetime.now(UTC)
        day = last_complete_day(tick)
        if day < shape.start_date:
            return dg.SkipReason(f"{day} is before orchestration.start_date {shape.start_date}")
        return dg.RunRequest(run_key=day.isoformat(), partition_key=day.isoformat())

    return _schedule


def _sync_sensor(shape: ProjectShape, job: "UnresolvedAssetJobDefinition") -> dg.SensorDefinition:
    @dg.sensor(
        name=SYNC_SENSOR, job=job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        requests = []
        for view in shape.views:
            records = context.instance.fetch_materializations(view_key(shape, view.name), limit=1).records
            if not records or records[0].storage_id <= seen.get(view.name, 0):
                continue
            latest = records[0]
            seen[view.name] = latest.storage_id
            requests.append(
                dg.RunRequest(
                    run_key=f"{view.name}:{latest.storage_id}",
                    asset_selection=[online_key(view.name)],
                    partition_key=latest.partition_key,
                )
            )
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen, sort_keys=True))

    return _sensor


def _maintenance(
    shape: ProjectShape, kind: runs.MaintenanceKind, cron: str
) -> tuple[dg.JobDefinition, dg.ScheduleDefinition]:
    root = str(shape.root)

    @dg.op(
        name=f"maintain_{kind}",
        description=f"fl.maintain(all_tables=True) with {kind} only",
        out=dg.Out(dict, description="tables, files before and after, bytes reclaimed"),
    )
    def _op(context: OpExecutionContext) -> dg.Output[dict[str, Any]]:
        done = runs.maintain(root, kind, progress=context.log.info)
        return dg.Output(done, metadata=_metadata(done))

    @dg.job(
        name=f"featurelake_{kind}", description=f"Table maintenance: {kind} of every table of the project"
    )
    def _job() -> None:
        _op()

    schedule = dg.ScheduleDefinition(
        name=f"featurelake_{kind}_schedule",
        cron_schedule=cron,
        job=_job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    return _job, schedule


def definitions(project_dir: str | Path = ".", *, start_date: date | str | None = None) -> dg.Definitions:
    """The Dagster definitions of the project in ``project_dir`` (see the module docstring).

    ``start_date`` (first daily partition) defaults to ``orchestration.start_date`` of featurelake.yaml.
    """
    shape = project_shape(project_dir, start_date=start_date)
    daily = dg.DailyPartitionsDefinition(start_date=shape.start_date.isoformat(), timezone="UTC")
    external = sorted({t for v in shape.views for t in v.external})
    assets: list[dg.AssetsDefinition | dg.AssetSpec] = [
        dg.AssetSpec(dg.AssetKey(t.split(".")), description=f"Iceberg table {t}, written outside featurelake")
        for t in external
    ]
    with _beta_backfill_policy():
        assets += [_view_asset(shape, v, daily) for v in shape.views]
        assets += [_prediction_asset(shape, p, daily) for p in shape.predictions]
    assets += [_online_asset(shape, v, daily) for v in shape.views]
    jobs: list[dg.JobDefinition | UnresolvedAssetJobDefinition] = []
    schedules: list[dg.ScheduleDefinition] = []
    sensors: list[dg.SensorDefinition] = []
    if shape.views:
        daily_job = dg.define_asset_job(
            DAILY_JOB,
            selection=dg.AssetSelection.assets(
                *(view_key(shape, v.name) for v in shape.views),
                *(prediction_key(p) for p in shape.predictions),
            ),
            description="Backfill one day of every view (WAP), then score it with the scheduled models",
        )
        sync_job = dg.define_asset_job(
            SYNC_JOB,
            selection=dg.AssetSelection.assets(*(online_key(v.name) for v in shape.views)),
            description="Sync views to the online store (requested by the sensor after each publish)",
        )
        jobs += [daily_job, sync_job]
        schedules.append(_daily_schedule(shape, daily_job))
        sensors.append(_sync_sensor(shape, sync_job))
    crons = shape.schedules
    for kind, cron in (
        ("compaction", crons.compaction),
        ("expiry", crons.expiry),
        ("orphans", crons.orphans),
    ):
        job, schedule = _maintenance(shape, kind, cron)  # type: ignore[arg-type]
        jobs.append(job)
        schedules.append(schedule)
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        metadata={"featurelake_project": str(shape.root), "notes": "\n".join(shape.notes)},
    )


__all__ = ["definitions", "last_complete_day", "online_key", "prediction_key", "view_key"]

"""Airflow: operators for featurelake's jobs, and ``dag_from_project(...)`` building a DAG with the shape of the
Dagster definitions (``integrations.dagster``).

- :class:`FeaturelakeBackfillOperator`: ``fl.backfill`` of a templated window, by default
  ``[{{ data_interval_start }}, {{ data_interval_end }})`` (whole UTC days); the run id is derived from the
  window and the Airflow run (``20240103_3fa9c1d2``) unless ``run_id`` is given. A refused audit fails the
  task without retries (``AirflowFailException``) with the report path in its message and the refusal's
  details in the XCom ``refusal``; ``main`` is unchanged.
- :class:`FeaturelakePredictOperator`: ``fl.predict`` of every row of a view in the same window.
- :class:`FeaturelakeSyncOperator`: ``fl.sync`` (incremental) of some views or all.
- :class:`FeaturelakeMaintainOperator`: ``fl.maintain(all_tables=True, ...)`` with one operation.

Each returns its lineage (snapshot id, code-version, rows, audit report path...) as its XCom value.

:func:`dag_from_project` returns the daily DAG (``orchestration.schedules.features``): one backfill task per
view after the views it reads, one prediction task per scheduled model after its view, one sync task per
view after its backfill; each run covers the UTC day that ended before it was triggered.
:func:`maintenance_dags` returns the compaction, expiry and orphan DAGs on their own crons.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurelake.errors import AuditFailed, ConfigError

try:
    from airflow.sdk import DAG, BaseOperator, CronTriggerTimetable
    from airflow.sdk.exceptions import AirflowFailException
except ImportError as exc:  # tests/test_dagster.py: test_missing_extras_name_their_install
    raise ConfigError(
        f"featurelake.integrations.airflow needs Apache Airflow 3 ({exc}): pip install 'featurelake[airflow]'"
    ) from exc

from featurelake.integrations import runs
from featurelake.integrations.shape import project_shape, run_id_for
from featurelake.lakehouse.window import parse_timestamp

if TYPE_CHECKING:
    from airflow.sdk import Context

#: The operators' default window: the run's data interval.
INTERVAL_START = "{{ data_interval_start }}"
INTERVAL_END = "{{ data_interval_end }}"
#: The window of :func:`dag_from_project`'s tasks: the UTC day that ended before the run was triggered (the
#: data interval ends at the trigger; a run at 01:00 covers the previous day, like the Dagster schedule).
LAST_DAY_START = "{{ data_interval_end.in_timezone('UTC').start_of('day').subtract(days=1).isoformat() }}"
LAST_DAY_END = "{{ data_interval_end.in_timezone('UTC').start_of('day').isoformat() }}"


def _run_id(context: Context, start: str, end: str) -> str:
    """The featurelake run id of this task's window and Airflow run (and try)."""
    ti = context["ti"]
    run = f"{ti.dag_id}/{context['run_id']}"
    return run_id_for(parse_timestamp(start, "start"), parse_timestamp(end, "end"), run, ti.try_number - 1)


def _refused(context: Context, project_dir: str, exc: AuditFailed) -> AirflowFailException:
    details = runs.refusal(project_dir, exc)
    context["ti"].xcom_push(key="refusal", value=details)
    report = f" (audit report: {details['audit_report']})" if "audit_report" in details else ""
    return AirflowFailException(f"{exc}{report}")


class FeaturelakeOperator(BaseOperator):
    """Base of featurelake's operators: the project directory (templated)."""

    template_fields: Sequence[str] = ("project_dir",)
    ui_color = "#d7ecff"

    def __init__(self, *, project_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project_dir = str(project_dir)


class FeaturelakeBackfillOperator(FeaturelakeOperator):
    """Backfill ``view`` for ``[start, end)`` through Write-Audit-Publish (templated, whole UTC days)."""

    template_fields: Sequence[str] = ("project_dir", "view", "start", "end", "run_id")

    def __init__(
        self,
        *,
        view: str,
        start: str = INTERVAL_START,
        end: str = INTERVAL_END,
        run_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.view, self.start, self.end, self.run_id = view, start, end, run_id

    def execute(self, context: Context) -> dict[str, Any]:
        run_id = self.run_id or _run_id(context, self.start, self.end)
        try:
            lineage, _ = runs.backfill(
                self.project_dir, self.view, self.start, self.end, run_id=run_id, progress=self.log.info
            )
        except AuditFailed as exc:
            raise _refused(context, self.project_dir, exc) from exc
        return lineage


class FeaturelakePredictOperator(FeaturelakeOperator):
    """Score every row of ``view`` in ``[start, end)`` with ``model`` into ``predictions.<model>`` (WAP)."""

    template_fields: Sequence[str] = ("project_dir", "model", "view", "start", "end", "run_id")

    def __init__(
        self,
        *,
        model: str,
        view: str | None = None,
        start: str = INTERVAL_START,
        end: str = INTERVAL_END,
        run_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model, self.view, self.start, self.end, self.run_id = model, view, start, end, run_id

    def execute(self, context: Context) -> dict[str, Any]:
        run_id = self.run_id or _run_id(context, self.start, self.end)
        try:
            lineage, _ = runs.predict(
                self.project_dir,
                self.model,
                self.view,
                self.start,
                self.end,
                run_id=run_id,
                progress=self.log.info,
            )
        except AuditFailed as exc:
            raise _refused(context, self.project_dir, exc) from exc
        return lineage


class FeaturelakeSyncOperator(FeaturelakeOperator):
    """Sync ``views`` (default: every view) from Iceberg main to the online store, incrementally."""

    template_fields: Sequence[str] = ("project_dir", "views")

    def __init__(self, *, views: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.views = list(views) if views else None

    def execute(self, context: Context) -> list[dict[str, Any]]:
        if self.views:
            return [runs.sync(self.project_dir, v) for v in self.views]
        return runs.sync_all(self.project_dir)


class FeaturelakeMaintainOperator(FeaturelakeOperator):
    """``fl.maintain(all_tables=True)`` with one operation: ``compaction``, ``expiry`` or ``orphans``."""

    def __init__(self, *, operation: runs.MaintenanceKind, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if operation not in ("compaction", "expiry", "orphans"):
            raise ValueError(f"operation {operation!r}: use compaction, expiry or orphans")
        self.operation: runs.MaintenanceKind = operation

    def execute(self, context: Context) -> dict[str, Any]:
        return runs.maintain(self.project_dir, self.operation, progress=self.log.info)


def _name(project: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", project).strip("_") or "featurelake"


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), UTC)


def dag_from_project(
    project_dir: str | Path = ".",
    *,
    dag_id: str | None = None,
    start_date: date | str | None = None,
    catchup: bool = False,
    default_args: dict[str, Any] | None = None,
) -> DAG:
    """The daily DAG of the project (see the module docstring): backfill, predict and sync one UTC day.

    Its schedule is ``orchestration.schedules.features`` (UTC); its first run covers ``start_date``
    (default ``orchestration.start_date``); ``catchup=True`` runs every day since then.
    """
    shape = project_shape(project_dir, start_date=start_date)
    root = str(shape.root)
    with DAG(
        dag_id or f"featurelake_{_name(shape.project)}",
        schedule=CronTriggerTimetable(shape.schedules.features, timezone="UTC", interval=timedelta(days=1)),
        start_date=_midnight(shape.start_date) + timedelta(days=1),
        catchup=catchup,
        max_active_runs=1,
        default_args=default_args or {},
        tags=["featurelake"],
        doc_md=f"featurelake project `{root}`: each run backfills, scores and syncs the UTC day before it.",
    ) as dag:
        backfills = {
            v.name: FeaturelakeBackfillOperator(
                task_id=f"backfill_{v.name}",
                project_dir=root,
                view=v.name,
                start=LAST_DAY_START,
                end=LAST_DAY_END,
            )
            for v in shape.views
        }
        for v in shape.views:
            for up in v.upstream:
                backfills[up] >> backfills[v.name]
            backfills[v.name] >> FeaturelakeSyncOperator(
                task_id=f"sync_{v.name}", project_dir=root, views=[v.name]
            )
        for p in shape.predictions:
            backfills[p.view] >> FeaturelakePredictOperator(
                task_id=f"predict_{p.name}",
                project_dir=root,
                model=p.model,
                view=p.view,
                start=LAST_DAY_START,
                end=LAST_DAY_END,
            )
    return dag


def maintenance_dags(
    project_dir: str | Path = ".", *, start_date: date | str | None = None, prefix: str | None = None
) -> dict[str, DAG]:
    """One DAG per maintenance operation on ``orchestration.schedules`` (compaction weekly, expiry daily,
    orphans weekly), keyed by DAG id."""
    shape = project_shape(project_dir, start_date=start_date)
    crons = shape.schedules
    out = {}
    for operation, cron in (
        ("compaction", crons.compaction),
        ("expiry", crons.expiry),
        ("orphans", crons.orphans),
    ):
        dag_id = f"{prefix or 'featurelake_' + _name(shape.project)}_{operation}"
        with DAG(
            dag_id,
            schedule=CronTriggerTimetable(cron, timezone="UTC"),
            start_date=_midnight(shape.start_date),
            catchup=False,
            max_active_runs=1,
            tags=["featurelake", "maintenance"],
        ) as dag:
            FeaturelakeMaintainOperator(task_id=operation, project_dir=str(shape.root), operation=operation)  # type: ignore[arg-type]
        out[dag_id] = dag
    return out


__all__ = [
    "FeaturelakeBackfillOperator",
    "FeaturelakeMaintainOperator",
    "FeaturelakeOperator",
    "FeaturelakePredictOperator",
    "FeaturelakeSyncOperator",
    "dag_from_project",
    "maintenance_dags",
]

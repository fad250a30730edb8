"""What an orchestrator schedules for one project, whichever orchestrator it is.

:func:`project_shape` reads ``features.py``, the ``orchestration`` section of ``featurelake.yaml`` and (when
no predictions are configured) the model registry, and returns a :class:`ProjectShape`: the views with the
views they read (``Source.table`` of another view of the project) and their checks, the models to score
after each day, the first day and the cron schedules. ``integrations.dagster`` and ``integrations.airflow``
turn the same shape into assets or tasks.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import featurelake
from featurelake.config import SchedulesConfig
from featurelake.errors import ConfigError
from featurelake.lakehouse import lineage
from featurelake.validation.audit import checks_for

if TYPE_CHECKING:
    from featurelake.features.definitions import FeatureView
    from featurelake.validation.audit import AuditReport
    from featurelake.validation.core import Check, CheckResult

_NOT_NAME = re.compile(r"[^A-Za-z0-9_]+")


@dataclass(frozen=True)
class CheckSpec:
    """One check of a view's audit, as an orchestrator names it (``null_rate_amount_avg_1d``)."""

    name: str
    kind: str
    columns: tuple[str, ...]
    severity: str
    description: str


@dataclass(frozen=True)
class ViewTask:
    """One feature view: its table, the views and other tables it reads, and its audit's checks."""

    name: str
    table: str
    upstream: tuple[str, ...]
    """Views of this project its ``Source.table`` reads (their day must be published first)."""
    external: tuple[str, ...]
    """Other Iceberg tables its ``Source.table`` reads (``raw.transactions``)."""
    lookback_days: int
    checks: tuple[CheckSpec, ...]
    description: str = ""


@dataclass(frozen=True)
class PredictionTask:
    """A model scored over each day of a view after its backfill, into ``predictions.<model name>``."""

    model: str
    """The reference scored (``NAME`` = its Production version when the run starts, ``NAME@1.2.0``...)."""
    name: str
    view: str
    table: str


@dataclass(frozen=True)
class ProjectShape:
    root: Path
    project: str
    namespace: str
    start_date: date
    schedules: SchedulesConfig
    views: tuple[ViewTask, ...]
    predictions: tuple[PredictionTask, ...]
    code_version: str
    notes: tuple[str, ...] = field(default=())
    """What was left out and why (a registered model whose view cannot be told)."""

    def view(self, name: str) -> ViewTask:
        return next(v for v in self.views if v.name == name)


def check_specs(view: FeatureView, empty_window: str = "error") -> tuple[CheckSpec, ...]:
    """The audit's checks of ``view`` in the order the audit reports them (implicit ones first)."""
    out: list[CheckSpec] = []
    seen: set[str] = set()
    for check in checks_for(view, empty_window=empty_window):
        out.append(_spec(check, seen))
    return tuple(out)


def _spec(check: Check, seen: set[str]) -> CheckSpec:
    cols = tuple(check.columns())
    base = _NOT_NAME.sub("_", "_".join([check.name, *cols])).strip("_") or "check"
    name, n = base, 2
    while name in seen:
        name, n = f"{base}_{n}", n + 1
    seen.add(name)
    where = f"({', '.join(cols)})" if cols else ""
    return CheckSpec(
        name, check.name, cols, check.severity, f"{check.name}{where}, severity {check.severity}"
    )


def verdicts(specs: tuple[CheckSpec, ...], report: AuditReport) -> list[tuple[CheckSpec, CheckResult]]:
    """Pair each check spec with its verdict in ``report`` (same order; by kind and column if it differs)."""
    results = list(report.results)
    if len(results) == len(specs) and all(r.check == s.kind for r, s in zip(results, specs, strict=True)):
        return list(zip(specs, results, strict=True))
    paired: list[tuple[CheckSpec, CheckResult]] = []
    for spec in specs:
        for i, r in enumerate(results):
            if r.check == spec.kind and (r.column is None or r.column in spec.columns or not spec.columns):
                paired.append((spec, results.pop(i)))
                break
    return paired


def run_id_for(start: datetime | date, end: datetime | date, run: str, attempt: int = 0) -> str:
    """A featurelake run id derived from the window and the orchestrator's run (and retry): the same
    day scheduled twice gets two run ids, and a run id names its day (``20240103_3fa9c1d2``)."""
    first = start if isinstance(start, date) and not isinstance(start, datetime) else start.date()
    last = (end if isinstance(end, date) and not isinstance(end, datetime) else end.date()) - timedelta(
        days=1
    )
    days = f"{first:%Y%m%d}" if last <= first else f"{first:%Y%m%d}-{last:%Y%m%d}"
    digest = hashlib.sha256(f"{run}/{attempt}".encode()).hexdigest()[:8]
    return lineage.check_run_id(f"{days}_{digest}")


def _views_of(view_refs: list[str], views: dict[str, FeatureView]) -> list[str]:
    return list(
        dict.fromkeys(ref.split(":", 1)[0] for ref in view_refs if ":" in ref and ref.split(":")[0] in views)
    )


def _predictions(fl: featurelake.Featurelake, notes: list[str]) -> list[PredictionTask]:
    settings = fl.project.config.settings
    views = fl.project.definitions.views
    configured = settings.orchestration.predictions
    wanted: list[tuple[str, str | None]]
    if configured is not None:
        wanted = [(p.model, p.view) for p in configured]
    else:
        wanted = [(m.name, None) for m in fl.models.list_models() if m.production]
    out = []
    for ref, view in wanted:
        name = ref.split("@", 1)[0]
        if view is None:
            mv = fl.models.resolve(ref)
            found = _views_of([f.feature or "" for f in mv.signature], views)
            if len(found) != 1:
                why = f"its features come from {', '.join(found)}" if found else "no view of features.py"
                message = (
                    f"model {ref}: cannot tell which view to score ({why}); list it under "
                    "orchestration.predictions with its view in featurelake.yaml"
                )
                if configured is not None:
                    raise ConfigError(message)
                notes.append(message)
                continue
            view = found[0]
        elif view not in views:
            raise ConfigError(
                f"orchestration.predictions: model {ref} scores view {view!r}, which features.py does not "
                f"define (views: {', '.join(sorted(views)) or 'none'})"
            )
        out.append(PredictionTask(ref, name, view, f"predictions.{name}"))
    return out


def project_shape(project_dir: str | Path, *, start_date: date | str | None = None) -> ProjectShape:
    """Read the project once and return what to schedule (see the module docstring)."""
    with featurelake.open(project_dir) as fl:
        project = fl.project
        settings = project.config.settings
        first = start_date if start_date is not None else settings.orchestration.start_date
        if first is None:
            raise ConfigError(
                f"{project.root}: set orchestration.start_date in featurelake.yaml (the first day to "
                "backfill, e.g. 2026-08-01), or FEATURELAKE_ORCHESTRATION__START_DATE, or pass start_date="
            )
        if isinstance(first, str):
            try:
                first = date.fromisoformat(first)
            except ValueError:
                raise ConfigError(f"start_date {first!r} is not a date: write YYYY-MM-DD") from None
        views = project.definitions.views
        tasks = []
        for name in sorted(views):
            v = views[name]
            upstream: list[str] = []
            external: list[str] = []
            if v.source.kind == "table":
                ns, _, table = v.source.location.partition(".")
                (upstream if ns == project.namespace and table in views else external).append(
                    table if ns == project.namespace and table in views else v.source.location
                )
            lookback = v.lookback or timedelta(0)
            tasks.append(
                ViewTask(
                    name=name,
                    table=project.table_name(name),
                    upstream=tuple(upstream),
                    external=tuple(external),
                    lookback_days=-(-lookback // timedelta(days=1)),
                    checks=check_specs(v, settings.backfill.empty_window),
                    description=v.description,
                )
            )
        notes: list[str] = []
        predictions = _predictions(fl, notes)
        return ProjectShape(
            root=project.root,
            project=settings.project,
            namespace=project.namespace,
            start_date=first,
            schedules=settings.orchestration.schedules,
            views=tuple(_topological(tasks)),
            predictions=tuple(predictions),
            code_version=lineage.code_version(project.root),
            notes=tuple(notes),
        )


def _topological(tasks: list[ViewTask]) -> list[ViewTask]:
    """Views ordered so that each comes after the views it reads; a cycle is a ConfigError."""
    by_name = {t.name: t for t in tasks}
    done: dict[str, ViewTask] = {}
    visiting: list[str] = []

    def visit(t: ViewTask) -> None:
        if t.name in done:
            return
        if t.name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(t.name) :], t.name])
            raise ConfigError(
                f"feature views read each other in a cycle ({cycle}): no order can backfill them"
            )
        visiting.append(t.name)
        for up in t.upstream:
            visit(by_name[up])
        visiting.pop()
        done[t.name] = t

    for t in tasks:
        visit(t)
    return list(done.values())

"""Job: batch prediction of one view's snapshot with one registered model, through Write-Audit-Publish.

Composition only: ``prediction.plan`` checks the request and loads the model, the engine's
``prediction.backend`` scores the rows and writes the run's branch (locally, or on Spark with
``engine.type: spark``), ``prediction.table`` audits the branch and publishes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from featurelake.auditing.runner import AUDIT_REPORT, keep_earlier_reports
from featurelake.lakehouse import lineage
from featurelake.monitoring.jobs import job_metrics
from featurelake.prediction import table as ptable
from featurelake.prediction.backend import backend_for
from featurelake.prediction.plan import PredictionPlan, plan_prediction
from featurelake.prediction.request import PredictRequest
from featurelake.prediction.scoring import PredictProgress
from featurelake.validation.audit import AuditReport

if TYPE_CHECKING:
    from featurelake.project import Project
    from featurelake.registry import ModelRegistry


@dataclass
class PredictionResult:
    """A published prediction run: what scored what, where it went, and what it took."""

    model: str
    model_version: str
    flavor: str
    view: str
    feature_table: str
    feature_snapshot_id: int
    mode: str
    table: str
    run_id: str
    snapshot_id: int
    previous_snapshot_id: int | None
    rows: int
    predicted_at: datetime
    report: AuditReport
    seconds: float = 0.0
    score_seconds: float = 0.0
    prediction_mean: float | None = None
    rebases: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_version": self.model_version,
            "flavor": self.flavor,
            "view": self.view,
            "feature_table": self.feature_table,
            "feature_snapshot_id": self.feature_snapshot_id,
            "mode": self.mode,
            "table": self.table,
            "run_id": self.run_id,
            "snapshot_id": self.snapshot_id,
            "previous_snapshot_id": self.previous_snapshot_id,
            "rows": self.rows,
            "predicted_at": self.predicted_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "score_seconds": round(self.score_seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "prediction_mean": self.prediction_mean,
            "rebases": self.rebases,
            "audit": self.report.to_dict(),
            "notes": self.notes,
        }


class _Quiet:
    def phase(self, message: str) -> None:
        pass

    def rows(self, done: int) -> None:
        pass


def _properties(project: Project, plan: PredictionPlan) -> dict[str, str]:
    report = (project.audit_dir / plan.output / f"{plan.run_id}.json").relative_to(project.root)
    return lineage.lineage_properties(
        project.root,
        plan.run_id,
        **{
            lineage.OPERATION: "predict",
            lineage.VIEW: plan.view,
            ptable.FEATURE_TABLE: plan.feature_table,
            ptable.FEATURE_SNAPSHOT: str(plan.snapshot_id),
            ptable.MODEL_NAME: plan.model.name,
            ptable.MODEL_VERSION: plan.model.version,
            ptable.PREDICTED_AT: plan.predicted_at.isoformat(),
            AUDIT_REPORT: str(report),
        },
    )


def run_predict(
    project: Project,
    registry: ModelRegistry,
    request: PredictRequest,
    *,
    progress: PredictProgress | None = None,
) -> PredictionResult:
    """Score ``request.view`` with ``request.model`` (``NAME`` = its Production version) and publish
    ``predictions.<model>``."""
    t0 = time.perf_counter()
    say = progress or _Quiet()
    # metrics label only: not validated
    label = request.output or f"{ptable.NAMESPACE}.{str(request.model).partition('@')[0]}"
    with job_metrics(project, "predict", label) as rec:
        scoring = backend_for(project)
        say.phase(f"resolving {request.model}")
        plan = plan_prediction(project, registry, request)
        try:
            mv = plan.model
            props = _properties(project, plan)
            earlier = keep_earlier_reports(project, plan.output, plan.run_id)
            say.phase(
                f"scoring {plan.view}@{plan.snapshot_id} with {mv.name} {mv.version} ({mv.flavor}, "
                f"{plan.selection.mode})"
            )
            stats = scoring.score_and_write(registry, plan, props, say)
            checks = ptable.audit_checks(
                stats.rows,
                plan.selection.keys,
                plan.selection.timestamp,
                plan.flavor.output_range,
                project.config.settings.prediction.max_null_rate,
                [f.name for f in plan.output_schema.fields if f.name.startswith(ptable.PROBA_PREFIX)],
            )

            def audit() -> AuditReport:
                return ptable.audit_branch(
                    project, plan.output, plan.run_id, checks, plan.selection.keys, plan.selection.timestamp
                )

            say.phase(f"auditing branch audit_{plan.run_id} ({stats.rows} rows)")
            report = audit()
            if not report.passed:
                raise ptable.refuse(report)
            say.phase(f"publishing {plan.output}")
            published, reaudited = ptable.publish(
                project, plan.output, plan.run_id, props, project.config.settings.prediction.write_rows, audit
            )
        finally:
            plan.flavor.close()
        result = PredictionResult(
            model=mv.name,
            model_version=mv.version,
            flavor=mv.flavor,
            view=plan.view,
            feature_table=plan.feature_table,
            feature_snapshot_id=plan.snapshot_id,
            mode=plan.selection.mode,
            table=plan.output,
            run_id=plan.run_id,
            snapshot_id=published.snapshot_id,
            previous_snapshot_id=published.previous_main,
            rows=stats.rows,
            predicted_at=plan.predicted_at,
            report=reaudited or report,
            seconds=time.perf_counter() - t0,
            score_seconds=stats.score_seconds,
            prediction_mean=stats.mean,
            rebases=published.rebases,
            notes=[*earlier, *published.notes],
        )
        rec.predictions(mv.name, mv.version, stats.rows, stats.mean)
        rec.result(result)
    return result


__all__ = ["PredictionResult", "run_predict"]

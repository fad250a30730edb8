"""Where batch prediction scores and writes: the one step of a run that changes with the engine.

Everything else (the plan, the audit of the branch, the publish) is the same on both engines. One small
interface, :class:`ScoringBackend`, with a local implementation here (:class:`LocalScoring`: DuckDB and Arrow
on this machine) and a Spark one beside its code (``score_spark.SparkScoring``), picked once per run by
:func:`backend_for` from ``engine.type`` through a lazy name -> loader map.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from featurelake.engines import load_backend
from featurelake.errors import UsageError
from featurelake.prediction import table as ptable
from featurelake.prediction.features import stream_features
from featurelake.prediction.scoring import BatchScorer, Lineage, PredictProgress, ScoreStats

if TYPE_CHECKING:
    from featurelake.prediction.plan import PredictionPlan
    from featurelake.project import Project
    from featurelake.registry import ModelRegistry


class ScoringBackend(ABC):
    """Scores a checked plan into branch ``audit_<run_id>`` of ``plan.output``."""

    def __init__(self, project: Project) -> None:
        self.project = project

    @abstractmethod
    def score_and_write(
        self,
        registry: ModelRegistry,
        plan: PredictionPlan,
        props: dict[str, str],
        progress: PredictProgress,
    ) -> ScoreStats:
        """Score every selected row, append the predictions (with ``props`` on the snapshot) to the run's branch
        and return the totals.

        Raises UsageError when no row matches (nothing written). Main is never touched; on any failure the branch
        is removed.
        """


class LocalScoring(ScoringBackend):
    """Stream the view's snapshot through DuckDB and the model, batch by batch, into the run's branch."""

    def score_and_write(
        self,
        registry: ModelRegistry,
        plan: PredictionPlan,
        props: dict[str, str],
        progress: PredictProgress,
    ) -> ScoreStats:
        project = self.project
        settings = project.config.settings.prediction
        writer = ptable.BranchWriter(
            project, plan.output, plan.run_id, props, settings.write_rows, plan.output_schema
        )
        lin = Lineage(plan.model.name, plan.model.version, plan.snapshot_id, plan.run_id, plan.predicted_at)
        scorer = BatchScorer(plan.binding, lin, writer.schema, plan.selection.timestamp)
        features = project.load_table(plan.view)
        try:
            with stream_features(features, plan.selection, settings.batch_rows) as reader:
                for batch in scorer.score_all(reader, progress):
                    writer.write(batch)
            if scorer.stats.rows == 0:
                raise UsageError(
                    f"nothing to score: no rows of {plan.feature_table} at snapshot {plan.snapshot_id} match the "
                    "request (check --where, --max-age, --start/--end, or backfill the view); nothing was written"
                )
            writer.flush()
        except BaseException as exc:
            try:
                writer.discard()  # the branch holds part of the run at most: remove it, main was never touched
            except Exception as cleanup:  # never mask the run's own error; main is unchanged either way
                exc.add_note(f"branch audit_{plan.run_id} could not be removed ({cleanup}); remove it later")
            raise
        return scorer.stats


# engine.type -> (module, class, extra that provides its dependencies)
AVAILABLE_SCORING: dict[str, tuple[str, str, str | None]] = {
    "local": ("featurelake.prediction.backend", "LocalScoring", None),
    "spark": ("featurelake.prediction.score_spark", "SparkScoring", "spark"),
}


def backend_for(project: Project) -> ScoringBackend:
    """The scoring backend of ``project``'s engine; a missing extra gives an install hint."""
    engine_type = project.config.settings.engine.type
    cls: type[ScoringBackend] = load_backend(AVAILABLE_SCORING, engine_type, "batch prediction")
    return cls(project)


__all__ = ["AVAILABLE_SCORING", "LocalScoring", "ScoringBackend", "backend_for"]

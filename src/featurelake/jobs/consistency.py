"""Job: check a view's online store against Iceberg main and record the mismatch ratio (composition only).

The comparison is ``serving/consistency.py``'s; this records the run like every job (success or failure,
duration) and the gauge ``featurelake_online_consistency_mismatch_ratio{view, store}`` that the
``online_inconsistent`` alert rule reads, in the local metrics state and the Pushgateway when configured.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from featurelake.monitoring.jobs import job_metrics
from featurelake.serving import open_store
from featurelake.serving.consistency import DEFAULT_SAMPLE, ConsistencyReport, check_consistency

if TYPE_CHECKING:
    from featurelake.project import Project
    from featurelake.serving.base import OnlineStore

METRIC = "featurelake_online_consistency_mismatch_ratio"


def run_consistency(
    project: Project,
    view: str,
    *,
    store: OnlineStore | None = None,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    now: datetime | None = None,
) -> ConsistencyReport:
    """Check ``view`` in ``store`` (default: the configured one) and record the outcome and the ratio."""
    own = store is None
    target = store if store is not None else open_store(project.config)
    try:
        with job_metrics(project, "consistency", view) as rec:
            report = check_consistency(project, target, view, sample=sample, seed=seed, now=now)
            rec.set(METRIC, {"view": report.view, "store": report.store}, report.mismatch_ratio)
            return report
    finally:
        if own:
            target.close()


__all__ = ["METRIC", "run_consistency"]

"""Job: apply every view's definition to the catalog."""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurelake.auditing.runner import create_log_tables
from featurelake.features.apply import ApplyResult, apply_view
from featurelake.features.lint import lookback_warnings
from featurelake.features.service_log import apply_services
from featurelake.lakehouse import lineage
from featurelake.monitoring.jobs import monitored_job

if TYPE_CHECKING:
    from featurelake.project import Project


@monitored_job("apply", per_view=False)
def run_apply(project: Project, *, allow_breaking: bool = False, dry_run: bool = False) -> list[ApplyResult]:
    results = []
    run_id = "apply_" + lineage.new_run_id()
    for view in project.definitions.views.values():
        props = lineage.lineage_properties(project.root, run_id, **{lineage.VIEW: view.name})
        results.append(
            project.catalog_call(
                lambda v=view, p=props: apply_view(  # type: ignore[misc]
                    project.catalog,
                    project.namespace,
                    v,
                    project.engine.source_schema(v),
                    lineage=p,
                    allow_breaking=allow_breaking,
                    dry_run=dry_run,
                ),
                f"apply {view.name}",
            )
        )
        results[-1].warnings.extend(lookback_warnings(view))
    if project.definitions.views and not dry_run:
        # featurelake's audit log and statistics tables, empty: every backfill appends to both.
        create_log_tables(project)
    # Feature services: recorded (and versioned when their feature lists change) in <namespace>._services.
    defs = project.definitions
    results.extend(
        apply_services(
            project.catalog,
            project.namespace,
            defs.services,
            defs.service_features,
            lineage_props=lineage.lineage_properties(project.root, run_id),
            dry_run=dry_run,
            call=project.catalog_call,
            attempts=project.config.settings.catalog.retries + 1,
        )
    )
    return results

"""Job: table maintenance (compaction, snapshot expiry, orphan removal) for one view or every table.

Composition only: the request (``maintenance.request``) with the config's ``maintenance`` section for what it
leaves unset, lineage from ``lakehouse.lineage``, and the work from the engine's ``maintenance.backend``
(PyIceberg here, or with ``engine.type: spark`` Iceberg's Spark actions under the same policies and report).
Per table the order is compact, expire, remove orphans, each on freshly loaded metadata; the report counts
the files under the table's location before and after.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.table import Table
from pyiceberg.table.refs import SnapshotRefType

from featurelake.errors import FeaturelakeError, UsageError
from featurelake.lakehouse import lineage
from featurelake.maintenance import TableMaintenance, list_files
from featurelake.maintenance.backend import backend_for
from featurelake.maintenance.expiry import check_policy
from featurelake.maintenance.orphans import check_min_age
from featurelake.maintenance.request import MaintenanceRequest

if TYPE_CHECKING:
    from featurelake.project import Progress, Project

#: Namespaces featurelake writes besides the feature namespace (batch predictions).
EXTRA_NAMESPACES = ("predictions",)


def _tables(project: Project, view: str | None, all_tables: bool) -> list[tuple[str, str | None]]:
    """(table identifier, view name or None) for each table to maintain."""
    if view and all_tables:
        raise UsageError("give either a VIEW or --all, not both")
    if view:
        if "." in view:  # a table identifier such as predictions.churn
            return [(view, None)]
        project.view(view)  # unknown views fail here with the list of known ones
        return [(project.table_name(view), view)]
    if not all_tables:
        raise UsageError("say what to maintain: a VIEW (e.g. `featurelake maintain user_features`) or --all")
    found: dict[str, str | None] = {}
    for name in project.definitions.views:
        found[project.table_name(name)] = name
    for ns in (project.namespace, *EXTRA_NAMESPACES):
        try:
            idents = project.catalog_call(
                functools.partial(project.catalog.list_tables, ns), f"list tables in {ns}"
            )
        except NoSuchNamespaceError:
            continue
        for ident in idents:
            found.setdefault(".".join(ident), None)
    return sorted(found.items())


def _loader(project: Project, ident: str, view: str | None) -> Callable[[], Table]:
    def load() -> Table:
        if view is not None:
            return project.load_table(view)
        try:
            return project.catalog.load_table(ident)
        except NoSuchTableError:
            raise UsageError(
                f"table {ident} does not exist: check the name with `featurelake history`"
            ) from None

    return lambda: project.catalog_call(load, f"load {ident}")


def _table_locations(project: Project) -> dict[str, str]:
    """Every catalog table's location (orphan removal must not enter another table nested in one)."""
    out = {}
    for ns in project.catalog.list_namespaces():
        for ident in project.catalog.list_tables(ns):
            out[".".join(ident)] = project.catalog.load_table(ident).metadata.location
    return out


def run_maintain(
    project: Project, request: MaintenanceRequest, *, progress: Progress | None = None
) -> list[TableMaintenance]:
    """Maintain ``request.view`` (or every table with ``request.all_tables``)."""
    cfg = project.config.settings.maintenance
    policy, min_age, target = request.retention(cfg), request.orphan_age(cfg), request.file_size(cfg)
    # Refuse unsafe settings before touching any table.
    if request.expire:
        check_policy(policy, request.force)
    if request.remove_orphans:
        check_min_age(min_age, request.force)
    tables = _tables(project, request.view, request.all_tables)
    run_id = "maintain_" + lineage.new_run_id()
    attempts = project.config.settings.catalog.retries + 1
    locations = (
        project.catalog_call(lambda: _table_locations(project), "list table locations")
        if request.remove_orphans
        else {}
    )
    backend = backend_for(project)
    reports = []
    for ident, view_name in tables:
        load = _loader(project, ident, view_name)
        report = TableMaintenance(ident, request.dry_run)
        t0 = time.perf_counter()
        try:
            tbl = load()
            before = list_files(tbl.io, tbl.metadata.location)
            report.files_before, report.bytes_before = len(before), sum(f.size for f in before)
            if request.compact:
                extra = {lineage.VIEW: view_name} if view_name else {}
                report.compaction = backend.compact(
                    load,
                    target_file_size=target,
                    min_input_files=cfg.compaction_min_input_files,
                    properties=lineage.lineage_properties(project.root, run_id, **extra),
                    dry_run=request.dry_run,
                    attempts=attempts,
                    call=project.catalog_call,
                    progress=progress,
                )
            if request.expire:
                report.expiry = backend.expire(
                    load,
                    policy,
                    dry_run=request.dry_run,
                    force=request.force,
                    now=request.now,
                    attempts=attempts,
                    call=project.catalog_call,
                    progress=progress,
                )
            if request.remove_orphans:
                report.orphans = backend.remove_orphans(
                    load,
                    min_age=min_age,
                    dry_run=request.dry_run,
                    force=request.force,
                    now=request.now,
                    other_locations=[loc for other, loc in locations.items() if other != ident],
                    progress=progress,
                )
            after = load()
            _count_after(report, after)
            report.tags = tags_of(after)
        except FeaturelakeError as exc:
            if len(tables) == 1:
                raise
            report.error = str(exc)  # --all: carry on with the other tables, fail at the end
        report.seconds = time.perf_counter() - t0
        reports.append(report)
    return reports


def tags_of(tbl: Table) -> dict[str, int]:
    """Tag -> the snapshot it keeps from expiry (model training sets, sync watermarks, users' tags)."""
    return {
        name: ref.snapshot_id
        for name, ref in sorted(tbl.metadata.refs.items())
        if ref.snapshot_ref_type == SnapshotRefType.TAG
    }


def _count_after(report: TableMaintenance, tbl: Table) -> None:
    if not report.dry_run:
        after = list_files(tbl.io, tbl.metadata.location)
        report.files_after, report.bytes_after = len(after), sum(f.size for f in after)
        return
    # Estimate: what expiry and orphan removal would delete, one new file per compaction group, and the
    # metadata file of each commit (compaction also writes manifests, not counted).
    gone = set(report.expiry.deleted if report.expiry else []) | set(
        report.orphans.orphans if report.orphans else []
    )
    new = len(report.compaction.groups) + 1 if report.compaction and report.compaction.groups else 0
    new += 1 if report.expiry and report.expiry.expired else 0
    report.files_after = report.files_before - len(gone) + new
    report.bytes_after = report.bytes_before - report.bytes_reclaimed


def maintenance_failed(reports: list[TableMaintenance]) -> list[str]:
    """One line per table whose maintenance failed (``--all`` carries on past failures)."""
    return [f"{r.table}: {r.error}" for r in reports if r.error]


__all__ = ["maintenance_failed", "run_maintain"]

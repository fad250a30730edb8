"""Job: table maintenance (compaction, snapshot expiry, orphan removal) for one view or every table.

Composition only: the policies come from the arguments or the config's ``maintenance`` section, lineage from
``lakehouse.lineage``, and the work from ``lakehouse.maintenance`` (PyIceberg), or with ``engine.type: spark``
from ``engines.spark_maintenance`` (Iceberg's Spark procedures under the same policies and report). Per table
the order is compact, expire, remove orphans, each on freshly loaded metadata; the report counts the files
under the table's location before and after.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.table import Table

from featurelake.errors import FeaturelakeError, UsageError
from featurelake.lakehouse import lineage
from featurelake.maintenance import (
    RetentionPolicy,
    TableMaintenance,
    expire_snapshots,
    list_files,
    remove_orphan_files,
    rewrite_data_files,
)
from featurelake.maintenance.expiry import check_policy
from featurelake.maintenance.orphans import check_min_age
from featurelake.units import parse_duration, parse_size

if TYPE_CHECKING:
    from featurelake.project import Progress, Project

#: Namespaces featurelake writes besides the feature namespace (batch predictions).
EXTRA_NAMESPACES = ("predictions",)


def _flag(value: Any, flag: str, parse: Callable[[Any, str], Any]) -> Any:
    try:
        return parse(value, flag)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


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


def _operations(project: Project) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """(compact, expire, remove orphans): on Spark for ``engine.type: spark``, else with PyIceberg."""
    if project.config.settings.engine.type != "spark":
        return rewrite_data_files, expire_snapshots, remove_orphan_files
    from featurelake.engines.spark import SparkEngine
    from featurelake.maintenance import spark as spark_maintenance

    engine = project.engine
    assert isinstance(engine, SparkEngine)
    return (
        functools.partial(spark_maintenance.rewrite_data_files, engine),
        functools.partial(spark_maintenance.expire_snapshots, engine),
        functools.partial(spark_maintenance.remove_orphan_files, engine),
    )


def run_maintain(
    project: Project,
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
    """Maintain ``view`` (or every table with ``all_tables``); with no operation chosen, run all three."""
    cfg = project.config.settings.maintenance
    if not (compact or expire or remove_orphans):
        compact = expire = remove_orphans = True
    older = (
        _flag(expire_older_than, "--expire-older-than", parse_duration)
        if expire_older_than is not None
        else cfg.expire_older_than
    )
    min_age = (
        _flag(orphan_min_age, "--orphan-min-age", parse_duration)
        if orphan_min_age is not None
        else cfg.orphan_min_age
    )
    target = (
        _flag(target_file_size, "--target-file-size", functools.partial(parse_size, minimum=1024))
        if target_file_size is not None
        else cfg.compaction_target_file_size
    )
    policy = RetentionPolicy(
        older_than=older,
        retain_last=cfg.retain_last if retain_last is None else retain_last,
        keep_ancestry_tag_prefixes=tuple(cfg.keep_ancestry_tag_prefixes),
    )
    # Refuse unsafe settings before touching any table.
    if expire:
        check_policy(policy, force)
    if remove_orphans:
        check_min_age(min_age, force)
    tables = _tables(project, view, all_tables)
    run_id = "maintain_" + lineage.new_run_id()
    attempts = project.config.settings.catalog.retries + 1
    locations = (
        project.catalog_call(lambda: _table_locations(project), "list table locations")
        if remove_orphans
        else {}
    )
    compact_table, expire_table, remove_table_orphans = _operations(project)
    reports = []
    for ident, view_name in tables:
        load = _loader(project, ident, view_name)
        report = TableMaintenance(ident, dry_run)
        t0 = time.perf_counter()
        try:
            tbl = load()
            before = list_files(tbl.io, tbl.metadata.location)
            report.files_before, report.bytes_before = len(before), sum(f.size for f in before)
            if compact:
                extra = {lineage.VIEW: view_name} if view_name else {}
                report.compaction = compact_table(
                    load,
                    target_file_size=target,
                    min_input_files=cfg.compaction_min_input_files,
                    properties=lineage.lineage_properties(project.root, run_id, **extra),
                    dry_run=dry_run,
                    attempts=attempts,
                    call=project.catalog_call,
                    progress=progress,
                )
            if expire:
                report.expiry = expire_table(
                    load,
                    policy,
                    dry_run=dry_run,
                    force=force,
                    now=now,
                    attempts=attempts,
                    call=project.catalog_call,
                    progress=progress,
                )
            if remove_orphans:
                report.orphans = remove_table_orphans(
                    load,
                    min_age=min_age,
                    dry_run=dry_run,
                    force=force,
                    now=now,
                    other_locations=[loc for other, loc in locations.items() if other != ident],
                    progress=progress,
                )
            _count_after(report, load())
        except FeaturelakeError as exc:
            if len(tables) == 1:
                raise
            report.error = str(exc)  # --all: carry on with the other tables, fail at the end
        report.seconds = time.perf_counter() - t0
        reports.append(report)
    return reports


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

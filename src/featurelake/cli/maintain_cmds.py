"""``featurelake maintain``: compaction, snapshot expiry and orphan removal, with a report per table."""

from __future__ import annotations

import sys

import click

from featurelake.cli import render
from featurelake.cli.app import Ctx, pass_ctx, progress
from featurelake.maintenance import TableMaintenance
from featurelake.units import format_duration, format_size

#: How many files or snapshots a human-readable dry run lists per section (--json lists all).
LIST_LIMIT = 25


def _listing(title: str, items: list[str]) -> None:
    if not items:
        return
    render.out.print(f"    {title}:")
    for item in items[:LIST_LIMIT]:
        render.out.print(f"      {item}", soft_wrap=True)
    if len(items) > LIST_LIMIT:
        render.out.print(f"      ... and {len(items) - LIST_LIMIT} more (--json lists all)")


def _print(r: TableMaintenance) -> None:
    would = "would " if r.dry_run else ""
    head = f"[bold]{r.table}[/]" + (" [yellow](dry run: nothing changed)[/]" if r.dry_run else "")
    render.out.print(head)
    if r.error:
        render.out.print(f"  [red]failed[/]: {r.error}")
        return
    after = "about " if r.dry_run else ""
    render.out.print(
        f"  files under the table location: {r.files_before} -> {after}{r.files_after} "
        f"({format_size(r.bytes_before)} -> {after}{format_size(r.bytes_after)}); "
        f"{would}reclaim {format_size(r.bytes_reclaimed)} [dim]({r.seconds:.2f}s)[/]"
    )
    if (c := r.compaction) is not None:
        if c.groups:
            where = f"; snapshot {c.snapshot_id}" if c.snapshot_id else ""
            render.out.print(
                f"  compaction: {would}rewrite {c.files_rewritten} small files of {len(c.groups)} group(s) into "
                f"{len(c.groups) if r.dry_run else c.files_written}; data files on main {c.data_files_before} -> "
                f"{c.data_files_after}{where}"
            )
            if r.dry_run:
                _listing(
                    "partitions", [f"{g.partition}: {len(g.inputs)} files, {g.rows} rows" for g in c.groups]
                )
        else:
            render.out.print(f"  compaction: nothing to do ({c.data_files_before} data files on main)")
        for line in c.skipped + c.notes:
            render.out.print(f"    [dim]{line}[/]")
    if (e := r.expiry) is not None:
        render.out.print(
            f"  expiry: {would}expire {len(e.expired)} snapshot(s), keep {len(e.kept)}; "
            f"{would}delete {len(e.deleted)} unreachable file(s) ({format_size(e.bytes_reclaimed)})"
        )
        if r.dry_run:
            _listing("snapshots to expire", [str(s) for s in e.expired])
            pinned = [f"{sid}: {why}" for sid, why in e.kept.items() if "newer than the cutoff" not in why]
            recent = len(e.kept) - len(pinned)
            _listing("kept" + (f" (and {recent} newer than the cutoff)" if recent else ""), pinned)
            _listing("files to delete", e.deleted)
        for line in e.notes:
            render.out.print(f"    [dim]{line}[/]")
    if (o := r.orphans) is not None:
        render.out.print(
            f"  orphans: {would}remove {len(o.orphans)} file(s) ({format_size(o.bytes_reclaimed)}); "
            f"kept {len(o.too_young)} younger than {format_duration(o.min_age_seconds)}"
        )
        if r.dry_run:
            _listing("orphans to delete", o.orphans)
        _listing("kept (too young)", o.too_young if r.dry_run else [])
    if r.tags:
        render.out.print(f"  tags keep {len(set(r.tags.values()))} snapshot(s) and the files they read:")
        for tag, sid in sorted(r.tags.items()):
            render.out.print(f"    {tag} -> snapshot {sid}", soft_wrap=True)


@click.command()
@click.argument("view", required=False)
@click.option("--all", "all_tables", is_flag=True, help="Every feature table and predictions.* table.")
@click.option("--compact", is_flag=True, help="Bin-pack small data files per partition.")
@click.option("--expire", is_flag=True, help="Expire old snapshots and delete the files only they used.")
@click.option(
    "--expire-older-than", default=None, help="Expiry age, e.g. 7d (default: config); implies --expire."
)
@click.option(
    "--retain-last", type=int, default=None, help="Always keep this many newest snapshots per branch."
)
@click.option("--remove-orphans", is_flag=True, help="Delete old files that no metadata reaches.")
@click.option(
    "--orphan-min-age", default=None, help="Only delete orphans older than this (default: config, 3d)."
)
@click.option("--target-file-size", default=None, help="Compaction file size, e.g. 128MB (default: config).")
@click.option("--dry-run", is_flag=True, help="List what would happen; change nothing.")
@click.option("--force", is_flag=True, help="Allow ages under 1 hour (only when no job is running).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def maintain(
    c: Ctx,
    view: str | None,
    all_tables: bool,
    compact: bool,
    expire: bool,
    expire_older_than: str | None,
    retain_last: int | None,
    remove_orphans: bool,
    orphan_min_age: str | None,
    target_file_size: str | None,
    dry_run: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Compact, expire snapshots and remove orphan files of VIEW (or --all); no operation flag = all three.

    Tagged snapshots (model training sets, online-sync watermarks, your tags) and every branch head are never
    expired. Exit 1 when any table failed.
    """
    from featurelake.jobs.maintain import maintenance_failed, run_maintain
    from featurelake.maintenance.request import MaintenanceRequest

    request = MaintenanceRequest(
        view,
        all_tables=all_tables,
        compact=compact or target_file_size is not None,
        expire=expire or expire_older_than is not None or retain_last is not None,
        remove_orphans=remove_orphans or orphan_min_age is not None,
        expire_older_than=expire_older_than,
        retain_last=retain_last,
        orphan_min_age=orphan_min_age,
        target_file_size=target_file_size,
        dry_run=dry_run,
        force=force,
    )
    with progress(not as_json) as update:
        reports = run_maintain(c.fl.project, request, progress=update)
    if as_json:
        render.print_json([r.to_dict() for r in reports])
    else:
        for r in reports:
            _print(r)
    failed = maintenance_failed(reports)
    if failed:
        for line in failed:
            print(f"error: maintenance of {line}", file=sys.stderr)
        sys.exit(1)

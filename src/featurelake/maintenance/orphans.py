"""``remove_orphan_files``: delete files under a table's location that no metadata reaches and that are old.

Reachable means: the current metadata file and every file in its metadata log, every snapshot's manifest list,
their manifests, the live (added or existing) data and delete files in them, and statistics files. Everything
else under the location is an orphan: files of failed or crashed writes, of snapshots expired by tools that
delete nothing, and also the files of a write that has not committed yet. Only the safety age tells those
apart, so orphans younger than ``min_age`` (default 3 days, at least 1 hour unless forced) are kept; that is
what keeps an in-flight backfill's files alive (the Iceberg data-loss reports about orphan removal are this
case and URIs compared by scheme, which ``files.file_key`` avoids).

Order matters: the location is listed first and the metadata loaded afterwards, so a file committed in between
is seen as reachable. Files under another table's location nested inside this one are never touched, and if
the current metadata file is not found by the listing (a location or scheme mismatch) nothing is deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from pyiceberg.table import Table

from featurelake.errors import FeaturelakeError, UsageError
from featurelake.maintenance.expiry import MIN_SAFE_AGE
from featurelake.maintenance.files import (
    ManifestReader,
    Progress,
    delete_all,
    file_key,
    is_table_file,
    list_files,
    reachable,
)
from featurelake.maintenance.report import OrphanResult


def check_min_age(min_age: timedelta, force: bool) -> None:
    if min_age < MIN_SAFE_AGE and not force:
        raise UsageError(
            f"--orphan-min-age {min_age} is under 1 hour: files of a write that has not committed yet (a running "
            "backfill) would be deleted; use 1h or more (default 3d), or add --force when no job is running"
        )


def remove_orphan_files(
    load: Callable[[], Table],
    *,
    min_age: timedelta = timedelta(days=3),
    dry_run: bool = False,
    force: bool = False,
    now: datetime | None = None,
    other_locations: Iterable[str] = (),
    progress: Progress | None = None,
) -> OrphanResult:
    """Delete (or with ``dry_run`` list) orphans older than ``min_age``; younger ones are reported as kept.

    ``other_locations`` are the locations of the catalog's other tables: files under them are not ours.
    """
    check_min_age(min_age, force)
    say: Progress = progress or (lambda _m: None)
    now = now or datetime.now(UTC)
    first = load()
    name = ".".join(first.name())
    location = first.metadata.location
    say(f"orphan removal in {name}: listing {location}")
    stored = list_files(first.io, location)
    tbl = load()  # after listing: anything committed meanwhile counts as reachable
    keep = reachable(tbl.metadata, tbl.metadata_location, ManifestReader(tbl.io))
    if file_key(tbl.metadata_location) not in {f.key for f in stored}:
        raise FeaturelakeError(
            f"orphan removal in {name} stopped: its current metadata file {tbl.metadata_location} is not among "
            f"the files listed under {location}, so paths cannot be compared safely; nothing was deleted"
        )
    own = file_key(location).rstrip("/") + "/"
    nested = [
        file_key(o).rstrip("/") + "/"
        for o in other_locations
        if (file_key(o).rstrip("/") + "/").startswith(own) and file_key(o).rstrip("/") + "/" != own
    ]
    result = OrphanResult(min_age_seconds=min_age.total_seconds())
    old, young = [], []
    for f in stored:
        if f.key in keep.all() or not is_table_file(f.uri) or any(f.key.startswith(n) for n in nested):
            continue
        if f.modified is not None and now - f.modified.astimezone(UTC) >= min_age:
            old.append(f)
        else:
            young.append(f)
    result.too_young = [f.uri for f in young]
    result.orphans = [f.uri for f in old]
    if young:
        result.notes.append(
            f"kept {len(young)} unreferenced file(s) younger than {min_age}: an uncommitted write may own them"
        )
    if dry_run:
        result.bytes_reclaimed = sum(f.size for f in old)
        return result
    if old:
        say(f"orphan removal in {name}: deleting {len(old)} files")
        _, result.bytes_reclaimed = delete_all(tbl.io, old, progress, f"orphan removal in {name}")
    return result

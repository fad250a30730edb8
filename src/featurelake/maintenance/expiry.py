"""``expire_snapshots``: drop old snapshots by Iceberg's retention rules, then delete the files only they used.

PyIceberg 0.12's own expiry deletes no files, and its ``RemoveSnapshotsUpdate`` silently drops every ref that
points at a removed snapshot, so a tag created concurrently would vanish. Here:

- **Retention** (Iceberg semantics, per ref): every branch keeps its head and walks its ancestors, keeping each
  while fewer than ``min-snapshots-to-keep`` (the ref's own, else ``retain_last``) are kept or it is newer than
  the cutoff (the ref's ``max-snapshot-age-ms``, else ``older_than``), stopping at the first that is neither.
  Every tag keeps its snapshot (model training sets ``model-<name>-<version>``, user tags). Tags whose name
  starts with a ``keep_ancestry_tag_prefixes`` entry (online-sync watermarks, ``online-sync-<store>``) also
  keep every snapshot between them and the head of each branch they are an ancestor of, because an incremental
  scan from a watermark needs that unbroken chain. Snapshots on no ref's line are kept while newer than the
  cutoff. No ref is ever removed.
- **Commit**: one metadata commit whose requirement is that the table's snapshots and refs are exactly the ones
  the plan was computed from; any concurrent change (an append, a new tag) fails it, and the plan is redone on
  fresh metadata. On catalogs that apply commits elsewhere (REST), only the Iceberg spec's requirements exist:
  the commit asserts the table UUID and every ref's snapshot, and the snapshot log is not cut (see
  ``TruncateSnapshotLog``): a new tag on an expiring snapshot between plan and commit goes unnoticed there.
- **Deletion**, after the commit: manifest lists, manifests, data and delete files and statistics files reached
  from the expired snapshots minus everything the freshly reloaded metadata still reaches; plus metadata JSON
  files that neither the current metadata nor its log name and that are older than the current metadata file.
  A crash between commit and deletion leaves only unreachable files, which ``remove_orphan_files`` collects.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from pydantic import Field
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.refs import SnapshotRefType
from pyiceberg.table.update import (
    AssertRefSnapshotId,
    AssertTableUUID,
    RemoveSnapshotsUpdate,
    TableRequirement,
    TableUpdate,
    ValidatableTableRequirement,
)
from pyiceberg.typedef import IcebergBaseModel

from featurelake.errors import ConflictError, UsageError
from featurelake.lakehouse import compat
from featurelake.maintenance.files import (
    ManifestReader,
    Progress,
    Reachable,
    StoredFile,
    delete_all,
    file_info,
    file_key,
    list_files,
    metadata_dir,
    reachable,
    snapshot_files,
)
from featurelake.maintenance.report import ExpiryResult

#: Below this, expiring (or deleting orphans) needs ``force``: readers still on a snapshot would break.
MIN_SAFE_AGE = timedelta(hours=1)
#: Metadata JSON must be this much older than the current one before expiry deletes it (clock skew).
METADATA_MARGIN = timedelta(minutes=1)


@dataclass(frozen=True)
class RetentionPolicy:
    """How much history expiry keeps (per-ref Iceberg settings override the first two)."""

    older_than: timedelta
    retain_last: int = 1
    keep_ancestry_tag_prefixes: tuple[str, ...] = ("online-sync-",)


class AssertSnapshotsAndRefs(ValidatableTableRequirement):
    """The table still has exactly these snapshots and refs (validated by the SQL catalog at commit)."""

    type: Literal["featurelake-assert-snapshots-and-refs"] = Field(
        default="featurelake-assert-snapshots-and-refs"
    )
    snapshot_ids: list[int]
    refs: dict[str, int]

    def validate(self, base_metadata: TableMetadata | None) -> None:  # type: ignore[override]
        if base_metadata is None:
            raise CommitFailedException("Requirement failed: current table metadata is missing")
        refs = {name: ref.snapshot_id for name, ref in base_metadata.refs.items()}
        ids = sorted(s.snapshot_id for s in base_metadata.snapshots)
        if refs != self.refs or ids != self.snapshot_ids:
            raise CommitFailedException(
                "Requirement failed: snapshots or refs changed since expiry was planned"
            )


class TruncateSnapshotLog(IcebergBaseModel):
    """Drop the snapshot-log entries up to the last one of an expired snapshot (Iceberg Java's rule).

    PyIceberg only filters the removed snapshots' entries out, so ``--as-of`` a time when main pointed at an
    expired snapshot would silently resolve to an older kept one (a tag's, say). With the log cut, such a
    time resolves to nothing and the read says so; applied before ``RemoveSnapshotsUpdate`` in one commit.
    """

    action: Literal["featurelake-truncate-snapshot-log"] = Field(default="featurelake-truncate-snapshot-log")
    snapshot_ids: list[int]


@compat.metadata_update(TruncateSnapshotLog)
def _truncate_snapshot_log(update: TruncateSnapshotLog, base_metadata: TableMetadata) -> TableMetadata:
    expired = set(update.snapshot_ids)
    log = base_metadata.snapshot_log
    cut = max((i for i, entry in enumerate(log) if entry.snapshot_id in expired), default=-1)
    return base_metadata.model_copy(update={"snapshot_log": log[cut + 1 :]})


def _line(metadata: TableMetadata, head: int) -> list[int]:
    out: list[int] = []
    current: int | None = head
    while current is not None:
        snap = metadata.snapshot_by_id(current)
        if snap is None:
            break
        out.append(current)
        current = snap.parent_snapshot_id
    return out


def plan_retention(metadata: TableMetadata, now: datetime, policy: RetentionPolicy) -> dict[int, str]:
    """Snapshot ids to keep, each with the first reason found; every other snapshot expires."""
    now_ms = int(now.timestamp() * 1000)
    cutoff = now_ms - int(policy.older_than.total_seconds() * 1000)
    ts = {s.snapshot_id: s.timestamp_ms for s in metadata.snapshots}
    kept: dict[int, str] = {}
    lines: dict[str, list[int]] = {}
    refs = sorted(metadata.refs.items(), key=lambda kv: (kv[0] != "main", kv[0]))
    for name, ref in refs:
        if ref.snapshot_ref_type == SnapshotRefType.TAG:
            kept.setdefault(ref.snapshot_id, f"tag {name}")
            continue
        min_keep = ref.min_snapshots_to_keep or policy.retain_last
        branch_cutoff = now_ms - ref.max_snapshot_age_ms if ref.max_snapshot_age_ms else cutoff
        lines[name] = line = _line(metadata, ref.snapshot_id)
        for i, sid in enumerate(line):
            if i == 0:
                kept.setdefault(sid, f"head of branch {name}")
            elif i < min_keep:
                kept.setdefault(sid, f"one of the last {min_keep} of branch {name}")
            elif ts[sid] >= branch_cutoff:
                kept.setdefault(sid, f"on branch {name}, newer than the cutoff")
            else:
                break
    for name, ref in refs:
        if ref.snapshot_ref_type != SnapshotRefType.TAG or not name.startswith(
            policy.keep_ancestry_tag_prefixes
        ):
            continue
        for branch, line in lines.items():
            if ref.snapshot_id in line:
                for sid in line[: line.index(ref.snapshot_id)]:
                    kept.setdefault(sid, f"between tag {name} and the head of {branch} (incremental reads)")
    on_lines = {sid for line in lines.values() for sid in line}
    for sid, t in ts.items():
        if sid not in on_lines and t >= cutoff:
            kept.setdefault(sid, "on no branch, newer than the cutoff")
    return kept


def _candidates(metadata: TableMetadata, reader: ManifestReader, expire: set[int]) -> Reachable:
    cand = snapshot_files(reader, [s for s in metadata.snapshots if s.snapshot_id in expire], live_only=False)
    for s in [*metadata.statistics, *metadata.partition_statistics]:
        if s.snapshot_id in expire:
            cand.add(cand.statistics_files, s.statistics_path)
    return cand


def _stale_metadata_files(
    tbl: Table, keep: Reachable, listed: dict[str, StoredFile], *, older_than: datetime | None
) -> list[StoredFile]:
    """Metadata JSON no metadata names any more and older than the current file (never a pending commit's)."""
    if older_than is None:
        return []
    prefix = file_key(metadata_dir(tbl)) + "/"
    return [
        f
        for key, f in listed.items()
        if key.startswith(prefix)
        and key.endswith(".metadata.json")
        and key not in keep.metadata_files
        and f.modified is not None
        and f.modified < older_than
    ]


def _sized(io: Any, keys: set[str], uris: dict[str, str], listed: dict[str, StoredFile]) -> list[StoredFile]:
    out = []
    for key in sorted(keys):
        f = listed.get(key) or file_info(io, uris[key])
        if f is not None:  # already gone (a crashed or concurrent run deleted it)
            out.append(f)
    return out


def _commit(tbl: Table, expire: set[int]) -> None:
    if not isinstance(tbl.catalog, SqlCatalog):
        # A catalog that applies commits elsewhere (a REST server) knows only the spec's requirements and
        # updates: assert every ref's snapshot instead, and leave the snapshot log as PyIceberg cuts it.
        remote_requirements: list[TableRequirement] = [AssertTableUUID(uuid=tbl.metadata.table_uuid)]
        remote_requirements += [
            AssertRefSnapshotId(ref=name, snapshot_id=ref.snapshot_id)  # type: ignore[call-arg]
            for name, ref in sorted(tbl.metadata.refs.items())
        ]
        tbl.catalog.commit_table(
            tbl,
            tuple(remote_requirements),
            (RemoveSnapshotsUpdate(snapshot_ids=sorted(expire)),),  # type: ignore[call-arg]
        )
        return
    requirements = (
        AssertTableUUID(uuid=tbl.metadata.table_uuid),
        AssertSnapshotsAndRefs(
            snapshot_ids=sorted(s.snapshot_id for s in tbl.metadata.snapshots),
            refs={name: ref.snapshot_id for name, ref in tbl.metadata.refs.items()},
        ),
    )
    updates = (
        TruncateSnapshotLog(snapshot_ids=sorted(expire)),
        RemoveSnapshotsUpdate(snapshot_ids=sorted(expire)),  # type: ignore[call-arg]
    )
    tbl.catalog.commit_table(
        tbl, cast(tuple[TableRequirement, ...], requirements), cast(tuple[TableUpdate, ...], updates)
    )


def check_policy(policy: RetentionPolicy, force: bool) -> None:
    if policy.retain_last < 1:
        raise UsageError(
            f"--retain-last {policy.retain_last} would expire the current snapshot: give 1 or more"
        )
    if policy.older_than < MIN_SAFE_AGE and not force:
        raise UsageError(
            f"--expire-older-than {policy.older_than} is under 1 hour: jobs still reading those snapshots would "
            "fail; use a longer age, or add --force if nothing reads them"
        )


def expire_snapshots(
    load: Callable[[], Table],
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
    force: bool = False,
    now: datetime | None = None,
    attempts: int = 5,
    call: Callable[[Callable[[], Any], str], Any] | None = None,
    progress: Progress | None = None,
) -> ExpiryResult:
    """Expire snapshots outside ``policy`` and delete the files no remaining metadata reaches."""
    check_policy(policy, force)
    say: Progress = progress or (lambda _m: None)
    commit_call = call or (lambda fn, _what: fn())
    now = now or datetime.now(UTC)
    result = ExpiryResult()
    for attempt in range(1, max(1, attempts) + 1):
        result.attempts = attempt
        tbl = load()
        name = ".".join(tbl.name())
        reader = ManifestReader(tbl.io)
        kept = plan_retention(tbl.metadata, now, policy)
        expire = {s.snapshot_id for s in tbl.metadata.snapshots} - set(kept)
        result.kept, result.expired = kept, sorted(expire)
        candidates = _candidates(tbl.metadata, reader, expire)
        current = file_info(tbl.io, tbl.metadata_location)
        cutoff = current.modified - METADATA_MARGIN if current and current.modified else None
        if dry_run:
            retained = [s for s in tbl.metadata.snapshots if s.snapshot_id in kept]
            keep = reachable(tbl.metadata, tbl.metadata_location, reader, retained)
            listed = {f.key: f for f in list_files(tbl.io, tbl.metadata.location)}
            doomed = _sized(tbl.io, candidates.all() - keep.all(), candidates.uris, listed)
            doomed += _stale_metadata_files(tbl, keep, listed, older_than=cutoff)
            result.deleted = [f.uri for f in doomed]
            result.bytes_reclaimed = sum(f.size for f in doomed)
            return result
        if expire:
            say(f"expiry of {name}: removing {len(expire)} snapshots from the metadata")
            try:
                commit_call(functools.partial(_commit, tbl, expire), f"expire snapshots of {name}")
            except CommitFailedException:
                result.notes.append(f"attempt {attempt}: the table changed concurrently; planned again")
                continue
        say(f"expiry of {name}: committed; finding unreachable files")
        fresh = load()
        keep = reachable(fresh.metadata, fresh.metadata_location, ManifestReader(fresh.io))
        listed = {f.key: f for f in list_files(fresh.io, fresh.metadata.location)}
        doomed = _sized(fresh.io, candidates.all() - keep.all(), candidates.uris, listed)
        doomed += _stale_metadata_files(fresh, keep, listed, older_than=cutoff)
        say(f"expiry of {name}: deleting {len(doomed)} unreachable files")
        _, result.bytes_reclaimed = delete_all(fresh.io, doomed, progress, f"expiry of {name}")
        result.deleted = [f.uri for f in doomed]
        return result
    raise ConflictError(
        f"could not expire snapshots: the table kept changing during {attempts} attempts; nothing was "
        "expired; run `featurelake maintain --expire-older-than ...` again later"
    )

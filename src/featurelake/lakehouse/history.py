"""Snapshot history with lineage, and resolving a time-travel point to a snapshot id."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pyiceberg.table import Table

from featurelake.errors import UsageError
from featurelake.lakehouse import lineage
from featurelake.lakehouse.wap import ancestors, main_snapshot_id


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot of a table with the lineage featurelake recorded on it."""

    snapshot_id: int
    parent_id: int | None
    committed_at: datetime
    published_at: datetime | None
    operation: str
    code_version: str | None
    run_id: str | None
    pipeline_user: str | None
    view: str | None
    window_start: str | None
    window_end: str | None
    added_records: int
    deleted_records: int
    total_records: int | None
    featurelake_operation: str | None
    on_main: bool

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["committed_at"] = self.committed_at.isoformat()
        d["published_at"] = self.published_at.isoformat() if self.published_at else None
        return d


def _int(props: dict[str, str], key: str) -> int:
    try:
        return int(props.get(key, 0))
    except ValueError:
        return 0


def snapshot_info(tbl: Table, snapshot_id: int, on_main: bool) -> SnapshotInfo:
    snap = tbl.metadata.snapshot_by_id(snapshot_id)
    if snap is None:
        raise UsageError(f"snapshot {snapshot_id} does not exist in {'.'.join(tbl.name())}")
    summary = snap.summary
    props: dict[str, str] = dict(summary.additional_properties) if summary else {}
    total = props.get("total-records")
    # When main started pointing at it (a WAP snapshot is committed on its branch, published later):
    # this is the time `--as-of` resolves against.
    published = [e.timestamp_ms for e in tbl.metadata.snapshot_log if e.snapshot_id == snapshot_id]
    return SnapshotInfo(
        snapshot_id=snap.snapshot_id,
        parent_id=snap.parent_snapshot_id,
        committed_at=datetime.fromtimestamp(snap.timestamp_ms / 1000, tz=UTC),
        published_at=datetime.fromtimestamp(published[-1] / 1000, tz=UTC) if published else None,
        operation=str(summary.operation.value) if summary else "unknown",
        code_version=props.get(lineage.CODE_VERSION),
        run_id=props.get(lineage.RUN_ID),
        pipeline_user=props.get(lineage.PIPELINE_USER),
        view=props.get(lineage.VIEW),
        window_start=props.get(lineage.WINDOW_START),
        window_end=props.get(lineage.WINDOW_END),
        added_records=_int(props, "added-records"),
        deleted_records=_int(props, "deleted-records"),
        total_records=int(total) if total is not None else None,
        featurelake_operation=props.get(lineage.OPERATION),
        on_main=on_main,
    )


def history(tbl: Table, *, all_snapshots: bool = False) -> list[SnapshotInfo]:
    """Main's lineage, newest first; with ``all_snapshots`` also snapshots only reachable from branches."""
    main_ids = ancestors(tbl, main_snapshot_id(tbl))
    on_main = set(main_ids)
    ids = main_ids
    if all_snapshots:
        ids = [s.snapshot_id for s in sorted(tbl.metadata.snapshots, key=lambda s: -s.timestamp_ms)]
    return [snapshot_info(tbl, i, i in on_main) for i in ids]


def resolve_snapshot(
    tbl: Table, *, as_of: datetime | None = None, snapshot_id: int | None = None
) -> int | None:
    """The snapshot to read: an explicit id, main's snapshot current at ``as_of``, or main's current one."""
    name = ".".join(tbl.name())
    if as_of is not None and snapshot_id is not None:
        raise UsageError("give either --as-of or --snapshot, not both")
    if snapshot_id is not None:
        if tbl.metadata.snapshot_by_id(snapshot_id) is None:
            raise UsageError(
                f"snapshot {snapshot_id} does not exist in {name} (expired or never committed); "
                f"see `featurelake history {name.split('.')[-1]}`"
            )
        return snapshot_id
    if as_of is not None:
        snap = tbl.snapshot_as_of_timestamp(round(as_of.timestamp() * 1000), inclusive=True)
        if snap is None:
            first = tbl.metadata.snapshot_log[0].timestamp_ms if tbl.metadata.snapshot_log else None
            since = (
                f"; its first snapshot was committed at {datetime.fromtimestamp(first / 1000, tz=UTC).isoformat()}"
                if first
                else ""
            )
            raise UsageError(f"{name} had no data at {as_of.isoformat()}{since}")
        return snap.snapshot_id
    return main_snapshot_id(tbl)

"""What a maintenance run did (or, with ``dry_run``, would do) to one table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class FileGroup:
    """Small files of one partition that compaction merges into one file."""

    partition: str
    inputs: list[str]
    input_bytes: int
    rows: int
    outputs: list[str] = field(default_factory=list)
    output_bytes: int = 0


@dataclass
class CompactionResult:
    """``rewrite_data_files`` on main: which partitions were bin-packed and what it committed."""

    data_files_before: int = 0
    data_files_after: int = 0
    groups: list[FileGroup] = field(default_factory=list)
    snapshot_id: int | None = None
    attempts: int = 0
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def files_rewritten(self) -> int:
        return sum(len(g.inputs) for g in self.groups)

    @property
    def files_written(self) -> int:
        return sum(max(1, len(g.outputs)) for g in self.groups)


@dataclass
class ExpiryResult:
    """``expire_snapshots``: what was expired, why the rest was kept, which files were deleted."""

    expired: list[int] = field(default_factory=list)
    kept: dict[int, str] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    bytes_reclaimed: int = 0
    attempts: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class OrphanResult:
    """``remove_orphan_files``: files no metadata reaches, old enough to delete, and the young ones kept."""

    orphans: list[str] = field(default_factory=list)
    bytes_reclaimed: int = 0
    too_young: list[str] = field(default_factory=list)
    min_age_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class TableMaintenance:
    """Everything one ``maintain`` run did to one table."""

    table: str
    dry_run: bool
    files_before: int = 0
    bytes_before: int = 0
    files_after: int = 0
    bytes_after: int = 0
    compaction: CompactionResult | None = None
    expiry: ExpiryResult | None = None
    orphans: OrphanResult | None = None
    seconds: float = 0.0
    error: str | None = None
    tags: dict[str, int] = field(default_factory=dict)
    """Every tag of the table after the run and the snapshot it keeps (``model-<name>-<version>`` keeps a
    registered model's training snapshot; ``online-sync-...`` a sync watermark)."""

    @property
    def bytes_reclaimed(self) -> int:
        return (self.expiry.bytes_reclaimed if self.expiry else 0) + (
            self.orphans.bytes_reclaimed if self.orphans else 0
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "table": self.table,
            "dry_run": self.dry_run,
            "files_before": self.files_before,
            "files_after": self.files_after,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "bytes_reclaimed": self.bytes_reclaimed,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "tags": [{"tag": t, "snapshot_id": sid} for t, sid in sorted(self.tags.items())],
        }
        if self.compaction is not None:
            c = self.compaction
            d["compaction"] = {
                **{k: v for k, v in asdict(c).items() if k != "groups"},
                "files_rewritten": c.files_rewritten,
                "files_written": c.files_written,
                "groups": [asdict(g) for g in c.groups],
            }
        if self.expiry is not None:
            e = asdict(self.expiry)
            e["kept"] = {str(k): v for k, v in self.expiry.kept.items()}
            d["expiry"] = {"snapshots_expired": len(self.expiry.expired), **e}
        if self.orphans is not None:
            d["orphans"] = {"orphans_removed": len(self.orphans.orphans), **asdict(self.orphans)}
        return d

"""What a maintenance run did (or, with ``dry_run``, would do) to one table, and the units it is given in."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from featurelake.errors import UsageError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_duration(value: str | timedelta, what: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``90s`` or ``2w`` as a timedelta; UsageError naming ``what`` otherwise."""
    if isinstance(value, timedelta):
        return value
    m = _DURATION.match(str(value))
    if not m:
        raise UsageError(
            f"{what} {value!r} is not a duration: use a number and a unit, e.g. 7d, 12h, 30m, 90s"
        )
    return timedelta(seconds=float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()])


def parse_size(value: str | int, what: str) -> int:
    """``128MB``, ``512KiB`` or a plain number of bytes, as bytes."""
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise UsageError(f"{what} {value!r} is not a size: use e.g. 128MB, 512KiB or a number of bytes")
        size = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
    if size < 1024:
        raise UsageError(f"{what} {value!r} is too small: give at least 1KiB (e.g. 128MB)")
    return size


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


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

"""One ``maintain`` run as asked for: built once by ``fl.maintain`` (from its keywords) or the CLI (from its
flags) and handed to ``jobs.maintain.run_maintain``.

Durations and sizes are parsed when the request is built (``units.parse_duration``, ``units.parse_size``), so
a bad ``--expire-older-than`` is a ``UsageError`` naming the flag before any table is read. What the request
leaves unset comes from the config's ``maintenance`` section (already typed there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from featurelake.errors import UsageError
from featurelake.maintenance.expiry import RetentionPolicy
from featurelake.units import parse_duration, parse_size

if TYPE_CHECKING:
    from featurelake.config import MaintenanceConfig

#: Smallest compaction target accepted from a flag (the config's ``compaction_target_file_size`` has the same).
MIN_TARGET_FILE_SIZE = 1024


def _duration(value: str | int | float | timedelta | None, flag: str) -> timedelta | None:
    try:
        return None if value is None else parse_duration(value, flag)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _size(value: str | int | None, flag: str) -> int | None:
    try:
        return None if value is None else parse_size(value, flag, minimum=MIN_TARGET_FILE_SIZE)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@dataclass(frozen=True)
class MaintenanceRequest:
    """What to maintain and how; ``None`` means "as the config says". Refused on construction when a value is bad.

    With no operation chosen (``compact``, ``expire``, ``remove_orphans`` all false) all three run.
    """

    view: str | None = None
    """A feature view, or a dotted table identifier such as ``predictions.churn``."""
    all_tables: bool = False
    """Every feature table and every ``predictions.*`` table (instead of ``view``)."""
    compact: bool = False
    expire: bool = False
    remove_orphans: bool = False
    expire_older_than: str | int | float | timedelta | None = None
    """Expiry age (``7d``); default ``maintenance.expire_older_than``."""
    retain_last: int | None = None
    """Newest snapshots always kept per branch; default ``maintenance.retain_last``."""
    orphan_min_age: str | int | float | timedelta | None = None
    """Orphans younger than this are kept (``3d``); default ``maintenance.orphan_min_age``."""
    target_file_size: str | int | None = None
    """Compaction output size (``128MB``); default ``maintenance.compaction_target_file_size``."""
    dry_run: bool = False
    force: bool = False
    """Allow ages under one hour (only when no job is running)."""
    now: datetime | None = None
    """Evaluate ages as of this time instead of now."""

    # Parsed on construction from the three above.
    older_than: timedelta | None = field(init=False, compare=False)
    min_age: timedelta | None = field(init=False, compare=False)
    target_bytes: int | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: set the parsed values once, here
        set_(self, "older_than", _duration(self.expire_older_than, "--expire-older-than"))
        set_(self, "min_age", _duration(self.orphan_min_age, "--orphan-min-age"))
        set_(self, "target_bytes", _size(self.target_file_size, "--target-file-size"))
        if not (self.compact or self.expire or self.remove_orphans):
            set_(self, "compact", True)
            set_(self, "expire", True)
            set_(self, "remove_orphans", True)

    def retention(self, cfg: MaintenanceConfig) -> RetentionPolicy:
        """What expiry keeps: this request's age and count, else the config's."""
        return RetentionPolicy(
            older_than=cfg.expire_older_than if self.older_than is None else self.older_than,
            retain_last=cfg.retain_last if self.retain_last is None else self.retain_last,
            keep_ancestry_tag_prefixes=tuple(cfg.keep_ancestry_tag_prefixes),
        )

    def orphan_age(self, cfg: MaintenanceConfig) -> timedelta:
        """The youngest orphan deleted: this request's, else the config's."""
        return cfg.orphan_min_age if self.min_age is None else self.min_age

    def file_size(self, cfg: MaintenanceConfig) -> int:
        """Compaction's target file size in bytes: this request's, else the config's."""
        return cfg.compaction_target_file_size if self.target_bytes is None else self.target_bytes


__all__ = ["MIN_TARGET_FILE_SIZE", "MaintenanceRequest"]

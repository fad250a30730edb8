"""Table maintenance PyIceberg 0.12 lacks: compaction, snapshot expiry that deletes files, orphan removal.

Each operation works on one table given as a ``load`` callable that returns it freshly loaded, is safe to run
next to writers (conflicts are retried on fresh metadata or end in ``ConflictError`` with nothing changed), and
with ``dry_run`` only reports. Nothing here knows about feature views, the registry or serving: the names of
tags to honour come in through ``RetentionPolicy``.
"""

from featurelake.maintenance.compaction import COMPACTION, checksum, rewrite_data_files
from featurelake.maintenance.expiry import MIN_SAFE_AGE, RetentionPolicy, expire_snapshots
from featurelake.maintenance.files import list_files
from featurelake.maintenance.orphans import remove_orphan_files
from featurelake.maintenance.report import (
    CompactionResult,
    ExpiryResult,
    FileGroup,
    OrphanResult,
    TableMaintenance,
)
from featurelake.maintenance.request import MaintenanceRequest

__all__ = [
    "COMPACTION",
    "MIN_SAFE_AGE",
    "CompactionResult",
    "ExpiryResult",
    "FileGroup",
    "MaintenanceRequest",
    "OrphanResult",
    "RetentionPolicy",
    "TableMaintenance",
    "checksum",
    "expire_snapshots",
    "list_files",
    "remove_orphan_files",
    "rewrite_data_files",
]

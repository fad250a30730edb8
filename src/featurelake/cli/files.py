"""Writing Arrow tables to the file formats the CLI offers, on local disk or object storage."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from featurelake.errors import UsageError
from featurelake.lakehouse.storage import Storage, is_storage_failure, storage_error


def write_table(table: pa.Table, path: str | Path, storage: Storage | None = None) -> None:
    """Write ``table`` to ``path`` (``.parquet`` or ``.csv``; a local path or a URL such as ``s3://b/k``)."""
    store = storage or Storage()
    suffix = Path(str(path)).suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise UsageError(f"--output {path}: use a .parquet or .csv file name")
    try:
        if suffix == ".parquet":
            store.write_parquet(table, path)
        else:
            store.write_csv(table, path)
    except OSError as exc:
        if is_storage_failure(exc):
            raise storage_error(exc, f"write {path}") from exc
        raise

"""Writing Arrow tables to the file formats the CLI offers, on local disk or object storage."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from featurelake.errors import UsageError
from featurelake.lakehouse.storage import Storage, writing


def write_table(table: pa.Table, path: str | Path, storage: Storage | None = None) -> None:
    """Write ``table`` to ``path`` (``.parquet`` or ``.csv``; a local path or a URL such as ``s3://b/k``).

    The file appears whole or not at all (an existing one is replaced in one rename); a path that cannot be
    written is one clear error naming it (``lakehouse.storage.io_failure``).
    """
    store = storage or Storage()
    suffix = Path(str(path)).suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise UsageError(f"--output {path}: use a .parquet or .csv file name")
    with writing(path, "write the --output file"):
        if suffix == ".parquet":
            store.write_parquet(table, path)
        else:
            store.write_csv(table, path)
